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
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

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


def _autocast(device: torch.device, enabled: bool):
    # bfloat16 needs no loss scaling; float16 (older GPUs) gets a GradScaler in fit().
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


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
                    ignore_index: Optional[int] = None, warn_skipped: bool = True) -> dict:
    """One pass over ``loader``; the scheduler (if any) is stepped after every batch.

    A batch whose target pixels are all ``ignore_index`` has nothing to learn from: it is
    skipped (no forward pass, no optimiser or scheduler step) and, with ``warn_skipped``, one
    warning at the end of the epoch says how many were. A loss that is NaN or infinite on a
    batch with labelled pixels is divergence: FloatingPointError.

    Args:
        ignore_index: the void label; None takes the loss's own ``ignore_index`` (segtut's
            losses, also inside ``AuxLoss``) when it has one.

    Returns:
        ``{"loss": mean loss over the steps taken, "steps": int, "images": int, "seconds":
        float, "skipped_batches": int}``.
    """
    if ignore_index is None:
        ignore_index = _ignore_index_of(loss_fn)
    model.train()
    total_loss, steps, images_seen, skipped, start = 0.0, 0, 0, 0, time.perf_counter()
    bar = progress_bar(loader, description, progress)
    for images, masks in bar:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        if ignore_index is not None and not bool((masks != ignore_index).any()):
            skipped += 1  # every pixel is void: no loss to learn from, so no step at all
            continue
        with _autocast(device, amp):
            logits = logits_of(model(images))  # (N, C, H, W)
            loss = loss_fn(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"The loss became {loss.item()} at step {steps}: lower the "
                                     "learning rate or check the data.")
        total_loss += loss.item()
        steps += 1
        images_seen += images.shape[0]
        bar.set_postfix(loss=f"{total_loss / steps:.3f}")
        if max_steps is not None and steps >= max_steps:
            break
    if skipped and warn_skipped:
        warnings.warn(_skipped_message(skipped, ignore_index), LabelWarning, stacklevel=2)
    mean_loss = total_loss / steps if steps else (math.nan if skipped else 0.0)
    return {"loss": mean_loss, "steps": steps, "images": images_seen,
            "seconds": time.perf_counter() - start, "skipped_batches": skipped}


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
            amp: bool = False) -> torch.Tensor:
    """Logits for a batch, bilinearly upsampled to ``size`` (the label's native size).

    ``(N, 3, h, w)`` -> float ``(N, C, H, W)``.
    """
    model.eval()
    with _autocast(images.device, amp):
        logits = logits_of(model(images)).float()  # (N, C, h, w)
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, *, num_classes: int,
             ignore_index: Optional[int], loss_fn: Optional[Callable] = None, amp: bool = False,
             max_batches: Optional[int] = None, progress: bool = True,
             class_names: Optional[Sequence[str]] = None, warn: bool = True) -> dict:
    """Metrics over a whole split, from one confusion matrix, at the masks' native resolution.

    With ``warn``, a :class:`LabelWarning` names the classes that never occur in the split's
    targets and says when most target pixels are ignored (:func:`label_problems`).

    Args:
        class_names: names of the classes for the warnings (default: their ids).

    Returns:
        ``{"loss", "pixel_accuracy", "mean_iou", "mean_dice", "mean_accuracy", "iou" (list),
        "dice" (list), "confusion" (C x C list of ints), "ignored_pixels" (int),
        "label_problems" (list of str), "seconds"}``; ``loss`` is NaN without ``loss_fn`` and
        averages the batches that have labelled pixels.
    """
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    total_loss, loss_batches, batches, start = 0.0, 0, 0, time.perf_counter()
    for images, masks in progress_bar(loader, "eval", progress):
        images, masks = images.to(device), masks.to(device)
        logits = predict(model, images, size=tuple(masks.shape[-2:]), amp=amp)  # (N, C, H, W)
        if loss_fn is not None and (ignore_index is None or bool((masks != ignore_index).any())):
            total_loss += loss_fn(logits, masks).item()
            loss_batches += 1
        matrix.update(logits.argmax(dim=1), masks)
        batches += 1
        if max_batches is not None and batches >= max_batches:
            break
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
                    scaler=None, epoch: int = 0, history: Optional[list] = None) -> Path:
    """Save everything needed to resume exactly: weights, optimiser, scheduler, epoch, history.

    Written to a temporary file and renamed, so an interrupted save never leaves a broken file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "history": history or [],
    }
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, temporary)
    temporary.replace(path)
    return path


def load_checkpoint(path: str | Path, model: nn.Module, optimizer=None, scheduler=None,
                    scaler=None, map_location=None) -> dict:
    """Restore a checkpoint saved by :func:`save_checkpoint` (``weights_only=True``: no pickled code).

    Returns:
        ``{"epoch": epochs completed, "history": list of per-epoch dicts}``.

    Raises:
        CheckpointError: the file is missing, empty, truncated or not a segtut checkpoint (a
            bare ``state_dict``, an object that ``weights_only`` loading refuses), or its weights
            do not fit ``model``; the message names the file and says what to do.
    """
    path = Path(path)
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
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        raise CheckpointError(f"The weights in {path} do not fit this model (another "
                              "architecture, size option or num_classes?): "
                              + " ".join(line.strip() for line in lines[:3])) from error
    for target, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if target is not None and state.get(key) is not None:
            target.load_state_dict(state[key])
    return {"epoch": state["epoch"], "history": state.get("history", [])}


def fit(model: nn.Module, train_loader, val_loader, *, loss_fn: Callable,
        optimizer: torch.optim.Optimizer, epochs: int, device: torch.device, seed: int,
        num_classes: int, ignore_index: Optional[int], scheduler=None,
        amp: Optional[bool] = None, time_budget_s: Optional[float] = None,
        max_steps_per_epoch: Optional[int] = None, checkpoint_path: str | Path | None = None,
        resume: bool = False, progress: bool = True, log: Optional[Callable[[str], None]] = print,
        class_names: Optional[Sequence[str]] = None) -> list[dict]:
    """Train for ``epochs`` epochs, evaluating on ``val_loader`` after each one.

    Every epoch starts with ``torch.manual_seed(seed + epoch)``, so its shuffling, augmentation
    and dropout depend only on the seed and the epoch number: a run resumed from a checkpoint
    repeats exactly what the uninterrupted run would have done.

    Args:
        amp: mixed precision; default on for CUDA, off elsewhere.
        time_budget_s: stop after the first epoch that ends past this many training seconds.
        checkpoint_path: save after every epoch (and resume from it when ``resume``). A
            checkpoint that already holds ``epochs`` epochs or more trains nothing: a warning
            says so and its history is returned.
        log: called with one line per epoch (``None`` for silence).
        class_names: names of the classes for the label warnings.

    Warnings (each once per call, not every epoch): :class:`LabelWarning` when training
    batches had no labelled pixel (skipped) and when the validation targets lack a class or
    are mostly ignored (:func:`label_problems`).

    Returns:
        The history: one dict per epoch with ``epoch``, ``train_loss``, ``val_loss``,
        ``val_mean_iou``, ``val_pixel_accuracy``, ``lr``, ``train_seconds`` (this epoch),
        ``train_seconds_total`` (all epochs so far, resumed ones included), ``eval_seconds``.
    """
    model.to(device)
    amp = device.type == "cuda" if amp is None else amp
    fp16 = amp and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda") if fp16 else None
    history: list[dict] = []
    start_epoch = 0
    if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
        state = load_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler, map_location=device)
        start_epoch, history = state["epoch"], state["history"]
        if log:
            log(f"resumed from {checkpoint_path} after epoch {start_epoch}")
        if start_epoch >= epochs:
            warnings.warn(f"The checkpoint {checkpoint_path} already holds {start_epoch} epochs, "
                          f"and fit was asked for epochs={epochs}: nothing was trained. The "
                          f"model has the weights after epoch {start_epoch}. Pass a larger "
                          "epochs to train on, or resume=False (or another checkpoint_path) "
                          "to start again.", stacklevel=2)
    trained_s = history[-1]["train_seconds_total"] if history else 0.0
    warned_skipped = warned_labels = False
    for epoch in range(start_epoch, epochs):
        torch.manual_seed(seed + epoch)
        train = train_one_epoch(model, train_loader, loss_fn, optimizer, device, scheduler=scheduler,
                                amp=amp, scaler=scaler, max_steps=max_steps_per_epoch,
                                progress=progress, description=f"epoch {epoch + 1}/{epochs}",
                                ignore_index=ignore_index, warn_skipped=False)
        if train["skipped_batches"] and not warned_skipped:
            warned_skipped = True
            warnings.warn(f"epoch {epoch + 1}: " + _skipped_message(train["skipped_batches"],
                                                                     ignore_index),
                          LabelWarning, stacklevel=2)
        trained_s += train["seconds"]
        val = evaluate(model, val_loader, device, num_classes=num_classes, ignore_index=ignore_index,
                       loss_fn=loss_fn, amp=amp, progress=progress, class_names=class_names,
                       warn=False)
        if val["label_problems"] and not warned_labels:
            warned_labels = True  # the same targets every epoch: once per fit is enough
            for problem in val["label_problems"]:
                warnings.warn(f"validation split: {problem}", LabelWarning, stacklevel=2)
        row = {"epoch": epoch + 1, "train_loss": train["loss"], "val_loss": val["loss"],
               "val_mean_iou": val["mean_iou"], "val_pixel_accuracy": val["pixel_accuracy"],
               "lr": optimizer.param_groups[0]["lr"], "train_seconds": train["seconds"],
               "train_seconds_total": trained_s, "eval_seconds": val["seconds"]}
        history.append(row)
        if log:
            log(f"epoch {epoch + 1:3d}/{epochs}  train loss {row['train_loss']:.4f}  "
                f"val loss {row['val_loss']:.4f}  val mIoU {row['val_mean_iou']:.4f}  "
                f"val acc {row['val_pixel_accuracy']:.4f}  ({train['seconds']:.0f} s train, "
                f"{trained_s / 60:.1f} min so far)")
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler, epoch + 1, history)
        if time_budget_s is not None and trained_s >= time_budget_s and epoch + 1 < epochs:
            if log:
                log(f"time budget of {time_budget_s:.0f} s reached after epoch {epoch + 1}; stopping.")
            break
    return history
