"""Losses for semantic segmentation: cross-entropy, Dice, focal, CE + Dice, and class weights.

Every loss takes logits ``(N, C, H, W)`` (float) and targets ``(N, H, W)`` (int64 class ids),
returns a scalar, and takes the ignore label as a required keyword argument: pixels labelled
``ignore_index`` (void) are skipped entirely, so what the model predicts there never matters.

Two rules every loss here follows:

* a batch whose pixels are all ignored gives a loss of exactly 0 that is still connected to the
  logits (``backward()`` works and every gradient is 0), never NaN;
* per-class weights must have one entry per class: a length that differs from the logits'
  ``C`` raises ValueError (expected vs got) instead of being broadcast, cut or indexed past.

Build one by name with :func:`build_loss`::

    loss_fn = build_loss("ce+dice", ignore_index=11)
    loss = loss_fn(logits, masks)

This file imports only torch: copy it into your own project if you like.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "class_pixel_counts",
    "class_frequencies",
    "median_frequency_weights",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "CEDiceLoss",
    "LOSSES",
    "build_loss",
]


# ---------------------------------------------------------------------------------------------
# Class statistics and weights
# ---------------------------------------------------------------------------------------------

def _valid_pixels(targets: torch.Tensor, ignore_index: int | None) -> torch.Tensor:
    """Boolean mask of the pixels that are not ignored, same size as ``targets``."""
    if ignore_index is None:
        return torch.ones_like(targets, dtype=torch.bool)
    return targets != ignore_index


def _per_image_counts(masks: Iterable[torch.Tensor], num_classes: int,
                      ignore_index: int | None) -> Iterator[torch.Tensor]:
    """Yield int64 ``(images, C)`` pixel counts per image for each mask tensor of ``masks``.

    A mask ``(H, W)`` is one image; a mask ``(N, H, W)`` is N images.
    """
    for mask in masks:
        mask = torch.as_tensor(mask)
        if mask.is_floating_point():
            raise ValueError(f"Masks must hold integer class ids, got {mask.dtype}.")
        mask = mask.long().reshape(-1, *mask.shape[-2:])  # (N, H, W)
        num_images = mask.shape[0]
        valid = _valid_pixels(mask, ignore_index)
        values = mask[valid]
        if values.numel():
            low, high = (int(value) for value in torch.aminmax(values))
            if low < 0 or high >= num_classes:
                bad = torch.unique(values[(values < 0) | (values >= num_classes)])[:10].tolist()
                raise ValueError(
                    f"Masks hold values {bad} that are neither class ids 0..{num_classes - 1} "
                    f"nor the ignore label {ignore_index}. Common causes: 0/255 binary masks, "
                    "RGB colour masks, or the wrong num_classes.")
        # Offset each image's ids by image * C so that one bincount counts every image.
        image_ids = torch.arange(num_images, device=mask.device).view(-1, 1, 1).expand_as(mask)
        index = image_ids[valid] * num_classes + values
        counts = torch.bincount(index, minlength=num_images * num_classes)
        yield counts.view(num_images, num_classes).cpu()  # (N, C)


def class_pixel_counts(masks: Iterable[torch.Tensor], num_classes: int, *,
                       ignore_index: int | None) -> torch.Tensor:
    """Count the pixels of each class over a whole set of masks.

    Args:
        masks: iterable of integer mask tensors, each ``(H, W)`` or ``(N, H, W)``, e.g.
            ``(mask for _, mask in dataset)``.
        num_classes: number of real classes ``C``.
        ignore_index: label of pixels that are not counted (void), or None.

    Returns:
        int64 ``(C,)``: ``counts[c]`` is the number of pixels labelled ``c``.

    Raises:
        ValueError: a mask holds values that are neither class ids nor ``ignore_index``.
    """
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for image_counts in _per_image_counts(masks, num_classes, ignore_index):
        counts += image_counts.sum(dim=0)
    return counts


def class_frequencies(masks: Iterable[torch.Tensor], num_classes: int, *,
                      ignore_index: int | None) -> torch.Tensor:
    """Class frequencies as Eigen & Fergus (2015) define them for median frequency balancing.

    ``freq[c] = pixels of class c / labelled pixels of the images where c is present``.
    Dividing by the images where the class appears (not by every image) keeps a class that is
    large but rare in the dataset from looking small.

    Args:
        masks: iterable of integer mask tensors, each ``(H, W)`` (one image) or ``(N, H, W)``
            (N images).
        num_classes: number of real classes ``C``.
        ignore_index: label of pixels that are not counted (void), or None.

    Returns:
        float64 ``(C,)``; 0 for a class that never appears.

    Raises:
        ValueError: a mask holds values that are neither class ids nor ``ignore_index``.
    """
    counts = torch.zeros(num_classes, dtype=torch.int64)
    image_pixels = torch.zeros(num_classes, dtype=torch.int64)
    for image_counts in _per_image_counts(masks, num_classes, ignore_index):  # (N, C)
        counts += image_counts.sum(dim=0)
        labelled = image_counts.sum(dim=1, keepdim=True)  # (N, 1) non-void pixels per image
        image_pixels += (labelled * (image_counts > 0)).sum(dim=0)  # (C,)
    return torch.where(image_pixels > 0, counts.double() / image_pixels.clamp_min(1), 0.0)


def median_frequency_weights(counts: torch.Tensor) -> torch.Tensor:
    """Median frequency balancing weights (Eigen & Fergus, 2015).

    ``weight[c] = median(freq) / freq[c]``: a class rarer than the median class gets a weight
    above 1, a commoner class a weight below 1. The median is taken over the classes that
    appear (frequency > 0); a class with no pixels gets weight 0.

    The weights depend only on the ratios between frequencies, so ``counts`` may be

    * :func:`class_pixel_counts`: then ``freq[c] = counts[c] / all pixels``, the common
      simplification (used by many SegNet re-implementations), or
    * :func:`class_frequencies`: the exact Eigen & Fergus definition, where ``freq[c]`` is
      divided by the pixels of the images in which ``c`` is present.

    Args:
        counts: ``(C,)`` non-negative pixel counts or frequencies per class.

    Returns:
        float32 ``(C,)``, ready for ``nn.CrossEntropyLoss(weight=...)``.
    """
    counts = torch.as_tensor(counts).double()
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"counts must be a 1-d tensor of non-negative numbers, got {counts}.")
    present = counts > 0
    if not present.any():
        raise ValueError("Every class has zero pixels: there is nothing to weight.")
    frequencies = counts / counts.sum()  # (C,)
    median = frequencies[present].quantile(0.5)
    return torch.where(present, median / frequencies.clamp_min(1e-300), 0.0).float()


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------

def _check_inputs(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise ValueError unless logits ``(N, C, H, W)`` and targets ``(N, H, W)`` line up."""
    if logits.ndim != targets.ndim + 1 or logits.shape[0] != targets.shape[0] \
            or logits.shape[2:] != targets.shape[1:]:
        raise ValueError(
            f"Logits of size {tuple(logits.shape)} do not match targets of size "
            f"{tuple(targets.shape)}: expected logits (N, C, H, W) and targets (N, H, W). "
            "Upsample the logits to the label size, e.g. F.interpolate(logits, "
            "size=masks.shape[-2:], mode='bilinear'); never downsample the labels.")


def _check_class_weights(weights: torch.Tensor | None, logits: torch.Tensor, name: str) -> None:
    """Raise ValueError unless ``weights`` (if any) has one entry per class of ``logits``."""
    if weights is not None and weights.numel() != logits.shape[1]:
        raise ValueError(f"{name} has the wrong length: expected {logits.shape[1]} weights, "
                         f"one per class of the logits (void not included), got "
                         f"{weights.numel()}.")


def _no_labelled_pixels(targets: torch.Tensor, ignore_index: int | None) -> bool:
    """True when every target pixel is ``ignore_index`` (or there are no pixels at all)."""
    return targets.numel() == 0 or (ignore_index is not None
                                    and not bool((targets != ignore_index).any()))


def _zero_loss(logits: torch.Tensor) -> torch.Tensor:
    """A scalar 0 connected to ``logits``: ``backward()`` works and gives zero gradients."""
    return logits.sum() * 0.0


def _as_class_weights(weights: Sequence[float] | torch.Tensor | None) -> torch.Tensor | None:
    """Per-class weights as a float32 ``(C,)`` tensor, or None."""
    if weights is None:
        return None
    weights = torch.as_tensor(weights, dtype=torch.float32)
    if weights.ndim != 1:
        raise ValueError(f"Class weights must be 1-d (C,), got size {tuple(weights.shape)}.")
    return weights


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """Pixel-wise cross-entropy: ``nn.CrossEntropyLoss`` with a required ignore label.

    With ``class_weights`` the loss is the weighted mean ``sum_i w[y_i] CE_i / sum_i w[y_i]``
    over the non-ignored pixels (PyTorch's definition). A batch whose pixels are all ignored
    gives 0 (PyTorch gives NaN, a 0 / 0).

    Args:
        ignore_index: label of pixels to skip (void), or None if there is none.
        class_weights: optional ``(C,)`` weight per class, e.g. from
            :func:`median_frequency_weights`.
        label_smoothing: as in ``nn.CrossEntropyLoss``.

    Shapes:
        logits float ``(N, C, H, W)``, targets int64 ``(N, H, W)`` -> scalar.
    """

    def __init__(self, *, ignore_index: int | None,
                 class_weights: Sequence[float] | torch.Tensor | None = None,
                 label_smoothing: float = 0.0):
        super().__init__(weight=_as_class_weights(class_weights),
                         ignore_index=-100 if ignore_index is None else ignore_index,
                         label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, targets)
        _check_class_weights(self.weight, logits, "class_weights")
        if _no_labelled_pixels(targets, self.ignore_index):
            return _zero_loss(logits)
        return super().forward(logits, targets)


class DiceLoss(nn.Module):
    """Soft multiclass Dice loss on softmax probabilities (Milletari et al., 2016).

    For each class ``c``, over every non-ignored pixel ``i`` of the whole batch::

        intersection_c = sum_i p_ic * y_ic          (p: softmax, y: one-hot target)
        cardinality_c  = sum_i p_ic + sum_i y_ic
        dice_c = (intersection_c + smooth) / max(cardinality_c / 2 + smooth, eps)
        loss   = mean_c [(1 - dice_c) * (class c appears in the targets)]

    ``dice_c`` is ``2 |P n Y| / (|P| + |Y|)`` when ``smooth = 0``. A class absent from the
    batch's targets contributes 0 (its Dice is undefined) but still counts in the mean over the
    ``C`` classes. The sums run over the batch, not per image. This is exactly
    ``segmentation_models_pytorch.losses.DiceLoss(mode="multiclass", from_logits=True,
    ignore_index=...)`` (smp 0.5+, whose Tversky form puts ``smooth`` on the intersection and
    on half the cardinality), checked in ``tests/test_losses.py``.

    Args:
        ignore_index: label of pixels to remove from both probabilities and one-hot targets,
            or None.
        smooth: added to the numerator and denominator; 0 by default.
        eps: lower bound of the denominator, against division by zero.
        class_weights: optional ``(C,)`` weights; the loss is then
            ``sum_c w_c loss_c / sum_c w_c`` (as in smp).

    Shapes:
        logits float ``(N, C, H, W)``, targets int64 ``(N, H, W)`` -> scalar (0 when every
        pixel is ignored: no class is present).
    """

    def __init__(self, *, ignore_index: int | None, smooth: float = 0.0, eps: float = 1e-7,
                 class_weights: Sequence[float] | torch.Tensor | None = None):
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth
        self.eps = eps
        self.register_buffer("class_weights", _as_class_weights(class_weights))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, targets)
        _check_class_weights(self.class_weights, logits, "class_weights")
        probabilities = logits.softmax(dim=1)  # (N, C, H, W)
        valid = _valid_pixels(targets, self.ignore_index).unsqueeze(1)  # (N, 1, H, W)
        probabilities = probabilities * valid  # ignored pixels: all probabilities 0
        # One-hot targets (N, C, H, W), all zeros at ignored pixels.
        one_hot = torch.zeros_like(probabilities).scatter_(
            1, targets.unsqueeze(1).masked_fill(~valid, 0), valid.to(probabilities.dtype))

        dims = (0, 2, 3)  # sum over the batch and the pixels, one value per class
        intersection = (probabilities * one_hot).sum(dims)  # (C,)
        target_pixels = one_hot.sum(dims)  # (C,)
        cardinality = probabilities.sum(dims) + target_pixels  # (C,)
        dice = (intersection + self.smooth) / (cardinality / 2 + self.smooth).clamp_min(self.eps)
        loss = (1 - dice) * (target_pixels > 0)  # (C,) absent classes contribute 0

        if self.class_weights is not None:
            return (loss * self.class_weights).sum() / self.class_weights.sum()
        return loss.mean()


class FocalLoss(nn.Module):
    """Multiclass softmax focal loss (Lin et al., 2017).

    For each non-ignored pixel with true class ``t`` and softmax probability ``p_t``::

        FL = -alpha[t] * (1 - p_t) ** gamma * log(p_t)

    averaged over the non-ignored pixels. ``gamma`` down-weights pixels that are already
    classified well; with ``gamma = 0`` and no ``alpha`` it is exactly cross-entropy. With
    ``alpha`` it is divided by the number of pixels, not by ``sum alpha[t]`` as PyTorch's
    weighted cross-entropy is.

    Not the same loss as smp's ``FocalLoss(mode="multiclass")``, which sums one-vs-rest
    *sigmoid* (binary) focal terms over the classes, so the two are not compared in the tests.

    Args:
        ignore_index: label of pixels to skip (void), or None.
        gamma: focusing parameter, ``>= 0``; 2 in the paper.
        alpha: optional ``(C,)`` weight per class.

    Shapes:
        logits float ``(N, C, H, W)``, targets int64 ``(N, H, W)`` -> scalar (0 when every
        pixel is ignored).
    """

    def __init__(self, *, ignore_index: int | None, gamma: float = 2.0,
                 alpha: Sequence[float] | torch.Tensor | None = None):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}.")
        self.ignore_index = ignore_index
        self.gamma = gamma
        self.register_buffer("alpha", _as_class_weights(alpha))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, targets)
        _check_class_weights(self.alpha, logits, "alpha")
        valid = _valid_pixels(targets, self.ignore_index)  # (N, H, W)
        classes = targets.masked_fill(~valid, 0).unsqueeze(1)  # (N, 1, H, W) any id at void
        log_pt = logits.log_softmax(dim=1).gather(1, classes).squeeze(1)  # (N, H, W)
        loss = -log_pt
        if self.gamma != 0:
            loss = (1 - log_pt.exp()).clamp_min(0).pow(self.gamma) * loss
        if self.alpha is not None:
            loss = self.alpha[classes.squeeze(1)] * loss
        loss = torch.where(valid, loss, 0.0)  # (N, H, W)
        return loss.sum() / valid.sum().clamp_min(1)


class CEDiceLoss(nn.Module):
    """``ce_weight * cross-entropy + dice_weight * Dice``.

    Cross-entropy gives smooth per-pixel gradients; Dice weighs every class present equally,
    whatever its size. ``class_weights`` apply to the cross-entropy term only.

    Args:
        ignore_index: label of pixels to skip in both terms, or None.
        ce_weight: factor of the cross-entropy term.
        dice_weight: factor of the Dice term.
        class_weights: optional ``(C,)`` weights for the cross-entropy term.
        smooth: Dice's ``smooth``.
        eps: Dice's ``eps``.

    Shapes:
        logits float ``(N, C, H, W)``, targets int64 ``(N, H, W)`` -> scalar (0 when every
        pixel is ignored).
    """

    def __init__(self, *, ignore_index: int | None, ce_weight: float = 1.0,
                 dice_weight: float = 1.0,
                 class_weights: Sequence[float] | torch.Tensor | None = None,
                 smooth: float = 0.0, eps: float = 1e-7):
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.cross_entropy = CrossEntropyLoss(ignore_index=ignore_index,
                                              class_weights=class_weights)
        self.dice = DiceLoss(ignore_index=ignore_index, smooth=smooth, eps=eps)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (self.ce_weight * self.cross_entropy(logits, targets)
                + self.dice_weight * self.dice(logits, targets))


LOSSES = {
    "ce": CrossEntropyLoss,
    "dice": DiceLoss,
    "focal": FocalLoss,
    "ce+dice": CEDiceLoss,
}

# The keyword each loss takes its per-class weights under.
_CLASS_WEIGHTS_ARGUMENT = {"ce": "class_weights", "dice": "class_weights", "focal": "alpha",
                           "ce+dice": "class_weights"}


def build_loss(name: str, *, ignore_index: int | None,
               class_weights: Sequence[float] | torch.Tensor | None = None,
               **kwargs) -> nn.Module:
    """Build a loss of :data:`LOSSES` by name.

    Args:
        name: one of ``"ce"``, ``"dice"``, ``"focal"``, ``"ce+dice"``.
        ignore_index: label of pixels every loss skips (void), or None.
        class_weights: optional ``(C,)`` per-class weights (cross-entropy ``weight``, Dice
            class weights, focal ``alpha``; the cross-entropy term only for ``"ce+dice"``).
            Their length is checked against the logits' classes at every call.
        **kwargs: passed on to the loss, e.g. ``gamma=2.0`` for focal.

    Returns:
        An ``nn.Module`` mapping logits ``(N, C, H, W)`` and targets ``(N, H, W)`` to a scalar.

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}. Valid names: {', '.join(sorted(LOSSES))}.")
    if class_weights is not None:
        kwargs[_CLASS_WEIGHTS_ARGUMENT[name]] = class_weights
    return LOSSES[name](ignore_index=ignore_index, **kwargs)
