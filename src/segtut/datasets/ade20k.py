"""ADE20K as the SceneParsing benchmark (SceneParse150): 150 classes of indoor and outdoor scenes.

The MIT release ``ADEChallengeData2016.zip`` unzips to::

    ADEChallengeData2016/
        images/training/ADE_train_00000001.jpg ...      (20 210 photos)
        images/validation/ADE_val_00000001.jpg ...      (2 000)
        annotations/training/ADE_train_00000001.png ... (one id map per photo)
        annotations/validation/...

Annotation value 0 is "other" (anything outside the 150 classes) and becomes the ignore label
255; values 1..150 become class ids 0..149, in the order of the benchmark's
``objectInfo150.csv`` (most frequent first: wall, building, sky, floor, tree, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torchvision import tv_tensors

from segtut import config
from segtut.data import PairDataset, pair_by_stem, read_image, read_mask
from segtut.datasets.labels import IGNORE_INDEX
from segtut.errors import DataError

__all__ = ["CLASS_NAMES", "NUM_CLASSES", "PALETTE", "FOLDER", "SPLITS", "URL",
           "ANNOTATION_TO_CLASS", "ade20k_root", "ADE20K"]

#: The 150 classes, class id 0..149 = annotation value 1..150 (objectInfo150.csv, first name of
#: each synonym list, as mmsegmentation names them).
CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
NUM_CLASSES = len(CLASS_NAMES)

#: One colour per class id (the palette mmsegmentation and most ADE20K code draw with).
PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3),
    (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7),
    (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51),
    (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3),
    (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71),
    (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255),
    (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15),
    (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0),
    (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112),
    (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173),
    (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255),
    (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20), (255, 184, 184),
    (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255),
    (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0),
    (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170),
    (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255),
    (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255),
    (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235),
    (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0),
    (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255),
    (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255),
    (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0),
    (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
)

FOLDER = "ADEChallengeData2016"
#: segtut's split names and the release's folder names.
SPLITS = {"train": "training", "val": "validation"}
URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"

#: uint8 ``(256,)``: annotation value -> class id; 0 ("other") and values above 150 -> 255.
ANNOTATION_TO_CLASS = np.full(256, IGNORE_INDEX, dtype=np.uint8)
ANNOTATION_TO_CLASS[1:NUM_CLASSES + 1] = np.arange(NUM_CLASSES, dtype=np.uint8)


def _help(root: Path) -> str:
    return (f"Download {URL} (923 MB; MIT SceneParsing benchmark, cite Zhou et al., CVPR 2017) "
            f"and unzip it into {root.parent}, giving {root / 'images' / 'training'} (*.jpg) and "
            f"{root / 'annotations' / 'training'} (*.png), and the same for validation.")


def ade20k_root(data_dir: str | Path | None = None) -> Path:
    """The ``ADEChallengeData2016`` folder in the data directory, checked; never downloads.

    Args:
        data_dir: the folder that HOLDS ``ADEChallengeData2016/`` (None:
            :func:`segtut.config.data_dir`).

    Raises:
        DataError: the folder or one of its ``images/`` or ``annotations/`` split folders is
            missing; the message says where to get the data.
    """
    base = Path(data_dir).expanduser() if data_dir not in (None, "") else config.data_dir()
    root = base / FOLDER
    for kind in ("images", "annotations"):
        for folder in SPLITS.values():
            if not (root / kind / folder).is_dir():
                raise DataError(f"ADE20K not found: {root / kind / folder} is missing. "
                                + _help(root))
    return root


class ADE20K(PairDataset):
    """ADE20K SceneParse150: ``images/<folder>/*.jpg`` with ``annotations/<folder>/*.png``.

    Photos and annotations are matched by file name (``ADE_train_00000001``); a photo without
    its annotation, or an annotation without its photo, is an error when the dataset is built.

    Args:
        root: the ``ADEChallengeData2016`` folder ITSELF; None: found in the data directory
            (:func:`ade20k_root`).
        split: ``"train"`` (folder ``training``, 20 210 images) or ``"val"`` (``validation``,
            2 000).
        transform: joint ``transform(image, mask)``, see :mod:`segtut.transforms`.
        limit: keep only the first ``limit`` images (sorted by name).
        cache: keep decoded pairs in memory.

    Items are ``(image, mask)``: uint8 ``(3, H, W)`` and int64 ``(H, W)`` holding class ids
    0..149 or 255 ("other"); sizes vary from photo to photo.
    """

    def __init__(self, root: str | Path | None = None, split: str = "train",
                 transform: Optional[Callable] = None, limit: Optional[int] = None,
                 cache: bool = False):
        if split not in SPLITS:
            raise ValueError(f"Unknown ADE20K split {split!r}; choose one of "
                             f"{', '.join(SPLITS)}.")
        self.root = Path(root) if root is not None else ade20k_root()
        self.split, self.transform = split, transform
        self.num_classes, self.ignore_index = NUM_CLASSES, IGNORE_INDEX
        self.class_names, self.palette = CLASS_NAMES, PALETTE
        images_dir = self.root / "images" / SPLITS[split]
        masks_dir = self.root / "annotations" / SPLITS[split]
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise DataError(f"Folder not found: {folder}. " + _help(self.root))
        self.images, self.masks = pair_by_stem(
            images_dir, masks_dir, mask_kind="annotation",
            missing_fix="Unzip the release again, or remove those images.",
            orphan_fix="Unzip the release again, or remove those annotations.",
            empty_fix=_help(self.root))
        if limit is not None:
            self.images, self.masks = self.images[:limit], self.masks[:limit]
        self._cache = {} if cache else None

    def _read(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """One pair without the transform: uint8 ``(3, H, W)`` and uint8 ``(H, W)`` class ids."""
        image = read_image(self.images[index])
        # Values 0..150 are annotation values ("other" + 150 classes); read_mask checks them.
        annotation = read_mask(self.masks[index], num_classes=NUM_CLASSES + 1, ignore_index=None)
        if image.shape[-2:] != annotation.shape[-2:]:
            raise DataError(f"Image {self.images[index]} is {tuple(image.shape[-2:])} (H, W) but "
                            f"its annotation {self.masks[index]} is "
                            f"{tuple(annotation.shape[-2:])}. Replace both with the original "
                            "files of the release.")
        mask = ANNOTATION_TO_CLASS[annotation.numpy()]  # (H, W) uint8
        return image, tv_tensors.Mask(torch.from_numpy(mask))
