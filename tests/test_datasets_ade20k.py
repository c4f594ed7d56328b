"""ADE20K SceneParse150 on small files written in the release's layout."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from segtut.datasets.ade20k import (ANNOTATION_TO_CLASS, CLASS_NAMES, NUM_CLASSES, PALETTE, URL,
                                    ADE20K, ade20k_root)
from segtut.errors import DataError


def write_ade(data_dir, names=("ADE_train_00000002", "ADE_train_00000001"), split="training"):
    root = data_dir / "ADEChallengeData2016"
    for kind in ("images", "annotations"):
        for folder in ("training", "validation"):
            (root / kind / folder).mkdir(parents=True, exist_ok=True)
    annotation = np.zeros((6, 10), np.uint8)  # 0: "other"
    annotation[:3] = 3  # sky
    annotation[3:, :5] = 1  # wall
    annotation[3:, 5:] = 150  # flag
    for name in names:
        Image.new("L", (10, 6), 128).save(root / "images" / split / f"{name}.jpg")  # greyscale
        Image.fromarray(annotation).save(root / "annotations" / split / f"{name}.png")
    return root


def test_class_table():
    assert len(CLASS_NAMES) == NUM_CLASSES == len(PALETTE) == 150
    assert CLASS_NAMES[:5] == ("wall", "building", "sky", "floor", "tree")
    assert CLASS_NAMES[7] == "bed" and CLASS_NAMES[-1] == "flag"
    assert PALETTE[0] == (120, 120, 120) and PALETTE[-1] == (92, 0, 255)
    assert ANNOTATION_TO_CLASS.dtype == np.uint8
    assert ANNOTATION_TO_CLASS[0] == 255 and ANNOTATION_TO_CLASS[1] == 0
    assert ANNOTATION_TO_CLASS[150] == 149 and ANNOTATION_TO_CLASS[151] == 255


def test_layout_contract_and_mapping(tmp_path):
    root = write_ade(tmp_path)
    assert ade20k_root(tmp_path) == root
    train = ADE20K(root, "train", cache=True)
    assert [p.name for p in train.images] == ["ADE_train_00000001.jpg", "ADE_train_00000002.jpg"]
    assert train.num_classes == 150 and train.ignore_index == 255
    assert train.class_names == CLASS_NAMES and train.palette == PALETTE
    image, mask = train[0]
    assert isinstance(image, tv_tensors.Image) and image.shape == (3, 6, 10)
    assert image.dtype == torch.uint8  # a greyscale photo comes out RGB
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
    assert mask[0, 0] == CLASS_NAMES.index("sky") and mask[4, 0] == 0  # wall
    assert mask[4, 9] == 149  # flag
    assert train.load(0) is train.load(0)
    assert len(ADE20K(root, "train", limit=1)) == 1
    assert len(ADE20K(root, "train", transform=lambda i, m: (i, m))[1]) == 2


def test_other_becomes_ignore(tmp_path):
    root = write_ade(tmp_path)
    annotation = np.zeros((6, 10), np.uint8)
    annotation[0, 0] = 5
    Image.fromarray(annotation).save(root / "annotations" / "training" / "ADE_train_00000001.png")
    mask = ADE20K(root)[0][1]
    assert mask[0, 0] == 4 and (mask.flatten()[1:] == 255).all()


def test_bad_files_are_named(tmp_path):
    root = write_ade(tmp_path)
    (root / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    with pytest.raises(DataError, match="ADE_train_00000002.jpg"):
        ADE20K(root, "train")
    Image.fromarray(np.full((6, 10), 151, np.uint8)).save(
        root / "annotations" / "training" / "ADE_train_00000002.png")
    with pytest.raises(DataError, match=r"ADE_train_00000002\.png holds values \[151\]"):
        ADE20K(root, "train")[1]
    with pytest.raises(ValueError, match="train, val"):
        ADE20K(root, "training")


def test_missing_data_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError, match="ADEChallengeData2016") as error:
        ade20k_root(tmp_path)
    assert URL in str(error.value) and "images" in str(error.value)
    with pytest.raises(DataError, match=URL.replace(".", r"\.")):
        ADE20K(tmp_path / "ADEChallengeData2016", "val")
