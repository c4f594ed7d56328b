"""The training loop: ``train_one_epoch``, ``evaluate`` and ``fit``, plus checkpoints.

The functions return plain numbers (dicts of floats) and let the notebook print and plot.
The device and the seed are always passed in; nothing is seeded or chosen at import time.

Batches are ``(images, masks)``: float ``(N, 3, H, W)`` and int64 ``(N, H, W)``; the model returns
logits ``(N, C, h, w)`` (a dict with key ``"out"``, as torchvision returns, is accepted too).

Loud rather than silent:

* a training batch whose pixels are all the ignore label teaches nothing (its loss is 0/0): it
  is skipped, without a step, and a warning says how many were;
* :func:`evaluate` warns when a class never occurs in the split's targets (its IoU is undefined
  or 0, and the mean changes meaning) or when most target pixels are ignored (a 0/255 binary
  mask whose 255 became the ignore label turns the whole foreground into void, and a model
  predicting background everywhere then scores a "perfect" mIoU of 1.0);
* a checkpoint that cannot be used raises :class:`CheckpointError` naming the file and what to
  do.
"""

from __future__ import annotations

import math
import os
import pickle
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from segtut.distributed import all_reduce_sum, is_distributed, is_main_process, unwrap
from segtut.metrics import ConfusionMatrix


def pick_device(name: Optional[str] = None) -> torch.device:
    """``name`` if given, else CUDA when available, else Apple's MPS, else the CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def logits_of(output) -> torch.Tensor:
    """The logits of a model output: the tensor itself or torchvision's ``output["out"]``."""
    return output["out"] if isinstance(output, dict) else output


def poly_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                  power: float = 0.9, warmup_steps: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """DeepLab's "poly" rate: ``lr * (1 - step / total) ** power``, after a linear warm-up."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, 1 - step / max(1, total_steps)) ** power
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def one_cycle_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                       max_lr: float) -> torch.optim.lr_scheduler.OneCycleLR:
    """Smith's one-cycle rate (warm up to ``max_lr`` over 30%, then anneal), stepped per batch."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps,
                                               pct_start=0.3)


def progress_bar(iterable, description: str, progress: bool):
    """``iterable`` wrapped in a tqdm bar, unless ``progress`` is False or ``$TQDM_DISABLE`` is set."""
    # TQDM_DISABLE=1 silences the bars too (the notebook runner sets it for stored outputs).
    disable = not progress or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    return tqdm(iterable, desc=description, leave=False, disable=disable)


#: Mixed-precision types for ``fit(amp_dtype=...)``.
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype_of(device: torch.device, amp_dtype: Optional[str] = None) -> torch.dtype:
    """The autocast dtype: ``amp_dtype`` ("bf16" / "fp16"), or None for the device's default.

    The default is bfloat16 where it is supported (recent GPUs, CPUs), else float16. bfloat16
    has float32's range, so it needs no loss scaling; float16 overflows without a GradScaler,
    which segtut only uses on CUDA, so "fp16" is refused on other devices.
    """
    if amp_dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" else torch.float16
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype={amp_dtype!r} is not one of {sorted(AMP_DTYPES)} (or None "
                         "for the device's default).")
    if amp_dtype == "fp16" and device.type != "cuda":
        raise ValueError(f"amp_dtype='fp16' needs a CUDA device (float16 training needs the "
                         f"GradScaler, used on CUDA only); this run is on {device}. Use "
                         "amp_dtype='bf16' or amp=False.")
    if amp_dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("amp_dtype='bf16' is not supported by this GPU; use amp_dtype='fp16' "
                         "(with loss scaling) or None.")
    return AMP_DTYPES[amp_dtype]


def _autocast(device: torch.device, enabled: bool, dtype: Optional[torch.dtype] = None):
    # bfloat16 needs no loss scaling; float16 (older GPUs) gets a GradScaler in fit().
    if dtype is None:
        dtype = (torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported()
                 else torch.float16)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def _to_channels_last(images: torch.Tensor) -> torch.Tensor:
    # NHWC lets cuDNN's tensor-core convolutions skip a layout transpose (a 10-30% speed-up
    # with AMP on recent GPUs); the values are the same.
    return images.contiguous(memory_format=torch.channels_last) if images.ndim == 4 else images


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and says what to do."""


class LabelWarning(UserWarning):
    """The targets of a split look wrong: a class never occurs, or most pixels are ignored."""


def _ignore_index_of(loss_fn: Callable) -> Optional[int]:
    """The ignore label of a segtut loss (also inside AuxLoss or CEDiceLoss), or None."""
    for candidate in (loss_fn, getattr(loss_fn, "loss_fn", None),
                      getattr(loss_fn, "cross_entropy", None)):
        value = getattr(candidate, "ignore_index", None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def train_one_epoch(model: nn.Module, loader, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, scheduler=None, amp: bool = False,
                    scaler: Optional[torch.amp.GradScaler] = None, max_steps: Optional[int] = None,
                    progress: bool = True, description: str = "train",
                    ignore_index: Optional[int] = None, warn_skipped: bool = True,
                    accumulation_steps: int = 1, channels_last: bool = False,
                    amp_dtype: Optional[torch.dtype] = None) -> dict:
    """One pass over ``loader``; the scheduler (if any) is stepped after every optimiser step.

    A batch whose target pixels are all ``ignore_index`` has nothing to learn from: it is
    skipped (no forward pass, no optimiser or scheduler step) and, with ``warn_skipped``, one
    warning at the end of the epoch says how many were. When distributed, every rank must run
    the same collectives, so such a batch is not skipped but gets a loss of 0 (zero gradients;
    it still counts as skipped). A loss that is NaN or infinite on a batch with labelled pixels
    is divergence: FloatingPointError.

    Gradient accumulation: with ``accumulation_steps=N`` each batch's loss is divided by ``N``
    and the optimiser (and scheduler) steps after every ``N`` batches and after the last one,
    so ``N`` batches of ``B`` images train like one batch of ``N * B`` (exactly, for a mean
    loss, when every batch has the same number of labelled pixels, and without BatchNorm, whose
    statistics still see ``B`` images). Under DDP the gradients are only averaged over the
    ranks on the stepping batch (``model.no_sync()`` on the others).

    Args:
        ignore_index: the void label; None takes the loss's own ``ignore_index`` (segtut's
            losses, also inside ``AuxLoss``) when it has one.
        max_steps: stop after this many optimiser steps.
        channels_last: hand the images to the model in ``torch.channels_last`` memory format
            (convert the model too: ``model.to(memory_format=torch.channels_last)``).
        amp_dtype: the autocast dtype (:func:`amp_dtype_of`); None: the device's default.

    Returns:
        ``{"loss": mean loss over the batches trained on, "steps": optimiser steps, "batches":
        int, "images": int, "seconds": float, "skipped_batches": int}``.
    """
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be 1 or more, got {accumulation_steps}.")
    if ignore_index is None:
        ignore_index = _ignore_index_of(loss_fn)
    distributed = is_distributed()
    no_sync = getattr(model, "no_sync", None) if distributed else None
    model.train()
    total_loss, batches, steps, images_seen, skipped = 0.0, 0, 0, 0, 0
    pending, start = 0, time.perf_counter()  # pending: batches accumulated since the last step
    bar = progress_bar(loader, description, progress)
    try:
        # Only accumulation needs to know the last batch (to step on it); 1 step per batch doesn't.
        length = len(loader) if accumulation_steps > 1 else 0
    except TypeError:  # an iterable without len (e.g. an IterableDataset's loader)
        length = None
    for (images, masks), is_last in _with_last(bar, length):
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        if channels_last:
            images = _to_channels_last(images)
        void = ignore_index is not None and not bool((masks != ignore_index).any())
        if void:
            skipped += 1  # every pixel is void: no loss to learn from
            if not distributed:
                continue  # so no step at all
        if pending == 0:
            optimizer.zero_grad(set_to_none=True)
        pending += 1
        step_now = pending == accumulation_steps or is_last
        with (nullcontext() if step_now or no_sync is None else no_sync()):
            with _autocast(device, amp, amp_dtype):
                logits = logits_of(model(images))  # (N, C, H, W)
                # A void batch under DDP: zero gradients, but the same all-reduce as the others.
                loss = logits.float().sum() * 0.0 if void else loss_fn(logits.float(), masks)
            scaled = loss / accumulation_steps if accumulation_steps > 1 else loss
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if not void:
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"The loss became {value} at step {steps}: lower the "
                                         "learning rate or check the data.")
            total_loss += value
            batches += 1
            images_seen += images.shape[0]
        if step_now:
            _optimizer_step(optimizer, scheduler, scaler)
            steps += 1
            pending = 0
        if batches:
            bar.set_postfix(loss=f"{total_loss / batches:.3f}")
        if max_steps is not None and steps >= max_steps:
            break
    if pending:  # the epoch's last batches were skipped (alone, not distributed): step anyway
        _optimizer_step(optimizer, scheduler, scaler)
        steps += 1
    if skipped and warn_skipped:
        warnings.warn(_skipped_message(skipped, ignore_index), LabelWarning, stacklevel=2)
    mean_loss = total_loss / batches if batches else (math.nan if skipped else 0.0)
    return {"loss": mean_loss, "steps": steps, "batches": batches, "images": images_seen,
            "seconds": time.perf_counter() - start, "skipped_batches": skipped}


def _with_last(iterable, length: Optional[int]):
    """``(item, is_last)`` pairs, so the last batch of an epoch is known before it is trained.

    ``length`` (``len(loader)``) when known; else one item of look-ahead, which loads a batch
    early and so changes the order in which augmentation and dropout draw random numbers.
    """
    if length is not None:
        for index, item in enumerate(iterable):
            yield item, index == length - 1
        return
    iterator = iter(iterable)
    try:
        item = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield item, False
        item = following
    yield item, True


def _optimizer_step(optimizer, scheduler, scaler) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if scheduler is not None:
        scheduler.step()


def _skipped_message(skipped: int, ignore_index: Optional[int]) -> str:
    return (f"{skipped} training batch(es) had no labelled pixel (every target pixel is the "
            f"ignore label {ignore_index}) and were skipped without a step. Check those masks: "
            "an image that is all void, or a mask whose classes were mapped to the ignore label.")


def label_problems(matrix: ConfusionMatrix,
                   class_names: Optional[Sequence[str]] = None) -> list[str]:
    """What looks wrong with the targets a confusion matrix has counted, one sentence each.

    * Classes that never occur in the targets: their IoU is NaN (left out of the mean) when
      they are never predicted either, and 0 when they are, so the split cannot measure them.
    * More than half of the target pixels ignored: usually broken masks, e.g. a 0/255 binary
      mask whose 255 was mapped to the ignore label, which makes the whole foreground void.

    Args:
        matrix: accumulated over a whole split (with ``ignored`` counted).
        class_names: names for the messages (default: ``class <id>``).

    Returns:
        A list of messages, empty when nothing looks wrong.
    """
    problems = []
    counts = matrix.matrix.sum(dim=1).cpu()  # (C,) target pixels per class
    labelled = int(counts.sum())
    ignored = int(matrix.ignored)
    if labelled + ignored == 0:
        return ["The split has no target pixels at all: the metrics are undefined (NaN)."]
    absent = [i for i, count in enumerate(counts.tolist()) if count == 0]
    if absent:
        names = ", ".join(f"{class_names[i]!r} ({i})" if class_names is not None else f"class {i}"
                          for i in absent)
        problems.append(
            f"{len(absent)} of {matrix.num_classes} classes never occur in this split's targets: "
            f"{names}. Their IoU is undefined (NaN, left out of mean_iou) or 0 if predicted, so "
            "mean_iou covers fewer classes than you think. Check num_classes and the masks "
            "(a 0/255 binary mask needs 255 mapped to 1, not to the ignore label).")
    if ignored > labelled:
        share = ignored / (labelled + ignored)
        problems.append(
            f"{share:.0%} of this split's target pixels are the ignore label "
            f"{matrix.ignore_index}: the scores only cover the other {1 - share:.0%}. If the "
            "masks are binary 0/255, map 255 to class 1 instead of to the ignore label.")
    return problems


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, size: Optional[tuple[int, int]] = None,
            amp: bool = False, amp_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Logits for a batch, bilinearly upsampled to ``size`` (the label's native size).

    ``(N, 3, h, w)`` -> float ``(N, C, H, W)``. ``amp_dtype``: the autocast dtype when ``amp``
    (None: bfloat16 on GPUs that support it, else float16).
    """
    model.eval()
    with _autocast(images.device, amp, amp_dtype):
        logits = logits_of(model(images)).float()  # (N, C, h, w)
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, *, num_classes: int,
             ignore_index: Optional[int], loss_fn: Optional[Callable] = None, amp: bool = False,
             max_batches: Optional[int] = None, progress: bool = True,
             class_names: Optional[Sequence[str]] = None, warn: bool = True,
             channels_last: bool = False, amp_dtype: Optional[torch.dtype] = None) -> dict:
    """Metrics over a whole split, from one confusion matrix, at the masks' native resolution.

    With ``warn``, a :class:`LabelWarning` names the classes that never occur in the split's
    targets and says when most target pixels are ignored (:func:`label_problems`).

    Distributed (each rank's ``loader`` holding its shard, e.g.
    :func:`segtut.distributed.shard_loader` with ``train=False``): the confusion matrices, the
    ignored-pixel counts and the loss sums are summed over the ranks *before* any score is
    computed, so every rank returns the scores of the whole split. Averaging per-rank IoUs
    would be wrong (a mean of ratios is not the ratio of the summed counts), and so would
    shards that repeat samples (``DistributedSampler`` pads them).

    Args:
        class_names: names of the classes for the warnings (default: their ids).
        channels_last: hand the images to the model in ``torch.channels_last`` format.
        amp_dtype: the autocast dtype when ``amp`` (see :func:`amp_dtype_of`).

    Returns:
        ``{"loss", "pixel_accuracy", "mean_iou", "mean_dice", "mean_accuracy", "iou" (list),
        "dice" (list), "confusion" (C x C list of ints), "ignored_pixels" (int),
        "label_problems" (list of str), "seconds"}``; ``loss`` is NaN without ``loss_fn`` and
        averages the batches that have labelled pixels (of all ranks, when distributed).
    """
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    total_loss, loss_batches, batches, start = 0.0, 0, 0, time.perf_counter()
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module  # the ranks see different numbers of batches: no collective here
    for images, masks in progress_bar(loader, "eval", progress):
        images, masks = images.to(device), masks.to(device)
        if channels_last:
            images = _to_channels_last(images)
        logits = predict(model, images, size=tuple(masks.shape[-2:]), amp=amp,
                         amp_dtype=amp_dtype)  # (N, C, H, W)
        if loss_fn is not None and (ignore_index is None or bool((masks != ignore_index).any())):
            total_loss += loss_fn(logits, masks).item()
            loss_batches += 1
        matrix.update(logits.argmax(dim=1), masks)
        batches += 1
        if max_batches is not None and batches >= max_batches:
            break
    if is_distributed():
        # Sum the counts, never the scores; every rank then computes the same, whole-split scores.
        all_reduce_sum(matrix.matrix)
        all_reduce_sum(matrix.ignored)
        sums = all_reduce_sum(torch.tensor([total_loss, loss_batches], dtype=torch.float64,
                                           device=matrix.matrix.device))
        total_loss, loss_batches = float(sums[0]), int(sums[1])
    result = matrix.compute()
    result["loss"] = total_loss / loss_batches if loss_batches else float("nan")
    result["confusion"] = matrix.matrix.cpu().tolist()
    result["ignored_pixels"] = int(matrix.ignored)
    result["label_problems"] = label_problems(matrix, class_names)
    if warn:
        for problem in result["label_problems"]:
            warnings.warn(problem, LabelWarning, stacklevel=3)
    result["seconds"] = time.perf_counter() - start
    return result


def save_checkpoint(path: str | Path, model: nn.Module, optimizer=None, scheduler=None,
                    scaler=None, epoch: int = 0, history: Optional[list] = None,
                    best: Optional[dict] = None) -> Path:
    """Save everything needed to resume exactly: weights, optimiser, scheduler, epoch, history.

    Written to a temporary file and renamed, so an interrupted save never leaves a broken file.
    The weights are those of the plain model (:func:`segtut.distributed.unwrap`: no DDP
    ``module.`` or ``torch.compile`` ``_orig_mod.`` prefixes), so they load into the bare model.

    Args:
        best: ``fit``'s best-epoch record (``{"key", "score", "epoch"}``), kept for resuming.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "history": history or [],
        "best": best,
    }
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, temporary)
    temporary.replace(path)
    return path


def load_checkpoint(path: str | Path, model: nn.Module, optimizer=None, scheduler=None,
                    scaler=None, map_location=None) -> dict:
    """Restore a checkpoint saved by :func:`save_checkpoint` (``weights_only=True``: no pickled code).

    Returns:
        ``{"epoch": epochs completed, "history": list of per-epoch dicts, "best": fit's
        best-epoch record or None}``.

    Raises:
        CheckpointError: the file is missing, empty, truncated or not a segtut checkpoint (a
            bare ``state_dict``, an object that ``weights_only`` loading refuses), or its weights
            do not fit ``model``; the message names the file and says what to do.
    """
    path = Path(path)
    state = _read_checkpoint(path, map_location)
    try:
        unwrap(model).load_state_dict(state["model"])
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        raise CheckpointError(f"The weights in {path} do not fit this model (another "
                              "architecture, size option or num_classes?): "
                              + " ".join(line.strip() for line in lines[:3])) from error
    for target, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if target is not None and state.get(key) is not None:
            target.load_state_dict(state[key])
    return {"epoch": state["epoch"], "history": state.get("history", []),
            "best": state.get("best")}


def _read_checkpoint(path: Path, map_location=None) -> dict:
    """The dict :func:`save_checkpoint` wrote, or a :class:`CheckpointError` saying why not."""
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}"
                              + (" (it is a folder)" if path.exists() else "")
                              + ": check the path, or train first (fit(..., checkpoint_path=...) "
                              "writes one after every epoch).")
    if path.stat().st_size == 0:
        raise CheckpointError(f"The checkpoint {path} is empty (0 bytes): a save was "
                              "interrupted or the copy failed. Delete it and train again, or "
                              "copy a complete file there.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"The checkpoint {path} cannot be loaded safely (torch.load with "
                              "weights_only=True refuses it): it holds Python objects, not only tensors and numbers, so it was not "
                              "written by segtut.train.save_checkpoint. Load it yourself only if "
                              "you trust its source.") from error
    except (RuntimeError, OSError, EOFError, ValueError) as error:
        detail = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else ""
        reason = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
        raise CheckpointError(f"The checkpoint {path} ({path.stat().st_size} bytes) cannot be "
                              f"read ({reason}): the file is truncated or is not a PyTorch "
                              "checkpoint. Delete it and train again, or copy a complete "
                              "file there.") from error
    if isinstance(state, dict) and "model" not in state \
            and state and all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(
            f"{path} holds a bare state_dict (weights only, e.g. {next(iter(state))!r}), not a "
            "segtut checkpoint with model, optimizer, epoch and history. Load the weights with "
            "model.load_state_dict(torch.load(path, weights_only=True)), or re-save them with "
            "segtut.train.save_checkpoint(path, model) to resume training.")
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a segtut checkpoint: expected a dict with 'model', "
                              f"'epoch', 'history', ... as segtut.train.save_checkpoint writes, "
                              f"got {keys}.")
    return state


#: What ``fit(select_best=...)`` can select on, and whether higher or lower is better.
SELECT_BEST = {"val_mean_iou": "max", "val_pixel_accuracy": "max", "val_loss": "min"}


def fit(model: nn.Module, train_loader, val_loader, *, loss_fn: Callable,
        optimizer: torch.optim.Optimizer, epochs: int, device: torch.device, seed: int,
        num_classes: int, ignore_index: Optional[int], scheduler=None,
        amp: Optional[bool] = None, time_budget_s: Optional[float] = None,
        max_steps_per_epoch: Optional[int] = None, checkpoint_path: str | Path | None = None,
        resume: bool = False, progress: bool = True, log: Optional[Callable[[str], None]] = print,
        class_names: Optional[Sequence[str]] = None, accumulation_steps: int = 1,
        channels_last: bool = False, compile: bool = False, amp_dtype: Optional[str] = None,
        select_best: Optional[str] = None, best_checkpoint_path: str | Path | None = None,
        patience: Optional[int] = None,
        on_epoch_end: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Train for ``epochs`` epochs, evaluating on ``val_loader`` after each one.

    Every epoch starts with ``torch.manual_seed(seed + epoch)`` (and ``set_epoch(epoch)`` on
    the training loader's sampler when it has one, e.g. a ``DistributedSampler``), so its
    shuffling, augmentation and dropout depend only on the seed and the epoch number: a run
    resumed from a checkpoint repeats exactly what the uninterrupted run would have done.

    Distributed (torchrun, ``model`` wrapped by :func:`segtut.distributed.wrap_model`, loaders
    from :func:`segtut.distributed.shard_loader`): every rank calls ``fit`` alike; the
    validation counts are summed over the ranks, so all ranks see the same history and take
    the same decisions (best epoch, early stop, time budget); only the main process logs,
    calls ``on_epoch_end`` and writes checkpoints.

    Args:
        amp: mixed precision; default on for CUDA, off elsewhere.
        amp_dtype: "bf16" or "fp16" (CUDA only: it needs loss scaling, done by a GradScaler);
            None: bfloat16 where supported (recent GPUs, CPUs), else float16.
        time_budget_s: stop after the first epoch that ends past this many training seconds.
        max_steps_per_epoch: at most this many optimiser steps per epoch.
        checkpoint_path: save after every epoch (and resume from it when ``resume``). A
            checkpoint that already holds ``epochs`` epochs or more trains nothing: a warning
            says so and its history is returned.
        log: called with one line per epoch (``None`` for silence).
        class_names: names of the classes for the label warnings.
        accumulation_steps: step the optimiser (and scheduler) every this many batches, the
            loss divided by it: a larger effective batch than fits in memory (see
            :func:`train_one_epoch`). Schedules count optimiser steps.
        channels_last: model and images in ``torch.channels_last`` memory format (faster
            convolutions on recent GPUs with AMP; the same numbers). Distributed, convert the
            model before :func:`~segtut.distributed.wrap_model` too, so DDP's gradient buckets
            are laid out for it.
        compile: train and evaluate through ``torch.compile(model)`` (the first batches are
            slow while it compiles; needs a C++ compiler on CPUs). Checkpoints hold the plain
            weights.
        select_best: a history key from :data:`SELECT_BEST` ("val_mean_iou", ...): the
            weights of the best epoch are put back into ``model`` at the end (instead of the
            last epoch's) and, with ``best_checkpoint_path``, written there whenever a new best
            is reached. Each history row gains ``best_epoch``.
        best_checkpoint_path: where the best epoch's checkpoint goes (loadable with
            :func:`load_checkpoint`); needed to resume a run whose best epoch is not its last.
        patience: with ``select_best``, stop after this many epochs without a new best.
        on_epoch_end: called with each history row (main process only), e.g. a tracker's
            ``log_epoch``.

    Warnings (each once per call, not every epoch): :class:`LabelWarning` when training
    batches had no labelled pixel (skipped) and when the validation targets lack a class or
    are mostly ignored (:func:`label_problems`).

    Returns:
        The history: one dict per epoch with ``epoch``, ``train_loss``, ``val_loss``,
        ``val_mean_iou``, ``val_pixel_accuracy``, ``lr``, ``train_seconds`` (this epoch),
        ``train_seconds_total`` (all epochs so far, resumed ones included), ``eval_seconds``,
        and ``best_epoch`` with ``select_best``.
    """
    if select_best is not None and select_best not in SELECT_BEST:
        raise ValueError(f"select_best={select_best!r} is not one of {sorted(SELECT_BEST)}.")
    if patience is not None and (select_best is None or patience < 1):
        raise ValueError(f"patience={patience} needs select_best (the score that must improve) "
                         "and a value of 1 or more.")
    main = is_main_process()
    log = log if main else None
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    amp = device.type == "cuda" if amp is None else amp
    dtype = amp_dtype_of(device, amp_dtype) if amp else None
    scaler = (torch.amp.GradScaler("cuda")
              if amp and device.type == "cuda" and dtype == torch.float16 else None)
    history: list[dict] = []
    start_epoch = 0
    best = _Best(select_best, best_checkpoint_path)
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        state = load_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler,
                                map_location=device)
        start_epoch, history = state["epoch"], state["history"]
        best.resume(state.get("best"), start_epoch, model, checkpoint_path)
        if log:
            log(f"resumed from {checkpoint_path} after epoch {start_epoch}")
        if start_epoch >= epochs and main:
            warnings.warn(f"The checkpoint {checkpoint_path} already holds {start_epoch} epochs, "
                          f"and fit was asked for epochs={epochs}: nothing was trained. The "
                          f"model has the weights after epoch {start_epoch}. Pass a larger "
                          "epochs to train on, or resume=False (or another checkpoint_path) "
                          "to start again.", stacklevel=2)
    runner = torch.compile(model) if compile else model
    trained_s = history[-1]["train_seconds_total"] if history else 0.0
    warned_skipped = warned_labels = False
    for epoch in range(start_epoch, epochs):
        if best.patience_spent(patience, epoch):
            break  # a resumed run that had already stopped early
        torch.manual_seed(seed + epoch)
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # DistributedSampler: a new shuffle every epoch
        train = train_one_epoch(runner, train_loader, loss_fn, optimizer, device,
                                scheduler=scheduler, amp=amp, scaler=scaler,
                                max_steps=max_steps_per_epoch, progress=progress and main,
                                description=f"epoch {epoch + 1}/{epochs}",
                                ignore_index=ignore_index, warn_skipped=False,
                                accumulation_steps=accumulation_steps,
                                channels_last=channels_last, amp_dtype=dtype)
        if train["skipped_batches"] and not warned_skipped and main:
            warned_skipped = True
            warnings.warn(f"epoch {epoch + 1}: " + _skipped_message(train["skipped_batches"],
                                                                     ignore_index),
                          LabelWarning, stacklevel=2)
        trained_s += train["seconds"]
        val = evaluate(runner, val_loader, device, num_classes=num_classes,
                       ignore_index=ignore_index, loss_fn=loss_fn, amp=amp,
                       progress=progress and main, class_names=class_names, warn=False,
                       channels_last=channels_last, amp_dtype=dtype)
        if val["label_problems"] and not warned_labels and main:
            warned_labels = True  # the same targets every epoch: once per fit is enough
            for problem in val["label_problems"]:
                warnings.warn(f"validation split: {problem}", LabelWarning, stacklevel=2)
        row = {"epoch": epoch + 1, "train_loss": train["loss"], "val_loss": val["loss"],
               "val_mean_iou": val["mean_iou"], "val_pixel_accuracy": val["pixel_accuracy"],
               "lr": optimizer.param_groups[0]["lr"], "train_seconds": train["seconds"],
               "train_seconds_total": trained_s, "eval_seconds": val["seconds"]}
        improved = best.update(row, model, history, main)
        history.append(row)
        if log:
            log(f"epoch {epoch + 1:3d}/{epochs}  train loss {row['train_loss']:.4f}  "
                f"val loss {row['val_loss']:.4f}  val mIoU {row['val_mean_iou']:.4f}  "
                f"val acc {row['val_pixel_accuracy']:.4f}  ({train['seconds']:.0f} s train, "
                f"{trained_s / 60:.1f} min so far)" + (" *" if improved else ""))
        if checkpoint_path is not None and main:
            save_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler, epoch + 1,
                            history, best=best.record())
        if on_epoch_end is not None and main:
            on_epoch_end(row)
        if best.patience_spent(patience, epoch + 1):
            if log:
                log(f"no better {select_best} for {patience} epochs since epoch "
                    f"{best.epoch}; stopping.")
            break
        if (time_budget_s is not None and epoch + 1 < epochs
                and _any_rank(trained_s >= time_budget_s, device)):
            if log:
                log(f"time budget of {time_budget_s:.0f} s reached after epoch {epoch + 1}; "
                    "stopping.")
            break
    if best.restore(model) and log:
        log(f"restored the weights of epoch {best.epoch} (best {select_best} {best.score:.4f})")
    return history


def _any_rank(flag: bool, device: torch.device) -> bool:
    """``flag`` on any rank: each rank times itself, and all must stop at the same epoch."""
    if not is_distributed():
        return flag
    return bool(all_reduce_sum(torch.tensor([float(flag)], device=device)).item() > 0)


class _Best:
    """``fit``'s record of its best epoch: the score, the epoch and a CPU copy of its weights."""

    def __init__(self, key: Optional[str], path: str | Path | None):
        self.key, self.path = key, None if path is None else Path(path)
        self.score: Optional[float] = None
        self.epoch: Optional[int] = None
        self.weights: Optional[dict] = None

    def record(self) -> Optional[dict]:
        if self.key is None or self.epoch is None:
            return None
        return {"key": self.key, "score": self.score, "epoch": self.epoch}

    def _better(self, score: float) -> bool:
        if not math.isfinite(score):
            return False  # a NaN score (no labelled pixel) never wins
        if self.score is None:
            return True
        return score > self.score if SELECT_BEST[self.key] == "max" else score < self.score

    def update(self, row: dict, model: nn.Module, history: list, main: bool) -> bool:
        """Note a new best (copy its weights, write the best checkpoint); set ``best_epoch``."""
        if self.key is None:
            return False
        improved = self._better(row[self.key])
        if improved:
            self.score, self.epoch = float(row[self.key]), row["epoch"]
            self.weights = _cpu_copy(model)
        row["best_epoch"] = self.epoch
        if improved and self.path is not None and main:
            save_checkpoint(self.path, model, epoch=self.epoch, history=history + [row],
                            best=self.record())
        return improved

    def patience_spent(self, patience: Optional[int], epochs_done: int) -> bool:
        return (patience is not None and self.epoch is not None
                and epochs_done - self.epoch >= patience)

    def resume(self, record: Optional[dict], epochs_done: int, model: nn.Module,
               checkpoint_path) -> None:
        """Take the best epoch back from a checkpoint, and its weights from the best file."""
        if self.key is None or record is None:
            return
        if record.get("key") != self.key:
            raise CheckpointError(
                f"{checkpoint_path} selected the best epoch on {record.get('key')!r}, and this "
                f"fit on select_best={self.key!r}: resume with select_best="
                f"{record.get('key')!r}, or start again (resume=False).")
        self.score, self.epoch = record["score"], record["epoch"]
        if self.epoch == epochs_done:  # the resumed weights are the best ones
            self.weights = _cpu_copy(model)
            return
        if self.path is None or not self.path.is_file():
            raise CheckpointError(
                f"{checkpoint_path} says epoch {self.epoch} was the best ({self.key} "
                f"{self.score:.4f}) but its weights are not here: best_checkpoint_path="
                f"{None if self.path is None else str(self.path)!r} "
                f"{'is not given' if self.path is None else 'does not exist'}. Pass the "
                "best_checkpoint_path of the interrupted run, or start again (resume=False).")
        state = _read_checkpoint(self.path, map_location="cpu")
        if state["epoch"] != self.epoch:
            raise CheckpointError(
                f"{self.path} holds epoch {state['epoch']}, but {checkpoint_path} says the best "
                f"epoch was {self.epoch}: the two files come from different runs. Pass the "
                "matching best_checkpoint_path, or start again (resume=False).")
        self.weights = state["model"]

    def restore(self, model: nn.Module) -> bool:
        """Put the best weights into ``model``; True when it did."""
        if self.weights is None:
            return False
        unwrap(model).load_state_dict(self.weights)
        return True


def _cpu_copy(model: nn.Module) -> dict:
    # On the CPU: a second copy of a large model's weights would crowd the GPU's memory.
    return {name: value.detach().to("cpu", copy=True)
            for name, value in unwrap(model).state_dict().items()}
