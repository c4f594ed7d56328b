"""Datasets: CamVid (SegNet layout), any folder of images + masks, and file checks.

Every dataset returns ``(image, mask)`` pairs as torchvision tensors:

* ``image``: ``tv_tensors.Image`` uint8 ``(3, H, W)``;
* ``mask``: ``tv_tensors.Mask`` int64 ``(H, W)`` holding class ids ``0 .. num_classes - 1`` or
  :data:`IGNORE_INDEX`;

and passes them through an optional joint ``transform(image, mask)`` (see
:mod:`segtut.transforms`), which turns the image into a normalised float tensor.

Bad files never pass silently: a missing or unreadable file, an image and mask of different
sizes, a mask whose values are not class ids (a 0/255 binary mask, an RGB colour mask) or images
without masks raise :class:`DataError` naming the file and saying what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors

#: The 11 CamVid classes of the SegNet split, in label-id order.
CLASS_NAMES = (
    "sky", "building", "pole", "road", "pavement", "tree",
    "signsymbol", "fence", "car", "pedestrian", "bicyclist",
)
NUM_CLASSES = len(CLASS_NAMES)
#: Label id of "void" (unlabelled) pixels: ignored by every loss and metric in segtut.
IGNORE_INDEX = 11
VOID_NAME = "void"
#: SegNet's colour for each class id 0..10, then void (id 11) in black.
PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
    (0, 128, 192), (0, 0, 0),
)
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DataError(ValueError):
    """A data file is missing, unreadable or breaks the data contract."""


def read_image(path: str | Path) -> tv_tensors.Image:
    """Read an image file as RGB.

    Returns:
        ``tv_tensors.Image`` uint8 ``(3, H, W)``.

    Raises:
        DataError: the file is missing or cannot be decoded.
    """
    path = Path(path)
    try:
        with Image.open(path) as pil:
            array = np.asarray(pil.convert("RGB"))  # (H, W, 3) uint8
    except FileNotFoundError:
        raise DataError(f"Image file not found: {path}. Check the data directory, or delete it "
                        "and let segtut download the data again.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"Cannot read image {path}: {error}. The file is corrupt or not an "
                        "image; replace it (re-download the dataset).") from None
    return tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1))  # (3, H, W)


def describe_bad_mask(values: Sequence[int], num_classes: int, ignore_index: int,
                      channels: int = 1) -> str:
    """Guess why a mask holds values that are not class ids, for an error message."""
    if channels == 3:
        return ("it is an RGB colour mask; convert colours to class ids first "
                "(one id per pixel, single channel)")
    found = set(int(v) for v in values)
    if found <= {0, 255} or found <= {0, 1, 255}:
        return ("it looks like a 0/255 binary mask; divide by 255 so the foreground is class 1, "
                "or map 255 to the ignore label")
    return "values must be class ids or the ignore label"


def read_mask(path: str | Path, num_classes: int = NUM_CLASSES,
              ignore_index: int = IGNORE_INDEX) -> tv_tensors.Mask:
    """Read a label map whose pixel values are class ids, and check them.

    Returns:
        ``tv_tensors.Mask`` int64 ``(H, W)``.

    Raises:
        DataError: the file is missing, unreadable, an RGB colour mask, or holds values that
            are neither ``0 .. num_classes - 1`` nor ``ignore_index``.
    """
    path = Path(path)
    try:
        with Image.open(path) as pil:
            mode = pil.mode
            array = np.asarray(pil)
    except FileNotFoundError:
        raise DataError(f"Mask file not found: {path}. Every image needs a mask with the same "
                        "name; check the data directory or re-download the dataset.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"Cannot read mask {path}: {error}. The file is corrupt or not an "
                        "image; replace it (re-download the dataset).") from None
    if array.ndim == 3 and array.shape[2] == 2:
        # Greyscale + alpha (mode LA): the alpha channel is transparency, not a label.
        array = array[..., 0]
    if array.ndim == 3:
        # A mask saved with several channels: fine if they are copies, else it is a colour mask.
        if all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, min(3, array.shape[2]))):
            array = array[..., 0]
        else:
            values = np.unique(array.reshape(-1, array.shape[2])[:, :3], axis=0)[:5].tolist()
            raise DataError(f"Mask {path} has {array.shape[2]} channels (mode {mode}, colours "
                            f"such as {values}): {describe_bad_mask([], num_classes, ignore_index, 3)}.")
    values = np.unique(array)
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_index)]
    if bad:
        raise DataError(f"Mask {path} holds values {bad[:10]} outside the class ids "
                        f"0..{num_classes - 1} and the ignore label {ignore_index} "
                        f"(values found: {values.tolist()[:20]}): "
                        f"{describe_bad_mask(values.tolist(), num_classes, ignore_index)}.")
    return tv_tensors.Mask(torch.from_numpy(array.astype(np.int64)))  # (H, W)


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class SegmentationFolder(Dataset):
    """Images in one folder, masks with the same file stem in another.

    ``images/0001.jpg`` pairs with ``masks/0001.png``. Names are matched when the dataset is
    built, so a missing mask fails at once, not in the middle of an epoch.

    Args:
        images_dir: folder of RGB images.
        masks_dir: folder of single-channel label maps (pixel value = class id).
        transform: joint ``transform(image, mask) -> (image, mask)``, or None.
        num_classes: number of real classes; mask values must be below it...
        ignore_index: ...or equal to this label, which losses and metrics skip.
        cache: keep decoded files in memory (fast epochs on small datasets such as CamVid).

    Each item is ``(image, mask)``: without a transform, uint8 ``(3, H, W)`` and int64 ``(H, W)``.
    """

    def __init__(self, images_dir: str | Path, masks_dir: str | Path,
                 transform: Optional[Callable] = None, num_classes: int = NUM_CLASSES,
                 ignore_index: int = IGNORE_INDEX, cache: bool = False):
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        for folder in (self.images_dir, self.masks_dir):
            if not folder.is_dir():
                raise DataError(f"Folder not found: {folder}. Point the dataset at a folder of "
                                "images and a folder of masks with matching file names.")
        self.transform = transform
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.images = list_images(self.images_dir)
        masks = {p.stem: p for p in list_images(self.masks_dir)}
        missing = [p.name for p in self.images if p.stem not in masks]
        if missing:
            raise DataError(f"{len(missing)} image(s) in {self.images_dir} have no mask with the "
                            f"same name in {self.masks_dir}, e.g. {missing[:3]}. Add the masks or "
                            "remove those images.")
        if not self.images:
            raise DataError(f"No images ({', '.join(IMAGE_SUFFIXES)}) found in {self.images_dir}.")
        self.masks = [masks[p.stem] for p in self.images]
        self._cache: dict[int, tuple] = {} if cache else None

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Read and check one pair, without the transform."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image = read_image(self.images[index])
        mask = read_mask(self.masks[index], self.num_classes, self.ignore_index)
        if image.shape[-2:] != mask.shape[-2:]:
            raise DataError(f"Image {self.images[index]} is {tuple(image.shape[-2:])} (H, W) but "
                            f"its mask {self.masks[index]} is {tuple(mask.shape[-2:])}. Resize the "
                            "mask with nearest-neighbour interpolation (never bilinear) to match.")
        # Store masks as uint8 only when every valid label fits (no silent wrap-around).
        fits_uint8 = 0 <= self.ignore_index < 256 and self.num_classes <= 256
        pair = (image, tv_tensors.Mask(mask.to(torch.uint8) if fits_uint8 else mask))
        if self._cache is not None:
            self._cache[index] = pair
        return pair

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        mask = tv_tensors.Mask(mask.long())  # (H, W) int64
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask


class CamVid(SegmentationFolder):
    """CamVid, 11 classes + void, in the SegNet layout (``train/``, ``trainannot/``, ...).

    Args:
        root: the ``camvid`` folder (holding ``train/``, ``trainannot/``, ...). ``None`` finds it
            under the data directory and downloads it when missing (:func:`segtut.download.camvid_root`).
        split: ``"train"`` (367 images), ``"val"`` (101) or ``"test"`` (233).
        transform: joint transform, see :mod:`segtut.transforms`.
        limit: keep only the first ``limit`` images (smoke runs).
        cache: keep decoded files in memory.

    Items are ``(image, mask)``, 360x480 before the transform; masks use void = 11.
    """

    def __init__(self, root: str | Path | None = None, split: str = "train",
                 transform: Optional[Callable] = None, limit: Optional[int] = None,
                 cache: bool = False):
        if split not in SPLITS:
            raise ValueError(f"Unknown CamVid split {split!r}; choose one of {SPLITS}.")
        if root is None:
            from segtut.download import camvid_root  # only needed when we must look or fetch
            root = camvid_root()
        root = Path(root)
        super().__init__(root / split, root / f"{split}annot", transform=transform,
                         num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX, cache=cache)
        self.split = split
        if limit is not None:
            self.images, self.masks = self.images[:limit], self.masks[:limit]
