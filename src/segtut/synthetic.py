"""SYNTHETIC street scenes: an offline stand-in for CamVid, for demos and smoke runs only.

:class:`SyntheticScenes` draws simple street-like pictures (sky, buildings, road, pavement, cars,
poles, trees, ...) labelled with the CamVid class ids, so every chapter can run without the real
data. It is not CamVid and numbers measured on it say nothing about real segmentation quality, so
it announces itself: a :class:`SyntheticDataWarning` when built, ``is_synthetic = True``, a
``repr`` that says so, and :func:`describe_source` for run cards.

:func:`write_synthetic_camvid` writes such scenes as PNG files in CamVid's SegNet layout, with a
marker file (:data:`segtut.data.SYNTHETIC_MARKER`) that makes :class:`segtut.data.CamVid` report
``is_synthetic = True`` for them: the smoke profile's offline fallback
(:func:`segtut.profiles.camvid_for_profile`) is such a folder.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset
from PIL import Image
from torchvision import tv_tensors

from segtut.data import (IGNORE_INDEX, NUM_CLASSES, PALETTE, SYNTHETIC_MARKER, CamVid,
                         SegmentationFolder)

SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)
#: Classes drawn as objects; a thin void border is left around them, as in CamVid.
OBJECT_CLASSES = (POLE, SIGN, CAR, PEDESTRIAN, BICYCLIST)


class SyntheticDataWarning(UserWarning):
    """Raised when a synthetic dataset is built, so nobody mistakes it for real data."""


def draw_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street-like scene and its label map.

    Args:
        rng: the random generator that decides everything in the scene.
        height, width: size in pixels.

    Returns:
        ``(image, labels)``: uint8 ``(H, W, 3)`` and int64 ``(H, W)`` with CamVid class ids
        ``0 .. 10`` and void (:data:`segtut.data.IGNORE_INDEX`) at object borders.
    """
    H, W = height, width
    yy, xx = np.mgrid[0:H, 0:W]  # (H, W) each
    labels = np.full((H, W), SKY, dtype=np.int64)

    def box(top, bottom, left, right, value):
        top, bottom = int(max(0, top)), int(min(H, max(bottom, top + 1)))
        left, right = int(max(0, left)), int(min(W, max(right, left + 1)))
        labels[top:bottom, left:right] = value

    def disc(cy, cx, radius, value, below=None):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= max(radius, 0.5) ** 2
        if below is not None:
            inside &= yy < below
        labels[inside] = value

    horizon = rng.uniform(0.45, 0.6) * H  # where the ground starts

    # Buildings: blocks of random width and roof height, with the odd gap of sky.
    x = 0.0
    while x < W:
        block = rng.uniform(0.08, 0.25) * W
        if rng.random() > 0.15:
            box(rng.uniform(0.08, 0.4) * H, horizon, x, x + block, BUILDING)
        x += block
    for _ in range(rng.integers(1, 4)):  # trees in front of the buildings
        disc(rng.uniform(0.25, 0.5) * H, rng.uniform(0, W), rng.uniform(0.05, 0.12) * H, TREE,
             below=horizon)
    if rng.random() < 0.5:  # a fence along the pavement
        left = rng.uniform(0, 0.6) * W
        box(horizon - 0.06 * H, horizon, left, left + rng.uniform(0.2, 0.4) * W, FENCE)

    # Ground: a road that widens towards the bottom, pavement on both sides.
    depth = np.clip((yy - horizon) / (H - horizon), 0, 1)  # 0 at the horizon, 1 at the bottom
    centre = W * rng.uniform(0.4, 0.6)
    half_width = W * (0.12 + 0.45 * depth)
    ground = yy >= horizon
    labels[ground] = PAVEMENT
    labels[ground & (np.abs(xx - centre) < half_width)] = ROAD

    def ground_row(fraction):  # a row below the horizon, 0 = horizon, 1 = bottom
        return horizon + fraction * (H - horizon)

    for _ in range(rng.integers(1, 4)):  # poles on the pavement, some with a sign
        bottom = ground_row(rng.uniform(0.1, 0.5))
        side = rng.choice([-1, 1])
        x = centre + side * (W * (0.12 + 0.45 * (bottom - horizon) / (H - horizon)) + 0.03 * W)
        top = rng.uniform(0.12, 0.35) * H
        box(top, bottom, x, x + max(1, 0.012 * W), POLE)
        if rng.random() < 0.5:
            box(top, top + 0.05 * H, x - 0.02 * W, x + 0.03 * W, SIGN)
    for _ in range(rng.integers(0, 3)):  # pedestrians on the pavement
        bottom = ground_row(rng.uniform(0.2, 0.9))
        scale = 0.3 + 0.7 * (bottom - horizon) / (H - horizon)
        x = rng.choice([rng.uniform(0, 0.15), rng.uniform(0.85, 1.0)]) * W
        body = 0.22 * H * scale
        box(bottom - body, bottom, x, x + 0.3 * body, PEDESTRIAN)
        disc(bottom - body - 0.1 * body, x + 0.15 * body, 0.12 * body, PEDESTRIAN)
    if rng.random() < 0.3:  # a bicyclist on the road
        bottom = ground_row(rng.uniform(0.3, 0.8))
        scale = 0.3 + 0.7 * (bottom - horizon) / (H - horizon)
        x = centre + rng.uniform(-0.1, 0.1) * W
        size = 0.2 * H * scale
        box(bottom - 1.6 * size, bottom - 0.4 * size, x, x + 0.35 * size, BICYCLIST)
        disc(bottom - 0.3 * size, x - 0.3 * size, 0.3 * size, BICYCLIST)
        disc(bottom - 0.3 * size, x + 0.6 * size, 0.3 * size, BICYCLIST)
    for bottom in sorted(ground_row(rng.uniform(0.1, 1.0, size=rng.integers(1, 4)))):
        scale = 0.2 + 0.8 * (bottom - horizon) / (H - horizon)  # far cars first, near ones on top
        car_height = 0.3 * (H - horizon) * scale + 0.04 * H
        car_width = 1.8 * car_height
        x = centre + rng.uniform(-0.6, 0.6) * W * (0.12 + 0.45 * scale) - car_width / 2
        box(bottom - car_height, bottom, x, x + car_width, CAR)

    # Colours: the class palette, jittered per image, with a sky gradient and pixel noise.
    palette = np.array(PALETTE[:NUM_CLASSES], dtype=np.float32)  # (11, 3)
    palette += rng.normal(0, 8, size=palette.shape)
    image = palette[labels]  # (H, W, 3)
    image[labels == SKY] += (40 * (1 - yy / H))[labels == SKY, None]
    image *= rng.uniform(0.85, 1.15)
    image += rng.normal(0, 10, size=image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)

    # Void: a one-pixel unlabelled ring just outside objects, as hand labelling leaves in CamVid
    # (outside, so that one-pixel poles keep their label).
    is_object = np.isin(labels, OBJECT_CLASSES)
    near_object = np.zeros((H, W), dtype=bool)
    near_object[1:] |= is_object[:-1]
    near_object[:-1] |= is_object[1:]
    near_object[:, 1:] |= is_object[:, :-1]
    near_object[:, :-1] |= is_object[:, 1:]
    labels[near_object & ~is_object] = IGNORE_INDEX
    return image, labels


class SyntheticScenes(Dataset):
    """SYNTHETIC street scenes with CamVid class ids: an offline fallback, NOT CamVid.

    Items have the same types as :class:`segtut.data.CamVid`: without a transform,
    ``tv_tensors.Image`` uint8 ``(3, H, W)`` and ``tv_tensors.Mask`` int64 ``(H, W)`` with class
    ids ``0 .. 10`` and void = 11. Item ``i`` is drawn from a generator seeded with
    ``(seed, i)``, so it is the same on every call and every machine, and datasets with different
    seeds share no scenes (use one seed per split).

    Args:
        length: number of scenes.
        size: ``(H, W)`` of every scene.
        seed: base seed (a non-negative integer).
        transform: joint ``transform(image, mask) -> (image, mask)``, or None.
    """

    is_synthetic = True
    num_classes = NUM_CLASSES
    ignore_index = IGNORE_INDEX

    def __init__(self, length: int = 64, size: tuple[int, int] = (360, 480), seed: int = 0,
                 transform: Optional[Callable] = None):
        if length < 0 or seed < 0 or min(size) < 1:
            raise ValueError(f"SyntheticScenes needs length >= 0, seed >= 0 and a positive size; "
                             f"got length={length}, seed={seed}, size={size}.")
        self.length, self.size, self.seed = int(length), (int(size[0]), int(size[1])), int(seed)
        self.transform = transform
        warnings.warn(f"SYNTHETIC DATA: {self!r} draws fake street scenes for offline demos. "
                      "It is NOT CamVid; results on it say nothing about real segmentation.",
                      SyntheticDataWarning, stacklevel=2)

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return (f"SyntheticScenes(SYNTHETIC, not CamVid: length={self.length}, "
                f"size={self.size}, seed={self.seed})")

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Draw scene ``index``, without the transform."""
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} synthetic scenes")
        index %= self.length
        rng = np.random.default_rng([self.seed, index])
        image, labels = draw_scene(rng, *self.size)  # (H, W, 3) uint8, (H, W) int64
        image = torch.from_numpy(image).permute(2, 0, 1).contiguous()  # (3, H, W)
        return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(labels))  # (H, W)

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.transform is not None:
            return self.transform(image, mask)
        return image, mask


def write_synthetic_camvid(folder: str | Path, train_images: int = 8, eval_images: int = 4,
                           size: tuple[int, int] = (96, 128)) -> Path:
    """Write SYNTHETIC street scenes (:class:`SyntheticScenes`) as PNG files in CamVid's SegNet
    layout (``train/``, ``trainannot/``, ``val/``, ...), for offline smoke runs.

    The scenes are NOT CamVid: numbers measured on them mean nothing. The folder gets a
    :data:`segtut.data.SYNTHETIC_MARKER` file saying so, and :class:`segtut.data.CamVid` reads
    it as ``is_synthetic = True`` (and :func:`describe_source` calls it SYNTHETIC).

    Args:
        folder: where to write (created if needed).
        train_images: training pairs; ``eval_images``: val pairs and test pairs each.
        size: ``(H, W)`` of every scene; the default keeps CamVid's 3:4 shape (360x480) small.

    Returns:
        ``folder``, to pass to :class:`segtut.data.CamVid` as ``root``.
    """
    folder = Path(folder)
    counts = {"train": train_images, "val": eval_images, "test": eval_images}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SYNTHETIC_MARKER).write_text(
        "SYNTHETIC street scenes drawn by segtut.synthetic for offline smoke runs. NOT CamVid: "
        "numbers measured on them mean nothing.\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntheticDataWarning)  # the caller announces it
        for seed, (split, count) in enumerate(counts.items(), start=1):
            scenes = SyntheticScenes(count, size, seed=seed)
            (folder / split).mkdir(parents=True, exist_ok=True)
            (folder / f"{split}annot").mkdir(parents=True, exist_ok=True)
            for index in range(count):
                image, mask = scenes.load(index)  # (3, H, W) uint8, (H, W) int64
                name = f"synthetic_{index:04d}.png"
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / split / name)
                Image.fromarray(mask.numpy().astype(np.uint8)).save(folder / f"{split}annot" / name)
    return folder


def describe_source(dataset: Dataset) -> str:
    """Say in a few words where a dataset's pictures come from, for run cards and plot titles.

    Returns:
        e.g. ``"real CamVid (train, 367 images)"`` or
        ``"SYNTHETIC scenes (offline fallback, NOT CamVid, 64 images)"``.
    """
    if isinstance(dataset, Subset):
        inner = describe_source(dataset.dataset)
        return f"{len(dataset)} of {inner}"
    if isinstance(dataset, ConcatDataset):
        return " + ".join(describe_source(part) for part in dataset.datasets)
    if getattr(dataset, "is_synthetic", False):
        return f"SYNTHETIC scenes (offline fallback, NOT CamVid, {len(dataset)} images)"
    if isinstance(dataset, CamVid):
        return f"real CamVid ({dataset.split}, {len(dataset)} images)"
    if isinstance(dataset, SegmentationFolder):
        return f"image folder {dataset.images_dir} ({len(dataset)} images)"
    try:
        return f"{type(dataset).__name__} ({len(dataset)} images)"
    except TypeError:
        return type(dataset).__name__
