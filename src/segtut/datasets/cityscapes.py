"""Cityscapes: the official label table, the pix2pix image pairs, and the official release.

Two ways to get Cityscapes street scenes (Cordts et al., CVPR 2016):

* :class:`CityscapesPairs`, the pix2pix / Kaggle "cityscapes_data" copy: one 512x256 JPEG per
  scene, the photo on the LEFT half, the colour-coded label on the RIGHT half. Easy to get, but
  the labels are colours (JPEG-compressed, resized with blending), so they are turned back into
  ids by nearest colour (:func:`segtut.datasets.colours.colours_to_ids`).
* :class:`CityscapesOfficial`, the official release (``leftImg8bit`` photos, ``gtFine``
  ``*_labelIds.png`` id maps), after registration at https://www.cityscapes-dataset.com.

Both map the 34 Cityscapes label ids to one of two targets (:data:`TARGETS`): the 19 training
classes (``"train_ids"``, the benchmark) or the 7 categories (``"categories"``: flat,
construction, object, nature, sky, human, vehicle), with void and unused labels as the ignore
label 255. :data:`LABELS` is the table of cityscapesScripts ``helpers/labels.py``, copied value
for value.

Nothing here downloads Cityscapes: its licence forbids redistribution. The data directory holds
``cityscapes_pairs/{train,val}/N.jpg`` and/or ``cityscapes/{leftImg8bit,gtFine}/...``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision import tv_tensors

from segtut import config
from segtut.data import PairDataset, list_images, read_image, read_mask
from segtut.datasets.colours import ambiguous_share, colours_to_ids
from segtut.datasets.labels import IGNORE_INDEX
from segtut.errors import DataError
from segtut.profiles import PROFILES, DataFolder, synthetic_banner

__all__ = [
    "Label", "LABELS", "TARGETS", "TRAIN_CLASS_NAMES", "TRAIN_PALETTE", "CATEGORY_NAMES",
    "CATEGORY_PALETTE", "LABEL_ID_TO_TRAIN_ID", "LABEL_ID_TO_CATEGORY", "PAIR_COLOURS",
    "PAIR_LABEL_IDS", "PAIRS_FOLDER", "OFFICIAL_FOLDER", "PAIR_SPLITS", "OFFICIAL_SPLITS",
    "SYNTHETIC_PAIRS_MARKER", "CityscapesNotFound", "target_table", "CityscapesPairs",
    "CityscapesOfficial", "cityscapes_pairs_root", "cityscapes_root", "write_synthetic_pairs",
    "cityscapes_pairs_for_profile",
]


class Label(NamedTuple):
    """One row of the Cityscapes label table (cityscapesScripts ``helpers/labels.py``)."""

    name: str
    id: int  # the value in *_labelIds.png; -1: never in the id maps (license plate)
    train_id: int  # 0..18 for the 19 benchmark classes, 255 ignored
    category: str
    category_id: int  # 0 void, 1..7 the categories
    has_instances: bool
    ignore_in_eval: bool
    colour: tuple[int, int, int]


#: The official table, in its order (cityscapesScripts, helpers/labels.py).
LABELS = (
    Label("unlabeled", 0, 255, "void", 0, False, True, (0, 0, 0)),
    Label("ego vehicle", 1, 255, "void", 0, False, True, (0, 0, 0)),
    Label("rectification border", 2, 255, "void", 0, False, True, (0, 0, 0)),
    Label("out of roi", 3, 255, "void", 0, False, True, (0, 0, 0)),
    Label("static", 4, 255, "void", 0, False, True, (0, 0, 0)),
    Label("dynamic", 5, 255, "void", 0, False, True, (111, 74, 0)),
    Label("ground", 6, 255, "void", 0, False, True, (81, 0, 81)),
    Label("road", 7, 0, "flat", 1, False, False, (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", 1, False, False, (244, 35, 232)),
    Label("parking", 9, 255, "flat", 1, False, True, (250, 170, 160)),
    Label("rail track", 10, 255, "flat", 1, False, True, (230, 150, 140)),
    Label("building", 11, 2, "construction", 2, False, False, (70, 70, 70)),
    Label("wall", 12, 3, "construction", 2, False, False, (102, 102, 156)),
    Label("fence", 13, 4, "construction", 2, False, False, (190, 153, 153)),
    Label("guard rail", 14, 255, "construction", 2, False, True, (180, 165, 180)),
    Label("bridge", 15, 255, "construction", 2, False, True, (150, 100, 100)),
    Label("tunnel", 16, 255, "construction", 2, False, True, (150, 120, 90)),
    Label("pole", 17, 5, "object", 3, False, False, (153, 153, 153)),
    Label("polegroup", 18, 255, "object", 3, False, True, (153, 153, 153)),
    Label("traffic light", 19, 6, "object", 3, False, False, (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", 3, False, False, (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", 4, False, False, (107, 142, 35)),
    Label("terrain", 22, 9, "nature", 4, False, False, (152, 251, 152)),
    Label("sky", 23, 10, "sky", 5, False, False, (70, 130, 180)),
    Label("person", 24, 11, "human", 6, True, False, (220, 20, 60)),
    Label("rider", 25, 12, "human", 6, True, False, (255, 0, 0)),
    Label("car", 26, 13, "vehicle", 7, True, False, (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", 7, True, False, (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", 7, True, False, (0, 60, 100)),
    Label("caravan", 29, 255, "vehicle", 7, True, True, (0, 0, 90)),
    Label("trailer", 30, 255, "vehicle", 7, True, True, (0, 0, 110)),
    Label("train", 31, 16, "vehicle", 7, True, False, (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", 7, True, False, (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", 7, True, False, (119, 11, 32)),
    Label("license plate", -1, -1, "vehicle", 7, False, True, (0, 0, 142)),
)
_BY_NAME = {label.name: label for label in LABELS}

#: The two targets a loader can return: 7 categories, or the 19 benchmark classes.
TARGETS = ("categories", "train_ids")

#: The 19 benchmark classes, in trainId order, and their official colours.
TRAIN_CLASS_NAMES = tuple(label.name for label in sorted(
    (label for label in LABELS if 0 <= label.train_id < 255), key=lambda label: label.train_id))
TRAIN_PALETTE = tuple(_BY_NAME[name].colour for name in TRAIN_CLASS_NAMES)

#: The 7 categories (categoryId 1..7 become class ids 0..6; the void category is ignored).
CATEGORY_NAMES = ("flat", "construction", "object", "nature", "sky", "human", "vehicle")
#: One colour per category: the official colour of its most common class.
CATEGORY_PALETTE = tuple(_BY_NAME[name].colour for name in (
    "road", "building", "pole", "vegetation", "sky", "person", "car"))


def _lookup(value: Callable[[Label], int]) -> np.ndarray:
    """A uint8 ``(256,)`` table from label id to class id; ids not in the table give 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in LABELS:
        if label.id >= 0:
            table[label.id] = value(label)
    return table


#: uint8 ``(256,)``: label id -> trainId 0..18, or 255 (void, unused labels, unknown ids).
LABEL_ID_TO_TRAIN_ID = _lookup(lambda label: label.train_id if label.train_id < 255
                               else IGNORE_INDEX)
#: uint8 ``(256,)``: label id -> category 0..6, or 255 (the void category, unknown ids).
LABEL_ID_TO_CATEGORY = _lookup(lambda label: label.category_id - 1 if label.category_id > 0
                               else IGNORE_INDEX)


def _pair_colours() -> tuple[tuple[tuple[int, int, int], ...], tuple[int, ...]]:
    """The distinct colours of the label ids 0..33, each with the FIRST label id that uses it.

    Three colours are shared: black by the five void labels 0..4 (all void, so any choice gives
    the same target), (153, 153, 153) by pole (17) and polegroup (18), and (0, 0, 142) by car
    and license plate (-1, never in id maps, left out). The first label in the table wins: a
    grey pixel is pole (trainId 5), not polegroup (ignored in the benchmark), which is what a
    colour picture can only mean anyway; black is "unlabeled" (0).
    """
    colours: dict[tuple[int, int, int], int] = {}
    for label in LABELS:
        if label.id >= 0 and label.colour not in colours:
            colours[label.colour] = label.id
    return tuple(colours), tuple(colours.values())


#: The palette that colour labels are matched against, and the label id of each colour.
PAIR_COLOURS, PAIR_LABEL_IDS = _pair_colours()

PAIRS_FOLDER = "cityscapes_pairs"
OFFICIAL_FOLDER = "cityscapes"
PAIR_SPLITS = ("train", "val")
OFFICIAL_SPLITS = ("train", "val", "test")
#: A file of this name in a pairs folder marks it as SYNTHETIC (:func:`write_synthetic_pairs`).
SYNTHETIC_PAIRS_MARKER = "SYNTHETIC_NOT_CITYSCAPES.txt"

_PIX2PIX_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/"
_OFFICIAL_URL = "https://www.cityscapes-dataset.com"
_CITATION = ("Cityscapes: Cordts et al., 'The Cityscapes Dataset for Semantic Urban Scene "
             "Understanding', CVPR 2016; non-commercial use, no redistribution")


class CityscapesNotFound(DataError):
    """Cityscapes (pairs or official) is not in the data directory; nothing downloads it.

    The smoke profile catches exactly this error to fall back to SYNTHETIC pairs
    (:func:`cityscapes_pairs_for_profile`); every other :class:`DataError` stops every profile.
    """


def target_table(target: str) -> tuple[np.ndarray, tuple[str, ...], tuple]:
    """``(label id -> class id table, class names, palette)`` for one of :data:`TARGETS`.

    Raises:
        ValueError: ``target`` is not one of :data:`TARGETS`.
    """
    if target == "categories":
        return LABEL_ID_TO_CATEGORY, CATEGORY_NAMES, CATEGORY_PALETTE
    if target == "train_ids":
        return LABEL_ID_TO_TRAIN_ID, TRAIN_CLASS_NAMES, TRAIN_PALETTE
    raise ValueError(f"Unknown Cityscapes target {target!r}; choose one of {', '.join(TARGETS)} "
                     "(7 categories, or the 19 benchmark classes).")


def _numeric_key(path: Path) -> tuple:
    """Sort ``2.jpg`` before ``10.jpg``: numeric stems by value, any other name after them."""
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.name)


def _pairs_help(where: Path) -> str:
    return (f"Download the pix2pix copy (cityscapes.tar.gz from {_PIX2PIX_URL}) or the Kaggle "
            "data set 'cityscapes_data' (by dgx), and place its train/ and val/ folders of "
            f"N.jpg pairs under {where} (so {where / 'train' / '1.jpg'} exists). segtut does not "
            f"download Cityscapes ({_CITATION}).")


class _CityscapesBase(PairDataset):
    """The shared part of both loaders: target tables, limit, cache, transform."""

    def _set_target(self, target: str) -> None:
        self.target = target
        self._table, self.class_names, self.palette = target_table(target)
        self.num_classes = len(self.class_names)
        self.ignore_index = IGNORE_INDEX

    def _finish(self, limit: Optional[int], cache: bool) -> None:
        if limit is not None:
            self.images = self.images[:limit]
        self._cache = {} if cache else None


class CityscapesPairs(_CityscapesBase):
    """Cityscapes as pix2pix image pairs: ``root/<split>/N.jpg``, photo left, colour label right.

    Each file is a 512x256 (W x H) JPEG: the left 256x256 half is the photo, the right half the
    label drawn in the official colours. The label colours are not exact (JPEG, blended
    resizing): every pixel gets the label id of the nearest of the 34 label colours
    (:data:`PAIR_COLOURS`; shared colours resolve to the first label of the table, so black is
    "unlabeled" and grey is "pole"), then its class for the chosen target; void labels become
    255. :meth:`ambiguous_share` says how many label pixels were far from every colour.

    Args:
        root: the ``cityscapes_pairs`` folder ITSELF (holding ``train/`` and ``val/``).
        split: ``"train"`` or ``"val"``.
        target: ``"categories"`` (7 classes, default) or ``"train_ids"`` (19 classes).
        transform: joint ``transform(image, mask)``, see :mod:`segtut.transforms`.
        limit: keep only the first ``limit`` files (in numeric order).
        cache: keep decoded pairs in memory.
        max_distance: None (default): every label pixel gets its nearest colour's class. A
            number: label pixels farther than this (RGB units) from every colour are ignored
            (255) instead, e.g. 30 to drop the blended edges.

    Files are sorted by their number (``1.jpg, 7.jpg, 13.jpg, ...``), not as text. Items are
    ``(image, mask)``: uint8 ``(3, 256, 256)`` and int64 ``(256, 256)`` before the transform.
    ``is_synthetic`` is True for a folder written by :func:`write_synthetic_pairs`.
    """

    def __init__(self, root: str | Path, split: str = "train", target: str = "categories",
                 transform: Optional[Callable] = None, limit: Optional[int] = None,
                 cache: bool = False, max_distance: Optional[float] = None):
        if split not in PAIR_SPLITS:
            raise ValueError(f"Unknown Cityscapes pairs split {split!r}; choose one of "
                             f"{', '.join(PAIR_SPLITS)} (the pix2pix copy has no test split).")
        self._set_target(target)
        self.root, self.split = Path(root), split
        self.transform, self.max_distance = transform, max_distance
        folder = self.root / split
        if not folder.is_dir():
            raise CityscapesNotFound(f"Folder not found: {folder}. " + _pairs_help(self.root))
        self.images = sorted(list_images(folder), key=_numeric_key)
        if not self.images:
            raise DataError(f"No images in {folder}. " + _pairs_help(self.root))
        self.is_synthetic = (self.root / SYNTHETIC_PAIRS_MARKER).exists()
        self._finish(limit, cache)

    def halves(self, index: int) -> tuple[tv_tensors.Image, np.ndarray]:
        """The photo, uint8 ``(3, H, W)``, and the colour label, uint8 ``(H, W, 3)``, of a file.

        Raises:
            DataError: the file is not a pair (its width is not twice its height).
        """
        path = self.images[index]
        both = read_image(path)  # (3, H, 2H)
        height, width = both.shape[-2:]
        if width != 2 * height:
            raise DataError(f"{path} is {width}x{height} (W x H), not a photo+label pair (width "
                            "= 2 x height, photo left, colour label right). Remove it from the "
                            "folder, or replace it with the original pix2pix file.")
        photo = tv_tensors.Image(both[:, :, :height].clone())
        label = both[:, :, height:].permute(1, 2, 0).numpy()  # (H, W, 3) uint8
        return photo, label

    def label_ids(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The Cityscapes label id (0..33) of every label pixel, and its colour distance.

        Returns:
            ``(ids, distance)``: int64 ``(H, W)`` label ids and float32 ``(H, W)`` RGB distances
            to the nearest label colour (see :func:`segtut.datasets.colours.colours_to_ids`).
        """
        _, label = self.halves(index)
        return colours_to_ids(label, PAIR_COLOURS, PAIR_LABEL_IDS)

    def ambiguous_share(self, index: int, threshold: float = 30.0) -> float:
        """Share (0..1) of a file's label pixels farther than ``threshold`` RGB units from every
        label colour: the pixels whose class is a guess (about 10% at 30 on the real data)."""
        return ambiguous_share(self.label_ids(index)[1], threshold)

    def _read(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        photo, label = self.halves(index)
        ids, distance = colours_to_ids(label, PAIR_COLOURS, PAIR_LABEL_IDS)
        mask = self._table[ids]  # (H, W) uint8 class ids or 255
        if self.max_distance is not None:
            mask[distance > self.max_distance] = IGNORE_INDEX
        return photo, tv_tensors.Mask(torch.from_numpy(mask))


def _official_help(root: Path) -> str:
    return (f"Cityscapes needs a (free, non-commercial) registration at {_OFFICIAL_URL}; "
            "download leftImg8bit_trainvaltest.zip (photos, 11 GB) and gtFine_trainvaltest.zip "
            f"(fine labels, 241 MB) and unzip both into {root}, giving "
            f"{root / 'leftImg8bit'}/<split>/<city>/<city>_xxxxxx_yyyyyy_leftImg8bit.png and "
            f"{root / 'gtFine'}/<split>/<city>/<city>_xxxxxx_yyyyyy_gtFine_labelIds.png. "
            "segtut does not download Cityscapes. Without registration, use the pix2pix pairs "
            "(CityscapesPairs).")


def cityscapes_root(data_dir: str | Path | None = None) -> Path:
    """The official Cityscapes folder ``<data_dir>/cityscapes``, checked; never downloads.

    Raises:
        CityscapesNotFound: the folder, or its ``leftImg8bit/`` or ``gtFine/``, is missing.
    """
    base = Path(data_dir).expanduser() if data_dir not in (None, "") else config.data_dir()
    root = base / OFFICIAL_FOLDER
    for folder in (root / "leftImg8bit", root / "gtFine"):
        if not folder.is_dir():
            raise CityscapesNotFound(f"Folder not found: {folder}. " + _official_help(root))
    return root


class CityscapesOfficial(_CityscapesBase):
    """The official Cityscapes release: ``leftImg8bit`` photos and ``gtFine`` label id maps.

    ``root/leftImg8bit/<split>/<city>/<city>_xxxxxx_yyyyyy_leftImg8bit.png`` pairs with
    ``root/gtFine/<split>/<city>/<city>_xxxxxx_yyyyyy_gtFine_labelIds.png`` (values 0..33); the
    label ids are mapped to the chosen target with :data:`LABEL_ID_TO_CATEGORY` or
    :data:`LABEL_ID_TO_TRAIN_ID` (void and unused labels: 255). Every photo needs its label
    file, checked when the dataset is built.

    Args:
        root: the ``cityscapes`` folder ITSELF (holding ``leftImg8bit/`` and ``gtFine/``);
            None: ``<data_dir>/cityscapes`` (:func:`cityscapes_root`).
        split: ``"train"`` (2975), ``"val"`` (500) or ``"test"`` (1525; its public labels are
            empty, so every pixel is ignored).
        target: ``"categories"`` (7 classes, default) or ``"train_ids"`` (19 classes).
        transform, limit, cache: as for :class:`CityscapesPairs`.

    Items are ``(image, mask)``: uint8 ``(3, 1024, 2048)`` and int64 ``(1024, 2048)``.
    """

    def __init__(self, root: str | Path | None = None, split: str = "train",
                 target: str = "categories", transform: Optional[Callable] = None,
                 limit: Optional[int] = None, cache: bool = False):
        if split not in OFFICIAL_SPLITS:
            raise ValueError(f"Unknown Cityscapes split {split!r}; choose one of "
                             f"{', '.join(OFFICIAL_SPLITS)}.")
        self._set_target(target)
        self.root = Path(root) if root is not None else cityscapes_root()
        self.split, self.transform = split, transform
        photos, labels = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        for folder in (photos, labels):
            if not folder.is_dir():
                raise CityscapesNotFound(f"Folder not found: {folder}. "
                                         + _official_help(self.root))
        self.images = sorted(photos.glob("*/*_leftImg8bit.png"))
        if not self.images:
            raise DataError(f"No *_leftImg8bit.png photos in the city folders of {photos}. "
                            + _official_help(self.root))
        self.masks = [labels / p.parent.name / p.name.replace("_leftImg8bit.png",
                                                                "_gtFine_labelIds.png")
                      for p in self.images]
        missing = [m for m in self.masks if not m.is_file()]
        if missing:
            raise DataError(f"{len(missing)} photo(s) in {photos} have no label file, e.g. "
                            f"{missing[0]} is missing. Unzip gtFine_trainvaltest.zip into "
                            f"{self.root} (it holds the *_gtFine_labelIds.png files), or remove "
                            "those photos.")
        self._finish(limit, cache)
        self.masks = self.masks[:len(self.images)]

    def _read(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image = read_image(self.images[index])
        label_ids = read_mask(self.masks[index], num_classes=len(LABEL_ID_TO_TRAIN_ID),
                              ignore_index=None)  # (H, W) int64 label ids
        if image.shape[-2:] != label_ids.shape[-2:]:
            raise DataError(f"Photo {self.images[index]} is {tuple(image.shape[-2:])} (H, W) but "
                            f"its labels {self.masks[index]} are {tuple(label_ids.shape[-2:])}. "
                            "Replace both with the original files from the Cityscapes zips.")
        mask = self._table[label_ids.numpy()]  # (H, W) uint8
        return image, tv_tensors.Mask(torch.from_numpy(mask))


def cityscapes_pairs_root(data_dir: str | Path | None = None) -> Path:
    """The pairs folder ``<data_dir>/cityscapes_pairs``, checked; never downloads.

    Raises:
        CityscapesNotFound: the folder or its ``train/`` or ``val/`` is missing.
        DataError: the data directory is a file, or ``train/`` or ``val/`` holds no images.
    """
    base = Path(data_dir).expanduser() if data_dir not in (None, "") else config.data_dir()
    if base.is_file():
        raise DataError(f"The data directory {base} is a file; it must be the folder that "
                        f"holds {PAIRS_FOLDER}/. Set SEGTUT_DATA_DIR to that folder.")
    root = base / PAIRS_FOLDER
    for split in PAIR_SPLITS:
        if not (root / split).is_dir():
            raise CityscapesNotFound(f"Cityscapes pairs not found: {root / split} is missing. "
                                     + _pairs_help(root))
        if not list_images(root / split):
            raise DataError(f"{root / split} holds no images. " + _pairs_help(root))
    return root


# The synthetic scenes: label ids drawn with ImageDraw, then coloured twice (label colours for
# the right half, rough photo colours for the left half).
_PHOTO_COLOURS = {  # label id -> a plausible photo colour
    0: (20, 20, 20), 7: (90, 88, 92), 8: (150, 140, 135), 11: (140, 110, 90),
    17: (60, 60, 60), 21: (60, 100, 40), 23: (170, 200, 230), 26: (40, 50, 90),
}


def _draw_pair(rng: np.random.Generator, size: int) -> np.ndarray:
    """One SYNTHETIC pair, uint8 ``(size, 2 * size, 3)``: photo left, colour label right."""
    ids = Image.new("L", (size, size), 23)  # sky
    draw = ImageDraw.Draw(ids)
    horizon = int(size * rng.uniform(0.4, 0.55))
    x = 0
    while x < size:  # a row of buildings of random widths and heights
        width = int(rng.integers(size // 8, size // 3))
        top = int(rng.integers(size // 10, horizon - size // 10))
        draw.rectangle([x, top, x + width, horizon], fill=11)
        x += width
    for _ in range(int(rng.integers(1, 4))):  # trees in front of the buildings
        cx, cy = int(rng.integers(0, size)), int(rng.integers(horizon - size // 4, horizon))
        r = int(rng.integers(size // 16, size // 6))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=21)
    draw.rectangle([0, horizon, size, size], fill=8)  # sidewalk, then the road over it
    draw.polygon([(size * 0.45, horizon), (size * 0.55, horizon), (size, size * 0.9),
                  (size, size), (0, size), (0, size * 0.9)], fill=7)
    pole = int(rng.integers(size // 10, size - size // 10))
    draw.rectangle([pole, horizon - size // 3, pole + max(2, size // 64), horizon + size // 12],
                   fill=17)
    for _ in range(int(rng.integers(1, 3))):  # cars on the road
        cx = int(rng.integers(size // 8, size - size // 8))
        cy = int(rng.integers(horizon + size // 10, size - size // 8))
        w, h = int(rng.integers(size // 8, size // 4)), int(rng.integers(size // 14, size // 8))
        draw.rectangle([cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2], fill=26)
    draw.rectangle([0, size - size // 16, size, size], fill=0)  # ego vehicle edge: void
    ids = np.asarray(ids)
    label_colours = np.zeros((256, 3), np.uint8)
    photo_colours = np.zeros((256, 3), np.float32)
    for label in LABELS:
        if label.id >= 0:
            label_colours[label.id] = label.colour
    for label_id, colour in _PHOTO_COLOURS.items():
        photo_colours[label_id] = colour
    rows = np.linspace(0.85, 1.15, size, dtype=np.float32)[:, None, None]  # light falls off
    photo = photo_colours[ids] * rows + rng.normal(0.0, 12.0, (size, size, 3))
    photo = np.clip(photo, 0, 255).astype(np.uint8)
    return np.concatenate([photo, label_colours[ids]], axis=1)


def write_synthetic_pairs(folder: str | Path, train_images: int = 8, eval_images: int = 4,
                          size: int = 256, seed: int = 0) -> Path:
    """Write SYNTHETIC street scenes as pix2pix pairs: ``folder/cityscapes_pairs/{train,val}``.

    Each file is a ``2*size x size`` JPEG (photo left, Cityscapes colour label right: sky,
    building, vegetation, sidewalk, road, pole, car and void), so the colour noise of JPEG is
    real. Files are numbered like the real subset (train 1, 7, 13, ...; val 1, 6, 11, ...), and
    a :data:`SYNTHETIC_PAIRS_MARKER` file says they are not Cityscapes.

    Returns:
        the written ``cityscapes_pairs`` folder.
    """
    root = Path(folder) / PAIRS_FOLDER
    rng = np.random.default_rng(seed)
    for split, count, stride in (("train", train_images, 6), ("val", eval_images, 5)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(_draw_pair(rng, size)).save(root / split / f"{1 + stride * i}.jpg",
                                                         quality=90)
    (root / SYNTHETIC_PAIRS_MARKER).write_text(
        "SYNTHETIC street scenes drawn by segtut.datasets.cityscapes for offline smoke runs. "
        "NOT Cityscapes: any number measured on them means nothing.\n")
    return root


def cityscapes_pairs_for_profile(profile: str, data_dir: str | Path | None = None, *,
                                 train_images: Optional[int] = None,
                                 eval_images: Optional[int] = None,
                                 scratch: str | Path | None = None,
                                 log: Callable[[str], None] = print) -> DataFolder:
    """The Cityscapes pairs folder a chapter reads in this profile: real, or the smoke fallback.

    * ``cpu`` and ``gpu``: real pairs in ``<data_dir>/cityscapes_pairs``; missing, they are a
      :class:`CityscapesNotFound` error saying where to get them (nothing downloads Cityscapes).
    * ``smoke``: the real pairs when on disk; when missing, SYNTHETIC pairs are written to
      ``scratch`` (a new temporary folder by default) and a loud banner says so. Any other data
      problem (an empty split folder, a data directory that is a file) is an error in every
      profile.

    Args:
        profile: ``"smoke"``, ``"cpu"`` or ``"gpu"`` (see :func:`segtut.profiles.resolve_profile`).
        data_dir: the folder that HOLDS ``cityscapes_pairs/`` (None:
            :func:`segtut.config.data_dir`).
        train_images, eval_images: the profile's limits: used to describe real data, and as the
            number of SYNTHETIC pairs (default 8 training and 4 val).
        scratch: where to write SYNTHETIC pairs (None: a new temporary folder).
        log: where the banner goes (``print`` in notebooks).

    Returns:
        :class:`segtut.profiles.DataFolder` ``(root, source, synthetic)``: ``root`` is the
        ``cityscapes_pairs`` folder, for :class:`CityscapesPairs`.
    """
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {', '.join(PROFILES)} "
                         "(resolve 'auto' with resolve_profile first).")
    try:
        root = cityscapes_pairs_root(data_dir)
    except CityscapesNotFound:
        if profile != "smoke":
            raise
        scratch = Path(scratch) if scratch else Path(tempfile.mkdtemp(prefix="segtut_synthetic_"))
        train, evaluation = train_images or 8, eval_images or 4
        root = write_synthetic_pairs(scratch, train, evaluation)
        where = Path(data_dir).expanduser() if data_dir not in (None, "") else config.data_dir()
        synthetic_banner(log, missing=f"Cityscapes pairs are not in {where / PAIRS_FOLDER}, "
                         "and segtut never downloads Cityscapes.", what="pairs", root=root,
                         hint=f"For real data, get cityscapes.tar.gz from {_PIX2PIX_URL} (or "
                         f"Kaggle 'cityscapes_data') and put train/ and val/ in "
                         f"{where / PAIRS_FOLDER}.")
        source = (f"SYNTHETIC pairs (offline fallback, NOT Cityscapes: train {train}, val "
                  f"{evaluation} images, 256x256)")
        return DataFolder(root, source, True)
    counts = {}
    for split in PAIR_SPLITS:
        limit = train_images if split == "train" else eval_images
        found = len(list_images(root / split))
        counts[split] = found if limit is None else min(limit, found)
    source = (f"real Cityscapes pairs (pix2pix) from {root} (train {counts['train']}, val "
              f"{counts['val']} images)")
    return DataFolder(root, source, False)
