"""The training loop: ``train_one_epoch``, ``evaluate`` and ``fit``, plus checkpoints.

The functions return plain numbers (dicts of floats) and let the notebook print and plot.
The device and the seed are always passed in; nothing is seeded or chosen at import time.

Batches are ``(images, masks)``: float ``(N, 3, H, W)`` and int64 ``(N, H, W)``; the model returns
logits ``(N, C, h, w)`` (a dict with key ``"out"``, as torchvision returns, is accepted too).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable, Optional

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


def _progress_bar(iterable, description: str, progress: bool):
    # TQDM_DISABLE=1 silences the bars too (the notebook runner sets it for stored outputs).
    disable = not progress or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    return tqdm(iterable, desc=description, leave=False, disable=disable)


def _autocast(device: torch.device, enabled: bool):
    # bfloat16 needs no loss scaling; float16 (older GPUs) gets a GradScaler in fit().
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def train_one_epoch(model: nn.Module, loader, loss_fn: Callable, optimizer: torch.optim.Optimizer,
                    device: torch.device, *, scheduler=None, amp: bool = False,
                    scaler: Optional[torch.amp.GradScaler] = None, max_steps: Optional[int] = None,
                    progress: bool = True, description: str = "train") -> dict:
    """One pass over ``loader``; the scheduler (if any) is stepped after every batch.

    Returns:
        ``{"loss": mean loss over batches, "steps": int, "images": int, "seconds": float}``.
    """
    model.train()
    total_loss, steps, images_seen, start = 0.0, 0, 0, time.perf_counter()
    bar = _progress_bar(loader, description, progress)
    for images, masks in bar:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
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
    return {"loss": total_loss / max(1, steps), "steps": steps, "images": images_seen,
            "seconds": time.perf_counter() - start}


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
             max_batches: Optional[int] = None, progress: bool = True) -> dict:
    """Metrics over a whole split, from one confusion matrix, at the masks' native resolution.

    Returns:
        ``{"loss", "pixel_accuracy", "mean_iou", "mean_dice", "mean_accuracy", "iou" (list),
        "dice" (list), "confusion" (C x C list of ints), "seconds"}``; ``loss`` is NaN without
        ``loss_fn``.
    """
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    total_loss, batches, start = 0.0, 0, time.perf_counter()
    for images, masks in _progress_bar(loader, "eval", progress):
        images, masks = images.to(device), masks.to(device)
        logits = predict(model, images, size=tuple(masks.shape[-2:]), amp=amp)  # (N, C, H, W)
        if loss_fn is not None:
            total_loss += loss_fn(logits, masks).item()
        matrix.update(logits.argmax(dim=1), masks)
        batches += 1
        if max_batches is not None and batches >= max_batches:
            break
    result = matrix.compute()
    result["loss"] = total_loss / batches if (loss_fn is not None and batches) else float("nan")
    result["confusion"] = matrix.matrix.cpu().tolist()
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
    """
    state = torch.load(path, map_location=map_location, weights_only=True)
    model.load_state_dict(state["model"])
    for target, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if target is not None and state.get(key) is not None:
            target.load_state_dict(state[key])
    return {"epoch": state["epoch"], "history": state["history"]}


def fit(model: nn.Module, train_loader, val_loader, *, loss_fn: Callable,
        optimizer: torch.optim.Optimizer, epochs: int, device: torch.device, seed: int,
        num_classes: int, ignore_index: Optional[int], scheduler=None,
        amp: Optional[bool] = None, time_budget_s: Optional[float] = None,
        max_steps_per_epoch: Optional[int] = None, checkpoint_path: str | Path | None = None,
        resume: bool = False, progress: bool = True, log: Optional[Callable[[str], None]] = print) -> list[dict]:
    """Train for ``epochs`` epochs, evaluating on ``val_loader`` after each one.

    Every epoch starts with ``torch.manual_seed(seed + epoch)``, so its shuffling, augmentation
    and dropout depend only on the seed and the epoch number: a run resumed from a checkpoint
    repeats exactly what the uninterrupted run would have done.

    Args:
        amp: mixed precision; default on for CUDA, off elsewhere.
        time_budget_s: stop after the first epoch that ends past this many training seconds.
        checkpoint_path: save after every epoch (and resume from it when ``resume``).
        log: called with one line per epoch (``None`` for silence).

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
    trained_s = history[-1]["train_seconds_total"] if history else 0.0
    for epoch in range(start_epoch, epochs):
        torch.manual_seed(seed + epoch)
        train = train_one_epoch(model, train_loader, loss_fn, optimizer, device, scheduler=scheduler,
                                amp=amp, scaler=scaler, max_steps=max_steps_per_epoch,
                                progress=progress, description=f"epoch {epoch + 1}/{epochs}")
        trained_s += train["seconds"]
        val = evaluate(model, val_loader, device, num_classes=num_classes, ignore_index=ignore_index,
                       loss_fn=loss_fn, amp=amp, progress=progress)
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
