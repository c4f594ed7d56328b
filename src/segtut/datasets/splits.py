"""Train / val / test splits that cannot leak: duplicate images always land in one split.

Why this matters: real folders hold the same picture twice under two names (the Weizmann
horses have two such pairs). A random split puts one copy in training and the other in the
test set about a third of the time; the model has then SEEN that test image, and its test
score measures memory, not how well it segments new pictures. :func:`split_without_leaks`
treats a group of duplicates (:func:`group_duplicates`, found by the hash of the decoded
pixels, so a re-saved or renamed copy is caught too) as one unit, so the whole group goes to
one split. The split is seeded and deterministic: the same items, groups and seed give the same
split on every machine, so a chapter's numbers can be reproduced.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Hashable, Optional, Sequence

import numpy as np
from PIL import Image

from segtut.errors import DataError

__all__ = ["pixel_digest", "pixel_hash", "group_duplicates", "split_without_leaks",
           "SPLIT_NAMES", "DEFAULT_FRACTIONS"]

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def pixel_digest(array: np.ndarray) -> str:
    """SHA-1 of an array's shape, dtype and bytes: equal pixels give equal digests."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha1(f"{array.shape}{array.dtype}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def pixel_hash(path: str | Path) -> str:
    """:func:`pixel_digest` of an image decoded to RGB uint8 ``(H, W, 3)``.

    Two files with the same picture (a copy, a PNG re-save of a JPEG's pixels, a greyscale
    image stored as RGB) hash alike; a re-COMPRESSED JPEG does not (its pixels changed).

    Raises:
        DataError: the file cannot be read.
    """
    path = Path(path)
    try:
        with Image.open(path) as pil:
            return pixel_digest(np.asarray(pil.convert("RGB")))
    except (OSError, SyntaxError, ValueError) as error:
        raise DataError(f"Cannot read image {path} to compare it with the others: {error}. "
                        "Replace or remove the file.") from None


def group_duplicates(paths: Sequence[str | Path]) -> list[list[Path]]:
    """Groups of images with identical decoded pixels (only groups of two or more).

    Args:
        paths: image files.

    Returns:
        ``list[list[Path]]``: each group in the order of ``paths``, groups ordered by their
        first member; images without a duplicate are not listed.
    """
    by_hash: dict[str, list[Path]] = {}
    for path in paths:
        by_hash.setdefault(pixel_hash(path), []).append(Path(path))
    return [group for group in by_hash.values() if len(group) > 1]


def split_without_leaks(items: Sequence[Hashable], groups: Optional[Sequence[Sequence]] = None,
                        *, keys: Optional[Sequence[Hashable]] = None,
                        fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0,
                        names: Sequence[str] = SPLIT_NAMES) -> dict[str, list[int]]:
    """A seeded random split in which every group of duplicates lands in ONE split.

    Items that must stay together are given either as ``groups`` (lists of items, e.g. the
    output of :func:`group_duplicates` on the image paths) or as ``keys`` (one key per item;
    items with equal keys stay together, e.g. a pixel hash, or a video / patient id). Every
    other item is a unit of its own. The units are shuffled with ``random.Random(seed)`` and
    laid end to end; each unit goes to the split whose share of the line its middle falls in,
    so split sizes match ``fractions`` up to the size of one unit.

    Args:
        items: the things to split (paths, names...), hashable; indices refer to this order.
        groups: lists of items that must share a split; an item in no group is alone.
        keys: alternatively, one key per item.
        fractions: the share of items per split, summing to 1.
        seed: the random seed; the same inputs and seed give the same split.
        names: the split names, one per fraction.

    Returns:
        ``{name: sorted list of indices into items}``, covering every index exactly once.

    Raises:
        ValueError: bad fractions, keys of the wrong length, or a group item not in ``items``.
    """
    fractions = [float(f) for f in fractions]
    if len(fractions) != len(names):
        raise ValueError(f"{len(fractions)} fractions for {len(names)} split names {names}.")
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions {fractions} must be non-negative and sum to 1.")
    if groups is not None and keys is not None:
        raise ValueError("Pass groups or keys, not both.")
    position = {item: i for i, item in enumerate(items)}
    if len(position) != len(items):
        raise ValueError("items must be distinct (an item appears twice).")
    owner = list(range(len(items)))  # owner[i]: the unit item i belongs to
    if keys is not None:
        if len(keys) != len(items):
            raise ValueError(f"{len(keys)} keys for {len(items)} items: give one key per item.")
        first: dict = {}
        for i, key in enumerate(keys):
            owner[i] = first.setdefault(key, i)
    for group in groups or ():
        try:
            members = sorted(position[item] for item in group)
        except KeyError as error:
            raise ValueError(f"Group member {error.args[0]!r} is not in items.") from None
        # Merge with any unit a member already belongs to (groups may overlap).
        roots = {_root(owner, m) for m in members}
        target = min(roots)
        for root in roots:
            owner[root] = target
    units: dict[int, list[int]] = {}
    for i in range(len(items)):
        units.setdefault(_root(owner, i), []).append(i)
    order = list(units.values())  # in order of first index: independent of hashing
    random.Random(seed).shuffle(order)
    bounds = np.cumsum(fractions) * len(items)
    splits: dict[str, list[int]] = {name: [] for name in names}
    filled = 0
    for unit in order:
        middle = filled + len(unit) / 2
        index = min(int(np.searchsorted(bounds, middle, side="right")), len(names) - 1)
        splits[names[index]].extend(unit)
        filled += len(unit)
    return {name: sorted(indices) for name, indices in splits.items()}


def _root(owner: list[int], i: int) -> int:
    """The unit of item ``i`` (union-find with path halving)."""
    while owner[i] != i:
        owner[i] = owner[owner[i]]
        i = owner[i]
    return i
