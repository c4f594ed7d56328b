"""The Oxford-IIIT Pet data set (Parkhi et al., CVPR 2012) as pet / background segmentation.

torchvision finds and downloads it (:class:`torchvision.datasets.OxfordIIITPet`, into
``<data_dir>/oxford-iiit-pet``); this module turns its trimaps into class ids and returns pairs
by segtut's contract. A trimap pixel is 1 (pet), 2 (background) or 3 (the border between them,
where the annotators were unsure): background becomes 0, pet 1, and the border either the
ignore label 255 (``border="ignore"``, the usual choice: it neither rewards nor punishes the
model for the unsure band) or a third class 2 (``border="class"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torchvision import tv_tensors

from segtut import config
from segtut.data import PairDataset, read_image, read_mask
from segtut.datasets.labels import IGNORE_INDEX
from segtut.errors import DataError

__all__ = ["FOLDER", "SPLITS", "BORDERS", "URL", "OxfordPet"]

FOLDER = "oxford-iiit-pet"  # torchvision's folder name inside the data directory
SPLITS = ("trainval", "test")
#: What the trimap's border band (value 3) becomes: ignored (255), or class 2.
BORDERS = ("ignore", "class")
URL = "https://www.robots.ox.ac.uk/~vgg/data/pets/"

_PET, _BACKGROUND, _BORDER = 1, 2, 3  # trimap values


def _help(root: Path) -> str:
    return (f"Let torchvision download it (about 800 MB) with network access (unset "
            f"SEGTUT_OFFLINE / HF_HUB_OFFLINE and pass download=True), or fetch images.tar.gz "
            f"and annotations.tar.gz from {URL} yourself and unpack both into {root}, giving "
            f"{root / 'images'} (*.jpg) and {root / 'annotations'} (trimaps/*.png, "
            "trainval.txt, test.txt).")


class OxfordPet(PairDataset):
    """Oxford-IIIT Pet trimaps as masks: background 0, pet 1, border ignored or class 2.

    Args:
        data_dir: the folder that HOLDS ``oxford-iiit-pet/`` (None:
            :func:`segtut.config.data_dir`).
        split: ``"trainval"`` (3 680 images) or ``"test"`` (3 669).
        border: ``"ignore"`` (default): border pixels are 255; ``"class"``: they are class 2.
        transform: joint ``transform(image, mask)``, see :mod:`segtut.transforms`.
        limit: keep only the first ``limit`` images (in the order of the split file).
        cache: keep decoded pairs in memory.
        download: let torchvision download the data when it is missing; never done while
            :func:`segtut.config.is_offline` (the error then says what to do).

    Items are ``(image, mask)``: uint8 ``(3, H, W)`` and int64 ``(H, W)``; sizes vary.

    Raises:
        ValueError: an unknown ``split`` or ``border``.
        DataError: the data is missing and may not (or could not) be downloaded, or a trimap
            holds values other than 1, 2, 3.
    """

    def __init__(self, data_dir: str | Path | None = None, split: str = "trainval",
                 border: str = "ignore", transform: Optional[Callable] = None,
                 limit: Optional[int] = None, cache: bool = False, download: bool = True):
        if split not in SPLITS:
            raise ValueError(f"Unknown Oxford-IIIT Pet split {split!r}; choose one of "
                             f"{', '.join(SPLITS)}.")
        if border not in BORDERS:
            raise ValueError(f"Unknown border choice {border!r}; choose one of "
                             f"{', '.join(BORDERS)} (ignore: border pixels are {IGNORE_INDEX}; "
                             "class: they are class 2).")
        base = Path(data_dir).expanduser() if data_dir not in (None, "") else config.data_dir()
        self.root, self.split, self.border, self.transform = base / FOLDER, split, border, transform
        self.num_classes = 2 if border == "ignore" else 3
        self.ignore_index = IGNORE_INDEX
        self.class_names = ("background", "pet") + (("border",) if border == "class" else ())
        self.palette = ((0, 0, 0), (255, 160, 0), (255, 255, 255))[:self.num_classes]
        # Trimap value -> class id; 0 and 4..255 stay 255 but are refused in load().
        self._table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        self._table[_BACKGROUND], self._table[_PET] = 0, 1
        self._table[_BORDER] = 2 if border == "class" else IGNORE_INDEX
        pets = self._torchvision(base, download)
        # torchvision keeps the file lists in private attributes; reading them (rather than
        # calling pets[i], which returns PIL images) gives segtut's checked readers the paths.
        self.images = [Path(p) for p in pets._images]
        self.masks = [Path(p) for p in pets._segs]
        if limit is not None:
            self.images, self.masks = self.images[:limit], self.masks[:limit]
        self._cache = {} if cache else None

    def _torchvision(self, base: Path, download: bool):
        from torchvision.datasets import OxfordIIITPet

        present = (self.root / "images").is_dir() and (self.root / "annotations").is_dir()
        if not present:
            reason = config.offline_reason()
            if reason is not None:
                raise DataError(f"Oxford-IIIT Pet not found in {self.root}, and {reason}, so "
                                "it is not downloaded. " + _help(self.root))
            if not download:
                raise DataError(f"Oxford-IIIT Pet not found in {self.root} (download=False). "
                                + _help(self.root))
        try:
            return OxfordIIITPet(root=base, split=self.split, target_types="segmentation",
                                 download=not present)
        except FileNotFoundError as error:
            raise DataError(f"Oxford-IIIT Pet in {self.root} is incomplete: {error}. "
                            + _help(self.root)) from None
        except (OSError, RuntimeError) as error:  # network errors are OSErrors (URLError)
            raise DataError(f"Could not download or open Oxford-IIIT Pet in {self.root}: "
                            f"{error}. " + _help(self.root)) from None

    def _read(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """One pair without the transform: uint8 ``(3, H, W)`` and uint8 ``(H, W)`` class ids."""
        image = read_image(self.images[index])
        trimap = read_mask(self.masks[index], num_classes=4, ignore_index=None).numpy()
        if (trimap == 0).any():
            raise DataError(f"Trimap {self.masks[index]} holds the value 0; Oxford-IIIT Pet "
                            "trimaps hold only 1 (pet), 2 (background) and 3 (border). Replace "
                            "it with the original file from annotations.tar.gz.")
        if image.shape[-2:] != trimap.shape:
            raise DataError(f"Image {self.images[index]} is {tuple(image.shape[-2:])} (H, W) but "
                            f"its trimap {self.masks[index]} is {trimap.shape}. Replace both "
                            "with the original files.")
        mask = self._table[trimap]  # (H, W) uint8
        return image, tv_tensors.Mask(torch.from_numpy(mask))
