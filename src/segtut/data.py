"""Datasets: CamVid (SegNet layout), any folder of images + masks, and file checks.

Every dataset returns ``(image, mask)`` pairs as torchvision tensors:

* ``image``: ``tv_tensors.Image`` uint8 ``(3, H, W)``;
* ``mask``: ``tv_tensors.Mask`` int64 ``(H, W)`` holding class ids ``0 .. num_classes - 1`` or
  :data:`IGNORE_INDEX`;

and passes them through an optional joint ``transform(image, mask)`` (see
:mod:`segtut.transforms`), which turns the image into a normalised float tensor.

Bad files never pass silently: a missing, unreadable or absurdly large file, an image and mask
of different sizes, a mask whose values are not class ids (a 0/255 binary mask, an RGB colour
mask, a float mask with fractions), a mask saved as JPEG, images without masks, masks without
images and two images with one name raise :class:`DataError` naming the file and saying what to
do. Images that are not 8-bit are converted by a stated rule, with a :class:`DataWarning` naming
the file (see :func:`read_image`).

A CamVid folder (``camvid/``, holding ``train/``, ``trainannot/``, ...) is not the data
directory (the folder that holds ``camvid/``, :func:`segtut.config.data_dir`): :class:`CamVid`
takes the first, every loader that finds or downloads the data takes the second.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors

from segtut.errors import CamVidNotFound, DataError, DataWarning

__all__ = [
    "CLASS_NAMES", "NUM_CLASSES", "IGNORE_INDEX", "VOID_NAME", "PALETTE", "SPLITS",
    "IMAGE_SUFFIXES", "SYNTHETIC_MARKER", "DataError", "DataWarning", "CamVidNotFound",
    "read_image", "read_mask", "describe_bad_mask", "list_images", "pair_by_stem",
    "PairDataset", "SegmentationFolder", "CamVid",
]

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
#: A file of this name in a CamVid-layout folder marks it as SYNTHETIC scenes written by
#: :func:`segtut.synthetic.write_synthetic_camvid`; :class:`CamVid` then reports itself synthetic.
SYNTHETIC_MARKER = "SYNTHETIC_NOT_CAMVID.txt"

_JPEG_SUFFIXES = (".jpg", ".jpeg")
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: the multi-picture JPEG some cameras write


def _decode(path: Path, kind: str, rgb: bool = False) -> tuple[np.ndarray, str, Optional[str]]:
    """Decode a whole file: ``(array, PIL mode, PIL format)``, errors as :class:`DataError`.

    With ``rgb``, 8-bit modes (L, P, RGBA, CMYK, ...) are converted to RGB ``(H, W, 3)`` uint8;
    16-bit and float modes (I;16, I, F) are returned as they are for :func:`read_image` to scale.
    """
    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its pixel limit; a header claiming a huge size is
            # a corrupt or hostile file either way, and decoding it could exhaust memory.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as pil:
                mode, file_format = pil.mode, pil.format
                if kind == "mask" and (path.suffix.lower() in _JPEG_SUFFIXES
                                       or file_format in _JPEG_FORMATS):
                    raise DataError(
                        f"Mask {path} is a JPEG file (format {file_format}). JPEG is lossy: it "
                        "changes pixel values near edges, so class ids there turn into other, "
                        "wrong class ids without any error. Save masks as PNG (lossless), from "
                        "the original label data, not by converting this JPEG.")
                if rgb and not (mode.startswith("I") or mode == "F"):
                    array = np.asarray(pil.convert("RGB"))  # (H, W, 3) uint8
                else:
                    array = np.asarray(pil)
    except FileNotFoundError:
        if kind == "mask":
            raise DataError(f"Mask file not found: {path}. Every image needs a mask with the same "
                            "name; check the data directory or re-download the dataset.") from None
        raise DataError(f"Image file not found: {path}. Check the data directory, or delete it "
                        "and let segtut download the data again.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"Cannot read {kind} {path}: its header claims more pixels than PIL's "
                        f"safety limit ({error}). The file is corrupt or not a real "
                        f"{kind}; replace it. If it truly is that large, raise "
                        "PIL.Image.MAX_IMAGE_PIXELS before loading.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"Cannot read {kind} {path}: {error}. The file is corrupt or not an "
                        "image; replace it (re-download the dataset).") from None
    return array, mode, file_format


def read_image(path: str | Path) -> tv_tensors.Image:
    """Read an image file as RGB.

    8-bit files (RGB, greyscale L, palette P, RGBA, ...) are converted to RGB by PIL. Other
    pixel types are scaled to 0..255 by a fixed rule, with a :class:`DataWarning` naming the
    file, or refused:

    * 16-bit integer (mode ``I;16``, or ``I`` with values in 0..65535): scaled by 255/65535.
      A fixed scale keeps the brightness of all images comparable; stretching each image by its
      own minimum and maximum would make the same scene brighter or darker depending on what
      else is in the picture. A camera with fewer bits (12-bit: up to 4095) gives dark pictures,
      and the warning says so: convert such files to 8-bit yourself with the right range.
    * 32-bit integer (mode ``I``) outside 0..65535: refused, there is no sensible scale.
    * float (mode ``F``) in 0..1: scaled by 255; any value outside 0..1 (or NaN) is refused,
      because the brightness scale is then unknown. (PIL's own conversion would clip such
      images to black and white.)

    Returns:
        ``tv_tensors.Image`` uint8 ``(3, H, W)``.

    Raises:
        DataError: the file is missing, cannot be decoded, claims an absurd size, or holds
            pixel values that cannot be scaled to 0..255 by the rules above.
    """
    path = Path(path)
    array, mode, _ = _decode(path, "image", rgb=True)
    if array.dtype != np.uint8 or array.ndim != 3:
        array = _to_uint8(array, mode, path)  # (H, W) uint8
        array = np.repeat(array[..., None], 3, axis=2)  # greyscale -> (H, W, 3)
    return tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1))  # (3, H, W)


def _to_uint8(array: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """Scale a single-channel 16-bit, 32-bit or float image to uint8 by :func:`read_image`'s rules."""
    if array.dtype.kind == "f":
        finite = np.isfinite(array).all()
        low, high = (float(array.min()), float(array.max())) if finite else (np.nan, np.nan)
        if not finite or low < 0.0 or high > 1.0:
            raise DataError(f"Image {path} holds floating-point pixels (mode {mode}, values "
                            f"{low:g}..{high:g}); segtut reads float images only in 0..1, where "
                            "the brightness scale is clear. Save it as an 8-bit image (values "
                            "0..255, e.g. PNG) with the scale you intend.")
        warnings.warn(f"Image {path} holds floating-point pixels in 0..1 (mode {mode}); segtut "
                      "scales them by 255 to 8 bits.", DataWarning, stacklevel=3)
        return np.round(array * 255.0).astype(np.uint8)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > 65535:
        raise DataError(f"Image {path} holds 32-bit integer pixels (mode {mode}, values "
                        f"{low}..{high}), outside the 16-bit range 0..65535; segtut cannot know "
                        "their brightness scale. Save it as an 8-bit image (values 0..255) with "
                        "the scale you intend.")
    warnings.warn(f"Image {path} has 16-bit pixels (mode {mode}, values {low}..{high}); segtut "
                  "scales them by 255/65535 to 8 bits. If the camera used fewer bits (values "
                  "up to 4095 for 12-bit), the picture comes out dark: convert such images to "
                  "8-bit yourself with the camera's range.", DataWarning, stacklevel=3)
    return np.round(array.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8)


def describe_bad_mask(values: Sequence[int], num_classes: int, ignore_index: Optional[int],
                      channels: int = 1) -> str:
    """Guess why a mask holds values that are not class ids, for an error message."""
    if channels == 3:
        return ("it is an RGB colour mask; convert colours to class ids first "
                "(one id per pixel, single channel)")
    found = set(int(v) for v in values)
    if found <= {0, 255}:
        # Mapping 255 to the ignore label here would turn the whole foreground into void: the
        # model would only ever see background, and every score would look perfect.
        return ("it looks like a 0/255 binary mask (background 0, foreground 255); divide it "
                "by 255 so the foreground is class 1")
    if 255 in found and found - {255} and all(0 <= v < num_classes for v in found - {255}):
        ignore = (f"the ignore label {ignore_index}" if ignore_index is not None
                  else "an ignore label (pass ignore_index)")
        return (f"255 looks like a border or void value next to the class ids "
                f"{sorted(found - {255})}; map 255 to {ignore}, or pass ignore_index=255")
    if ignore_index is None:
        return f"values must be class ids 0..{num_classes - 1} (this dataset has no ignore label)"
    return "values must be class ids or the ignore label"


def read_mask(path: str | Path, num_classes: int = NUM_CLASSES,
              ignore_index: Optional[int] = IGNORE_INDEX) -> tv_tensors.Mask:
    """Read a label map whose pixel values are class ids, and check them.

    Args:
        path: a single-channel PNG (or BMP, TIFF) of class ids; a greyscale mask saved with
            three equal channels, or with an alpha channel, is accepted too.
        num_classes: values ``0 .. num_classes - 1`` are classes...
        ignore_index: ...and this value is void; ``None``: no ignore label, every value must be
            a class id.

    Returns:
        ``tv_tensors.Mask`` int64 ``(H, W)``.

    Raises:
        DataError: the file is missing, unreadable, a JPEG (lossy: edge pixels change class),
            an RGB colour mask, a float mask with fractional values, or holds values that are
            neither ``0 .. num_classes - 1`` nor ``ignore_index``.
    """
    path = Path(path)
    array, mode, _ = _decode(path, "mask")
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
    if array.dtype.kind == "f":
        # Truncating 2.7 to 2 would silently relabel pixels; whole numbers are ids stored as float.
        fractional = ~np.isfinite(array) | (array != np.round(array))
        if fractional.any():
            examples = np.unique(array[fractional])[:5].tolist()
            raise DataError(f"Mask {path} holds non-integer values such as {examples} (mode "
                            f"{mode}): class ids are whole numbers. The mask was probably "
                            "resized or smoothed with interpolation; rebuild it with "
                            "nearest-neighbour resizing and save it as an integer PNG.")
        array = array.astype(np.int64)
    values = np.unique(array)
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_index)]
    if bad:
        allowed = (f"the class ids 0..{num_classes - 1} and the ignore label {ignore_index}"
                   if ignore_index is not None else f"the class ids 0..{num_classes - 1}")
        raise DataError(f"Mask {path} holds values {bad[:10]} outside {allowed} "
                        f"(values found: {values.tolist()[:20]}): "
                        f"{describe_bad_mask(values.tolist(), num_classes, ignore_index)}.")
    return tv_tensors.Mask(torch.from_numpy(array.astype(np.int64)))  # (H, W)


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder``, sorted by name.

    Hidden files are skipped: dot-files, and the ``._name.png`` AppleDouble files macOS writes
    next to every file it copies to a USB stick or network drive (metadata, not images).
    """
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                  and p.is_file())


def _by_stem(files: list[Path], folder: Path, kind: str) -> dict[str, Path]:
    """``{stem: file}``; two files with one stem (``001.png`` and ``001.jpg``) are an error."""
    by_stem: dict[str, list[Path]] = {}
    for path in files:
        by_stem.setdefault(path.stem, []).append(path)
    clashes = [paths for paths in by_stem.values() if len(paths) > 1]
    if clashes:
        shown = "; ".join(" and ".join(p.name for p in paths) for paths in clashes[:3])
        raise DataError(f"{len(clashes)} name(s) in {folder} belong to several {kind} files "
                        f"({shown}): each {kind} is matched by its name without the suffix, so "
                        "only one of them could be used. Delete or rename the extra files.")
    return {stem: paths[0] for stem, paths in by_stem.items()}


def pair_by_stem(images_dir: Path, masks_dir: Path, *, mask_kind: str = "mask",
                 missing_fix: str = "Add the masks or remove those images.",
                 orphan_fix: str = "An image was renamed or deleted: restore it, or remove "
                                   "those masks.",
                 empty_fix: str = "") -> tuple[list[Path], list[Path]]:
    """Pair every image of ``images_dir`` with the file of the same stem in ``masks_dir``.

    ``images/0001.jpg`` pairs with ``masks/0001.png``. Nothing is dropped silently: an image
    without a mask, a mask without an image (usually a renamed or deleted image), two files
    with one stem and an empty folder are :class:`DataError`\ s naming the files; the
    ``*_fix`` texts end each message with what to do for this kind of data set.

    Returns:
        ``(images, masks)``: two lists of paths of the same length, sorted by image name.
    """
    images = list_images(images_dir)
    by_image = _by_stem(images, images_dir, "image")
    masks = _by_stem(list_images(masks_dir), masks_dir, mask_kind)
    missing = [p.name for p in images if p.stem not in masks]
    if missing:
        raise DataError(f"{len(missing)} image(s) in {images_dir} have no {mask_kind} with the "
                        f"same name in {masks_dir}, e.g. {missing[:3]}. {missing_fix}")
    orphans = sorted(p.name for stem, p in masks.items() if stem not in by_image)
    if orphans:
        raise DataError(f"{len(orphans)} {mask_kind}(s) in {masks_dir} have no image with the "
                        f"same name in {images_dir}, e.g. {orphans[:3]}. {orphan_fix}")
    if not images:
        raise DataError(f"No images ({', '.join(IMAGE_SUFFIXES)}) found in {images_dir}. "
                        f"{empty_fix}".rstrip())
    return images, [masks[p.stem] for p in images]


class PairDataset(Dataset):
    """What every segtut dataset shares: one item per entry of ``images``, an optional
    in-memory cache of decoded pairs, and the joint transform.

    A subclass sets ``images`` (list of paths), ``transform`` and ``_cache`` (``{}`` to cache,
    None not to) and implements :meth:`_read`, which returns one checked pair: uint8
    ``(3, H, W)`` image and ``(H, W)`` class-id mask (uint8 where every label fits).
    :meth:`load` is :meth:`_read` through the cache; ``dataset[i]`` is :meth:`load`, the mask
    as int64, then the transform.
    """

    images: list
    transform: Optional[Callable] = None
    _cache: Optional[dict] = None

    def __len__(self) -> int:
        return len(self.images)

    def _read(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        raise NotImplementedError

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """One checked pair without the transform (from the cache when it is on)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        pair = self._read(index)
        if self._cache is not None:
            self._cache[index] = pair
        return pair

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        mask = tv_tensors.Mask(mask.long())  # (H, W) int64
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask


class SegmentationFolder(PairDataset):
    """Images in one folder, masks with the same file stem in another.

    ``images/0001.jpg`` pairs with ``masks/0001.png``. Names are matched when the dataset is
    built, so a missing mask fails at once, not in the middle of an epoch. Every image needs
    exactly one mask and every mask exactly one image: an image without a mask, a mask without
    an image (usually a renamed or deleted image) and two images (or masks) with one name are
    errors, so nothing is dropped silently. Hidden files (``.name``, macOS ``._name``) are
    ignored.

    Args:
        images_dir: folder of RGB images.
        masks_dir: folder of single-channel label maps (pixel value = class id).
        transform: joint ``transform(image, mask) -> (image, mask)``, or None.
        num_classes: number of real classes; mask values must be below it...
        ignore_index: ...or equal to this label, which losses and metrics skip; ``None`` for a
            dataset without an ignore label (every mask value must be a class id).
        cache: keep decoded files in memory (fast epochs on small datasets such as CamVid).

    Each item is ``(image, mask)``: without a transform, uint8 ``(3, H, W)`` and int64 ``(H, W)``.
    """

    def __init__(self, images_dir: str | Path, masks_dir: str | Path,
                 transform: Optional[Callable] = None, num_classes: int = NUM_CLASSES,
                 ignore_index: Optional[int] = IGNORE_INDEX, cache: bool = False):
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
        if ignore_index is not None and not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an integer label or None (no ignore label), "
                             f"got {ignore_index!r}.")
        for folder in (self.images_dir, self.masks_dir):
            if not folder.is_dir():
                raise DataError(f"Folder not found: {folder}. Point the dataset at a folder of "
                                "images and a folder of masks with matching file names.")
        self.transform = transform
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.images, self.masks = pair_by_stem(self.images_dir, self.masks_dir)
        self._cache = {} if cache else None

    def _read(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Read and check one pair, without the transform."""
        image = read_image(self.images[index])
        mask = read_mask(self.masks[index], self.num_classes, self.ignore_index)
        if image.shape[-2:] != mask.shape[-2:]:
            raise DataError(f"Image {self.images[index]} is {tuple(image.shape[-2:])} (H, W) but "
                            f"its mask {self.masks[index]} is {tuple(mask.shape[-2:])}. Resize the "
                            "mask with nearest-neighbour interpolation (never bilinear) to match.")
        # Store masks as uint8 only when every valid label fits (no silent wrap-around).
        fits_uint8 = self.num_classes <= 256 and (self.ignore_index is None
                                                  or 0 <= self.ignore_index < 256)
        return image, tv_tensors.Mask(mask.to(torch.uint8) if fits_uint8 else mask)


class CamVid(SegmentationFolder):
    """CamVid, 11 classes + void, in the SegNet layout (``train/``, ``trainannot/``, ...).

    ``root`` is the CamVid folder ITSELF (the one holding ``train/``), unlike the loaders that
    find the data (:func:`segtut.download.camvid_root`,
    :func:`segtut.profiles.load_camvid_splits`, :func:`segtut.profiles.camvid_for_profile`),
    which take the data directory that HOLDS ``camvid/``. The usual way is
    ``CamVid(camvid_root(data_dir), "train")``.

    Args:
        root: the ``camvid`` folder (holding ``train/``, ``trainannot/``, ...). ``None`` finds it
            in the data directory (:func:`segtut.config.data_dir`) and downloads it when missing
            (:func:`segtut.download.camvid_root`).
        split: ``"train"`` (367 images), ``"val"`` (101) or ``"test"`` (233).
        transform: joint transform, see :mod:`segtut.transforms`.
        limit: keep only the first ``limit`` images (smoke runs).
        cache: keep decoded files in memory.

    Items are ``(image, mask)``, 360x480 before the transform; masks use void = 11.
    ``is_synthetic`` is True for a folder of SYNTHETIC scenes written by
    :func:`segtut.synthetic.write_synthetic_camvid` (the smoke profile's offline fallback).
    """

    def __init__(self, root: str | Path | None = None, split: str = "train",
                 transform: Optional[Callable] = None, limit: Optional[int] = None,
                 cache: bool = False):
        if split not in SPLITS:
            raise ValueError(f"Unknown CamVid split {split!r}; choose one of {SPLITS}.")
        if root is None:
            # Imported here: segtut.download is only needed when we must look or fetch.
            from segtut.download import camvid_root
            root = camvid_root()
        root = Path(root)
        super().__init__(root / split, root / f"{split}annot", transform=transform,
                         num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX, cache=cache)
        self.root, self.split = root, split
        self.is_synthetic = (root / SYNTHETIC_MARKER).exists()
        if limit is not None:
            self.images, self.masks = self.images[:limit], self.masks[:limit]
