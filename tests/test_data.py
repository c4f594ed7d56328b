"""segtut.data and segtut.synthetic: the real CamVid copy, bad files that must fail loudly, and
the synthetic fallback that must announce itself.

The real-data tests read CamVid from ``$SEGTUT_DATA_DIR/camvid``, falling back to the shared copy
next to the repository (``<repo>/../shared/data/camvid``); they never download.
"""

from __future__ import annotations

import os
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
    assert camvid_root(camvid_dir) == camvid_dir
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
