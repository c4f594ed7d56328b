"""segtut.data and segtut.synthetic: the real CamVid copy, bad files that must fail loudly, and
the synthetic fallback that must announce itself.

The real-data tests read CamVid from ``$SEGTUT_DATA_DIR/camvid``, falling back to the shared copy
next to the repository (``<repo>/../shared/data/camvid``); they never download.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision import tv_tensors

from segtut.data import (CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES, PALETTE, CamVid, DataError,
                         SegmentationFolder, read_image, read_mask)
from segtut.download import camvid_root
from segtut.synthetic import SyntheticDataWarning, SyntheticScenes, describe_source

try:
    from segtut.data import DataWarning
except ImportError:  # before the conversions were announced: the tests below fail instead
    DataWarning = UserWarning

CAMVID_SIZES = {"train": 367, "val": 101, "test": 233}


# --- the real CamVid copy ----------------------------------------------------------------------

# The camvid_dir fixture lives in conftest.py.

@pytest.mark.parametrize("split", list(CAMVID_SIZES))
def test_camvid_split_sizes_and_pairing(camvid_dir, split):
    dataset = CamVid(camvid_dir, split)
    assert len(dataset) == CAMVID_SIZES[split]
    assert [p.name for p in dataset.images] == [p.name for p in dataset.masks]
    assert all(p.parent.name == f"{split}annot" for p in dataset.masks)
    assert describe_source(dataset) == f"real CamVid ({split}, {CAMVID_SIZES[split]} images)"


@pytest.mark.parametrize("split, index", [("train", 0), ("train", 366), ("val", 50), ("test", 232)])
def test_camvid_items_follow_the_contract(camvid_dir, split, index):
    image, mask = CamVid(camvid_dir, split)[index]
    assert isinstance(image, tv_tensors.Image) and isinstance(mask, tv_tensors.Mask)
    assert image.dtype == torch.uint8 and image.shape == (3, 360, 480)
    assert mask.dtype == torch.int64 and mask.shape == (360, 480)
    assert 0 <= int(mask.min()) and int(mask.max()) <= IGNORE_INDEX
    assert image.float().std() > 10  # a real picture, not a blank


def test_camvid_val_masks_hold_exactly_the_class_ids(camvid_dir):
    found = set()
    for path in sorted((camvid_dir / "valannot").glob("*.png")):
        found |= set(np.unique(read_mask(path).numpy()).tolist())
    assert found == set(range(NUM_CLASSES + 1))  # 0..10 and void 11, nothing else
    assert len(CLASS_NAMES) == NUM_CLASSES == 11 and IGNORE_INDEX == 11


def test_camvid_root_finds_the_real_copy_offline(camvid_dir, monkeypatch):
    monkeypatch.setenv("SEGTUT_DATA_DIR", str(camvid_dir.parent))
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    assert camvid_root() == camvid_dir
    assert camvid_root(camvid_dir.parent) == camvid_dir  # the data directory holds camvid/
    with pytest.raises(DataError, match="pass the folder that holds camvid/") as error:
        camvid_root(camvid_dir)  # the camvid folder itself is not a data directory
    assert f"i.e. {camvid_dir.parent}" in str(error.value)
    dataset = CamVid(split="val", limit=4)  # root=None goes through camvid_root
    assert len(dataset) == 4 and dataset.images[0].parent == camvid_dir / "val"


def test_camvid_rejects_unknown_split(camvid_dir):
    with pytest.raises(ValueError, match="'validation'"):
        CamVid(camvid_dir, "validation")


# --- bad files, each written to tmp_path -------------------------------------------------------

def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def rgb(height=6, width=8, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def labels(height=6, width=8, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 12, size=(height, width), dtype=np.uint8)


def folder_dataset(tmp_path: Path, image: np.ndarray, mask: np.ndarray, name="a.png",
                   **kwargs) -> SegmentationFolder:
    write_png(tmp_path / "images" / name, image)
    write_png(tmp_path / "masks" / name, mask)
    return SegmentationFolder(tmp_path / "images", tmp_path / "masks", **kwargs)


def test_good_pair_loads(tmp_path):
    mask = labels()
    image_out, mask_out = folder_dataset(tmp_path, rgb(), mask)[0]
    assert image_out.dtype == torch.uint8 and image_out.shape == (3, 6, 8)
    assert mask_out.dtype == torch.int64 and torch.equal(mask_out, torch.from_numpy(mask).long())


def test_class_ids_above_255_survive(tmp_path):
    mask = np.full((6, 8), 299, dtype=np.uint16)  # a 16-bit label map, 300 classes
    dataset = folder_dataset(tmp_path, rgb(), mask, num_classes=300, ignore_index=255, cache=True)
    assert int(dataset[0][1].max()) == 299 and int(dataset[0][1].max()) == 299  # read, then cached


def test_binary_0_255_mask_is_rejected(tmp_path):
    mask = np.where(labels() > 5, 255, 0).astype(np.uint8)
    dataset = folder_dataset(tmp_path, rgb(), mask)
    with pytest.raises(DataError, match="0/255") as error:
        dataset[0]
    assert str(tmp_path / "masks" / "a.png") in str(error.value)
    assert "255" in str(error.value)
    # Mapping 255 to the ignore label would make the whole foreground void (mIoU 1.0 for any
    # model): the hint must say to divide by 255, and must not suggest the ignore label.
    assert "divide it by 255" in str(error.value) and "class 1" in str(error.value)
    hint = str(error.value).split("values found:")[1]
    assert "ignore" not in hint


def test_255_border_next_to_class_ids_suggests_the_ignore_label(tmp_path):
    mask = (labels() % 4).astype(np.uint8)  # class ids 0..3...
    mask[2, :] = 255  # ...and a 255 border line, as some tools export void
    with pytest.raises(DataError, match="map 255 to the ignore label 11") as error:
        read_mask(write_png(tmp_path / "m.png", mask))
    assert "divide" not in str(error.value)


def test_rgb_colour_mask_is_rejected(tmp_path):
    colours = np.array(PALETTE, dtype=np.uint8)[labels()]  # (H, W, 3) SegNet colours
    dataset = folder_dataset(tmp_path, rgb(), colours)
    with pytest.raises(DataError, match="colour") as error:
        dataset[0]
    assert str(tmp_path / "masks" / "a.png") in str(error.value)


def test_out_of_range_class_id_is_rejected(tmp_path):
    mask = labels()
    mask[0, 0] = 20
    with pytest.raises(DataError, match=r"\[20\]"):
        read_mask(write_png(tmp_path / "m.png", mask))


def test_grey_mask_saved_as_rgb_and_palette_mask_are_accepted(tmp_path):
    mask = labels()
    grey_rgb = np.repeat(mask[..., None], 3, axis=2)  # the same ids in all three channels
    assert torch.equal(read_mask(write_png(tmp_path / "rgb.png", grey_rgb)),
                       torch.from_numpy(mask).long())
    palette = Image.fromarray(mask, "L").convert("P")
    palette.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").max() <= IGNORE_INDEX


def test_grey_mask_with_alpha_channel_is_accepted(tmp_path):
    # Some editors save label maps as greyscale + alpha (mode LA); alpha is not a label.
    mask = labels()
    alpha = np.full_like(mask, 255)
    Image.fromarray(np.stack([mask, alpha], axis=2), "LA").save(tmp_path / "la.png")
    assert torch.equal(read_mask(tmp_path / "la.png"), torch.from_numpy(mask).long())


def test_size_mismatch_names_both_files(tmp_path):
    dataset = folder_dataset(tmp_path, rgb(6, 8), labels(6, 9))
    with pytest.raises(DataError, match="nearest") as error:
        dataset[0]
    message = str(error.value)
    assert str(tmp_path / "images" / "a.png") in message
    assert str(tmp_path / "masks" / "a.png") in message


def test_corrupt_image_is_named(tmp_path):
    write_png(tmp_path / "masks" / "a.png", labels())
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    dataset = SegmentationFolder(tmp_path / "images", tmp_path / "masks")
    with pytest.raises(DataError, match="corrupt") as error:
        dataset[0]
    assert str(tmp_path / "images" / "a.png") in str(error.value)


def test_corrupt_mask_is_named(tmp_path):
    write_png(tmp_path / "images" / "a.png", rgb())
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="corrupt") as error:
        SegmentationFolder(tmp_path / "images", tmp_path / "masks")[0]
    assert str(tmp_path / "masks" / "a.png") in str(error.value)


def test_missing_image_file_is_named(tmp_path):
    with pytest.raises(DataError, match="not found") as error:
        read_image(tmp_path / "nowhere.png")
    assert str(tmp_path / "nowhere.png") in str(error.value)


def test_image_without_mask_is_named_when_built(tmp_path):
    write_png(tmp_path / "images" / "a.png", rgb())
    write_png(tmp_path / "images" / "lonely.png", rgb())
    write_png(tmp_path / "masks" / "a.png", labels())
    with pytest.raises(DataError, match="lonely.png") as error:
        SegmentationFolder(tmp_path / "images", tmp_path / "masks")
    assert "1 image(s)" in str(error.value)


def test_missing_folder_is_named(tmp_path):
    write_png(tmp_path / "images" / "a.png", rgb())
    with pytest.raises(DataError, match="Folder not found") as error:
        SegmentationFolder(tmp_path / "images", tmp_path / "no_masks")
    assert str(tmp_path / "no_masks") in str(error.value)
    with pytest.raises(DataError, match="Folder not found"):
        CamVid(tmp_path / "no_camvid", "train")


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="No images"):
        SegmentationFolder(tmp_path / "images", tmp_path / "masks")


def test_transform_gets_image_and_mask_together(tmp_path):
    seen = []

    def transform(image, mask):
        seen.append((type(image), type(mask), mask.dtype))
        return image.flip(-1), mask.flip(-1)

    mask = labels()
    dataset = folder_dataset(tmp_path, rgb(), mask, transform=transform, cache=True)
    _, flipped = dataset[0]
    assert seen == [(tv_tensors.Image, tv_tensors.Mask, torch.int64)]
    assert torch.equal(flipped, torch.from_numpy(mask[:, ::-1].copy()).long())
    assert torch.equal(dataset[0][1], flipped)  # the cache keeps the file, not the transform


# --- files that used to be read wrongly without a word -------------------------------------

def blocky_labels(height=32, width=32) -> np.ndarray:
    """Two classes (3 and 5) in blocks: sharp edges that JPEG blurs into 4 without leaving 0..11."""
    mask = np.full((height, width), 3, dtype=np.uint8)
    mask[:, width // 2:] = 5
    mask[height // 3: 2 * height // 3, width // 4: width // 3] = 5
    return mask


@pytest.mark.parametrize("name, file_format", [("m.jpg", "JPEG"), ("m.jpeg", "JPEG"),
                                                ("m.png", "JPEG")])
def test_jpeg_mask_is_refused(tmp_path, name, file_format):
    path = tmp_path / name
    Image.fromarray(blocky_labels()).save(path, format=file_format, quality=75)
    with pytest.raises(DataError, match="JPEG") as error:
        read_mask(path)
    message = str(error.value)
    assert str(path) in message and "lossy" in message and "PNG" in message


def test_float_mask_with_fractions_is_refused_and_whole_floats_are_accepted(tmp_path):
    fractions = np.full((6, 8), 2.0, dtype=np.float32)
    fractions[1, 1] = 2.7  # read as 2 by a plain cast
    path = tmp_path / "fractions.tif"
    Image.fromarray(fractions).save(path)
    assert Image.open(path).mode == "F"
    with pytest.raises(DataError, match="non-integer") as error:
        read_mask(path)
    assert str(path) in str(error.value) and "2.7" in str(error.value)

    whole = labels().astype(np.float32)
    Image.fromarray(whole).save(tmp_path / "whole.tif")
    assert torch.equal(read_mask(tmp_path / "whole.tif"), torch.from_numpy(whole).long())


def test_16_bit_image_is_scaled_by_the_16_bit_range_with_a_warning(tmp_path):
    values = np.linspace(0, 4000, 48).reshape(6, 8).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    with pytest.warns(DataWarning, match="16-bit") as record:
        image = read_image(path)
    assert str(path) in str(record[0].message)
    expected = torch.from_numpy(np.round(values * (255 / 65535)).astype(np.uint8))
    assert image.dtype == torch.uint8 and image.shape == (3, 6, 8)
    assert torch.equal(image[0], expected) and torch.equal(image[2], expected)
    assert int(image.max()) == 16  # not saturated at 255


def test_32_bit_image_outside_16_bits_is_refused(tmp_path):
    path = tmp_path / "wide.tif"
    Image.fromarray(np.full((6, 8), 70000, dtype=np.int32)).save(path)
    with pytest.raises(DataError, match="70000") as error:
        read_image(path)
    assert str(path) in str(error.value)


def test_float_image_in_0_1_is_scaled_and_outside_is_refused(tmp_path):
    values = np.linspace(0, 1, 48, dtype=np.float32).reshape(6, 8)
    path = tmp_path / "unit.tif"
    Image.fromarray(values).save(path)
    with pytest.warns(DataWarning, match="0..1") as record:
        image = read_image(path)
    assert str(path) in str(record[0].message)
    expected = torch.from_numpy(np.round(values * 255).astype(np.uint8))
    assert torch.equal(image[1], expected)  # a ramp, not binarised to 0/1
    assert len(torch.unique(image)) > 40

    Image.fromarray(values * 3).save(tmp_path / "bright.tif")
    with pytest.raises(DataError, match="0..1") as error:
        read_image(tmp_path / "bright.tif")
    assert str(tmp_path / "bright.tif") in str(error.value)


def test_grey_image_becomes_rgb_without_a_warning(tmp_path):
    grey = labels() * 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_image(write_png(tmp_path / "grey.png", grey))
    assert image.shape == (3, 6, 8) and torch.equal(image[0], torch.from_numpy(grey))


def huge_png(path: Path, width=30000, height=30000) -> Path:
    """A 60-byte PNG whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("read", [read_image, read_mask])
def test_decompression_bomb_is_a_data_error(tmp_path, read):
    path = huge_png(tmp_path / "bomb.png")
    with pytest.raises(DataError, match="MAX_IMAGE_PIXELS") as error:
        read(path)
    assert str(path) in str(error.value)


def test_image_just_over_the_pixel_limit_is_an_error_not_a_warning(tmp_path, monkeypatch):
    path = write_png(tmp_path / "a.png", rgb(10, 10))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60)  # 100 pixels: PIL would only warn
    with pytest.raises(DataError, match="safety limit") as error:
        read_image(path)
    assert str(path) in str(error.value)


def test_folder_without_ignore_label(tmp_path):
    mask = labels()  # ids 0..11: with 12 classes and no ignore label, 11 is a class
    dataset = folder_dataset(tmp_path, rgb(), mask, num_classes=12, ignore_index=None)
    assert torch.equal(dataset[0][1], torch.from_numpy(mask).long())
    mask[0, 0] = 12
    write_png(tmp_path / "masks" / "a.png", mask)
    with pytest.raises(DataError, match="no ignore label"):
        SegmentationFolder(tmp_path / "images", tmp_path / "masks", num_classes=12,
                           ignore_index=None)[0]
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationFolder(tmp_path / "images", tmp_path / "masks", ignore_index="void")


def test_mask_without_image_is_named(tmp_path):
    write_png(tmp_path / "images" / "a.png", rgb())
    write_png(tmp_path / "masks" / "a.png", labels())
    write_png(tmp_path / "masks" / "orphan.png", labels())
    with pytest.raises(DataError, match="orphan.png") as error:
        SegmentationFolder(tmp_path / "images", tmp_path / "masks")
    assert "1 mask(s)" in str(error.value) and "no image" in str(error.value)


def test_two_images_with_one_name_are_an_error(tmp_path):
    write_png(tmp_path / "images" / "001.png", rgb())
    Image.fromarray(rgb()).save(tmp_path / "images" / "001.jpg")
    write_png(tmp_path / "masks" / "001.png", labels())
    with pytest.raises(DataError, match="001.jpg and 001.png"):
        SegmentationFolder(tmp_path / "images", tmp_path / "masks")


def test_hidden_and_appledouble_files_are_ignored(tmp_path):
    write_png(tmp_path / "images" / "a.png", rgb())
    write_png(tmp_path / "masks" / "a.png", labels())
    for folder in ("images", "masks"):
        (tmp_path / folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata")
        (tmp_path / folder / ".thumbnail.png").write_bytes(b"not an image")
    dataset = SegmentationFolder(tmp_path / "images", tmp_path / "masks")
    assert [p.name for p in dataset.images] == ["a.png"] and len(dataset) == 1
    assert dataset[0][0].shape == (3, 6, 8)


def test_synthetic_camvid_folder_reads_as_synthetic(tmp_path):
    from segtut.synthetic import write_synthetic_camvid

    root = write_synthetic_camvid(tmp_path / "synthetic", train_images=2, eval_images=1,
                                  size=(24, 32))
    dataset = CamVid(root, "train")
    assert dataset.is_synthetic and len(dataset) == 2
    assert describe_source(dataset).startswith("SYNTHETIC")
    image, mask = dataset[1]
    assert image.shape == (3, 24, 32) and int(mask.max()) <= IGNORE_INDEX


def test_download_does_not_import_data():
    # segtut.data imports segtut.download when a dataset must find CamVid; the other way round
    # would be an import cycle (DataError lives in segtut.errors).
    code = "import sys, segtut.download; assert 'segtut.data' not in sys.modules, 'cycle'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr[-500:]


# --- the synthetic fallback --------------------------------------------------------------------

def scenes(**kwargs) -> SyntheticScenes:
    with pytest.warns(SyntheticDataWarning, match="SYNTHETIC DATA"):
        return SyntheticScenes(**kwargs)


def test_synthetic_announces_itself():
    with pytest.warns(SyntheticDataWarning, match="NOT CamVid"):
        dataset = SyntheticScenes(length=5, size=(32, 48), seed=3)
    assert dataset.is_synthetic is True
    assert "SYNTHETIC" in repr(dataset) and "not CamVid" in repr(dataset)
    assert describe_source(dataset) == "SYNTHETIC scenes (offline fallback, NOT CamVid, 5 images)"
    assert describe_source(Subset(dataset, [0, 1])).startswith("2 of SYNTHETIC")


def test_synthetic_items_follow_the_contract():
    dataset = scenes(length=3, size=(37, 53))
    assert len(dataset) == 3 and len(list(dataset)) == 3
    image, mask = dataset[2]
    assert isinstance(image, tv_tensors.Image) and isinstance(mask, tv_tensors.Mask)
    assert image.dtype == torch.uint8 and image.shape == (3, 37, 53)
    assert mask.dtype == torch.int64 and mask.shape == (37, 53)
    assert 0 <= int(mask.min()) and int(mask.max()) <= IGNORE_INDEX
    with pytest.raises(IndexError):
        dataset[3]
    images, masks = next(iter(DataLoader(dataset, batch_size=2)))
    assert images.shape == (2, 3, 37, 53) and masks.shape == (2, 37, 53)


def test_synthetic_is_deterministic_per_index():
    first, again = scenes(length=4, size=(40, 60), seed=7), scenes(length=4, size=(40, 60), seed=7)
    for index in (0, 3):
        assert torch.equal(first[index][0], again[index][0])
        assert torch.equal(first[index][1], again[index][1])
    assert not torch.equal(first[0][1], first[1][1])  # different scenes per index
    other = scenes(length=4, size=(40, 60), seed=8)
    assert not torch.equal(first[1][0], other[0][0])  # seeds do not share shifted scenes
    assert not torch.equal(first[0][0], other[0][0])


def test_synthetic_scenes_look_like_streets_and_are_learnable():
    dataset = scenes(length=6, size=(90, 120), seed=0)
    palette = torch.tensor(PALETTE[:NUM_CLASSES], dtype=torch.float32)  # (11, 3)
    counts = torch.zeros(IGNORE_INDEX + 1, dtype=torch.int64)
    correct = total = 0
    for image, mask in dataset:
        counts += torch.bincount(mask.flatten(), minlength=IGNORE_INDEX + 1)
        assert (mask[0] == 0).float().mean() > 0.3  # mostly sky along the top row
        assert (mask[-1, 40:80] == 3).float().mean() > 0.5  # road at the bottom centre
        pixels = image.permute(1, 2, 0).reshape(-1, 3).float()  # (H*W, 3)
        nearest = torch.cdist(pixels, palette).argmin(1)  # the closest class colour
        valid = mask.flatten() != IGNORE_INDEX
        correct += int((nearest[valid] == mask.flatten()[valid]).sum())
        total += int(valid.sum())
    fractions = counts.float() / counts.sum()
    for name in ("sky", "building", "road", "pavement", "car", "pole"):
        assert fractions[CLASS_NAMES.index(name)] > 0.002, name
    assert 0.001 < fractions[IGNORE_INDEX] < 0.1  # a little void, at object borders
    assert correct / total > 0.8  # colour says a lot about the class: a model can learn it


def test_synthetic_transform_is_joint():
    calls = []

    def transform(image, mask):
        calls.append((type(image), type(mask)))
        return image.float() / 255, mask

    image, mask = scenes(length=1, size=(16, 16), transform=transform)[0]
    assert calls == [(tv_tensors.Image, tv_tensors.Mask)]
    assert image.dtype == torch.float32 and mask.shape == (16, 16)
