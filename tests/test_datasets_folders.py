"""segtut.datasets.folders.MaskFolder: one test per trap of home-made folders.

Every test writes its own tiny files in tmp_path.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segtut.datasets.colours import colours_to_ids
from segtut.datasets.folders import MaskFolder, default_palette
from segtut.datasets.labels import IGNORE_INDEX
from segtut.errors import DataError, DataWarning

H, W = 12, 16
PALETTE = ((0, 0, 0), (200, 30, 30), (30, 200, 30), (30, 30, 200))


def blocks(h=H, w=W) -> np.ndarray:
    """Class ids 0..3 in four big blocks (uint8, (h, w))."""
    ids = np.zeros((h, w), np.uint8)
    ids[: h // 2, w // 2:] = 1
    ids[h // 2:, : w // 2] = 2
    ids[h // 2:, w // 2:] = 3
    return ids


def disk(h=48, w=64) -> np.ndarray:
    """A filled circle, not aligned to JPEG's 8x8 blocks (so JPEG adds noise): bool (h, w)."""
    y, x = np.mgrid[:h, :w]
    return (y - h / 2 + 0.5) ** 2 + (x - w / 2 + 0.5) ** 2 < (0.37 * h) ** 2


def write(folder: Path, name: str, array: np.ndarray, **save) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.fromarray(array).save(path, **save)
    return path


def photo(h=H, w=W, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def pair(tmp_path, mask: np.ndarray, mask_name="a.png", image=None, **save):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write(images, "a.jpg", photo() if image is None else image)
    return images, masks, write(masks, mask_name, mask, **save)


def test_class_id_png_is_the_default_path(tmp_path):
    images, masks, _ = pair(tmp_path, blocks())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the clean case warns about nothing
        ds = MaskFolder(images, masks, num_classes=4)
        image, mask = ds[0]
    assert image.shape == (3, H, W) and image.dtype == torch.uint8
    assert mask.shape == (H, W) and mask.dtype == torch.int64
    assert np.array_equal(mask.numpy(), blocks())
    assert ds.num_classes == 4 and ds.ignore_index == IGNORE_INDEX == 255
    assert ds.class_names == ("class 0", "class 1", "class 2", "class 3")
    assert ds.palette == default_palette(4) and len(ds.palette) == 4
    assert ds.images == [images / "a.jpg"] and len(ds) == 1


def test_zero_255_mask_is_an_error_naming_the_file_and_both_fixes(tmp_path):
    _, _, mask_path = pair(tmp_path, (blocks() > 0).astype(np.uint8) * 255)
    ds = MaskFolder(tmp_path / "images", tmp_path / "masks", num_classes=2)
    with pytest.raises(DataError) as error:
        ds[0]
    message = str(error.value)
    assert str(mask_path) in message
    assert "divide it by 255" in message and "binary=True" in message


@pytest.mark.parametrize("top", [255, 1])
def test_binary_true_makes_0_1(tmp_path, top):
    foreground = blocks() > 0
    pair(tmp_path, foreground.astype(np.uint8) * top)
    ds = MaskFolder(tmp_path / "images", tmp_path / "masks", num_classes=2, binary=True)
    assert np.array_equal(ds[0][1].numpy(), foreground.astype(np.int64))
    assert ds.class_names == ("background", "foreground")


def test_binary_true_refuses_grey_levels_naming_the_file(tmp_path):
    _, _, mask_path = pair(tmp_path, np.array([[0, 128], [255, 255]], np.uint8).repeat(6, 0)
                           .repeat(8, 1))
    ds = MaskFolder(tmp_path / "images", tmp_path / "masks", num_classes=2, binary=True)
    with pytest.raises(DataError, match="128") as error:
        ds[0]
    assert str(mask_path) in str(error.value)


def test_rgb_colour_mask_with_palette_maps_nearest_colours(tmp_path):
    ids = blocks()
    colours = np.asarray(PALETTE, np.int16)[ids]
    colours[0, 0] += (10, 5, 0)  # slightly off colours still map to the nearest class
    colours[-1, -1] -= (0, 12, 7)
    pair(tmp_path, colours.astype(np.uint8))
    ds = MaskFolder(tmp_path / "images", tmp_path / "masks", num_classes=4, palette=PALETTE)
    assert np.array_equal(ds[0][1].numpy(), ids)
    assert ds.palette == PALETTE


def test_rgb_colour_mask_without_palette_says_palette(tmp_path):
    _, _, mask_path = pair(tmp_path, np.asarray(PALETTE, np.uint8)[blocks()])
    ds = MaskFolder(tmp_path / "images", tmp_path / "masks", num_classes=4)
    with pytest.raises(DataError, match="palette=") as error:
        ds[0]
    assert str(mask_path) in str(error.value)


def test_colour_far_from_the_palette_is_an_error(tmp_path):
    colours = np.asarray(PALETTE, np.uint8)[blocks()]
    colours[:2, :2] = (255, 255, 0)  # a class the palette does not have
    _, _, mask_path = pair(tmp_path, colours)
    ds = MaskFolder(tmp_path / "images", tmp_path / "masks", num_classes=4, palette=PALETTE)
    with pytest.raises(DataError, match=r"255, 255, 0") as error:
        ds[0]
    assert str(mask_path) in str(error.value)


def test_jpeg_noisy_colour_mask_with_palette_and_nearest(tmp_path):
    ids = blocks(48, 64)
    write(tmp_path / "images", "a.png", photo(48, 64))
    write(tmp_path / "masks", "a.jpg", np.asarray(PALETTE, np.uint8)[ids], quality=70)
    raw = np.asarray(Image.open(tmp_path / "masks" / "a.jpg"))
    assert len(np.unique(raw.reshape(-1, 3), axis=0)) > 4  # JPEG really added noise
    with pytest.warns(DataWarning, match="a.jpg"):
        ds = MaskFolder(tmp_path / "images", tmp_path / "masks", num_classes=4,
                        palette=PALETTE, jpeg_masks="nearest")
    assert np.array_equal(ds[0][1].numpy(), ids)


def test_palette_with_an_extra_colour_for_the_ignore_label(tmp_path):
    palette = PALETTE[:3] + ((255, 255, 255),)  # classes 0..2, then the void colour
    ids = np.minimum(blocks(), 2)
    colours = np.asarray(palette, np.uint8)[ids]
    colours[0] = (255, 255, 255)  # a void row
    pair(tmp_path, colours)
    ds = MaskFolder(tmp_path / "images", tmp_path / "masks", num_classes=3, palette=palette)
    mask = ds[0][1].numpy()
    assert (mask[0] == 255).all() and np.array_equal(mask[1:], ids[1:])


def test_nearest_colour_helper_uses_distinct_colours():
    rgb = np.array([[[0, 0, 0], [190, 40, 20]], [[28, 205, 31], [0, 0, 0]]], np.uint8)
    index, distance = colours_to_ids(rgb, PALETTE)
    assert index.tolist() == [[0, 1], [2, 0]] and index.dtype == np.int64
    assert distance.dtype == np.float32 and distance[0, 0] == 0 and distance[0, 1] > 0


def test_jpeg_mask_without_option_is_an_error_naming_the_file(tmp_path):
    _, _, mask_path = pair(tmp_path, (blocks() > 0).astype(np.uint8) * 255, "a.jpg")
    ds = MaskFolder(tmp_path / "images", tmp_path / "masks", num_classes=2)
    with pytest.raises(DataError) as error:
        ds[0]
    message = str(error.value)
    assert str(mask_path) in message and "JPEG" in message
    assert "jpeg_masks='threshold'" in message


def test_jpeg_threshold_gives_0_1_and_warns_once_with_count_and_example(tmp_path):
    foreground = disk()
    images, masks = tmp_path / "images", tmp_path / "masks"
    for name in ("a", "b"):
        write(images, f"{name}.png", photo(48, 64))
        write(masks, f"{name}.jpg", foreground.astype(np.uint8) * 255, quality=60)
    assert len(np.unique(np.asarray(Image.open(masks / "a.jpg")))) > 2  # JPEG noise
    with pytest.warns(DataWarning) as record:
        ds = MaskFolder(images, masks, num_classes=2, jpeg_masks="threshold")
        masks_read = [ds[i][1].numpy() for i in range(2)]
    messages = [str(w.message) for w in record if issubclass(w.category, DataWarning)]
    assert len(messages) == 1  # once per dataset, not per file
    assert "2 of 2" in messages[0] and "a.jpg" in messages[0] and "lossy" in messages[0]
    for mask in masks_read:
        assert set(np.unique(mask).tolist()) <= {0, 1}
        assert np.array_equal(mask, foreground.astype(np.int64))


def test_jpeg_nearest_grey_levels_for_class_ids(tmp_path):
    ids = blocks(48, 64) * 60  # ids 0, 60, 120, 180 stored as grey levels of a 181-class mask
    write(tmp_path / "images", "a.png", photo(48, 64))
    write(tmp_path / "masks", "a.jpg", ids.astype(np.uint8), quality=85)
    with pytest.warns(DataWarning, match="nearest class-id grey level"):
        ds = MaskFolder(tmp_path / "images", tmp_path / "masks", num_classes=181,
                        jpeg_masks="nearest")
    mask = ds[0][1].numpy()
    # JPEG moves grey levels by a few units: nearest maps them to neighbouring ids, which is why
    # this option warns; away from the block edges the ids are right.
    assert np.array_equal(mask[:16, :24], ids[:16, :24])


def test_mask_of_another_size_is_an_error_naming_both_files(tmp_path):
    images, masks, mask_path = pair(tmp_path, blocks(6, 8))
    ds = MaskFolder(images, masks, num_classes=4)
    with pytest.raises(DataError) as error:
        ds[0]
    message = str(error.value)
    assert str(images / "a.jpg") in message and str(mask_path) in message
    assert "12x16" in message and "6x8" in message and "resize_masks=True" in message


def test_resize_masks_uses_nearest_neighbour_only(tmp_path):
    rng = np.random.default_rng(1)
    small = np.where(rng.random((6, 8)) < 0.5, 0, 3).astype(np.uint8)  # ids {0, 3} only
    images, masks, _ = pair(tmp_path, small, image=photo(30, 40))
    with pytest.warns(DataWarning) as record:
        ds = MaskFolder(images, masks, num_classes=4, resize_masks=True)
        mask = ds[0][1].numpy()
    assert mask.shape == (30, 40)
    assert set(np.unique(mask).tolist()) == {0, 3}  # no 1 or 2 blended in between
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and "1 of 1" in messages[0] and "a.png" in messages[0]
    assert "nearest" in messages[0]


def test_resize_masks_refuses_another_aspect_ratio(tmp_path):
    images, masks, mask_path = pair(tmp_path, blocks(12, 12))
    ds = MaskFolder(images, masks, num_classes=4, resize_masks=True)
    with pytest.raises(DataError, match="aspect ratio") as error:
        ds[0]
    assert str(mask_path) in str(error.value)


def test_greyscale_image_becomes_rgb(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)
    pair(tmp_path, blocks(), image=grey)
    image, _ = MaskFolder(tmp_path / "images", tmp_path / "masks", num_classes=4)[0]
    assert image.shape == (3, H, W) and image.dtype == torch.uint8
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_values_outside_range_name_file_and_values(tmp_path):
    ids = blocks()
    ids[0, 0] = 9
    _, _, mask_path = pair(tmp_path, ids)
    ds = MaskFolder(tmp_path / "images", tmp_path / "masks", num_classes=4)
    with pytest.raises(DataError, match=r"\[9\]") as error:
        ds[0]
    assert str(mask_path) in str(error.value)


def test_ignore_label_passes_through(tmp_path):
    ids = blocks()
    ids[0] = 255
    pair(tmp_path, ids)
    mask = MaskFolder(tmp_path / "images", tmp_path / "masks", num_classes=4)[0][1]
    assert (mask[0] == 255).all() and mask.dtype == torch.int64


@pytest.mark.parametrize("case, match", [
    ("image without mask", "have no mask"),
    ("mask without image", "have no image"),
    ("two files one stem", "several image files"),
])
def test_pairing_errors(tmp_path, case, match):
    images, masks = tmp_path / "images", tmp_path / "masks"
    write(images, "a.jpg", photo())
    write(masks, "a.png", blocks())
    if case == "image without mask":
        write(images, "b.jpg", photo())
    elif case == "mask without image":
        write(masks, "b.png", blocks())
    else:
        write(images, "a.png", photo())
    with pytest.raises(DataError, match=match) as error:
        MaskFolder(images, masks, num_classes=4)
    assert ("b." in str(error.value)) or ("a.jpg and a.png" in str(error.value))


def test_limit_cache_transform_and_names(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i in range(3):
        write(images, f"{i}.png", photo(seed=i))
        write(masks, f"{i}.png", blocks())
    calls = []

    def transform(image, mask):
        calls.append(1)
        return image.float(), mask

    ds = MaskFolder(images, masks, num_classes=4, class_names=["a", "b", "c", "d"],
                    palette=PALETTE, limit=2, cache=True, transform=transform)
    assert len(ds) == 2 and [p.name for p in ds.images] == ["0.png", "1.png"]
    assert ds.class_names == ("a", "b", "c", "d")
    image, _ = ds[1]
    assert image.dtype == torch.float32 and calls == [1]
    (images / "1.png").unlink()  # cached: not read again
    assert ds[1][1].shape == (H, W)


def test_bad_arguments_are_refused(tmp_path):
    images, masks, _ = pair(tmp_path, blocks())
    with pytest.raises(ValueError, match="num_classes=2"):
        MaskFolder(images, masks, num_classes=3, binary=True)
    with pytest.raises(ValueError, match="jpeg_masks"):
        MaskFolder(images, masks, num_classes=2, jpeg_masks="bilinear")
    with pytest.raises(ValueError, match="class_names"):
        MaskFolder(images, masks, num_classes=4, class_names=["a"])
    with pytest.raises(ValueError, match="palette"):
        MaskFolder(images, masks, num_classes=4, palette=PALETTE[:2])
    with pytest.raises(DataError, match="Folder not found"):
        MaskFolder(images, tmp_path / "nowhere", num_classes=4)
