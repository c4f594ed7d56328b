"""Your own folders: images in one folder, masks with the same name in another.

:class:`MaskFolder` reads the folders readers actually have, not only clean class-id PNGs.
The clean case stays the default and is read by :func:`segtut.data.read_mask`; every messy
case is an error naming the file and the option that handles it, and the option, once chosen,
converts by a stated rule and says so with one :class:`~segtut.errors.DataWarning` per dataset:

* 0/255 (or 0/1) binary masks: ``binary=True`` makes them 0/1;
* RGB colour masks: ``palette=`` maps each colour to the class of the NEAREST palette colour
  (exact colours are not required, so slightly-off or JPEG-noisy colours still land right);
* JPEG masks: ``jpeg_masks="threshold"`` (greyscale, cut at 128 into 0/1) or ``"nearest"``
  (nearest palette colour, or nearest class-id grey level);
* masks of another size than their image: ``resize_masks=True`` resizes them with
  nearest-neighbour interpolation, the only interpolation that never invents class ids.

Use :func:`segtut.datasets.describe.describe_dataset` first to see which of these a folder needs.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from segtut.data import (PairDataset, _decode, describe_bad_mask, pair_by_stem, read_image,
                         read_mask)
from segtut.datasets.colours import colours_to_ids
from segtut.datasets.describe import same_aspect
from segtut.datasets.labels import IGNORE_INDEX
from segtut.errors import DataError, DataWarning

__all__ = ["MaskFolder", "JPEG_MASK_MODES", "default_palette"]

#: The values of ``MaskFolder(jpeg_masks=...)``; None refuses JPEG masks.
JPEG_MASK_MODES = ("threshold", "nearest")
#: Grey level at which ``jpeg_masks="threshold"`` splits background (below) from foreground.
THRESHOLD = 128
#: A colour of a lossless (PNG) colour mask farther than this (Euclidean distance in RGB, 0..441)
#: from every palette colour is an error: the palette is wrong or misses a class. Nearby colours
#: (anti-aliased edges, a colour re-saved slightly off) are mapped to the nearest one.
FAR_COLOUR = 40.0

_JPEG_SUFFIXES = (".jpg", ".jpeg")
_JPEG_FORMATS = ("JPEG", "MPO")


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct display colours for class ids ``0 .. num_classes - 1`` (PASCAL VOC's colour map).

    Class 0 is black; each id's bits are spread over the high bits of R, G and B, so
    neighbouring ids get clearly different colours.
    """
    colours = []
    for index in range(num_classes):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((r, g, b))
    return tuple(colours)


def _header(path: Path) -> Optional[tuple[tuple[int, int], Optional[str]]]:
    """``((H, W), format)`` from the file header without decoding, None when unreadable.

    Unreadable files are reported by :meth:`MaskFolder.load` with the full error.
    """
    try:
        with Image.open(path) as pil:
            return (pil.height, pil.width), pil.format
    except Exception:  # noqa: BLE001 - any failure is reported later, when the file is read
        return None


def _is_jpeg(path: Path) -> bool:
    """JPEG by name or by content (a JPEG renamed to ``.png`` is still lossy)."""
    if path.suffix.lower() in _JPEG_SUFFIXES:
        return True
    header = _header(path)
    return header is not None and header[1] in _JPEG_FORMATS


def _single_channel(array: np.ndarray, path: Path) -> Optional[np.ndarray]:
    """``(H, W)`` when the mask has one channel or identical copies of one; None for colour."""
    if array.ndim == 2:
        return array
    if array.shape[2] == 2:  # greyscale + alpha: the alpha channel is not a label
        return array[..., 0]
    channels = array[..., :3]
    if all(np.array_equal(channels[..., 0], channels[..., c]) for c in (1, 2)):
        return channels[..., 0]
    return None


class MaskFolder(PairDataset):
    """Images in one folder, masks with the same file stem in another: your own data.

    ``images/0001.jpg`` pairs with ``masks/0001.png``, by the rules of
    :class:`segtut.data.SegmentationFolder` (an image without a mask, a mask without an image
    and two files with one stem are errors, raised when the dataset is built; hidden files are
    skipped). Greyscale and 16-bit images become RGB (:func:`segtut.data.read_image`).

    Masks are class-id PNGs by default (:func:`segtut.data.read_mask`: one channel, pixel value
    = class id). Other kinds are errors that name the file and the option below that reads them.

    Args:
        images_dir: folder of images.
        masks_dir: folder of masks, one per image, with the same name (any image suffix).
        num_classes: number of classes; class ids are ``0 .. num_classes - 1``.
        ignore_index: the void label losses and metrics skip (default 255, see
            :data:`segtut.datasets.labels.IGNORE_INDEX`), or None (every value must be a class).
        class_names: one name per class id (default ``"class 0"``, ..., or
            ``("background", "foreground")`` with ``binary``).
        palette: one RGB triple per class id (a last extra one, when given, is the colour of
            ``ignore_index``). When given, RGB colour masks are mapped to class ids by the
            NEAREST palette colour; a colour far from all of them (> :data:`FAR_COLOUR`) in a
            lossless mask is an error. Default: :func:`default_palette`, for display only.
        binary: two-class masks saved as 0/255 (or 0/1) become 0/1 (255 is the foreground
            here, never the ignore label). Needs ``num_classes == 2``.
        jpeg_masks: None refuses JPEG masks (lossy: edge pixels take other values);
            ``"threshold"``: greyscale, ``>= 128`` is class 1 (two classes only);
            ``"nearest"``: the nearest palette colour (colour masks, with ``palette``) or the
            nearest class-id grey level (0/255 levels with ``binary``). Either warns once.
        resize_masks: False: a mask of another size than its image is an error; True: it is
            resized to the image size with NEAREST-neighbour interpolation (never bilinear,
            which would blend ids into other, wrong ids), with one warning per dataset. A mask
            whose aspect ratio differs from its image's is an error either way (stretching it
            would misplace every label: the pair is probably wrong).
        transform: joint ``transform(image, mask) -> (image, mask)``, applied last.
        limit: keep only the first ``limit`` pairs (by image name).
        cache: keep decoded pairs in memory.

    Items are ``(image, mask)``: ``tv_tensors.Image`` uint8 ``(3, H, W)`` and
    ``tv_tensors.Mask`` int64 ``(H, W)`` of class ids or ``ignore_index``, then the transform.

    Attributes:
        images / masks: ``list[Path]`` of the paired files, in item order.
        num_classes, ignore_index, class_names, palette: as above (``palette`` a tuple of
            tuples).
    """

    def __init__(self, images_dir: str | Path, masks_dir: str | Path, num_classes: int,
                 ignore_index: Optional[int] = IGNORE_INDEX,
                 class_names: Optional[Sequence[str]] = None,
                 palette: Optional[Sequence[Sequence[int]]] = None, binary: bool = False,
                 jpeg_masks: Optional[str] = None, resize_masks: bool = False,
                 transform: Optional[Callable] = None, limit: Optional[int] = None,
                 cache: bool = False):
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        self._check_arguments(num_classes, ignore_index, binary, jpeg_masks, limit)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.binary, self.jpeg_masks, self.resize_masks = binary, jpeg_masks, resize_masks
        self.transform = transform
        if class_names is None:
            class_names = (("background", "foreground") if binary
                           else tuple(f"class {i}" for i in range(num_classes)))
        self.class_names = tuple(str(name) for name in class_names)
        if len(self.class_names) != num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for "
                             f"num_classes={num_classes}: give one name per class id.")
        self._match_colours = palette is not None
        self.palette = tuple(tuple(int(c) for c in colour) for colour in
                             (palette if palette is not None else default_palette(num_classes)))
        self._check_palette()
        self.images, self.masks = self._pair(limit)
        self._cache = {} if cache else None
        self._jpeg_warned = False
        self._resize_warned = False
        self._scan_headers()

    # --- construction -------------------------------------------------------------------------

    @staticmethod
    def _check_arguments(num_classes, ignore_index, binary, jpeg_masks, limit) -> None:
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
        if ignore_index is not None and not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an integer label or None (no ignore label), "
                             f"got {ignore_index!r}.")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} is also a class id (0.."
                             f"{num_classes - 1}): pick a value outside, e.g. 255.")
        if jpeg_masks not in (None,) + JPEG_MASK_MODES:
            raise ValueError(f"jpeg_masks must be None, 'threshold' or 'nearest', got "
                             f"{jpeg_masks!r}.")
        if (binary or jpeg_masks == "threshold") and num_classes != 2:
            option = "binary=True" if binary else "jpeg_masks='threshold'"
            raise ValueError(f"{option} makes two-class (0/1) masks, but num_classes="
                             f"{num_classes}. Pass num_classes=2, or use jpeg_masks='nearest' "
                             "for masks of several classes.")
        if limit is not None and not (isinstance(limit, int) and limit >= 0):
            raise ValueError(f"limit must be a non-negative integer or None, got {limit!r}.")

    def _check_palette(self) -> None:
        extra = 1 if self.ignore_index is not None else 0
        if len(self.palette) not in (self.num_classes, self.num_classes + extra):
            raise ValueError(f"palette has {len(self.palette)} colours for num_classes="
                             f"{self.num_classes}: give one RGB colour per class id"
                             + (" (and optionally one more for the ignore label)" if extra
                                else "") + ".")
        for colour in self.palette:
            if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
                raise ValueError(f"palette colour {colour} is not an RGB triple of 0..255.")

    def _pair(self, limit: Optional[int]) -> tuple[list[Path], list[Path]]:
        """Match images and masks by stem, with SegmentationFolder's rules and errors."""
        for folder in (self.images_dir, self.masks_dir):
            if not folder.is_dir():
                raise DataError(f"Folder not found: {folder}. Point MaskFolder at a folder of "
                                "images and a folder of masks with matching file names.")
        images, masks = pair_by_stem(self.images_dir, self.masks_dir)
        if limit is not None:
            images, masks = images[:limit], masks[:limit]
        return images, masks

    def _scan_headers(self) -> None:
        """Count JPEG masks and size mismatches from the headers, to warn once, up front.

        Only done when a conversion option is on (headers are cheap: nothing is decoded).
        """
        if self.jpeg_masks is not None:
            jpegs = [m for m in self.masks if _is_jpeg(m)]
            if jpegs:
                self._warn_jpeg(len(jpegs), jpegs[0])
        if not self.resize_masks:
            return
        resized = {}
        for index, (image, mask) in enumerate(zip(self.images, self.masks)):
            image_header, mask_header = _header(image), _header(mask)
            if image_header and mask_header and image_header[0] != mask_header[0]:
                if same_aspect(image_header[0], mask_header[0]):  # others fail in load()
                    resized[index] = (image_header[0], mask_header[0])
        if resized:
            self._resize_warned = True
            index, (image_size, mask_size) = next(iter(resized.items()))
            warnings.warn(
                f"MaskFolder resizes {len(resized)} of {len(self.masks)} masks in "
                f"{self.masks_dir} to the size of their image with nearest-neighbour "
                f"interpolation (resize_masks=True), e.g. {self.masks[index].name} "
                f"{mask_size[0]}x{mask_size[1]} -> {image_size[0]}x{image_size[1]} (H x W) of "
                f"{self.images[index].name}. Nearest-neighbour never invents class ids, but "
                "thin parts may move by a pixel.", DataWarning, stacklevel=3)

    def _warn_jpeg(self, count: Optional[int], example: Path) -> None:
        self._jpeg_warned = True
        rule = ("thresholded at 128 (>= 128 is class 1)" if self.jpeg_masks == "threshold"
                else "mapped to the nearest " + ("palette colour" if self._match_colours
                                                 else "class-id grey level"))
        counted = f"{count} of {len(self.masks)}" if count is not None else "some"
        warnings.warn(
            f"{counted} masks in {self.masks_dir} are JPEG files, e.g. {example.name}. JPEG is "
            f"lossy: pixel values near edges change, so each pixel is {rule} "
            f"(jpeg_masks={self.jpeg_masks!r}). Labels along edges may still be off by a "
            "pixel; PNG masks made from the original labels avoid this.",
            DataWarning, stacklevel=4)

    # --- reading ------------------------------------------------------------------------------

    def _read(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Read, convert and check one pair, without the transform.

        Returns:
            ``(image, mask)``: uint8 ``(3, H, W)`` and the class ids ``(H, W)`` (stored as
            uint8 when every label fits, int64 otherwise).
        """
        image_path, mask_path = self.images[index], self.masks[index]
        image = read_image(image_path)  # (3, H, W) uint8, greyscale made RGB
        ids = self._read_ids(mask_path)  # (h, w) int64
        size, mask_size = tuple(image.shape[-2:]), ids.shape
        if mask_size != size:
            ids = self._fit(ids, size, image_path, mask_path)
        self._check_values(ids, mask_path)
        fits_uint8 = self.num_classes <= 256 and (self.ignore_index is None
                                                  or 0 <= self.ignore_index < 256)
        mask = torch.from_numpy(ids.astype(np.uint8 if fits_uint8 else np.int64))
        return image, tv_tensors.Mask(mask)

    def _fit(self, ids: np.ndarray, size: tuple[int, int], image_path: Path,
             mask_path: Path) -> np.ndarray:
        """Resize ``ids`` (h, w) to the image ``size`` (H, W) with nearest neighbour, or refuse."""
        sizes = (f"image {image_path} is {size[0]}x{size[1]} (H x W) but its mask {mask_path} "
                 f"is {ids.shape[0]}x{ids.shape[1]}")
        if not same_aspect(size, ids.shape):
            raise DataError(f"The {sizes}: another aspect ratio, so the mask is not a resized "
                            "copy of this image (a wrong pairing, or a cropped image or mask). "
                            "Check the pair; resizing would stretch every label out of place.")
        if not self.resize_masks:
            raise DataError(f"The {sizes}. The aspect ratio matches, so the mask is probably a "
                            "resized copy: pass resize_masks=True to resize masks to their "
                            "images with nearest-neighbour interpolation, or resize them "
                            "yourself (nearest neighbour, never bilinear).")
        if not self._resize_warned:  # the header scan could not see this one: say it now
            self._resize_warned = True
            warnings.warn(f"MaskFolder resizes mask {mask_path} from {ids.shape[0]}x"
                          f"{ids.shape[1]} to {size[0]}x{size[1]} (H x W) with nearest-neighbour "
                          "interpolation (resize_masks=True).", DataWarning, stacklevel=4)
        # Mode "I" (int32) keeps any class id; NEAREST copies existing values, never blends.
        resized = Image.fromarray(ids.astype(np.int32), mode="I").resize(
            (size[1], size[0]), Image.NEAREST)
        return np.asarray(resized).astype(np.int64)

    def _check_values(self, ids: np.ndarray, path: Path) -> None:
        values = np.unique(ids)
        bad = [int(v) for v in values
               if not (0 <= v < self.num_classes or v == self.ignore_index)]
        if bad:
            allowed = f"the class ids 0..{self.num_classes - 1}" + (
                f" and the ignore label {self.ignore_index}" if self.ignore_index is not None
                else "")
            raise DataError(f"Mask {path} holds values {bad[:10]} outside {allowed} (values "
                            f"found: {values.tolist()[:20]}). Check num_classes, or fix the "
                            "mask.")

    def _read_ids(self, path: Path) -> np.ndarray:
        """The class ids of one mask file, int64 ``(h, w)``, by the rules in the class doc."""
        if _is_jpeg(path):
            return self._read_jpeg(path)
        if self.binary:
            return self._read_binary(path)
        if self._match_colours:
            array, mode, _ = _decode(path, "mask")
            if _single_channel(array, path) is None:
                return self._colours_to_ids(array[..., :3], path, lossless=True)
        try:
            ids = read_mask(path, self.num_classes, self.ignore_index).numpy().astype(np.int64)
        except DataError as error:
            hint = self._hint(path)
            if hint:
                raise DataError(f"{error} {hint}") from None
            raise
        if self.ignore_index == 255 and set(np.unique(ids).tolist()) == {0, 255}:
            # Valid ids on paper (class 0 and the ignore label), but almost surely a 0/255
            # binary mask: reading 255 as void would hide every foreground pixel from the loss
            # and the metrics, and the model would learn "everything is background".
            raise DataError(f"Mask {path} holds only the values 0 and 255: "
                            f"{describe_bad_mask([0, 255], self.num_classes, None)}, or pass "
                            "MaskFolder(..., num_classes=2, binary=True), which turns 0/255 "
                            "masks into 0/1. (Read as they are, 255 would be the ignore label "
                            "and every foreground pixel would be skipped.)")
        return ids

    def _hint(self, path: Path) -> str:
        """The MaskFolder option that reads a mask read_mask refused, if there is one."""
        try:
            array, _, _ = _decode(path, "mask")
        except DataError:
            return ""
        grey = _single_channel(array, path)
        if grey is None:
            return ("Or pass MaskFolder(..., palette=[(r, g, b), ...]) with one colour per class "
                    "id: colours are then mapped to the nearest palette colour.")
        if grey.dtype.kind in "ui" and set(np.unique(grey).tolist()) <= {0, 255}:
            return ("Or pass MaskFolder(..., num_classes=2, binary=True), which turns 0/255 "
                    "masks into 0/1.")
        return ""

    def _read_binary(self, path: Path) -> np.ndarray:
        array, mode, _ = _decode(path, "mask")
        grey = _single_channel(array, path)
        if grey is None:
            raise DataError(f"Mask {path} is an RGB colour mask (mode {mode}), but binary=True "
                            "expects single-channel 0/255 or 0/1 masks. Pass palette= instead "
                            "(one colour per class) and binary=False.")
        values = set(np.unique(grey).tolist())
        if values <= {0, 1}:
            return grey.astype(np.int64)
        if values <= {0, 255}:
            return (grey == 255).astype(np.int64)  # 255 is the foreground here, class 1
        shown = sorted(values)[:10]
        mixed = ("it mixes 1 and 255, so it is not clear which is the foreground; "
                 if {1, 255} <= values else "")
        raise DataError(f"Mask {path} holds values {shown} (of {len(values)} distinct); "
                        f"binary=True reads masks of 0/255 or 0/1 only: {mixed}values in "
                        "between come from smoothing, bilinear resizing or JPEG. Rebuild the "
                        "mask from the labels, or threshold it at 128 yourself.")

    def _read_jpeg(self, path: Path) -> np.ndarray:
        if self.jpeg_masks is None:
            try:  # read_mask refuses JPEG with the explanation; add this class's option
                read_mask(path, self.num_classes, self.ignore_index)
            except DataError as error:
                raise DataError(
                    f"{error} If there is no PNG, MaskFolder can read it anyway: "
                    "jpeg_masks='threshold' for two-class (figure-ground) masks, cut at grey "
                    "level 128, or jpeg_masks='nearest' for the nearest class id or palette "
                    "colour; both warn.") from None
            raise DataError(f"Mask {path} is a JPEG file; pass jpeg_masks='threshold' or "
                            "'nearest', or save it as PNG.")
        if not self._jpeg_warned:  # a JPEG under a PNG name, missed by the suffix count
            self._warn_jpeg(None, path)
        try:
            with Image.open(path) as pil:
                mode = pil.mode
                colour = self._match_colours and self.jpeg_masks == "nearest" and mode != "L"
                array = np.asarray(pil.convert("RGB" if colour else "L"))
        except (OSError, SyntaxError, ValueError) as error:
            raise DataError(f"Cannot read mask {path}: {error}. The file is corrupt or not an "
                            "image; replace it.") from None
        if self.jpeg_masks == "threshold":
            return (array >= THRESHOLD).astype(np.int64)  # (H, W): 1 = foreground
        if colour:
            return self._colours_to_ids(array, path, lossless=False)
        return self._nearest_level(array)

    def _nearest_level(self, grey: np.ndarray) -> np.ndarray:
        """Each grey value (uint8, (H, W)) to the nearest class-id level, via a 256-entry table."""
        if self.binary:
            # 0/255 or 0/1 masks: decided per file by its brightest value.
            top = 255 if int(grey.max()) >= THRESHOLD else 1
            levels, ids = np.array([0, top]), np.array([0, 1])
        else:
            labels = list(range(min(self.num_classes, 256)))
            if self.ignore_index is not None and 0 <= self.ignore_index < 256:
                labels.append(self.ignore_index)
            levels = ids = np.array(labels)
        table = ids[np.abs(np.arange(256)[:, None] - levels[None, :]).argmin(axis=1)]
        return table[grey].astype(np.int64)

    def _colours_to_ids(self, rgb: np.ndarray, path: Path, lossless: bool) -> np.ndarray:
        """RGB ``(H, W, 3)`` uint8 to class ids by the nearest palette colour."""
        index, distance = colours_to_ids(rgb, self.palette)
        if lossless and float(distance.max()) > FAR_COLOUR:
            far = np.unique(rgb[distance > FAR_COLOUR].reshape(-1, 3), axis=0)[:5].tolist()
            raise DataError(f"Mask {path} has colours such as {far} that are far (more than "
                            f"{FAR_COLOUR:g} in RGB) from every palette colour: the palette "
                            "misses a class or has a wrong colour. Add the colour to palette "
                            "(one per class id; one extra last colour means the ignore label).")
        if len(self.palette) > self.num_classes:  # the extra last colour is the ignore label
            index[index == self.num_classes] = self.ignore_index
        return index
