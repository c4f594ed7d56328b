"""Pictures of segmentation data and results: colour masks, overlays, sample grids, curves, tables.

Every plotting function builds and returns a :class:`matplotlib.figure.Figure`; none calls
``plt.show()``. Each figure is made by pyplot and closed at once (:func:`new_figure`): a notebook
shows it exactly once when it is the last expression of a cell (or with ``display(fig)``), and
nothing piles up in pyplot's list of open figures. Save one with ``fig.savefig(path)``.

Shapes follow the data contract of :mod:`segtut`:

* images: float tensors ``(N, 3, H, W)`` normalised with the ImageNet mean and std, or uint8
  ``(N, 3, H, W)`` straight from a dataset;
* masks and predictions: integer class ids ``(N, H, W)`` where :data:`~segtut.data.IGNORE_INDEX`
  marks void pixels;
* per-class IoU: fractions in ``[0, 1]`` (NaN for a class absent from the split), as returned by
  :mod:`segtut.metrics`; plots and tables show them in percent.

The palette has one colour per class and then the void colour last (black for CamVid).
"""

from __future__ import annotations

import warnings
from typing import Mapping, Optional, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch


def new_figure(**kwargs) -> Figure:
    """A pyplot figure, closed at once, so a notebook cell that returns it shows it exactly once.

    Going through pyplot (rather than ``Figure()``) matters in Jupyter: pyplot's first figure is
    what sets up the notebook's inline display of figures, without which a returned figure
    prints as ``<Figure size ...>`` text.
    """
    import matplotlib.pyplot as plt

    fig = plt.figure(**kwargs)
    plt.close(fig)
    return fig

from segtut.data import CLASS_NAMES, IGNORE_INDEX, PALETTE, VOID_NAME
from segtut.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "denormalize", "colorize", "overlay", "error_map", "legend_handles", "show_samples",
    "show_predictions",
    "plot_history", "plot_iou_bars", "plot_confusion", "iou_table",
]

#: Colours of :func:`error_map`: a correct pixel, a wrong pixel, a void (unscored) pixel.
RIGHT_COLOUR = (170, 170, 170)
WRONG_COLOUR = (220, 30, 30)
VOID_COLOUR = (0, 0, 0)
#: Hatch patterns telling runs apart in :func:`plot_iou_bars` (bars keep their class colour).
RUN_HATCHES = ("", "//", "..", "xx", "\\\\", "++")


def _to_numpy(x) -> np.ndarray:
    """A tensor (any device, any float precision) or array-like as a NumPy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()  # NumPy has no bfloat16
        return x.numpy()
    return np.asarray(x)


def denormalize(image, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Undo the normalisation of one image so it can be displayed.

    Args:
        image: float tensor ``(3, H, W)`` normalised as ``(x / 255 - mean) / std``, or a uint8
            tensor/array ``(3, H, W)`` (not normalised: only the channels are moved last).
        mean: per-channel mean used to normalise.
        std: per-channel standard deviation used to normalise.

    Returns:
        uint8 array ``(H, W, 3)``.
    """
    array = _to_numpy(image)
    if array.ndim != 3 or array.shape[0] != 3:
        hint = " Pass one image, e.g. images[0]." if array.ndim == 4 else ""
        raise ValueError(f"denormalize expects one channel-first image (3, H, W), got shape "
                         f"{tuple(array.shape)}.{hint}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array.transpose(1, 2, 0))  # (H, W, 3)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"denormalize expects a float (normalised) or uint8 image, got {array.dtype}.")
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    unit = np.clip(array * std + mean, 0.0, 1.0)  # (3, H, W) in [0, 1]
    return np.ascontiguousarray((unit * 255.0).round().astype(np.uint8).transpose(1, 2, 0))


def _as_rgb(image, mean: Sequence[float] = IMAGENET_MEAN,
           std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """An image ready for ``imshow``: a uint8 ``(H, W, 3)`` array is kept as it is, anything else
    goes through :func:`denormalize`. Returns uint8 ``(H, W, 3)``."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 \
            and image.shape[-1] == 3 and image.shape[0] != 3:
        return image
    return denormalize(image, mean, std)


def _label_map(mask, name: str = "mask") -> np.ndarray:
    """A mask or prediction as an integer NumPy array ``(H, W)``, with a useful error otherwise."""
    array = _to_numpy(mask)
    if array.dtype == np.bool_:
        array = array.astype(np.int64)
    if array.ndim != 2:
        hint = (" If these are logits (C, H, W), take .argmax(0) first." if array.ndim == 3
                else " Pass one mask, e.g. masks[0].")
        raise ValueError(f"Expected one {name} of class ids (H, W), got shape "
                         f"{tuple(array.shape)}.{hint}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"Expected a {name} of integer class ids, got {array.dtype}. Masks are "
                         "int64; a float map is probably probabilities or logits: use .argmax.")
    return array


def colorize(mask, palette: Sequence[Sequence[int]] = PALETTE,
             ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Paint each class id with its palette colour.

    Args:
        mask: integer tensor or array ``(H, W)`` of class ids ``0 .. len(palette) - 2`` or
            ``ignore_index``.
        palette: RGB colours, one per class, then the void colour last.
        ignore_index: label of void pixels; they get the last palette colour.

    Returns:
        uint8 array ``(H, W, 3)``.

    Raises:
        ValueError: the mask holds a value that is neither a class id nor ``ignore_index``.
    """
    mask = _label_map(mask)  # (H, W)
    colours = np.asarray(palette, dtype=np.uint8)  # (num_classes + 1, 3)
    num_classes = len(colours) - 1
    void = mask == ignore_index
    bad = ~void & ((mask < 0) | (mask >= num_classes))
    if bad.any():
        values = np.unique(mask[bad])
        raise ValueError(f"Mask values {values[:10].tolist()} are neither class ids "
                         f"0..{num_classes - 1} nor the ignore label {ignore_index}: the palette "
                         f"has {num_classes} class colours + void. Check the mask (a 0/255 binary "
                         "mask? another dataset's ids?) or pass a palette and ignore_index that "
                         "match it.")
    return colours[np.where(void, num_classes, mask)]  # (H, W, 3)


def overlay(image, mask, alpha: float = 0.5, palette: Sequence[Sequence[int]] = PALETTE,
            ignore_index: int = IGNORE_INDEX, mean: Sequence[float] = IMAGENET_MEAN,
            std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """Blend the colours of a mask over its image; void pixels show the image unchanged.

    Args:
        image: float normalised or uint8 tensor ``(3, H, W)``, or uint8 array ``(H, W, 3)``.
        mask: integer class ids ``(H, W)`` (a ground truth or a prediction).
        alpha: weight of the mask colour, 0 (image only) to 1 (mask only).
        palette, ignore_index: as in :func:`colorize`.
        mean, std: as in :func:`denormalize`.

    Returns:
        uint8 array ``(H, W, 3)``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    rgb = _as_rgb(image, mean, std)  # (H, W, 3)
    labels = _label_map(mask)  # (H, W)
    if rgb.shape[:2] != labels.shape:
        raise ValueError(f"Image is {rgb.shape[:2]} (H, W) but the mask is {labels.shape}; they "
                         "must have the same size (resize masks with nearest-neighbour only).")
    colours = colorize(labels, palette, ignore_index).astype(np.float32)  # (H, W, 3)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colours
    out = rgb.copy()
    labelled = labels != ignore_index  # (H, W)
    out[labelled] = blended[labelled].round().astype(np.uint8)
    return out


def error_map(mask, prediction, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Where a prediction is right (grey), wrong (red) or not scored because the label is void
    (black).

    Args:
        mask: ground-truth class ids ``(H, W)``.
        prediction: predicted class ids ``(H, W)``, at the size of the mask.

    Returns:
        uint8 array ``(H, W, 3)``.
    """
    mask, prediction = _label_map(mask), _label_map(prediction, "prediction")
    if mask.shape != prediction.shape:
        raise ValueError(f"Prediction is {prediction.shape} (H, W) but the mask is {mask.shape}. "
                         "Upsample the logits to the label size (F.interpolate, bilinear) before "
                         "the argmax; labels are never downsampled.")
    out = np.empty(mask.shape + (3,), dtype=np.uint8)  # (H, W, 3)
    out[...] = RIGHT_COLOUR
    out[mask != prediction] = WRONG_COLOUR
    out[mask == ignore_index] = VOID_COLOUR
    return out


def legend_handles(class_names: Sequence[str] = CLASS_NAMES,
                   palette: Sequence[Sequence[int]] = PALETTE,
                   include_void: bool = True, void_name: str = VOID_NAME) -> list[Patch]:
    """One coloured patch per class (and void, last), for ``fig.legend(handles=...)``.

    Returns:
        list of ``len(class_names) + include_void`` :class:`matplotlib.patches.Patch`.
    """
    if len(palette) < len(class_names) + 1:
        raise ValueError(f"The palette has {len(palette)} colours for {len(class_names)} classes; "
                         "it needs one per class plus the void colour last.")
    colours = np.asarray(palette, dtype=np.float64) / 255.0  # (K, 3)
    handles = [Patch(facecolor=colours[i], edgecolor="0.4", linewidth=0.5, label=name)
               for i, name in enumerate(class_names)]
    if include_void:
        handles.append(Patch(facecolor=colours[-1], edgecolor="0.4", linewidth=0.5, label=void_name))
    return handles


def _batch_of_labels(labels) -> list:
    """Masks or predictions ``(N, H, W)`` (or logits ``(N, C, H, W)``, argmaxed) as a list."""
    if isinstance(labels, torch.Tensor):
        if labels.ndim == 2:
            labels = labels.unsqueeze(0)  # (1, H, W)
        if labels.ndim == 4:
            labels = labels.argmax(1)  # logits (N, C, H, W) -> (N, H, W)
    return list(labels)


def show_samples(images, masks, predictions=None, class_names: Sequence[str] = CLASS_NAMES,
                 palette: Sequence[Sequence[int]] = PALETTE, titles: Optional[Sequence[str]] = None,
                 max_rows: int = 4, show_errors: bool = True, ignore_index: int = IGNORE_INDEX,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Figure:
    """A grid with one row per sample: image | ground truth | prediction | errors, and one class
    legend below it.

    Args:
        images: ``(N, 3, H, W)`` float normalised or uint8 tensor, or a list of ``(3, H, W)``.
        masks: ``(N, H, W)`` integer class ids (void = ``ignore_index``).
        predictions: ``(N, H, W)`` class ids at the size of the masks, or logits
            ``(N, C, H, W)`` (argmaxed here); None shows image and ground truth only.
        class_names: legend labels, one per class.
        palette: class colours, then void last.
        titles: one label per row (e.g. file names), written left of the image.
        max_rows: show at most this many samples (the first ones).
        show_errors: with predictions, add a column with wrong pixels in red, right ones in grey
            and void in black; its title gives the share of scored pixels that are wrong.
        ignore_index: label of void pixels.
        mean, std: normalisation to undo on float images.

    Returns:
        Figure with ``rows x columns`` axes, ``rows = min(N, max_rows)`` and ``columns`` 2, 3 or 4.
    """
    if isinstance(images, torch.Tensor) and images.ndim == 3:
        images = images.unsqueeze(0)  # one image -> (1, 3, H, W)
    masks = _batch_of_labels(masks)
    predictions = None if predictions is None else _batch_of_labels(predictions)
    if len(images) != len(masks) or (predictions is not None and len(predictions) != len(images)):
        counts = f"{len(images)} images, {len(masks)} masks"
        if predictions is not None:
            counts += f", {len(predictions)} predictions"
        raise ValueError(f"show_samples needs one mask (and prediction) per image; got {counts}.")
    rows = min(len(images), max_rows)
    if rows == 0:
        raise ValueError("show_samples got no images.")
    headers = ["image", "ground truth"]
    if predictions is not None:
        headers.append("prediction")
        if show_errors:
            headers.append("errors")
    columns = len(headers)

    fig = new_figure(figsize=(3.2 * columns, 2.5 * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)  # (rows, columns)
    for row in range(rows):
        mask = _label_map(masks[row])
        panels = [_as_rgb(images[row], mean, std), colorize(mask, palette, ignore_index)]
        if predictions is not None:
            prediction = _label_map(predictions[row], "prediction")
            panels.append(colorize(prediction, palette, ignore_index))
            if show_errors:
                panels.append(error_map(mask, prediction, ignore_index))
                scored = mask != ignore_index
                wrong = (prediction[scored] != mask[scored]).mean() if scored.any() else float("nan")
        for column, (ax, panel) in enumerate(zip(axes[row], panels)):
            # Nearest-neighbour so that label colours are never blended into colours of no class.
            ax.imshow(panel, interpolation="nearest" if column else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(headers[column])
        if predictions is not None and show_errors:
            axes[row, -1].set_title(f"errors: {wrong:.1%} wrong" if row == 0 else f"{wrong:.1%} wrong")
        if titles is not None and row < len(titles):
            axes[row, 0].set_ylabel(str(titles[row]))
    handles = legend_handles(class_names, palette, include_void=True)
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6),
               fontsize="small", frameon=False)
    return fig


def _prediction_of(model, image: torch.Tensor, size: tuple[int, int], device, amp: bool):
    """Class ids ``(H, W)`` (on the CPU) predicted for one normalised image ``(3, h, w)``."""
    from segtut.train import predict

    logits = predict(model, image.unsqueeze(0).to(device), size=size, amp=amp)  # (1, C, H, W)
    return logits.argmax(dim=1)[0].cpu()  # (H, W)


def _iou_lookup(ious, indices: Sequence[int]):
    """``ious`` (mapping or pandas Series keyed by dataset index, or one value per row) as a
    function ``(row, index) -> float``."""
    if isinstance(ious, Mapping) or (hasattr(ious, "index") and hasattr(ious, "loc")):
        return lambda row, index: float(ious[index])
    if len(ious) != len(indices):
        raise ValueError(f"ious has {len(ious)} values for {len(indices)} indices; pass one per "
                         "index, or a mapping {dataset index: mIoU} such as "
                         "per_image_iou(...)['mean_iou'].")
    return lambda row, index: float(ious[row])


def show_predictions(model, dataset, indices: Sequence[int], device, *,
                     class_names: Sequence[str] = CLASS_NAMES,
                     palette: Sequence[Sequence[int]] = PALETTE, ignore_index: int = IGNORE_INDEX,
                     title: Optional[str] = None, ious=None, show_errors: Optional[bool] = None,
                     amp: bool = False, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> Figure:
    """Run a model on some items of a dataset and show image | ground truth | prediction | errors.

    Each row is one item, labelled on the left with its file name (or ``item <index>``); under
    each prediction is that image's mean IoU (:func:`segtut.evaluation.image_scores`: over the
    classes in its mask or prediction, void pixels left out) and under each error map the share
    of scored pixels that are wrong. One legend below gives the class colours, void, and the
    error-map colours.

    Args:
        model: a model already on ``device``, or ``{name: model}`` to compare several models on
            the same images (one prediction column each, titled with the name). Models are put in
            eval mode.
        dataset: items ``(image, mask)`` as the eval transform gives them: float normalised
            ``(3, h, w)`` and int64 ``(H, W)``; the logits are upsampled to the mask's size.
        indices: positions in ``dataset``, one row each (e.g. from
            :func:`segtut.evaluation.pick_frames` or ``worst_images(...).index``).
        device: where the images are sent.
        class_names, palette, ignore_index: classes, their colours (void last) and void label.
        title: figure title (e.g. the model and split).
        ious: per-image mIoU (fractions) to print under the prediction instead of computing it,
            keyed by dataset index (a mapping, or ``per_image_iou(...)["mean_iou"]``) or one
            value per index; only with a single model.
        show_errors: add an error-map column after each prediction (wrong pixels red, right ones
            grey, void black). Default: with a single model only.
        amp: mixed precision for the forward passes (CUDA).
        mean, std: normalisation to undo for display.

    Returns:
        Figure with ``len(indices) x columns`` axes: ``columns = 2 + models`` (``2 + 2 * models``
        with errors).
    """
    models = dict(model) if isinstance(model, Mapping) else {"prediction": model}
    if not models:
        raise ValueError("show_predictions needs a model or a non-empty {name: model} mapping.")
    indices = [int(index) for index in indices]
    if not indices:
        raise ValueError("show_predictions got no indices; pick some, e.g. "
                         "pick_frames(dataset, 4).")
    if show_errors is None:
        show_errors = len(models) == 1
    if ious is not None and len(models) > 1:
        raise ValueError("ious can only be given for a single model; with several, each "
                         "prediction's mIoU is computed from it.")
    lookup = None if ious is None else _iou_lookup(ious, indices)

    from segtut.evaluation import file_names, image_scores

    names = file_names(dataset)
    headers = ["image", "ground truth"]
    for name in models:
        headers.append(name)
        if show_errors:
            headers.append("errors" if len(models) == 1 else f"{name} errors")
    rows, columns = len(indices), len(headers)
    fig = new_figure(figsize=(3.2 * columns, 2.5 * rows + 1.0), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)  # (rows, columns)
    for row, index in enumerate(indices):
        image, mask = dataset[index]
        if not (isinstance(image, torch.Tensor) and image.is_floating_point()):
            raise ValueError(f"Item {index} has a {getattr(image, 'dtype', type(image))} image; "
                             "show_predictions needs the model's input, a normalised float "
                             "(3, h, w) tensor: give the dataset the eval transform "
                             "(segtut.transforms.EvalTransform).")
        mask = torch.as_tensor(mask).as_subclass(torch.Tensor).long()  # (H, W)
        panels = [(_as_rgb(image, mean, std), None), (colorize(mask, palette, ignore_index), None)]
        for name, each in models.items():
            prediction = _prediction_of(each, image.as_subclass(torch.Tensor),
                                        tuple(mask.shape[-2:]), device, amp)  # (H, W)
            scores = image_scores(prediction, mask, num_classes=len(class_names),
                                  ignore_index=ignore_index)
            iou = lookup(row, index) if lookup is not None else scores["mean_iou"]
            panels.append((colorize(prediction, palette, ignore_index), f"mIoU {iou:.1%}"))
            if show_errors:
                panels.append((error_map(mask, prediction, ignore_index),
                               f"{1 - scores['pixel_accuracy']:.1%} wrong"))
        for column, (ax, (panel, note)) in enumerate(zip(axes[row], panels)):
            # Nearest-neighbour so that label colours are never blended into colours of no class.
            ax.imshow(panel, interpolation="nearest" if column else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(headers[column])
            if note is not None:
                ax.set_xlabel(note, fontsize="small")
        label = names[index] if names[index] is not None else f"item {index}"
        axes[row, 0].set_ylabel(label, fontsize="small")
    handles = legend_handles(class_names, palette, include_void=True)
    if show_errors:
        handles += [Patch(facecolor=np.asarray(colour) / 255.0, edgecolor="0.4", linewidth=0.5,
                          label=text)
                    for colour, text in ((RIGHT_COLOUR, "right"), (WRONG_COLOUR, "wrong"))]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 7),
               fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    return fig


def _pretty(key: str) -> str:
    """``"val_mean_iou"`` -> ``"val mean iou"`` for legends."""
    return key.replace("_", " ")


def _history_series(history: Sequence[Mapping], key: str) -> tuple[list, list]:
    """Epochs and values of one history key, skipping epochs where it is missing or not a number."""
    epochs, values = [], []
    for index, record in enumerate(history):
        value = record.get(key)
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if np.isnan(value):
            continue
        epochs.append(record.get("epoch", index + 1))
        values.append(value)
    return epochs, values


def plot_history(history: Sequence[Mapping], show_lr: bool = False) -> Figure:
    """Learning curves: losses on the left, mIoU / pixel accuracy / Dice on the right.

    Args:
        history: one dict per epoch, as returned by :func:`segtut.train.fit`, with keys such as
            ``epoch``, ``train_loss``, ``val_loss``, ``val_mean_iou``, ``val_pixel_accuracy``,
            ``lr``; any key may be missing from any epoch (the x axis is ``epoch`` if present,
            else 1, 2, ...). Keys ending in ``loss`` go left; keys containing ``iou``,
            ``accuracy`` or ``dice`` go right. The best ``val_mean_iou`` is marked.
        show_lr: add a third panel with the learning rate (log scale).

    Returns:
        Figure with 2 axes (3 with ``show_lr``).
    """
    keys = list(dict.fromkeys(key for record in history for key in record))  # first-seen order
    loss_keys = [k for k in keys if k.endswith("loss")]
    metric_keys = [k for k in keys if any(word in k for word in ("iou", "accuracy", "dice"))]
    panels = 3 if show_lr else 2
    fig = new_figure(figsize=(5.0 * panels, 3.6), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, group, ylabel in ((axes[0], loss_keys, "loss"), (axes[1], metric_keys, "score")):
        plotted = False
        for key in group:
            epochs, values = _history_series(history, key)
            if values:
                ax.plot(epochs, values, marker="o", markersize=3, label=_pretty(key))
                plotted = True
        if plotted:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, f"no {ylabel} recorded", ha="center", va="center",
                    transform=ax.transAxes, color="0.5")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].set_title("Loss")
    axes[1].set_title("Validation metrics" if any(k.startswith("val") for k in metric_keys)
                      else "Metrics")
    epochs, values = _history_series(history, "val_mean_iou")
    if values:
        best = int(np.argmax(values))
        axes[1].plot(epochs[best], values[best], marker="*", markersize=14, color="gold",
                     markeredgecolor="black", zorder=5)
        axes[1].annotate(f"best {values[best]:.3f} (epoch {epochs[best]})",
                         (epochs[best], values[best]), textcoords="offset points",
                         xytext=(0, -16), ha="center", fontsize="small")
    if show_lr:
        epochs, values = _history_series(history, "lr")
        if values:
            axes[2].plot(epochs, values, marker="o", markersize=3, color="tab:purple")
            if min(values) > 0:
                axes[2].set_yscale("log")
        axes[2].set_title("Learning rate")
        axes[2].set_xlabel("epoch")
        axes[2].grid(alpha=0.3)
    return fig


def _iou_fractions(iou, num_classes: int, name: str = "iou") -> np.ndarray:
    """Per-class IoU as a float array ``(num_classes,)`` of fractions, checked."""
    values = _to_numpy(iou).astype(np.float64).reshape(-1)
    if values.shape[0] != num_classes:
        raise ValueError(f"{name} has {values.shape[0]} values but there are {num_classes} class "
                         "names; pass one IoU per class (without void) and matching class_names.")
    finite = values[~np.isnan(values)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError(f"{name} must hold fractions in [0, 1] (NaN for absent classes), got "
                         f"values up to {finite.max():g}. Already in percent? Divide by 100.")
    return values


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN values; NaN (without a warning) if there are none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values))


def plot_iou_bars(iou, class_names: Sequence[str] = CLASS_NAMES, title: Optional[str] = None,
                  compare: Optional[Mapping[str, Sequence[float]]] = None, label: str = "this run",
                  palette: Sequence[Sequence[int]] = PALETTE) -> Figure:
    """Horizontal bars of per-class IoU, coloured with the class palette.

    Args:
        iou: per-class IoU ``(num_classes,)``, fractions in ``[0, 1]``; NaN (class absent from the
            split) is drawn as the word "absent" instead of a bar.
        class_names: one name per class.
        title: figure title; defaults to "Per-class IoU".
        compare: other runs to draw next to this one, ``{name: iou}``; bars of one class are
            grouped, runs are told apart by hatching.
        label: name of ``iou`` in the legend when comparing.
        palette: class colours.

    Returns:
        Figure with 1 axes. A dashed line marks each run's mIoU (NaN-mean).
    """
    num_classes = len(class_names)
    runs = {label: iou, **dict(compare or {})}
    runs = {name: _iou_fractions(values, num_classes, name) for name, values in runs.items()}
    colours = np.asarray(palette, dtype=np.float64)[:num_classes] / 255.0  # (num_classes, 3)
    if len(colours) < num_classes:
        raise ValueError(f"The palette has {len(palette)} colours for {num_classes} classes.")
    height = 0.8 / len(runs)
    fig = new_figure(figsize=(7.0, 1.2 + num_classes * (0.3 + 0.2 * len(runs))), layout="constrained")
    ax = fig.subplots()
    positions = np.arange(num_classes)  # (num_classes,)
    legend = []
    for index, (name, values) in enumerate(runs.items()):
        hatch = RUN_HATCHES[index % len(RUN_HATCHES)]
        centres = positions - 0.4 + height * (index + 0.5)  # (num_classes,)
        percent = values * 100.0
        ax.barh(centres, np.nan_to_num(percent, nan=0.0), height=height, color=colours,
                edgecolor="black", linewidth=0.5, hatch=hatch)
        for centre, value in zip(centres, percent):
            if np.isnan(value):
                ax.text(1.0, centre, "absent", va="center", fontsize="small", style="italic",
                        color="0.45")
            else:
                ax.text(value + 1.0, centre, f"{value:.1f}", va="center", fontsize="small")
        mean = _nanmean(values) * 100.0
        line_style = ("--", ":", "-.", (0, (5, 1)))[index % 4]
        ax.axvline(mean, color="black", linestyle=line_style, linewidth=1)
        text = f"mIoU {mean:.1f}%"
        if len(runs) > 1:
            legend.append(Patch(facecolor="white", edgecolor="black", hatch=hatch,
                                label=f"{name} ({text})"))
        else:
            legend.append(Line2D([], [], color="black", linestyle=line_style,
                                                  label=text))
    ax.set_yticks(positions, list(class_names))
    ax.invert_yaxis()  # class 0 at the top, as in the tables
    ax.set_xlim(0, 110)
    ax.set_xlabel("IoU (%)")
    ax.set_title(title or "Per-class IoU")
    ax.legend(handles=legend, loc="lower right", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _compact_count(value: float) -> str:
    """``1234567`` -> ``"1.2M"``: pixel counts short enough for a confusion-matrix cell."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


def plot_confusion(matrix, class_names: Sequence[str] = CLASS_NAMES,
                   normalize: Optional[str] = "true", title: Optional[str] = None,
                   colorbar: bool = True) -> Figure:
    """Heat map of a confusion matrix, every cell annotated.

    Args:
        matrix: counts ``(num_classes, num_classes)``, rows = true class, columns = predicted
            class (as accumulated by :mod:`segtut.metrics`; void pixels are not in it).
        class_names: one name per class.
        normalize: ``"true"``: each row sums to 100% (the diagonal is each class's recall);
            ``"pred"``: each column sums to 100% (the diagonal is precision); ``"all"``: the
            whole matrix sums to 100%; None: raw pixel counts. A row (or column) with no pixels
            is shown in light grey.
        title: figure title; a default says how it is normalised.
        colorbar: add a colour bar.

    Returns:
        Figure with 1 axes, 2 with the colour bar.
    """
    counts = _to_numpy(matrix).astype(np.float64)
    num_classes = len(class_names)
    if counts.shape != (num_classes, num_classes):
        raise ValueError(f"Confusion matrix has shape {counts.shape} but there are {num_classes} "
                         "class names; expected (num_classes, num_classes) without void.")
    denominators = {"true": counts.sum(axis=1, keepdims=True),  # (C, 1)
                    "pred": counts.sum(axis=0, keepdims=True),  # (1, C)
                    "all": counts.sum(), None: None}
    if normalize not in denominators:
        raise ValueError(f"normalize must be 'true', 'pred', 'all' or None, got {normalize!r}.")
    if normalize is None:
        values = counts
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            values = counts / denominators[normalize] * 100.0  # (C, C) percent; 0/0 -> NaN

    size = 2.0 + 0.5 * num_classes
    fig = new_figure(figsize=(size + (1.0 if colorbar else 0.0), size), layout="constrained")
    ax = fig.subplots()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="0.9")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0,
                      vmax=100 if normalize is not None else None)
    top = np.nanmax(values) if np.isfinite(values).any() else 1.0
    for true in range(num_classes):
        for predicted in range(num_classes):
            value = values[true, predicted]
            if np.isnan(value) or value == 0:
                continue
            text = f"{value:.0f}" if normalize is not None else _compact_count(value)
            ax.text(predicted, true, text, ha="center", va="center", fontsize="x-small",
                    color="white" if value > 0.6 * (100 if normalize is not None else top) else "black")
    ax.set_xticks(range(num_classes), list(class_names), rotation=90)
    ax.set_yticks(range(num_classes), list(class_names))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    how = {"true": "% of each true class", "pred": "% of each predicted class",
           "all": "% of all pixels", None: "pixels"}[normalize]
    ax.set_title(title or f"Confusion matrix ({how})")
    if colorbar:
        fig.colorbar(image, ax=ax, shrink=0.8, label=how)
    return fig


def iou_table(columns, class_names: Sequence[str] = CLASS_NAMES, decimals: Optional[int] = 1):
    """Per-class IoU in percent, one column per split or run, and a final "mean" row.

    Args:
        columns: ``{name: iou}``, e.g. ``{"val": iou_val, "test": iou_test}``, each iou a
            sequence/array/tensor ``(num_classes,)`` of fractions in ``[0, 1]`` (NaN for an
            absent class); a single sequence makes one column named "IoU".
        class_names: one name per class.
        decimals: round the percentages to this many decimals; None keeps full precision.

    Returns:
        ``pandas.DataFrame`` with ``num_classes + 1`` rows: a "class" column, then one column of
        IoU in percent per entry of ``columns``; the last row, class "mean", is the NaN-mean over
        classes (the mIoU), computed before rounding.
    """
    import pandas as pd

    if not isinstance(columns, Mapping):
        columns = {"IoU": columns}
    table = {"class": list(class_names) + ["mean"]}
    for name, iou in columns.items():
        percent = _iou_fractions(iou, len(class_names), str(name)) * 100.0  # (num_classes,)
        table[name] = np.append(percent, _nanmean(percent))  # (num_classes + 1,)
    frame = pd.DataFrame(table)
    if decimals is not None:
        frame = frame.round(decimals)
    return frame
