"""Colour-coded label images to class ids: nearest palette colour, and the shortcut not to take.

Some data sets publish labels as colour pictures (one RGB colour per class) instead of id maps:
the pix2pix / Kaggle copy of Cityscapes is one, and its label halves are JPEG-compressed and were
resized with blending, so most pixels are near a palette colour but few are exactly on one. An
exact-match lookup then drops or mislabels the edges; matching one channel (the red value, say)
confuses classes that share it. :func:`colours_to_ids` assigns every pixel the NEAREST palette
colour (Euclidean distance in RGB) and returns that distance, so callers can see how far off
the colours are (:func:`ambiguous_share`) and choose to ignore the worst pixels.
:func:`red_channel_ids` is the wrong shortcut, kept so a chapter can measure its error.

numpy only: no torch needed to convert or inspect colour labels.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from segtut.datasets.labels import IGNORE_INDEX

__all__ = ["colours_to_ids", "ambiguous_share", "red_channel_ids"]

# Distances are computed between the image's DISTINCT colours and the palette, in blocks of this
# many colours: a 256x512 JPEG holds up to ~50 000 distinct colours, and 34 palette entries
# make a (50 000, 34) float32 table (7 MB); the block bounds it for bigger pictures.
_BLOCK = 65536


def _palette_arrays(palette: Sequence[Sequence[int]],
                    ids: Optional[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``palette`` as float32 ``(K, 3)`` and ``ids`` as int64 ``(K,)``, checked."""
    colours = np.asarray(palette, dtype=np.float32)
    if colours.ndim != 2 or colours.shape[1] != 3 or len(colours) == 0:
        raise ValueError(f"palette must be a non-empty sequence of RGB triples, got an array of "
                         f"shape {colours.shape}.")
    if ids is None:
        ids = np.arange(len(colours), dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.shape != (len(colours),):
        raise ValueError(f"ids must hold one id per palette colour ({len(colours)}), got "
                         f"{ids.shape[0] if ids.ndim == 1 else ids.shape}.")
    return colours, ids


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be a uint8 (H, W, 3) array, got {rgb.dtype} {rgb.shape}. "
                         "For a tv_tensors.Image (3, H, W) pass image.permute(1, 2, 0).numpy().")
    return rgb


def colours_to_ids(rgb: np.ndarray, palette: Sequence[Sequence[int]],
                   ids: Optional[Sequence[int]] = None, *,
                   max_distance: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """Class id of every pixel by its NEAREST palette colour, and the distance to that colour.

    The distance is Euclidean in RGB (0..255 per channel). A pixel exactly halfway between two
    palette colours gets the one listed first in ``palette``, so the result is deterministic.
    Only the image's distinct colours are compared with the palette (``np.unique``), which keeps
    a 256x512 label to a few milliseconds and memory to the number of distinct colours.

    Args:
        rgb: uint8 ``(H, W, 3)`` colour label.
        palette: ``K`` RGB triples.
        ids: the id of each palette entry (default ``0 .. K-1``); several entries may share an id.
        max_distance: None (default): every pixel gets its nearest colour's id, however far.
            A number: pixels farther than this from every palette colour get
            :data:`~segtut.datasets.labels.IGNORE_INDEX` (255) instead.

    Returns:
        ``(ids, distance)``: int64 ``(H, W)`` ids and float32 ``(H, W)`` distances in RGB units.
    """
    rgb = _check_rgb(rgb)
    colours, ids = _palette_arrays(palette, ids)
    height, width, _ = rgb.shape
    # One integer per colour, so np.unique works on a flat array (much faster than axis=0).
    codes = ((rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8)
             | rgb[..., 2].astype(np.uint32)).ravel()
    distinct, inverse = np.unique(codes, return_inverse=True)
    distinct_rgb = np.stack([(distinct >> 16) & 255, (distinct >> 8) & 255, distinct & 255],
                            axis=1).astype(np.float32)  # (U, 3)
    nearest = np.empty(len(distinct), dtype=np.int64)
    squared = np.empty(len(distinct), dtype=np.float32)
    for start in range(0, len(distinct), _BLOCK):
        block = distinct_rgb[start:start + _BLOCK]
        table = ((block[:, None, :] - colours[None, :, :]) ** 2).sum(axis=2)  # (B, K)
        best = table.argmin(axis=1)  # argmin takes the first of equal minima: palette order
        nearest[start:start + _BLOCK] = best
        squared[start:start + _BLOCK] = table[np.arange(len(block)), best]
    label = ids[nearest][inverse].reshape(height, width)
    distance = np.sqrt(squared)[inverse].reshape(height, width).astype(np.float32)
    if max_distance is not None:
        label = np.where(distance > max_distance, IGNORE_INDEX, label)
    return label, distance


def ambiguous_share(distance: np.ndarray, threshold: float = 30.0) -> float:
    """Share of pixels farther than ``threshold`` RGB units from their nearest palette colour.

    Args:
        distance: float ``(H, W)`` distances from :func:`colours_to_ids`.
        threshold: in RGB units; 30 is about 12% of one channel's range, beyond JPEG noise on a
            flat region but typical of blended class edges.

    Returns:
        a float in 0..1 (0 for an empty array).
    """
    distance = np.asarray(distance)
    if distance.size == 0:
        return 0.0
    return float((distance > threshold).mean())


def red_channel_ids(rgb: np.ndarray, palette: Sequence[Sequence[int]],
                    ids: Optional[Sequence[int]] = None) -> np.ndarray:
    """WRONG on purpose: class ids from the red channel alone, as some tutorials do.

    Each pixel gets the id of the palette colour whose RED value is nearest to its own (ties:
    the colour listed first). Palette colours that share a red value cannot be told apart
    (Cityscapes: building and sky both have red 70; car, truck, bus, train and motorcycle all
    have red 0), and JPEG noise moves pixels across the narrow gaps between red values (road
    128 and pole 153 are near many others). Use it only to show, in numbers, how much worse it
    is than :func:`colours_to_ids`.

    Args:
        rgb: uint8 ``(H, W, 3)`` colour label.
        palette: ``K`` RGB triples.
        ids: the id of each palette entry (default ``0 .. K-1``).

    Returns:
        int64 ``(H, W)`` ids.
    """
    rgb = _check_rgb(rgb)
    colours, ids = _palette_arrays(palette, ids)
    reds = np.abs(np.arange(256, dtype=np.float32)[:, None] - colours[None, :, 0])  # (256, K)
    by_red = ids[reds.argmin(axis=1)]  # the id for each of the 256 red values
    return by_red[rgb[..., 0]]
