"""Scoring a trained model for a chapter: per-split tables, per-image scores, frames to look at.

:func:`segtut.train.evaluate` returns the numbers of one split; this module turns them into what
a chapter shows after training, so that every chapter does it the same way:

* :func:`evaluate_splits`: one :func:`~segtut.train.evaluate` per split (one confusion matrix
  over the whole split each), then a summary table (mIoU, pixel accuracy, mean Dice per split)
  and a per-class IoU table (one column per split), both ready to display;
* :func:`per_image_iou` and :func:`worst_images`: a score for every image of a split, to find
  the images a model gets most wrong;
* :func:`pick_frames`: which images to show, spread over the video sequences of a split instead
  of a few neighbouring frames of one street.

CamVid frames are named ``<sequence>_<frame>.png`` (``0001TP_008550.png``,
``Seq05VD_f02370.png``), so the sequence is the file name up to its first ``_``
(:func:`sequence_of`). Note that CamVid's val split is ONE sequence (101 frames of ``0016E5``):
to show more than one street, show test frames (sequences ``0001TP`` and ``Seq05VD``).

The scores are fractions in ``[0, 1]`` in the per-image tables (as :mod:`segtut.metrics` returns
them) and percent in the display tables of :func:`evaluate_splits` (as
:func:`segtut.viz.iou_table` shows them).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from segtut.metrics import ConfusionMatrix, iou_per_class, pixel_accuracy
from segtut.train import evaluate, predict

__all__ = [
    "evaluate_splits", "score_tables", "per_image_iou", "image_scores", "worst_images",
    "pick_frames", "file_names", "sequence_of",
]

#: Columns of the summary table of :func:`score_tables`: (column, key of the evaluate() dict).
SUMMARY_COLUMNS = (("mIoU %", "mean_iou"), ("pixel accuracy %", "pixel_accuracy"),
                   ("mean Dice %", "mean_dice"))


def score_tables(results: Mapping[str, Mapping], *, class_names: Sequence[str],
                 decimals: Optional[int] = 1):
    """Display tables of results already computed by :func:`segtut.train.evaluate`.

    Use it directly when the results exist anyway, e.g. to compare runs:
    ``score_tables({"U-Net val": unet_val, "FPN val": fpn_val}, class_names=CLASS_NAMES)``.

    Args:
        results: ``{name: evaluate() dict}``, e.g. ``{"val": val_result, "test": test_result}``;
            each dict needs ``"iou"`` (list of C fractions, NaN for an absent class),
            ``"mean_iou"``, ``"pixel_accuracy"`` and ``"mean_dice"``.
        class_names: one name per class (C names).
        decimals: round the percentages to this many decimals; None keeps full precision.

    Returns:
        ``(summary, per_class)``, two ``pandas.DataFrame``:

        * ``summary``: one row per entry of ``results`` (index named "split"), columns
          ``"mIoU %"``, ``"pixel accuracy %"``, ``"mean Dice %"``;
        * ``per_class``: :func:`segtut.viz.iou_table`: a ``"class"`` column, then one column
          ``"<name> IoU %"`` per entry of ``results``; C rows, one per class, then a last row
          ``"mean"`` that is the mIoU (the mean over the classes whose IoU is not NaN, equal to
          the summary's ``"mIoU %"``).
    """
    import pandas as pd

    from segtut.viz import iou_table  # viz imports matplotlib: only load it when tables are made

    if not results:
        raise ValueError("score_tables needs at least one result, e.g. {'val': evaluate(...)}.")
    per_class = iou_table({f"{name} IoU %": result["iou"] for name, result in results.items()},
                          class_names=class_names, decimals=decimals)
    summary = pd.DataFrame(
        {column: [100.0 * float(result[key]) for result in results.values()]
         for column, key in SUMMARY_COLUMNS},
        index=pd.Index(list(results), name="split"))
    if decimals is not None:
        summary = summary.round(decimals)
    return summary, per_class


def evaluate_splits(model: nn.Module, loaders: Mapping[str, DataLoader], device: torch.device, *,
                    num_classes: int, ignore_index: Optional[int], class_names: Sequence[str],
                    amp: bool = False, decimals: Optional[int] = 1, progress: bool = True):
    """Evaluate a model on each split and return the tables a chapter shows after training.

    Each split is scored by :func:`segtut.train.evaluate`: one confusion matrix over the whole
    split, at the masks' native resolution (logits upsampled to the mask).

    Args:
        model: the trained model, already on ``device``; it is put in eval mode.
        loaders: ``{split name: DataLoader}`` of ``(images, masks)`` batches, e.g.
            ``{"val": val_loader, "test": test_loader}``; the tables keep this order.
        device: where the batches are sent.
        num_classes: number of real classes C (without void).
        ignore_index: mask label left out of the scores (void), or None.
        class_names: one name per class (C names), for the per-class table.
        amp: mixed precision for the forward passes (CUDA).
        decimals: round the percentages to this many decimals; None keeps full precision.
        progress: show a progress bar per split.

    Returns:
        ``(summary, per_class)`` as described in :func:`score_tables`: mIoU, pixel accuracy and
        mean Dice per split (percent), and per-class IoU with one column per split (percent).
        For the raw numbers (confusion matrix, unrounded IoU), call
        :func:`segtut.train.evaluate` and :func:`score_tables` yourself.
    """
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for num_classes={num_classes}; pass "
                         "one name per class (without void).")
    if not loaders:
        raise ValueError("evaluate_splits needs at least one loader, e.g. {'val': val_loader}.")
    results = {split: evaluate(model, loader, device, num_classes=num_classes,
                               ignore_index=ignore_index, amp=amp, progress=progress)
               for split, loader in loaders.items()}
    return score_tables(results, class_names=class_names, decimals=decimals)


def file_names(dataset: Dataset) -> list[Optional[str]]:
    """The file name of every item of a dataset (``"0016E5_07959.png"``), None where unknown.

    Knows :class:`segtut.data.SegmentationFolder` and :class:`~segtut.data.CamVid` (their
    ``images`` list of paths), and looks through :class:`torch.utils.data.Subset` and
    :class:`~torch.utils.data.ConcatDataset`. Any other dataset (e.g. SYNTHETIC scenes) gets
    ``None`` for every item.

    Returns:
        list of ``len(dataset)`` file names (str) or None.
    """
    if isinstance(dataset, Subset):
        inner = file_names(dataset.dataset)
        return [inner[int(index)] for index in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [name for part in dataset.datasets for name in file_names(part)]
    paths = getattr(dataset, "images", None)
    if isinstance(paths, (list, tuple)) and len(paths) == len(dataset) \
            and all(isinstance(path, (str, Path)) for path in paths):
        return [Path(path).name for path in paths]
    return [None] * len(dataset)


def sequence_of(file_name: Optional[str]) -> Optional[str]:
    """The video sequence of a frame: its file name up to the first ``_``.

    ``"0001TP_008550.png"`` -> ``"0001TP"``, ``"Seq05VD_f02370.png"`` -> ``"Seq05VD"``,
    ``"aachen_000000_000019.png"`` -> ``"aachen"`` (a Cityscapes city). None for a name without
    ``_`` (``"horse001.png"``) or no name.
    """
    if file_name is None:
        return None
    stem = Path(file_name).stem
    return stem.split("_", 1)[0] if "_" in stem else None


def image_scores(prediction: torch.Tensor, mask: torch.Tensor, *, num_classes: int,
                 ignore_index: Optional[int]) -> dict:
    """Mean IoU and pixel accuracy of ONE image, from its own confusion matrix.

    Only scored pixels count: pixels whose mask is ``ignore_index`` are left out, whatever is
    predicted there. A class's IoU is ``TP / (TP + FP + FN)`` over this image's scored pixels;
    the image's mean IoU averages it over the classes that occur in the mask or in the
    prediction (on scored pixels). A class in neither is left out (0/0); a class only predicted
    counts with IoU 0, a class only in the mask too.

    Args:
        prediction: int class ids ``(H, W)``, at the size of the mask.
        mask: int64 class ids ``(H, W)`` or ``ignore_index``.

    Returns:
        ``{"mean_iou": float, "pixel_accuracy": float, "classes": int}``; ``classes`` is the
        number of classes averaged. Both scores are NaN when every pixel is void.
    """
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    matrix.update(prediction.unsqueeze(0), mask.unsqueeze(0))  # (1, H, W)
    iou = iou_per_class(matrix.matrix.cpu())  # (C,) float64, NaN for classes in neither
    present = ~iou.isnan()
    return {"mean_iou": float(iou[present].mean()) if present.any() else math.nan,
            "pixel_accuracy": pixel_accuracy(matrix.matrix),
            "classes": int(present.sum())}


@torch.no_grad()
def per_image_iou(model: nn.Module, dataset: Dataset, device: torch.device, *, num_classes: int,
                  ignore_index: Optional[int], batch_size: int = 8, amp: bool = False,
                  num_workers: int = 0):
    """Score every image of a dataset on its own (see :func:`image_scores` for the definition).

    A per-image mean IoU is NOT the split's mIoU (that comes from one confusion matrix over the
    whole split): it ranks images, e.g. to find the ones a model gets most wrong.

    Args:
        model: the trained model, already on ``device``; it is put in eval mode.
        dataset: items ``(image, mask)``: float ``(3, h, w)`` (the eval transform), int64
            ``(H, W)``; every mask of a batch must have the same size.
        device: where the images are sent.
        num_classes: number of real classes C.
        ignore_index: mask label left out of the scores (void), or None.
        batch_size: images per forward pass.
        amp: mixed precision for the forward passes (CUDA).
        num_workers: DataLoader worker processes.

    Returns:
        ``pandas.DataFrame`` with one row per item, indexed by the item's position in
        ``dataset`` (index named "index", the number to pass to
        :func:`segtut.viz.show_predictions` with the same dataset), and columns ``"file"``
        (file name; missing, i.e. NaN, when unknown), ``"sequence"`` (:func:`sequence_of`;
        missing when unknown), ``"mean_iou"``,
        ``"pixel_accuracy"`` (fractions) and ``"classes"`` (how many classes the mean covers).
    """
    import pandas as pd

    names = file_names(dataset)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    rows = []
    for images, masks in loader:
        logits = predict(model, images.to(device), size=tuple(masks.shape[-2:]), amp=amp)
        predictions = logits.argmax(dim=1).cpu()  # (N, H, W)
        for prediction, mask in zip(predictions, masks):
            index = len(rows)
            rows.append({"index": index, "file": names[index],
                         "sequence": sequence_of(names[index]),
                         **image_scores(prediction, mask, num_classes=num_classes,
                                        ignore_index=ignore_index)})
    columns = ["index", "file", "sequence", "mean_iou", "pixel_accuracy", "classes"]
    return pd.DataFrame(rows, columns=columns).set_index("index")


def worst_images(scores, k: int, *, by: str = "mean_iou"):
    """The ``k`` rows of :func:`per_image_iou` with the lowest score, worst first.

    Rows whose score is NaN (all-void images) are left out; equal scores keep the dataset order.

    Returns:
        ``pandas.DataFrame``: at most ``k`` rows of ``scores``; ``.index`` holds the dataset
        positions (``list(worst.index)`` for :func:`segtut.viz.show_predictions`).
    """
    if k < 0:
        raise ValueError(f"k must be at least 0, got {k}.")
    if by not in scores.columns:
        raise ValueError(f"No column {by!r} to rank by; the columns are {list(scores.columns)}.")
    return scores.dropna(subset=[by]).sort_values(by, kind="stable").head(k)


def _spread(count: int, picks: int, rng: np.random.Generator) -> list[int]:
    """``picks`` positions out of ``0 .. count - 1``, one in each of ``picks`` equal stretches.

    The position inside its stretch is the same random fraction for all stretches.
    """
    if picks >= count:
        return list(range(count))
    offset = rng.uniform()
    return [min(count - 1, int((j + offset) * count / picks)) for j in range(picks)]


def pick_frames(dataset: Dataset, n: int, *, seed: int = 0) -> list[int]:
    """Positions of ``n`` items to show, spread over the video sequences of a split.

    Items are grouped by sequence (:func:`sequence_of` their file name; items without one form a
    single group). The ``n`` frames are shared out between the groups as evenly as their sizes
    allow (when ``n`` does not divide evenly, or is smaller than the number of groups, the larger
    groups get the extra frames). Inside a group of ``m`` frames (in dataset order), ``k`` frames
    are taken one from each of ``k`` equal stretches of the sequence. A dataset without file
    names (SYNTHETIC scenes, tensors) is therefore one group: evenly spaced positions.

    Args:
        dataset: any dataset; file names are found as in :func:`file_names` (Subset included).
        n: how many frames; all of them when the dataset has fewer.
        seed: where inside its stretch each frame is taken; the same seed gives the same frames
            (use another seed for another set of frames).

    Returns:
        ``min(n, len(dataset))`` distinct positions in ``dataset``, sorted.
    """
    if n < 0:
        raise ValueError(f"n must be at least 0, got {n}.")
    groups: dict[Optional[str], list[int]] = {}
    for position, name in enumerate(file_names(dataset)):
        groups.setdefault(sequence_of(name), []).append(position)
    # Share out n in rounds: each round, every group with frames left gets one more, largest
    # groups first, so a round cut short by n favours the groups with the most to choose from.
    order = sorted(groups, key=lambda key: -len(groups[key]))  # stable: ties keep first-seen order
    quota = dict.fromkeys(order, 0)
    left = min(n, len(dataset))
    while left:
        for key in order:
            if left and quota[key] < len(groups[key]):
                quota[key] += 1
                left -= 1
    rng = np.random.default_rng(seed)
    picks = []
    for key in order:
        members = groups[key]
        picks += [members[j] for j in _spread(len(members), quota[key], rng)]
    return sorted(picks)
