"""Segmentation metrics from one confusion matrix accumulated over a whole split.

Per-class IoU, mean IoU, Dice and pixel accuracy are all pure functions of a ``(C, C)``
confusion matrix whose rows are the true classes and whose columns are the predicted classes.
Accumulate the matrix over every batch of a split with :class:`ConfusionMatrix`, then compute
the scores once at the end. Averaging per-batch IoUs instead gives a different (wrong) number:
small classes that happen to be absent from a batch are weighted as much as whole splits.

Pixels whose target is the ignore label (void) are left out of the matrix entirely, so what the
model predicts there changes nothing.

This file imports only torch: copy it into your own project if you like.

Example::

    metric = ConfusionMatrix(num_classes=11, ignore_index=11)
    for images, masks in loader:
        metric.update(model(images), masks)  # logits (N, C, H, W) at the mask's size
    scores = metric.compute()  # {"mean_iou": ..., "iou": [...], ...}
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "ConfusionMatrix",
    "pixel_accuracy",
    "iou_per_class",
    "mean_iou",
    "dice_per_class",
    "mean_dice",
    "class_accuracy",
]


class ConfusionMatrix:
    """A streaming confusion matrix for semantic segmentation.

    ``matrix[t, p]`` counts the pixels whose true class is ``t`` and whose predicted class is
    ``p``, summed over every :meth:`update` since the last :meth:`reset`.

    Args:
        num_classes: number of real classes ``C``; class ids are ``0 .. C - 1``.
        ignore_index: target label of pixels to leave out (void), or None if every target pixel
            is a class id. Keyword-only and required, so the ignore label is never forgotten.
        device: where :attr:`matrix` lives. None: on the device of the batches it is given.

    Attributes:
        matrix: int64 ``(C, C)``, rows = true class, columns = predicted class.
        ignored: int64 scalar tensor, the target pixels labelled ``ignore_index`` (left out of
            ``matrix``): more ignored than counted pixels usually means broken masks.
    """

    def __init__(self, num_classes: int, *, ignore_index: int | None,
                 device: torch.device | str | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}.")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} is one of the class ids "
                             f"0..{num_classes - 1}; the ignore label must be another value.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.device = None if device is None else torch.device(device)
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64,
                                  device=self.device)  # (C, C)
        self.ignored = torch.zeros((), dtype=torch.int64, device=self.device)

    def reset(self) -> None:
        """Set every count back to zero (call it at the start of each split)."""
        self.matrix.zero_()
        self.ignored.zero_()

    @torch.no_grad()
    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch to the matrix.

        Args:
            predictions: integer class ids ``(N, H, W)``, or float logits / probabilities
                ``(N, C, H, W)``, which are turned into class ids with an argmax over dim 1.
            targets: int64 ``(N, H, W)``, class ids ``0 .. C - 1`` or ``ignore_index``.

        Raises:
            ValueError: predictions and targets differ in size (upsample the logits to the
                label's size; never downsample labels), logits do not have ``C`` channels,
                or targets / predictions hold values that are not class ids (nor the ignore
                label, for targets).
        """
        num_classes = self.num_classes
        given_size = tuple(predictions.shape)
        if predictions.ndim == targets.ndim + 1:  # logits (N, C, H, W)
            if predictions.shape[1] != num_classes:
                raise ValueError(f"Logits have {predictions.shape[1]} channels but the metric "
                                 f"counts {num_classes} classes.")
            predictions = predictions.argmax(dim=1)  # (N, H, W), ids in 0..C-1 by construction
        else:
            _check_ids("predictions", predictions, num_classes)
        if predictions.shape != targets.shape:
            raise ValueError(
                f"Predictions of size {given_size} do not match targets of size "
                f"{tuple(targets.shape)}. Upsample the logits to the label size first, e.g. "
                "F.interpolate(logits, size=masks.shape[-2:], mode='bilinear'); never "
                "downsample the labels, or the metric is no longer the one on the real labels.")
        if targets.is_floating_point() or targets.is_complex():
            raise ValueError(f"Targets must be integer class ids, got {targets.dtype}.")
        if targets.numel() == 0:
            return

        # One min/max pass checks the common cases; the slower exact check only runs when the
        # targets hold something other than class ids and an ignore label equal to C.
        low, high = (int(value) for value in torch.aminmax(targets))
        has_only_ids = low >= 0 and high < num_classes
        if not has_only_ids and not (self.ignore_index == num_classes and low >= 0
                                     and high == num_classes):
            ignored = (targets == self.ignore_index if self.ignore_index is not None
                       else torch.zeros_like(targets, dtype=torch.bool))
            bad = ~ignored & ((targets < 0) | (targets >= num_classes))
            if bad.any():
                values = torch.unique(targets[bad])[:10].tolist()
                raise ValueError(
                    f"Targets hold values {values} that are neither class ids "
                    f"0..{num_classes - 1} nor the ignore label {self.ignore_index}. Common "
                    "causes: 0/255 binary masks, RGB colour masks, or the wrong num_classes.")
            # Ignored pixels go to an extra row C, which is dropped below: no boolean gathering.
            targets = targets.masked_fill(ignored, num_classes)

        # Row-major index of the cell (true, predicted); ignored pixels land in row C.
        # One fused add (predictions + C * targets) is much faster than targets * C + predictions.
        index = predictions.long().add(targets.long(), alpha=num_classes)  # (N, H, W)
        counts = torch.bincount(index.reshape(-1), minlength=(num_classes + 1) * num_classes)
        ignored = counts[num_classes * num_classes:].sum()  # row C: the ignored pixels
        counts = counts[: num_classes * num_classes].reshape(num_classes, num_classes)  # (C, C)

        if self.device is None and self.matrix.device != counts.device:
            self.matrix = self.matrix.to(counts.device)
            self.ignored = self.ignored.to(counts.device)
        self.matrix += counts.to(self.matrix.device)
        self.ignored += ignored.to(self.ignored.device)

    def compute(self) -> dict:
        """Scores of everything accumulated so far.

        Returns:
            A dict of Python numbers: ``pixel_accuracy`` (float), ``mean_iou`` (float),
            ``iou`` (list of C floats), ``mean_dice`` (float), ``dice`` (list of C floats) and
            ``mean_accuracy`` (mean per-class recall, float). A class absent from both the
            targets and the predictions has IoU, Dice and accuracy NaN and is left out of the
            means.
        """
        matrix = self.matrix.cpu()
        return {
            "pixel_accuracy": pixel_accuracy(matrix),
            "mean_iou": mean_iou(matrix),
            "iou": iou_per_class(matrix).tolist(),
            "mean_dice": mean_dice(matrix),
            "dice": dice_per_class(matrix).tolist(),
            "mean_accuracy": _nanmean(class_accuracy(matrix)),
        }

    def __repr__(self) -> str:
        return (f"ConfusionMatrix(num_classes={self.num_classes}, "
                f"ignore_index={self.ignore_index}, pixels={int(self.matrix.sum())})")


def _check_ids(name: str, tensor: torch.Tensor, num_classes: int) -> None:
    """Raise ValueError unless ``tensor`` is an integer tensor of ids ``0 .. num_classes - 1``."""
    if tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(f"{name} must be integer class ids (N, H, W) or logits (N, C, H, W), "
                         f"got a {tensor.dtype} tensor of size {tuple(tensor.shape)}.")
    if tensor.numel() == 0:
        return
    low, high = (int(value) for value in torch.aminmax(tensor))
    if low < 0 or high >= num_classes:
        values = torch.unique(tensor[(tensor < 0) | (tensor >= num_classes)])[:10].tolist()
        raise ValueError(f"{name} hold values {values} outside the class ids "
                         f"0..{num_classes - 1}.")


def _nanmean(values: torch.Tensor) -> float:
    """Mean of the non-NaN entries, NaN if there are none."""
    values = values[~values.isnan()]
    return float(values.mean()) if values.numel() else math.nan


def _divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` in float64, NaN where the denominator is 0."""
    numerator = numerator.double()
    denominator = denominator.double()
    return torch.where(denominator > 0, numerator / denominator, math.nan)


def pixel_accuracy(matrix: torch.Tensor) -> float:
    """Fraction of (non-ignored) pixels whose predicted class is right.

    Args:
        matrix: int ``(C, C)`` confusion matrix, rows = true class, columns = predicted.

    Returns:
        ``trace / sum`` as a float; NaN for an empty matrix.
    """
    total = int(matrix.sum())
    return int(matrix.diagonal().sum()) / total if total else math.nan


def iou_per_class(matrix: torch.Tensor) -> torch.Tensor:
    """Intersection over union (Jaccard index) of each class.

    ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``, where ``TP_c = matrix[c, c]``, ``FN_c`` is the
    rest of row ``c`` and ``FP_c`` the rest of column ``c``.

    Args:
        matrix: int ``(C, C)`` confusion matrix, rows = true class, columns = predicted.

    Returns:
        float64 ``(C,)``; NaN for a class absent from both the targets and the predictions
        (union 0). A class that is only predicted, never true, gets 0.
    """
    true_positives = matrix.diagonal()  # (C,)
    union = matrix.sum(dim=1) + matrix.sum(dim=0) - true_positives  # (C,)
    return _divide(true_positives, union)


def mean_iou(matrix: torch.Tensor) -> float:
    """Mean of :func:`iou_per_class` over the classes where it is defined (not NaN).

    Args:
        matrix: int ``(C, C)`` confusion matrix, rows = true class, columns = predicted.

    Returns:
        A float; NaN for an empty matrix.
    """
    return _nanmean(iou_per_class(matrix))


def dice_per_class(matrix: torch.Tensor) -> torch.Tensor:
    """Dice coefficient (F1 score) of each class: ``2 TP_c / (2 TP_c + FP_c + FN_c)``.

    Args:
        matrix: int ``(C, C)`` confusion matrix, rows = true class, columns = predicted.

    Returns:
        float64 ``(C,)``; NaN for a class absent from both the targets and the predictions.
    """
    true_positives = matrix.diagonal()  # (C,)
    return _divide(2 * true_positives, matrix.sum(dim=1) + matrix.sum(dim=0))


def mean_dice(matrix: torch.Tensor) -> float:
    """Mean of :func:`dice_per_class` over the classes where it is defined (not NaN).

    Args:
        matrix: int ``(C, C)`` confusion matrix, rows = true class, columns = predicted.

    Returns:
        A float; NaN for an empty matrix.
    """
    return _nanmean(dice_per_class(matrix))


def class_accuracy(matrix: torch.Tensor) -> torch.Tensor:
    """Per-class accuracy (recall): the fraction of each class's pixels predicted as it.

    Args:
        matrix: int ``(C, C)`` confusion matrix, rows = true class, columns = predicted.

    Returns:
        float64 ``(C,)``; NaN for a class with no true pixels.
    """
    return _divide(matrix.diagonal(), matrix.sum(dim=1))
