"""Run profiles: one notebook, three sizes of run.

* ``smoke``: seconds. A handful of small images and a few steps; the test suite runs every
  notebook this way. Uses real CamVid when the data directory has it, else SYNTHETIC scenes
  (and says so loudly).
* ``cpu``: the default without a GPU. Reduced resolution and about 10 minutes of training on
  2 cores; the book's stored outputs are made this way unless a chapter says otherwise.
* ``gpu``: full 360x480 resolution and a paper-like schedule.

Each notebook's first code cell holds the knobs of every profile in one dict, so a reader sees
them all; this module resolves the profile name, loads the splits and prints the run card.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

import torch
from torch.utils.data import Dataset

PROFILE_ENV = "SEGTUT_PROFILE"
PROFILES = ("smoke", "cpu", "gpu")


def resolve_profile(name: Optional[str] = None) -> str:
    """The profile to run: ``name``, else ``$SEGTUT_PROFILE``, else "gpu" with CUDA or "cpu".

    ``"auto"`` (or empty) means the same default choice.
    """
    name = (name or os.environ.get(PROFILE_ENV) or "auto").strip().lower()
    if name == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PROFILES:
        raise ValueError(f"Unknown profile {name!r} (from {PROFILE_ENV} or the parameters cell). "
                         f"Valid choices: {', '.join(PROFILES)} or auto.")
    return name


@dataclass
class Splits:
    """The datasets a chapter trains and evaluates on, and where they came from."""

    train: Dataset
    val: Dataset
    test: Dataset
    source: str
    synthetic: bool


def _limited(dataset: Dataset, limit: Optional[int]) -> Dataset:
    if limit is None or limit >= len(dataset):
        return dataset
    return torch.utils.data.Subset(dataset, range(limit))


def load_camvid_splits(profile: str, train_transform: Callable, eval_transform: Callable, *,
                       train_images: Optional[int] = None, eval_images: Optional[int] = None,
                       data_root=None, cache: bool = True, log: Callable[[str], None] = print) -> Splits:
    """CamVid train / val / test with the profile's limits.

    The ``cpu`` and ``gpu`` profiles need real CamVid: it is downloaded when missing, and an
    offline machine gets an error saying how to provide it. The ``smoke`` profile falls back to
    SYNTHETIC scenes when CamVid is not on disk, and announces it.

    Args:
        train_transform / eval_transform: joint transforms (see :mod:`segtut.transforms`).
        train_images / eval_images: keep only the first N images of each split (None: all).
        data_root: the ``camvid`` folder, or None for ``$SEGTUT_DATA_DIR/camvid`` (or the cache).
        cache: keep decoded images in memory (CamVid is small: about 250 MB for train).
    """
    from segtut.data import CamVid
    from segtut.download import camvid_root, data_dir
    from segtut.synthetic import SyntheticScenes

    try:
        root = camvid_root(data_root, download=profile != "smoke")
    except Exception as error:  # noqa: BLE001 - smoke runs must work offline, others must not
        if profile != "smoke":
            raise
        size = (96, 128)
        log("=" * 78)
        log(f"SYNTHETIC DATA: CamVid not found under {data_root or data_dir()} ({error}).")
        log("The smoke profile continues on SYNTHETIC scenes: these numbers mean nothing.")
        log("=" * 78)
        return Splits(SyntheticScenes(train_images or 8, size, seed=1, transform=train_transform),
                      SyntheticScenes(eval_images or 4, size, seed=2, transform=eval_transform),
                      SyntheticScenes(eval_images or 4, size, seed=3, transform=eval_transform),
                      source="SYNTHETIC scenes (offline fallback, NOT CamVid)", synthetic=True)
    train = _limited(CamVid(root, "train", train_transform, cache=cache), train_images)
    val = _limited(CamVid(root, "val", eval_transform, cache=cache), eval_images)
    test = _limited(CamVid(root, "test", eval_transform, cache=cache), eval_images)
    source = (f"real CamVid from {root} (train {len(train)}, val {len(val)}, "
              f"test {len(test)} images)")
    return Splits(train, val, test, source=source, synthetic=False)


def library_versions(extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Versions of Python, torch, torchvision, segtut and any ``extra`` installed packages."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "segtut") + tuple(extra):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_card(profile: str, settings: dict, *, source: str, device: torch.device, seed: int,
             model: Optional[torch.nn.Module] = None, pretrained: Optional[str] = None,
             extra_packages: tuple[str, ...] = ()) -> str:
    """A block of text recording how a chapter's outputs were made; print it before training."""
    lines = [
        "RUN CARD",
        f"  date (UTC)   {datetime.now(timezone.utc):%Y-%m-%d %H:%M}",
        f"  profile      {profile}",
        f"  dataset      {source}",
        f"  device       {device}" + (f" ({torch.cuda.get_device_name(device)})"
                                      if device.type == "cuda" else
                                      f" ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"),
        f"  seed         {seed}",
    ]
    if model is not None:
        parameters = sum(p.numel() for p in model.parameters())
        lines.append(f"  model        {type(model).__name__}, {parameters / 1e6:.2f} M parameters")
    if pretrained is not None:
        lines.append(f"  weights      {pretrained}")
    for key, value in settings.items():
        lines.append(f"  {key:<12} {value}")
    versions = library_versions(extra_packages)
    lines.append("  versions     " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines.append(f"  platform     {platform.platform()} ({sys.implementation.name})")
    return "\n".join(lines)
