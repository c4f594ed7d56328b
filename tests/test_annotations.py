"""segtut.datasets.annotations: labelme / COCO polygons -> class-id masks, and back.

Every test writes its own small JSON files (tmp_path) in the real formats.
"""

import json
import warnings

import numpy as np
import pytest

from segtut.datasets.annotations import (
    CLASS_MAP_NAME, coco_to_masks, decode_coco_rle, labelme_to_mask, mask_to_labelme,
    read_class_map, write_class_map,
)
from segtut.errors import DataError, DataWarning

CLASSES = ("road", "car", "sign", "tree")  # ids 0..3


def shape(label, points, shape_type="polygon"):
    return {"label": label, "points": [list(map(float, p)) for p in points], "group_id": None,
            "description": "", "shape_type": shape_type, "flags": {}}


def write_labelme(path, shapes, height=64, width=100):
    path.write_text(json.dumps({
        "version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": "frame.jpg",
        "imageData": None, "imageHeight": height, "imageWidth": width}))
    return path


def square(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


# ---------------------------------------------------------------------------------- labelme

@pytest.fixture
def scene(tmp_path):
    """A small car square listed BEFORE a big road square that covers it, a sign rectangle
    (corners given bottom-right first) and a tree circle (centre (80, 15), radius 8)."""
    return write_labelme(tmp_path / "frame.json", [
        shape("car", square(20, 20, 30, 30)),
        shape("road", square(10, 10, 50, 50)),
        shape("sign", [(80, 55), (60, 40)], "rectangle"),
        shape("tree", [(80, 15), (80, 23)], "circle"),
    ])


def test_labelme_file_order_later_shape_wins(scene):
    mask = labelme_to_mask(scene, CLASSES, order="file")
    assert mask.dtype == np.uint8 and mask.shape == (64, 100)
    assert mask[25, 25] == 0  # the road, listed after the car, covers it
    assert mask[12, 12] == 0


def test_labelme_area_order_smaller_shape_stays_visible(scene):
    mask = labelme_to_mask(scene, CLASSES, order="area")
    assert mask[25, 25] == 1  # the car (100 px) is drawn after the road (1600 px)
    assert (mask[20:31, 20:31] == 1).all()  # Pillow fills a polygon with its outline pixels
    assert mask[12, 12] == 0 and mask[19, 25] == 0


def test_labelme_rectangle_circle_and_unlabelled(scene):
    mask = labelme_to_mask(scene, CLASSES)
    expected = np.zeros((64, 100), dtype=bool)
    expected[40:56, 60:81] = True  # rectangle (60, 40)-(80, 55), both corners inclusive
    assert ((mask == 2) == expected).all()
    tree = mask == 3
    assert tree[15, 80] and tree[15, 73] and tree[8, 80] and not tree[15, 90]
    assert abs(tree.sum() - np.pi * 8 ** 2) < 0.2 * np.pi * 8 ** 2
    assert mask[5, 5] == 255 and mask[60, 5] == 255  # no shape there: the ignore label
    assert set(np.unique(mask)) == {0, 2, 3, 255}  # file order: the road hides the car


def test_labelme_class_names_as_dict_and_custom_ignore(scene):
    mask = labelme_to_mask(scene, {"road": 7, "car": 7, "sign": 1, "tree": 2}, ignore_index=0)
    assert mask[25, 25] == 7 and mask[5, 5] == 0 and mask[45, 70] == 1


def test_labelme_unknown_label_names_file_and_label(tmp_path):
    path = write_labelme(tmp_path / "odd.json", [shape("lamppost", square(1, 1, 9, 9))])
    with pytest.raises(DataError) as error:
        labelme_to_mask(path, CLASSES)
    message = str(error.value)
    assert "odd.json" in message and "lamppost" in message and "'road'" in message
    with pytest.warns(DataWarning, match="lamppost"):
        mask = labelme_to_mask(path, CLASSES, unknown="ignore")
    assert (mask == 255).all()


def test_labelme_polygon_with_two_points_is_an_error(tmp_path):
    path = write_labelme(tmp_path / "thin.json", [shape("car", [(1, 1), (9, 9)])])
    with pytest.raises(DataError, match=r"thin\.json.*2 point"):
        labelme_to_mask(path, CLASSES)


def test_labelme_points_outside_are_cut_at_the_border_with_a_warning(tmp_path):
    path = write_labelme(tmp_path / "edge.json", [shape("car", square(-20, -20, 10, 10))])
    with pytest.warns(DataWarning, match=r"edge\.json.*outside"):
        mask = labelme_to_mask(path, CLASSES)
    expected = np.full((64, 100), 255, dtype=np.uint8)
    expected[0:11, 0:11] = 1  # the part of the square inside the image, unbent
    assert (mask == expected).all()
    # Points on the far edge (x = width) are inside: no warning.
    path = write_labelme(tmp_path / "rim.json", [shape("car", square(90, 50, 100, 64))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labelme_to_mask(path, CLASSES)


def test_labelme_lines_and_points_are_skipped_with_a_warning(tmp_path):
    path = write_labelme(tmp_path / "strokes.json", [
        shape("road", [(0, 0), (50, 50)], "line"), shape("car", [(5, 5)], "point"),
        shape("sign", square(60, 10, 70, 20))])
    with pytest.warns(DataWarning, match=r"strokes\.json.*'line': 1, 'point': 1"):
        mask = labelme_to_mask(path, CLASSES)
    assert set(np.unique(mask)) == {2, 255}


def test_labelme_bad_files_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"missing\.json"):
        labelme_to_mask(tmp_path / "missing.json", CLASSES)
    broken = tmp_path / "broken.json"
    broken.write_text('{"shapes": [')
    with pytest.raises(DataError, match=r"broken\.json.*not valid JSON"):
        labelme_to_mask(broken, CLASSES)
    sizeless = tmp_path / "sizeless.json"
    sizeless.write_text(json.dumps({"shapes": []}))
    with pytest.raises(DataError, match=r"sizeless\.json.*imageHeight"):
        labelme_to_mask(sizeless, CLASSES)
    with pytest.raises(ValueError, match="order"):
        labelme_to_mask(broken, CLASSES, order="z")


# ------------------------------------------------------------------------------------- COCO

def runs_of(mask):
    """COCO's uncompressed RLE of a bool (h, w) mask: column-major runs, 0s first (numpy)."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return [0] + runs if flat[0] else runs


def encode_string(runs):
    """The COCO API's compressed RLE string (rleToString), written here to test the decoder."""
    chars = []
    for i, run in enumerate(runs):
        value = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            chars.append(chr(48 + (group | (0x20 if more else 0))))
    return "".join(chars)


@pytest.fixture
def blob():
    """A bool (30, 40) mask: an off-centre disc plus a bar, asymmetric so a row-major or
    transposed decode would differ."""
    yy, xx = np.mgrid[:30, :40]
    return ((yy - 12) ** 2 + (xx - 25) ** 2 < 49) | ((yy > 24) & (xx < 9))


@pytest.fixture
def coco(tmp_path, blob):
    crowd = np.zeros((30, 40), dtype=bool)
    crowd[2:12, 2:20] = True
    data = {
        "images": [
            {"id": 5, "file_name": "train2017/000005.jpg", "height": 30, "width": 40},
            {"id": 9, "file_name": "train2017/000009.jpg", "height": 30, "width": 40},
            {"id": 11, "file_name": "train2017/000011.jpg", "height": 30, "width": 40},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}],
        "annotations": [
            # image 5: a small person listed before a big dog that overlaps it
            {"id": 1, "image_id": 5, "category_id": 1, "iscrowd": 0, "area": 36.0,
             "segmentation": [[20, 10, 25, 10, 25, 15, 20, 15]]},
            {"id": 2, "image_id": 5, "category_id": 18, "iscrowd": 0, "area": 400.0,
             "segmentation": [[10, 5, 30, 5, 30, 25, 10, 25]]},
            # image 9: a dog as uncompressed RLE
            {"id": 3, "image_id": 9, "category_id": 18, "iscrowd": 0,
             "area": float(blob.sum()),
             "segmentation": {"counts": runs_of(blob), "size": [30, 40]}},
            # image 11: a crowd of people (RLE) with one person outlined inside it
            {"id": 4, "image_id": 11, "category_id": 1, "iscrowd": 1,
             "area": float(crowd.sum()),
             "segmentation": {"counts": runs_of(crowd), "size": [30, 40]}},
            {"id": 5, "image_id": 11, "category_id": 1, "iscrowd": 0, "area": 9.0,
             "segmentation": [[4, 4, 6, 4, 6, 6, 4, 6]]},
        ],
    }
    path = tmp_path / "instances_train.json"
    path.write_text(json.dumps(data))
    return path


def read_png(path):
    from PIL import Image
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image)


def test_coco_sparse_category_ids_become_contiguous(coco, tmp_path):
    out = tmp_path / "masks"
    class_map = coco_to_masks(coco, out)
    assert class_map == {0: "person", 1: "dog"}  # category ids 1, 18 -> 0, 1
    assert sorted(p.name for p in out.iterdir()) == [
        "000005.png", "000009.png", "000011.png", CLASS_MAP_NAME]
    assert read_class_map(out / CLASS_MAP_NAME) == ({0: "person", 1: "dog"}, 255)
    mask = read_png(out / "000005.png")
    assert mask.shape == (30, 40) and mask[0, 0] == 255 and mask[7, 12] == 1


def test_coco_overlaps_ordered_by_area(coco, tmp_path):
    coco_to_masks(coco, tmp_path / "area")
    assert read_png(tmp_path / "area" / "000005.png")[12, 22] == 0  # small person on top
    coco_to_masks(coco, tmp_path / "file", order="file")
    assert read_png(tmp_path / "file" / "000005.png")[12, 22] == 1  # the later dog covers it


def test_coco_uncompressed_rle_matches_numpy_mask(coco, tmp_path, blob):
    coco_to_masks(coco, tmp_path / "out")
    mask = read_png(tmp_path / "out" / "000009.png")
    assert (mask == np.where(blob, 1, 255)).all()


def test_coco_crowd_becomes_ignore_but_an_outlined_person_inside_keeps_its_class(coco,
                                                                                 tmp_path):
    coco_to_masks(coco, tmp_path / "out")
    mask = read_png(tmp_path / "out" / "000011.png")
    assert mask[5, 5] == 0  # the person outlined inside the crowd
    assert mask[10, 15] == 255 and mask[20, 30] == 255
    assert set(np.unique(mask)) == {0, 255}


def test_coco_category_ids_dict_merges_and_skips(coco, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        class_map = coco_to_masks(coco, tmp_path / "merged", category_ids={1: 0, 18: 0})
    assert class_map == {0: "person/dog"}
    with pytest.warns(DataWarning, match="person"):
        class_map = coco_to_masks(coco, tmp_path / "dogs", category_ids={18: 1})
    assert class_map == {1: "dog"}
    mask = read_png(tmp_path / "dogs" / "000005.png")
    assert mask[12, 22] == 1 and mask[0, 0] == 255


def test_coco_bad_references_name_the_file(coco, tmp_path):
    data = json.loads(coco.read_text())
    data["annotations"][0]["image_id"] = 404
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"bad\.json.*404"):
        coco_to_masks(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    data = json.loads(coco.read_text())
    data["annotations"][2]["segmentation"]["size"] = [40, 30]
    bad.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"bad\.json.*RLE of size"):
        coco_to_masks(bad, tmp_path / "out")


def test_compressed_rle_strings_decode(blob):
    # Hand-worked strings: '5', '5', '1' are one 5-bit group each; the 4th run is stored as the
    # difference to the 2nd, 1 - 5 = -4 -> group 28 ('L', sign bit 0x10 set).
    mask = decode_coco_rle({"counts": "551L", "size": [3, 4]})
    expected = np.zeros(12, dtype=bool)
    expected[5:10] = True
    expected[11:] = True
    assert (mask == expected.reshape((3, 4), order="F")).all()
    # 100 needs two groups: 100 & 31 = 4 (+0x20 "more") -> 'T', then 3 -> '3'.
    assert decode_coco_rle({"counts": "T3", "size": [10, 10]}).sum() == 0
    assert encode_string(runs_of(blob))  # a real, multi-character string
    assert (decode_coco_rle({"counts": encode_string(runs_of(blob)), "size": [30, 40]})
            == blob).all()
    with pytest.raises(ValueError, match="add up"):
        decode_coco_rle({"counts": [3, 4], "size": [3, 4]})


# --------------------------------------------------------------------------------- class map

def test_class_map_round_trip(tmp_path):
    path = write_class_map(tmp_path / "m" / "classes.json", ["sky", "road"], 255)
    assert read_class_map(path) == ({0: "sky", 1: "road"}, 255)
    with pytest.raises(ValueError, match="ignore_index 1"):
        write_class_map(tmp_path / "x.json", ["sky", "road"], 1)
    (tmp_path / "junk.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"junk\.json"):
        read_class_map(tmp_path / "junk.json")


# ------------------------------------------------------------------------- mask -> labelme

def two_blobs():
    """A (96, 128) mask: background 0, a disc of class 1 (r=22) and a rectangle of class 2
    with a round hole of class 0 in it."""
    yy, xx = np.mgrid[:96, :128]
    mask = np.zeros((96, 128), dtype=np.uint8)
    mask[(yy - 40) ** 2 + (xx - 40) ** 2 < 22 ** 2] = 1
    mask[(np.abs(yy - 60) < 18) & (np.abs(xx - 95) < 25)] = 2
    mask[(yy - 60) ** 2 + (xx - 95) ** 2 < 6 ** 2] = 0
    return mask


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_mask_to_labelme_round_trip(tmp_path):
    mask = two_blobs()
    names = ("background", "disc", "box")
    doc = mask_to_labelme(mask, names, "frame.png")
    assert doc["imageHeight"] == 96 and doc["imageWidth"] == 128 and doc["imageData"] is None
    assert doc["imagePath"] == "frame.png"
    assert {s["label"] for s in doc["shapes"]} == set(names)
    assert all(s["shape_type"] == "polygon" and len(s["points"]) >= 3 for s in doc["shapes"])
    path = tmp_path / "frame.json"
    path.write_text(json.dumps(doc))
    for order in ("file", "area"):
        back = labelme_to_mask(path, names, order=order)
        scores = [iou(back == c, mask == c) for c in range(3)]
        # Measured: 0.998 / 0.988 / 1.0 with the default tolerance of 1 pixel.
        assert min(scores) > 0.95, scores
    exact = tmp_path / "exact.json"
    exact.write_text(json.dumps(mask_to_labelme(mask, names, "frame.png", tolerance=0)))
    assert (labelme_to_mask(exact, names) == mask).all()  # measured: identical pixels


def test_mask_to_labelme_fills_holes_and_keeps_ignore(tmp_path):
    yy, xx = np.mgrid[:60, :60]
    mask = np.full((60, 60), 255, dtype=np.uint8)
    ring = (yy - 30) ** 2 + (xx - 30) ** 2 < 20 ** 2
    hole = (yy - 30) ** 2 + (xx - 30) ** 2 < 8 ** 2
    mask[ring & ~hole] = 1
    mask[2, 2] = 0  # one pixel: too small for a polygon
    doc = mask_to_labelme(mask, ["bg", "thing"], "a.png")
    assert [s["label"] for s in doc["shapes"]] == ["thing"]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(doc))
    back = labelme_to_mask(path, ["bg", "thing"])
    assert back[30, 30] == 1  # the unlabelled hole comes back filled (no holes in polygons)
    assert iou(back == 1, ring) > 0.95 and back[2, 2] == 255 and back[0, 59] == 255
    with pytest.raises(ValueError, match=r"ids \[1\]"):
        mask_to_labelme(mask, ["bg"], "a.png")
