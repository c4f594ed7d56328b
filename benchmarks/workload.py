"""The training workload the CPU benchmarks time: chapter 3's ``cpu`` profile on CamVid.

Chapter 3 (``notebooks/03_unet_from_scratch.ipynb``) trains on 2 CPU cores with random
128x160 crops of images scaled around 180x240 (:func:`segtut.transforms.train_transforms`),
batches of 8, AdamW (lr 3e-3, weight decay 1e-4) and cross-entropy that ignores void (11); it
evaluates at 180x240 against the native 360x480 masks. The benchmarks reuse exactly that,
through the same functions (:func:`segtut.profiles.load_camvid_splits`,
:func:`segtut.train.train_one_epoch`, :func:`segtut.measure.latency_ms`), so their numbers
describe what a reader's run costs.

``--quick`` (:data:`QUICK`) shrinks everything to seconds for the smoke test: the ``smoke``
profile, which reads real CamVid when it is on disk and otherwise writes SYNTHETIC scenes (a
banner says so; then the numbers mean nothing).
"""

from __future__ import annotations

import atexit
import functools
import itertools
import tempfile
from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segtut.data import IGNORE_INDEX, NUM_CLASSES
from segtut.losses import build_loss
from segtut.measure import latency_ms
from segtut.models import build_model
from segtut.profiles import Splits, load_camvid_splits
from segtut.train import seed_everything, train_one_epoch
from segtut.transforms import EvalTransform, train_transforms

SEED = 0


@dataclass(frozen=True)
class Workload:
    """The data and optimiser settings of one benchmark run.

    Attributes:
        profile: ``"cpu"`` (real CamVid, downloaded when missing) or ``"smoke"`` (real CamVid if
            on disk, else SYNTHETIC scenes).
        image_size: ``(H, W)`` the model sees at evaluation; sets the scale of the crops.
        crop_size: ``(H, W)`` of the random training crops.
        batch_size: images per training step.
        train_images / eval_images: the first N images of train and of val (None: all).
        lr / weight_decay: AdamW's, as chapter 3.
    """

    profile: str = "cpu"
    image_size: tuple[int, int] = (180, 240)
    crop_size: tuple[int, int] = (128, 160)
    batch_size: int = 8
    train_images: Optional[int] = None
    eval_images: Optional[int] = None
    lr: float = 3e-3
    weight_decay: float = 1e-4

    def describe(self) -> dict:
        """The settings as a flat dict for the output's header."""
        return {key: ("x".join(map(str, value)) if isinstance(value, tuple) else value)
                for key, value in asdict(self).items()}


#: Chapter 3's ``cpu`` profile.
CHAPTER3_CPU = Workload()
#: Seconds, not minutes: tiny crops and batches, a few images (for ``--quick`` and the tests).
QUICK = Workload(profile="smoke", image_size=(90, 120), crop_size=(64, 80), batch_size=2,
                 train_images=8, eval_images=2)

#: The models the benchmarks can train: name -> (registry name, options). pretrained=False:
#: speed does not depend on the weights, and no download is ever needed.
MODELS = {
    "unet": ("unet", dict(base_channels=16)),  # chapter 3's U-Net in its cpu profile
    "smp_unet": ("smp_unet", dict(encoder_name="resnet18", pretrained=False)),
    "smp_segformer": ("smp_segformer", dict(encoder_name="mit_b0", pretrained=False)),
    "fcn8s": ("fcn8s", dict()),  # VGG-16 sized: slow on a CPU, not in the defaults
}


def parse_models(text: str) -> list[str]:
    """``"unet,smp_unet"`` -> ``["unet", "smp_unet"]``; an unknown name lists the valid ones."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise SystemExit(f"Unknown model(s) {unknown or text!r} in --models. Valid choices: "
                         f"{', '.join(MODELS)} (comma-separated).")
    return names


def new_model(name: str, seed: int = SEED) -> nn.Module:
    """A fresh model of :data:`MODELS` on the CPU, built after seeding (same weights each time)."""
    registry_name, options = MODELS[name]
    seed_everything(seed)
    return build_model(registry_name, NUM_CLASSES, **options)


def loss_function() -> nn.Module:
    """Chapter 3's loss: cross-entropy over the 11 classes, void (11) ignored."""
    return build_loss("ce", ignore_index=IGNORE_INDEX)


def optimizer_for(model: nn.Module, workload: Workload) -> torch.optim.Optimizer:
    """Chapter 3's optimiser: AdamW with the workload's learning rate and weight decay."""
    return torch.optim.AdamW(model.parameters(), lr=workload.lr,
                             weight_decay=workload.weight_decay)


@functools.lru_cache(maxsize=None)
def _scratch() -> str:
    """One temporary folder per process for the smoke profile's SYNTHETIC scenes, removed at
    exit, so loading the splits twice (cache on and off) writes and announces them once."""
    folder = tempfile.TemporaryDirectory(prefix="segtut_benchmark_")
    atexit.register(folder.cleanup)
    return folder.name


def load_splits(workload: Workload, *, cache: bool, log=print) -> Splits:
    """CamVid train (chapter 3's random crops) and val (resized, masks native) for ``workload``."""
    scratch = _scratch() if workload.profile == "smoke" else None
    return load_camvid_splits(
        workload.profile,
        train_transforms(workload.image_size, crop_size=workload.crop_size,
                         ignore_index=IGNORE_INDEX),
        EvalTransform(workload.image_size),
        train_images=workload.train_images, eval_images=workload.eval_images, cache=cache,
        scratch=scratch, log=log)


def fill_cache(dataset: Dataset) -> None:
    """Decode every file of a cached CamVid dataset (or a Subset of one) once, in this process.

    Afterwards the dataset serves decoded pairs from memory, as it does from the second epoch
    of a run with ``num_workers=0``; worker processes forked later inherit the filled cache.
    """
    indices = range(len(dataset))
    while isinstance(dataset, torch.utils.data.Subset):
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    for index in indices:
        dataset.load(index)


def train_loader(dataset: Dataset, workload: Workload, num_workers: int = 0,
                 seed: int = SEED) -> DataLoader:
    """Chapter 3's training loader: shuffled batches, the last incomplete one dropped."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=workload.batch_size, shuffle=True, drop_last=True,
                      num_workers=num_workers, generator=generator)


def steps_per_epoch(dataset: Dataset, workload: Workload) -> int:
    """Training steps in one epoch over ``dataset`` (367 // 8 = 45 for CamVid's train split)."""
    return len(dataset) // workload.batch_size


def fixed_batches(dataset: Dataset, workload: Workload, count: int,
                  seed: int = SEED) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` training batches of real crops, made once: ``[(images, masks), ...]``.

    Images are float32 ``(B, 3, h, w)``, masks int64 ``(B, h, w)``. Timing steps on batches
    held in memory measures the model alone, without decoding or augmenting.
    """
    seed_everything(seed)
    loader = train_loader(dataset, workload, seed=seed)
    if len(loader) == 0:
        raise SystemExit(f"{len(dataset)} training images cannot fill one batch of "
                         f"{workload.batch_size}: use more images or a smaller batch.")
    batches = list(itertools.islice(loader, min(count, len(loader))))
    return [batches[i % len(batches)] for i in range(count)]


def train_seconds(model: nn.Module, batches: Iterable, optimizer: torch.optim.Optimizer,
                  loss_fn: nn.Module, amp: bool = False) -> tuple[float, int]:
    """``(seconds, steps)`` of :func:`segtut.train.train_one_epoch` over the batches of
    ``batches`` (a list, a slice of a loader's iterator, ...), on the CPU, without a bar;
    ``amp``: bfloat16 autocast, as ``fit(..., amp=True)`` on a CPU."""
    result = train_one_epoch(model, batches, loss_fn, optimizer, torch.device("cpu"),
                             progress=False, ignore_index=IGNORE_INDEX, warn_skipped=False,
                             amp=amp, amp_dtype=torch.bfloat16 if amp else None)
    return result["seconds"], result["steps"]


def train_steps(model: nn.Module, batches: Sequence, optimizer: torch.optim.Optimizer,
                loss_fn: nn.Module, steps: int, amp: bool = False) -> float:
    """Seconds for ``steps`` training steps cycling through ``batches`` (already in memory,
    already in the model's memory format); ``amp``: bfloat16 autocast."""
    seconds, _ = train_seconds(model, itertools.islice(itertools.cycle(batches), steps),
                               optimizer, loss_fn, amp)
    return seconds


def median_step_seconds(model: nn.Module, batches: Sequence, optimizer: torch.optim.Optimizer,
                        loss_fn: nn.Module, *, steps: int, warmup: int, repeats: int,
                        threads: Optional[int] = None, amp: bool = False) -> float:
    """Median seconds per training step: ``repeats`` runs of ``steps`` steps after ``warmup``
    untimed steps, timed by :func:`segtut.measure.latency_ms` with ``threads`` torch threads;
    ``amp``: bfloat16 autocast."""
    def run():
        train_steps(model, batches, optimizer, loss_fn, steps, amp)

    if warmup:
        latency_ms(lambda: train_steps(model, batches, optimizer, loss_fn, warmup, amp),
                   inference=False, warmup=0, repeats=1, threads=threads, device="cpu")
    timing = latency_ms(run, inference=False, warmup=0, repeats=repeats, threads=threads,
                        device="cpu")
    return timing["median"] / 1000 / steps
