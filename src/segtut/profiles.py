"""Run profiles: one notebook, three sizes of run.

* ``smoke``: seconds. A handful of small images and a few steps; the test suite runs every
  notebook this way. Uses real CamVid when the data directory has it (never downloads), else
  SYNTHETIC scenes in CamVid's layout, and says so loudly (:func:`camvid_for_profile`).
* ``cpu``: the default without a GPU. Reduced resolution and about 10 minutes of training on
  2 cores; the book's stored outputs are made this way unless a chapter says otherwise.
* ``gpu``: full 360x480 resolution and a paper-like schedule.

Each notebook's first code cell holds the knobs of every profile in one dict, so a reader sees
them all; this module resolves the profile name, finds the data (:func:`camvid_for_profile`,
the one place that decides between real CamVid and the SYNTHETIC fallback, for the plain-PyTorch
chapters through :func:`load_camvid_splits` and the fastai chapters through
:func:`segtut.fastai_adapter.camvid_folder`) and prints the run card.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch
from torch.utils.data import Dataset

from segtut import config
from segtut.data import SPLITS, CamVid, CamVidNotFound, list_images
from segtut.download import camvid_root

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


class DataFolder(NamedTuple):
    """A CamVid folder in the SegNet layout and a description of it for the run card.

    ``root`` is the camvid folder itself: pass it to :class:`segtut.data.CamVid`.
    """

    root: Path
    source: str
    synthetic: bool


#: ``(H, W)`` of the smoke profile's SYNTHETIC scenes: CamVid's 3:4 shape (360x480), small.
SYNTHETIC_SIZE = (96, 128)
#: Pairs written for the SYNTHETIC fallback when the profile sets no limit.
SYNTHETIC_TRAIN_IMAGES, SYNTHETIC_EVAL_IMAGES = 8, 4
SYNTHETIC_BANNER = "SYNTHETIC DATA"


def synthetic_banner(log: Callable[[str], None], *, missing: str, what: str, root: Path,
                     hint: str) -> None:
    """The loud banner of every smoke-profile fallback: what is missing, what SYNTHETIC data
    was written instead (and where), and how to get the real data."""
    log("=" * 78)
    log(f"{SYNTHETIC_BANNER}: {missing}")
    log(f"The smoke profile continues on SYNTHETIC {what} written to {root}: these numbers "
        "mean nothing.")
    log(hint)
    log("=" * 78)


def camvid_for_profile(profile: str, data_dir: str | Path | None = None, *,
                       train_images: Optional[int] = None, eval_images: Optional[int] = None,
                       scratch: str | Path | None = None,
                       log: Callable[[str], None] = print) -> DataFolder:
    """The CamVid folder a chapter reads in this profile: real CamVid, or the smoke fallback.

    * ``cpu`` and ``gpu``: real CamVid in ``<data_dir>/camvid``, downloaded when missing
      (:func:`segtut.download.camvid_root`); an offline machine gets an error saying how to
      provide it.
    * ``smoke``: real CamVid when it is on disk (never downloaded: smoke runs take seconds and
      need no network). When it is missing, SYNTHETIC street scenes are written in CamVid's
      layout to ``scratch`` (a new temporary folder by default) and a loud banner says so. Any
      other data problem (an incomplete folder, a data directory that is a file or a camvid
      folder) is an error in every profile: falling back would hide it.

    Every chapter gets its data through this function, so the fallback and its banner are the
    same everywhere: ``CamVid(camvid_for_profile(PROFILE, DATA_DIR).root, "train")``.

    Args:
        profile: ``"smoke"``, ``"cpu"`` or ``"gpu"`` (see :func:`resolve_profile`).
        data_dir: the data directory, the folder that HOLDS ``camvid/`` (None:
            :func:`segtut.config.data_dir`, i.e. ``$SEGTUT_DATA_DIR`` or the per-user cache).
        train_images, eval_images: the profile's limits: used to describe real data, and as
            the number of SYNTHETIC pairs (default 8 training, 4 val and 4 test).
        scratch: where to write the SYNTHETIC scenes (None: a new temporary folder).
        log: where the banner goes (``print`` in notebooks).

    Returns:
        :class:`DataFolder` ``(root, source, synthetic)``: ``root`` is the camvid folder, for
        :class:`segtut.data.CamVid`; ``source`` describes it for the run card.

    Raises:
        segtut.data.DataError: real CamVid is needed (cpu, gpu) and cannot be found or
            downloaded, or the data directory is wrong (every profile).
    """
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {', '.join(PROFILES)} "
                         "(resolve 'auto' with resolve_profile first).")
    try:
        root = camvid_root(data_dir, download=profile != "smoke")
    except CamVidNotFound:
        if profile != "smoke":
            raise
        from segtut.synthetic import write_synthetic_camvid

        scratch = Path(scratch) if scratch else Path(tempfile.mkdtemp(prefix="segtut_synthetic_"))
        train = train_images or SYNTHETIC_TRAIN_IMAGES
        evaluation = eval_images or SYNTHETIC_EVAL_IMAGES
        root = write_synthetic_camvid(scratch, train, evaluation, SYNTHETIC_SIZE)
        where = Path(data_dir).expanduser() if data_dir not in (None, "") else config.data_dir()
        synthetic_banner(log, missing=f"CamVid is not in {where / 'camvid'}, and the smoke "
                         "profile never downloads it.", what="scenes", root=root,
                         hint="For real CamVid, set SEGTUT_DATA_DIR to the folder that holds "
                         "camvid/.")
        source = (f"SYNTHETIC scenes (offline fallback, NOT CamVid: train {train}, val "
                  f"{evaluation}, test {evaluation} images, {SYNTHETIC_SIZE[0]}x"
                  f"{SYNTHETIC_SIZE[1]})")
        return DataFolder(root, source, True)
    counts = {}
    for split in SPLITS:
        limit = train_images if split == "train" else eval_images
        found = len(list_images(root / split))
        counts[split] = found if limit is None else min(limit, found)
    source = (f"real CamVid from {root} (train {counts['train']}, val {counts['val']}, "
              f"test {counts['test']} images)")
    return DataFolder(root, source, False)


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
                       data_dir: str | Path | None = None, cache: bool = True,
                       scratch: str | Path | None = None,
                       log: Callable[[str], None] = print, data_root=None) -> Splits:
    """CamVid train / val / test with the profile's limits.

    The data comes from :func:`camvid_for_profile`: real CamVid (downloaded when missing) in
    the ``cpu`` and ``gpu`` profiles; in the ``smoke`` profile real CamVid when it is on disk,
    else SYNTHETIC scenes, announced by a banner.

    Args:
        train_transform / eval_transform: joint transforms (see :mod:`segtut.transforms`).
        train_images / eval_images: keep only the first N images of each split (None: all).
        data_dir: the data directory, the folder that HOLDS ``camvid/`` (None:
            ``$SEGTUT_DATA_DIR``, else the per-user cache).
        cache: keep decoded images in memory (CamVid is small: about 250 MB for train).
        scratch: where the smoke fallback writes its SYNTHETIC scenes (None: a temporary folder).
        data_root: removed (it meant the camvid folder); passing it is an error saying what
            to pass instead.
    """
    if data_root is not None:
        raise TypeError(f"load_camvid_splits(data_root=...) is gone: pass data_dir, the folder "
                        f"that holds camvid/ (for data_root={str(data_root)!r} that is "
                        f"{str(Path(data_root).parent)!r}).")
    data = camvid_for_profile(profile, data_dir, train_images=train_images,
                              eval_images=eval_images, scratch=scratch, log=log)
    train = _limited(CamVid(data.root, "train", train_transform, cache=cache), train_images)
    val = _limited(CamVid(data.root, "val", eval_transform, cache=cache), eval_images)
    test = _limited(CamVid(data.root, "test", eval_transform, cache=cache), eval_images)
    return Splits(train, val, test, source=data.source, synthetic=data.synthetic)


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


# -- One-step runs: a profile's settings, cut to one training step ----------------------------

#: Knobs that count work (epochs, images, repeats, seeds) and what a one-step run keeps of them.
#: Every other knob (resolution, batch size, workers, AMP, model, optimiser) is kept as it is.
ONE_STEP_IMAGES = 2
_COUNT_SUFFIXES = ("epochs", "repeats", "warmup", "iterations", "steps")
_IMAGE_COUNTS = ("eval_images", "count_images", "weight_images", "gradient_images",
                 "test_images", "scan_images", "gif_frames", "ddp_val_images", "polygon_examples")
#: Training-set sizes: cut to one batch (``images``: a stand-in model's train and eval count).
_TRAIN_COUNTS = ("train_images", "images")


def is_count_knob(key: str) -> bool:
    """Whether :func:`one_step_settings` cuts the knob ``key`` (it counts work, not shapes)."""
    return (key.endswith(_COUNT_SUFFIXES) or key in _IMAGE_COUNTS
            or key in _TRAIN_COUNTS + ("ddp_images", "seeds", "time_budget_s"))


def one_step_settings(settings: dict, *, max_batch: Optional[int] = None,
                      max_width: Optional[int] = None, max_models: Optional[int] = None,
                      batch_size: Optional[int] = None) -> dict:
    """``settings`` with every count cut to about one training step; shapes kept.

    A quick check that a profile STARTS (scripts/train.py's ``--dry-run`` only prints the
    settings): a notebook's ``gpu`` settings on a laptop before a long run on a rented GPU, or
    the test that runs every notebook's ``gpu`` settings on the CPU (tests/test_gpu_settings.py): the resolution, crops, batch size, DataLoader workers, AMP,
    model and optimiser stay as they are, so that shape, memory and configuration errors show up;
    what only counts work is cut:

    * ``*epochs`` -> at most 1; ``*repeats`` and ``*iterations`` and ``*steps`` -> at most 1
      (``lr_find_iterations``: 12, since fastai's finder suggests from the points left after
      dropping its first tenth and its last 5); ``*warmup`` -> 0;
    * ``train_images`` and ``images`` -> one batch (``batch_size``, else the enclosing dict's,
      else 8), or ``ddp_images`` if more; ``ddp_images`` -> one batch per process of two
      (``2 * ddp_batch``); the other image counts -> :data:`ONE_STEP_IMAGES`;
    * ``seeds`` -> the first seed; ``time_budget_s`` -> None (one epoch needs no budget).

    Three more cuts for a machine that cannot afford even that (a 2-core CPU needs well over 45
    minutes for every chapter's ``gpu`` settings, mostly full-size batches at 360x480 in
    float32): ``max_batch`` caps ``batch_size``, ``ddp_batch`` and the sizes in ``*batches``
    (2 still trains BatchNorm); ``max_width`` caps ``base_channels``, the width of the
    from-scratch U-Net and FCN (it changes channel counts, not the spatial shapes); and
    ``max_models`` keeps the first models of a ``models`` list (chapter 15 runs the same code
    for each; every model's own chapter checks its shapes).

    Nested dicts (e.g. a stand-in model's settings) are cut the same way. The result is a new
    dict; ``settings`` is not changed. ``batch_size``: the batch of an enclosing dict.
    """
    if max_batch is not None and max_batch < 2:
        raise ValueError(f"max_batch={max_batch}: BatchNorm needs 2 images or more per batch.")
    batch = settings.get("batch_size") or batch_size or 8
    if max_batch is not None:
        batch = min(batch, max_batch)
    ddp_images = None
    if settings.get("ddp_images") is not None:
        ddp_batch = settings.get("ddp_batch") or 1
        ddp_images = 2 * (min(ddp_batch, max_batch) if max_batch else ddp_batch)
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            value = one_step_settings(value, max_batch=max_batch, max_width=max_width,
                                      max_models=max_models, batch_size=batch)
        elif key in ("batch_size", "ddp_batch") and max_batch is not None and value:
            value = min(value, max_batch)
        elif key.endswith("batches") and max_batch is not None:  # e.g. timed batch sizes
            value = tuple(dict.fromkeys(min(b, max_batch) for b in value))
        elif key == "base_channels" and max_width is not None:
            value = min(value, max_width)
        elif key == "models" and max_models is not None:
            value = tuple(value)[:max_models]
        elif not is_count_knob(key):
            pass
        elif key == "time_budget_s":
            value = None
        elif key == "seeds":
            value = tuple(value)[:1]
        elif key in _TRAIN_COUNTS:
            # enough for one batch, and for the two-process experiment's shards when there is one
            value = max(batch, ddp_images or 0)
        elif value is None and key not in _IMAGE_COUNTS:
            pass  # e.g. no epoch limit: nothing to cut
        elif key == "ddp_images":
            value = ddp_images
        elif key in _IMAGE_COUNTS:
            value = ONE_STEP_IMAGES if value is None else min(value, ONE_STEP_IMAGES)
        elif key == "lr_find_iterations":
            value = min(value, 12)  # fastai's lr_find drops its last 5 points; 12 leave 6
        elif key.endswith("warmup"):
            value = 0
        else:  # epochs, repeats, iterations, steps
            value = min(value, 1)
        out[key] = value
    return out
