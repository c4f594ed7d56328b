"""Look at a folder of images and masks BEFORE training: what is there, and what is wrong.

:func:`describe_dataset` reads every pair once and never raises on a bad file: it collects
what it finds into a :class:`DatasetReport`, whose :attr:`~DatasetReport.problems` name the
files and the fix, and whose ``str()`` is a readable summary for a notebook. It finds the traps
of real folders: images without masks and masks without images, pairs of different sizes,
JPEG masks and their noise, 0/255 binary masks, RGB colour masks, values that are not class
ids, duplicate images (which leak between a random train and test split), and unreadable files.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from segtut.data import list_images
from segtut.datasets.labels import IGNORE_INDEX
from segtut.datasets.splits import pixel_digest

__all__ = ["describe_dataset", "DatasetReport", "PairInfo", "SizeMismatch", "same_aspect"]

#: Grey levels this close to 0 or to 255 count as "black" or "white" in a noisy binary mask.
_NEAR = 30
#: Share of pixels near 0 or 255 above which a many-valued mask "looks binary" (JPEG noise).
_BINARY_SHARE = 0.98
_JPEG_FORMATS = ("JPEG", "MPO")
_SHOWN = 5  # file names quoted per problem


def same_aspect(size_a: Sequence[int], size_b: Sequence[int], tolerance: float = 0.02) -> bool:
    """True when two ``(H, W)`` sizes have the same aspect ratio, up to rounding.

    A mask drawn on a scaled copy of its photo has the photo's shape up to a pixel of rounding
    in each dimension; ``tolerance`` (relative) plus that pixel is allowed.
    """
    (ha, wa), (hb, wb) = size_a, size_b
    if min(ha, wa, hb, wb) <= 0:
        return False
    slack = tolerance + 1.0 / min(ha, wa, hb, wb)  # one pixel of rounding on small images
    return abs((ha / wa) / (hb / wb) - 1.0) <= slack


@dataclass
class PairInfo:
    """What :func:`describe_dataset` found about one name (stem); sizes are ``(H, W)``."""

    name: str
    image: Optional[Path] = None
    mask: Optional[Path] = None
    image_size: Optional[tuple[int, int]] = None
    mask_size: Optional[tuple[int, int]] = None
    image_mode: Optional[str] = None
    mask_mode: Optional[str] = None
    mask_format: Optional[str] = None
    mask_channels: Optional[int] = None
    #: "grey" (one channel, or identical copies) or "colour" (channels differ).
    mask_kind: Optional[str] = None
    mask_values: int = 0  # distinct values (grey) or colours (colour)
    image_sha1: Optional[str] = None
    pixels_sha1: Optional[str] = None
    errors: list[str] = field(default_factory=list)


class SizeMismatch(tuple):
    """``(name, image_size, mask_size, same_aspect)`` of a pair whose sizes differ."""

    __slots__ = ()

    def __new__(cls, name: str, image_size, mask_size, aspect: bool):
        return super().__new__(cls, (name, tuple(image_size), tuple(mask_size), aspect))

    name = property(lambda self: self[0])
    image_size = property(lambda self: self[1])
    mask_size = property(lambda self: self[2])
    same_aspect = property(lambda self: self[3])


def _names(items: Sequence, shown: int = _SHOWN) -> str:
    items = list(items)
    text = ", ".join(str(i) for i in items[:shown])
    return text + (f" and {len(items) - shown} more" if len(items) > shown else "")


@dataclass
class DatasetReport:
    """The result of :func:`describe_dataset`; ``str(report)`` is a readable summary.

    Sizes are ``(H, W)``. File lists hold file names (not paths), sorted.
    """

    images_dir: Path
    masks_dir: Path
    num_classes: Optional[int]
    ignore_index: Optional[int]
    class_names: Optional[tuple[str, ...]]
    pairs: int = 0
    files: list[PairInfo] = field(default_factory=list)
    missing_folders: list[str] = field(default_factory=list)
    images_without_masks: list[str] = field(default_factory=list)
    masks_without_images: list[str] = field(default_factory=list)
    name_clashes: list[list[str]] = field(default_factory=list)
    image_sizes: Counter = field(default_factory=Counter)
    mask_sizes: Counter = field(default_factory=Counter)
    size_mismatches: list[SizeMismatch] = field(default_factory=list)
    mask_formats: Counter = field(default_factory=Counter)
    jpeg_masks: list[str] = field(default_factory=list)
    mask_modes: Counter = field(default_factory=Counter)
    mask_channels: Counter = field(default_factory=Counter)
    #: Pixel count of every grey value over all single-channel masks.
    mask_values: Counter = field(default_factory=Counter)
    #: Pixel count of every colour ``(r, g, b)`` over all colour masks.
    mask_colours: Counter = field(default_factory=Counter)
    colour_masks: list[str] = field(default_factory=list)
    binary_0_255_masks: list[str] = field(default_factory=list)
    #: Masks whose values are all 0/255 (exactly, or up to JPEG noise) and not class ids.
    looks_binary: bool = False
    #: Grey levels found over all masks when they look binary but hold more than two values.
    jpeg_noise_levels: int = 0
    #: ``{name: share of pixels}``, per class (thresholded at 128 when binary-looking) or value.
    class_frequencies: dict[str, float] = field(default_factory=dict)
    #: Masks with values that are neither class ids nor the ignore label (needs num_classes).
    out_of_range: dict[str, list[int]] = field(default_factory=dict)
    duplicate_files: list[list[str]] = field(default_factory=list)
    duplicate_images: list[list[str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    files_checked: int = 0
    max_files: Optional[int] = None

    @property
    def flags(self) -> list[str]:
        """Short labels for what the mask values look like."""
        flags = []
        if self.binary_0_255_masks:
            flags.append("looks like 0/255 binary")
        if self.jpeg_noise_levels:
            flags.append(f"JPEG noise: {self.jpeg_noise_levels} grey levels")
        if self.colour_masks:
            flags.append("RGB colour mask")
        return flags

    @property
    def problems(self) -> list[str]:
        """Every problem found, one string each, naming the files and the fix."""
        out = []
        for folder in self.missing_folders:
            out.append(f"Folder {folder} does not exist: point describe_dataset at the folders "
                       "of images and masks.")
        for name, error in self.unreadable:
            out.append(f"Cannot read {name}: {error}. Replace the file (re-download or re-export "
                       "it).")
        for group in self.name_clashes:
            out.append(f"Several files share one name without the suffix: {_names(group)}. Files "
                       "are paired by that name: delete or rename the extra ones.")
        if self.images_without_masks:
            out.append(f"{len(self.images_without_masks)} image(s) have no mask of the same name "
                       f"in {self.masks_dir}: {_names(self.images_without_masks)}. Add the masks "
                       "or remove the images.")
        if self.masks_without_images:
            out.append(f"{len(self.masks_without_images)} mask(s) have no image of the same name "
                       f"in {self.images_dir}: {_names(self.masks_without_images)}. An image was "
                       "renamed or deleted: restore it, or remove the masks.")
        scaled = [m for m in self.size_mismatches if m.same_aspect]
        stretched = [m for m in self.size_mismatches if not m.same_aspect]
        if scaled:
            example = scaled[0]
            out.append(f"{len(scaled)} pair(s) differ in size but share the aspect ratio (the "
                       f"masks are scaled copies), e.g. {example.name}: image "
                       f"{_hw(example.image_size)}, mask {_hw(example.mask_size)}; "
                       f"{_names([m.name for m in scaled])}. Resize masks to their images with "
                       "nearest-neighbour interpolation: MaskFolder(..., resize_masks=True).")
        if stretched:
            shown = "; ".join(f"{m.name}: image {_hw(m.image_size)}, mask {_hw(m.mask_size)}"
                              for m in stretched[:_SHOWN])
            out.append(f"{len(stretched)} pair(s) differ in size AND aspect ratio ({shown}): "
                       "the mask is not a scaled copy of the image. Check the pairing, or "
                       "crop/pad both the same way; do not just resize.")
        if self.jpeg_masks:
            out.append(f"{len(self.jpeg_masks)} mask(s) are JPEG files: "
                       f"{_names(self.jpeg_masks)}. JPEG is lossy and changes values near "
                       "edges. Re-export them as PNG from the original labels, or read them "
                       "with MaskFolder(..., jpeg_masks='threshold') (two classes) or "
                       "jpeg_masks='nearest'.")
        if self.jpeg_noise_levels:
            out.append(f"The masks look like 0/255 binary masks with JPEG noise: "
                       f"{self.jpeg_noise_levels} grey levels instead of 2. Threshold them at "
                       "128 (MaskFolder(..., num_classes=2, jpeg_masks='threshold')).")
        if self.binary_0_255_masks:
            out.append(f"{len(self.binary_0_255_masks)} mask(s) hold only 0 and 255, a binary "
                       f"mask, not class ids: {_names(self.binary_0_255_masks)}. Divide them by "
                       "255, or use MaskFolder(..., num_classes=2, binary=True).")
        if self.colour_masks:
            out.append(f"{len(self.colour_masks)} mask(s) are RGB colour masks: "
                       f"{_names(self.colour_masks)}. Map colours to class ids: "
                       "MaskFolder(..., palette=[(r, g, b), ...]) with one colour per class.")
        if self.out_of_range:
            names = sorted(self.out_of_range)
            values = sorted({v for vs in self.out_of_range.values() for v in vs})
            ignore = (f" or the ignore label {self.ignore_index}"
                      if self.ignore_index is not None else "")
            out.append(f"{len(names)} mask(s) hold values {values[:10]} that are neither class "
                       f"ids 0..{self.num_classes - 1}{ignore}: {_names(names)}. Check "
                       "num_classes and how the masks were made.")
        for group in self.duplicate_images:
            same_bytes = any(set(group) <= set(g) for g in self.duplicate_files)
            how = "byte-identical files" if same_bytes else "identical pixels"
            out.append(f"Duplicate images ({how}): {', '.join(group)}. A random split can put "
                       "one copy in training and another in the test set, which then measures "
                       "memory, not generalisation. Keep one, or split with "
                       "segtut.datasets.splits.split_without_leaks.")
        return out

    def summary(self) -> str:
        """A readable multi-line summary (the same as ``str(report)``)."""
        lines = [f"Data set: images {self.images_dir}, masks {self.masks_dir}"]
        checked = (f" (first {self.files_checked} names checked, max_files={self.max_files})"
                   if self.max_files is not None else "")
        lines.append(f"  pairs              {self.pairs}{checked}")
        lines.append(f"  images w/o mask    {len(self.images_without_masks)}"
                     + (f": {_names(self.images_without_masks)}"
                        if self.images_without_masks else ""))
        lines.append(f"  masks w/o image    {len(self.masks_without_images)}"
                     + (f": {_names(self.masks_without_images)}"
                        if self.masks_without_images else ""))
        lines.append(f"  image sizes (HxW)  {_counts(self.image_sizes)}")
        lines.append(f"  mask sizes (HxW)   {_counts(self.mask_sizes)}")
        lines.append(f"  size mismatches    {len(self.size_mismatches)}"
                     + (f" ({sum(m.same_aspect for m in self.size_mismatches)} with the same "
                        "aspect ratio)" if self.size_mismatches else ""))
        lines.append(f"  mask formats       {dict(self.mask_formats)}")
        lines.append(f"  mask modes         {dict(self.mask_modes)}")
        if self.mask_values:
            values = sorted(self.mask_values)
            shown = values if len(values) <= 12 else values[:6] + ["..."] + values[-3:]
            lines.append(f"  mask values        {len(values)} distinct: {shown}")
        if self.mask_colours:
            lines.append(f"  mask colours       {len(self.mask_colours)} distinct")
        if self.flags:
            lines.append(f"  flags              {'; '.join(self.flags)}")
        if self.class_frequencies:
            shares = ", ".join(f"{k} {v:.1%}" for k, v in list(self.class_frequencies.items())[:12])
            lines.append(f"  pixel shares       {shares}")
        lines.append(f"  duplicate images   {len(self.duplicate_images)} group(s)"
                     + (": " + "; ".join(" = ".join(g) for g in self.duplicate_images[:_SHOWN])
                        if self.duplicate_images else ""))
        lines.append(f"  unreadable files   {len(self.unreadable)}")
        problems = self.problems
        lines.append(f"PROBLEMS ({len(problems)})" if problems else "No problems found.")
        lines.extend(f"  - {problem}" for problem in problems)
        return "\n".join(lines)

    __str__ = summary

    def to_frame(self):
        """One row per name (``pandas.DataFrame``); needs pandas."""
        try:
            import pandas as pd
        except ImportError as error:  # pragma: no cover - pandas is installed with segtut
            raise ImportError("DatasetReport.to_frame needs pandas: pip install pandas") from error
        rows = []
        for info in self.files:
            rows.append({
                "name": info.name,
                "image": info.image.name if info.image else None,
                "mask": info.mask.name if info.mask else None,
                "image_size": info.image_size, "mask_size": info.mask_size,
                "image_mode": info.image_mode, "mask_mode": info.mask_mode,
                "mask_format": info.mask_format, "mask_kind": info.mask_kind,
                "mask_values": info.mask_values, "image_sha1": info.image_sha1,
                "pixels_sha1": info.pixels_sha1, "errors": "; ".join(info.errors) or None,
            })
        return pd.DataFrame(rows)


def _hw(size) -> str:
    return f"{size[0]}x{size[1]}"


def _counts(counter: Counter, shown: int = 4) -> str:
    if not counter:
        return "-"
    common = counter.most_common(shown)
    text = ", ".join(f"{_hw(k)} ({n})" for k, n in common)
    return f"{len(counter)} distinct: {text}" + (", ..." if len(counter) > shown else "")


def _open(path: Path) -> tuple[bytes, Image.Image]:
    """The file's bytes and the decoded PIL image (fully loaded); errors propagate."""
    data = path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        pil = Image.open(io.BytesIO(data))
        pil.load()
    return data, pil


def _group(paths: Sequence[Path]) -> tuple[dict[str, Path], list[list[str]]]:
    """``{stem: first file}`` and the groups of names sharing a stem (never raises)."""
    by_stem: dict[str, list[Path]] = {}
    for path in paths:
        by_stem.setdefault(path.stem, []).append(path)
    clashes = [[p.name for p in group] for group in by_stem.values() if len(group) > 1]
    return {stem: group[0] for stem, group in by_stem.items()}, clashes


def describe_dataset(images_dir: str | Path, masks_dir: str | Path, *,
                     num_classes: Optional[int] = None,
                     ignore_index: Optional[int] = IGNORE_INDEX,
                     class_names: Optional[Sequence[str]] = None,
                     max_files: Optional[int] = None) -> DatasetReport:
    """Read every image and mask once and report what is there and what is wrong.

    Never raises on a bad file: unreadable files, missing partners and odd values are
    collected. Pairing follows :class:`segtut.datasets.folders.MaskFolder` (same stem).

    Args:
        images_dir: folder of images.
        masks_dir: folder of masks.
        num_classes: when given, mask values outside ``0 .. num_classes - 1`` (other than
            ``ignore_index``) are reported per file.
        ignore_index: the void label allowed besides class ids (default 255), or None.
        class_names: names for the class frequencies (one per class id).
        max_files: check only the first N names (sorted); the pairing is still checked for all.

    Returns:
        :class:`DatasetReport`; ``report.problems`` lists what to fix, ``print(report)`` shows
        a summary.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    report = DatasetReport(images_dir, masks_dir, num_classes, ignore_index,
                           tuple(class_names) if class_names is not None else None,
                           max_files=max_files)
    listed = {}
    for kind, folder in (("image", images_dir), ("mask", masks_dir)):
        if not folder.is_dir():
            report.missing_folders.append(str(folder))
            listed[kind] = []
        else:
            listed[kind] = list_images(folder)
    images, image_clashes = _group(listed["image"])
    masks, mask_clashes = _group(listed["mask"])
    report.name_clashes = image_clashes + mask_clashes
    report.images_without_masks = sorted(p.name for s, p in images.items() if s not in masks)
    report.masks_without_images = sorted(p.name for s, p in masks.items() if s not in images)
    stems = sorted(set(images) | set(masks))
    if max_files is not None:
        stems = stems[:max_files]
    report.files_checked = len(stems)

    grey_hist = np.zeros(256, dtype=np.int64)  # uint8 grey masks, the common case: fast bincount
    jpeg_hist = np.zeros(256, dtype=np.int64)  # the same, JPEG masks only (for the noise flag)
    wide_values: Counter = Counter()  # other single-channel masks (16-bit, int32)
    mask_value_sets: dict[str, np.ndarray] = {}
    by_bytes: dict[str, list[str]] = {}
    by_pixels: dict[str, list[str]] = {}
    for stem in stems:
        info = PairInfo(stem, images.get(stem), masks.get(stem))
        report.files.append(info)
        if info.image is not None:
            _describe_image(info, report, by_bytes, by_pixels)
        if info.mask is not None:
            values = _describe_mask(info, report, grey_hist, jpeg_hist, wide_values)
            if values is not None:
                mask_value_sets[info.mask.name] = values
        if info.image is not None and info.mask is not None:
            report.pairs += 1
            if info.image_size and info.mask_size and info.image_size != info.mask_size:
                report.size_mismatches.append(SizeMismatch(
                    stem, info.image_size, info.mask_size,
                    same_aspect(info.image_size, info.mask_size)))
    if max_files is None:
        report.pairs = sum(1 for s in images if s in masks)
    report.duplicate_files = sorted(sorted(g) for g in by_bytes.values() if len(g) > 1)
    report.duplicate_images = sorted(sorted(g) for g in by_pixels.values() if len(g) > 1)
    for value in np.flatnonzero(grey_hist):
        wide_values[int(value)] += int(grey_hist[value])
    report.mask_values = Counter(dict(sorted(wide_values.items())))
    _judge_values(report, mask_value_sets, jpeg_hist)
    return report


def _describe_image(info: PairInfo, report: DatasetReport, by_bytes: dict, by_pixels: dict
                    ) -> None:
    name = info.image.name
    try:
        data, pil = _open(info.image)
        info.image_sha1 = hashlib.sha1(data).hexdigest()
        by_bytes.setdefault(info.image_sha1, []).append(name)
        info.image_mode = pil.mode
        info.image_size = (pil.height, pil.width)
        # Decoded pixels as RGB: a PNG re-save, or a greyscale copy, of the same picture matches.
        info.pixels_sha1 = pixel_digest(np.asarray(pil.convert("RGB")))
        by_pixels.setdefault(info.pixels_sha1, []).append(name)
        report.image_sizes[info.image_size] += 1
    except Exception as error:  # noqa: BLE001 - a report collects every failure, never raises
        message = f"{type(error).__name__}: {error}"
        info.errors.append(f"image: {message}")
        report.unreadable.append((f"image {info.image}", message))


def _describe_mask(info: PairInfo, report: DatasetReport, grey_hist: np.ndarray,
                   jpeg_hist: np.ndarray, wide_values: Counter) -> Optional[np.ndarray]:
    """Record one mask; returns its distinct grey values (None for colour or unreadable)."""
    name = info.mask.name
    try:
        _, pil = _open(info.mask)
    except Exception as error:  # noqa: BLE001
        message = f"{type(error).__name__}: {error}"
        info.errors.append(f"mask: {message}")
        report.unreadable.append((f"mask {info.mask}", message))
        return None
    info.mask_mode, info.mask_format = pil.mode, pil.format
    info.mask_size = (pil.height, pil.width)
    report.mask_sizes[info.mask_size] += 1
    report.mask_formats[pil.format or "unknown"] += 1
    report.mask_modes[pil.mode] += 1
    jpeg = pil.format in _JPEG_FORMATS or info.mask.suffix.lower() in (".jpg", ".jpeg")
    if jpeg:
        report.jpeg_masks.append(name)
    array = np.asarray(pil)
    info.mask_channels = 1 if array.ndim == 2 else array.shape[2]
    report.mask_channels[info.mask_channels] += 1
    if array.ndim == 3:
        if array.shape[2] == 2:  # LA: the alpha channel is no label
            array = array[..., 0]
        elif all(np.array_equal(array[..., 0], array[..., c]) for c in (1, 2)):
            array = array[..., 0]
        else:
            info.mask_kind = "colour"
            rgb = array[..., :3].reshape(-1, 3).astype(np.uint32)
            keys, counts = np.unique((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2],
                                     return_counts=True)
            info.mask_values = len(keys)
            for key, count in zip(keys.tolist(), counts.tolist()):
                report.mask_colours[(key >> 16, (key >> 8) & 255, key & 255)] += count
            report.colour_masks.append(name)
            return None
    info.mask_kind = "grey"
    if array.dtype == np.uint8:
        hist = np.bincount(array.ravel(), minlength=256)
        grey_hist += hist
        if jpeg:
            jpeg_hist += hist
        values = np.flatnonzero(hist)
    else:
        values, counts = np.unique(array, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist()):
            wide_values[value] += count
    info.mask_values = len(values)
    if len(values) and set(values.tolist()) <= {0, 255} and 255 in values:
        report.binary_0_255_masks.append(name)
    return values


def _judge_values(report: DatasetReport, value_sets: dict[str, np.ndarray],
                  jpeg_hist: np.ndarray) -> None:
    """Flags (binary-looking, JPEG noise), class frequencies and out-of-range values."""
    values = report.mask_values
    total = sum(values.values())
    jpeg_total = int(jpeg_hist.sum())
    if jpeg_total:
        # JPEG noise around 0 and 255: many levels, nearly all pixels close to black or white.
        # Only JPEG masks count: PNG class ids 0, 1, 2 with the ignore label 255 are not noise.
        levels = np.arange(256)
        near = int(jpeg_hist[(levels <= _NEAR) | (levels >= 255 - _NEAR)].sum())
        if (np.count_nonzero(jpeg_hist) > 2 and near / jpeg_total >= _BINARY_SHARE
                and jpeg_hist[128:].sum() > 0):
            report.jpeg_noise_levels = int(np.count_nonzero(jpeg_hist))
    if total:
        bright = sum(n for v, n in values.items() if v >= 128)
        report.looks_binary = ((set(values) <= {0, 255} and 255 in values)
                               or (report.jpeg_noise_levels > 0 and jpeg_total == total))
        names = report.class_names
        if report.looks_binary:
            low, high = (names if names is not None and len(names) == 2
                         else ("background (< 128)", "foreground (>= 128)"))
            report.class_frequencies = {low: (total - bright) / total, high: bright / total}
        else:
            for value, count in values.items():
                if value == report.ignore_index:
                    key = f"ignore ({value})"
                elif names is not None and 0 <= value < len(names):
                    key = names[value]
                else:
                    key = f"value {value}"
                report.class_frequencies[key] = count / total
    colour_total = sum(report.mask_colours.values())
    for colour, count in report.mask_colours.most_common(20):
        report.class_frequencies[f"rgb{colour}"] = count / colour_total
    if report.num_classes is None or report.looks_binary:
        return  # binary-looking masks are reported as such, not value by value
    for name, found in value_sets.items():
        bad = [int(v) for v in found
               if not (0 <= v < report.num_classes or v == report.ignore_index)]
        if bad:
            report.out_of_range[name] = bad
