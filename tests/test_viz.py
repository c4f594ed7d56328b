"""segtut.viz: colours, overlays, denormalisation, figures and the IoU table."""

import matplotlib

matplotlib.use("Agg")

import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from segtut.data import CLASS_NAMES, IGNORE_INDEX, PALETTE
from segtut.transforms import IMAGENET_MEAN, IMAGENET_STD
from segtut.viz import (colorize, denormalize, error_map, iou_table, legend_handles, overlay,
                        plot_confusion, plot_history, plot_iou_bars, show_samples)

NUM_CLASSES = len(CLASS_NAMES)


def normalise(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float normalised the way segtut.transforms does it."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (images_uint8.float() / 255 - mean) / std


@pytest.fixture
def batch():
    """Two uint8 images (2, 3, 6, 8), masks (2, 6, 8) with every class and void, predictions."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 6, 8), dtype=torch.uint8, generator=generator)
    masks = torch.arange(48).reshape(6, 8).remainder(NUM_CLASSES + 1).repeat(2, 1, 1)  # (2, 6, 8)
    predictions = masks.clone()
    predictions[:, 0, :3] = 0  # a few wrong pixels (ids 0, 1, 2 -> 0: two wrong)
    predictions[predictions == IGNORE_INDEX] = 3  # predictions never hold void
    return images, masks, predictions


def test_colorize_maps_ids_to_palette_and_void_to_black():
    mask = torch.tensor([[0, 1, 2], [10, IGNORE_INDEX, 3]])
    colours = colorize(mask)
    assert colours.shape == (2, 3, 3) and colours.dtype == np.uint8
    for (row, column), label in np.ndenumerate(mask.numpy()):
        assert tuple(colours[row, column]) == PALETTE[label]
    assert tuple(colours[1, 1]) == (0, 0, 0)
    # Another ignore label still maps to the last palette colour; numpy input works too.
    other = colorize(np.array([[255, 4]]), ignore_index=255)
    assert tuple(other[0, 0]) == PALETTE[-1] and tuple(other[0, 1]) == PALETTE[4]


@pytest.mark.parametrize("bad", [12, 255, -1])
def test_colorize_rejects_values_outside_the_palette(bad):
    with pytest.raises(ValueError, match=str(bad)):
        colorize(torch.tensor([[0, bad]]))


def test_colorize_rejects_logits():
    with pytest.raises(ValueError, match="argmax"):
        colorize(torch.zeros(NUM_CLASSES, 4, 4))


def test_overlay_keeps_shape_and_leaves_void_pixels_unchanged(batch):
    images, masks, _ = batch
    blended = overlay(images[0], masks[0], alpha=0.5)
    plain = images[0].permute(1, 2, 0).numpy()  # (H, W, 3)
    assert blended.shape == plain.shape and blended.dtype == np.uint8
    void = masks[0].numpy() == IGNORE_INDEX
    assert void.any() and (~void).any()
    np.testing.assert_array_equal(blended[void], plain[void])
    expected = np.round(0.5 * plain + 0.5 * colorize(masks[0]).astype(float)).astype(np.uint8)
    np.testing.assert_array_equal(blended[~void], expected[~void])
    # alpha = 1 paints labelled pixels fully in their class colour; a normalised image works too.
    full = overlay(normalise(images[0]), masks[0], alpha=1.0)
    np.testing.assert_array_equal(full[~void], colorize(masks[0])[~void])


def test_overlay_rejects_a_mask_of_another_size(batch):
    images, masks, _ = batch
    with pytest.raises(ValueError, match="same size"):
        overlay(images[0], masks[0, :3])


def test_denormalize_inverts_normalisation():
    image = torch.randint(0, 256, (3, 17, 23), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    restored = denormalize(normalise(image))
    assert restored.shape == (17, 23, 3) and restored.dtype == np.uint8
    difference = np.abs(restored.astype(int) - image.permute(1, 2, 0).numpy().astype(int))
    assert difference.max() <= 1
    # uint8 images are only moved channel-last.
    np.testing.assert_array_equal(denormalize(image), image.permute(1, 2, 0).numpy())


def test_denormalize_rejects_a_batch():
    with pytest.raises(ValueError, match="one image"):
        denormalize(torch.zeros(2, 3, 4, 4))


def test_error_map_colours():
    mask = torch.tensor([[0, 1, IGNORE_INDEX]])
    prediction = torch.tensor([[0, 2, 5]])
    errors = error_map(mask, prediction)
    assert tuple(errors[0, 0]) == (170, 170, 170)  # right: grey
    assert tuple(errors[0, 1]) == (220, 30, 30)  # wrong: red
    assert tuple(errors[0, 2]) == (0, 0, 0)  # void: black


def test_legend_has_every_class_and_void():
    handles = legend_handles()
    assert len(handles) == NUM_CLASSES + 1 == 12
    assert [h.get_label() for h in handles] == list(CLASS_NAMES) + ["void"]
    assert tuple(handles[-1].get_facecolor()[:3]) == (0.0, 0.0, 0.0)
    assert np.allclose(handles[1].get_facecolor()[:3], np.array(PALETTE[1]) / 255)
    assert len(legend_handles(include_void=False)) == NUM_CLASSES


@pytest.mark.parametrize("with_predictions, show_errors, columns",
                         [(False, True, 2), (True, False, 3), (True, True, 4)])
def test_show_samples_grid(batch, with_predictions, show_errors, columns):
    images, masks, predictions = batch
    fig = show_samples(normalise(images), masks, predictions if with_predictions else None,
                       show_errors=show_errors, titles=["a", "b"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 * columns
    assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == NUM_CLASSES + 1
    fig.canvas.draw()  # the layout works, not just the construction


def test_show_samples_max_rows_logits_and_errors(batch):
    images, masks, predictions = batch
    logits = torch.nn.functional.one_hot(predictions, NUM_CLASSES).permute(0, 3, 1, 2).float()
    fig = show_samples(images.repeat(3, 1, 1, 1), masks.repeat(3, 1, 1), logits.repeat(3, 1, 1, 1),
                       max_rows=4)
    assert len(fig.axes) == 4 * 4
    # 2 wrong pixels out of the 48 - 4 scored ones (4 void) in each row.
    assert fig.axes[3].get_title() == f"errors: {2 / 44:.1%} wrong"


def test_show_samples_rejects_predictions_at_another_size(batch):
    images, masks, predictions = batch
    with pytest.raises(ValueError, match="Upsample"):
        show_samples(images, masks, predictions[:, :3])


def test_plot_history_panels_and_missing_keys():
    history = [
        {"epoch": 1, "train_loss": 2.0, "lr": 1e-3},
        {"epoch": 2, "train_loss": 1.5, "val_loss": 1.7, "val_mean_iou": 0.30,
         "val_pixel_accuracy": 0.7, "val_iou": [0.1, 0.2], "lr": 5e-4},
        {"epoch": 3, "train_loss": 1.2, "val_loss": 1.6, "val_mean_iou": 0.35, "lr": 1e-4},
    ]
    fig = plot_history(history)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    losses, metrics = fig.axes
    assert [line.get_label() for line in losses.get_lines()] == ["train loss", "val loss"]
    assert list(losses.get_lines()[1].get_xdata()) == [2, 3]
    labels = [line.get_label() for line in metrics.get_lines()]
    assert "val mean iou" in labels and "val pixel accuracy" in labels
    assert len(plot_history(history, show_lr=True).axes) == 3
    assert len(plot_history([]).axes) == 2


def test_plot_iou_bars_absent_classes_and_comparison():
    iou = [0.5] * (NUM_CLASSES - 1) + [math.nan]
    fig = plot_iou_bars(iou, title="val")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.patches) == NUM_CLASSES
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("absent") == 1 and texts.count("50.0") == NUM_CLASSES - 1
    np.testing.assert_allclose(ax.patches[0].get_facecolor()[:3], np.array(PALETTE[0]) / 255)
    fig = plot_iou_bars(iou, compare={"other": torch.full((NUM_CLASSES,), 0.25)})
    assert len(fig.axes) == 1 and len(fig.axes[0].patches) == 2 * NUM_CLASSES
    assert len(fig.axes[0].get_legend().get_texts()) == 2


def test_plot_iou_bars_rejects_percent_and_wrong_length():
    with pytest.raises(ValueError, match="percent"):
        plot_iou_bars([50.0] * NUM_CLASSES)
    with pytest.raises(ValueError, match="class names"):
        plot_iou_bars([0.5] * (NUM_CLASSES + 1))


def test_plot_confusion_normalises_rows():
    matrix = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    matrix[0, 0], matrix[0, 1] = 3, 1  # class 0: 75% right, 25% taken for class 1
    matrix[1, 1] = 10
    fig = plot_confusion(matrix)
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # heat map + colour bar
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"75", "25", "100"} <= texts
    assert len(plot_confusion(matrix, normalize=None, colorbar=False).axes) == 1
    with pytest.raises(ValueError, match="normalize"):
        plot_confusion(matrix, normalize="rows")


def test_iou_table_mean_row_is_the_nanmean():
    iou_val = [0.1 * i for i in range(NUM_CLASSES - 1)] + [math.nan]
    iou_test = torch.linspace(0.2, 0.9, NUM_CLASSES)
    table = iou_table({"val": iou_val, "test": iou_test}, decimals=None)
    assert list(table.columns) == ["class", "val", "test"]
    assert len(table) == NUM_CLASSES + 1
    assert list(table["class"]) == list(CLASS_NAMES) + ["mean"]
    assert table["val"].iloc[-1] == pytest.approx(100 * np.nanmean(iou_val))
    assert table["test"].iloc[-1] == pytest.approx(100 * float(iou_test.mean()))
    assert math.isnan(table["val"].iloc[NUM_CLASSES - 1])
    assert table["val"].iloc[3] == pytest.approx(30.0)
    rounded = iou_table(iou_val)
    assert list(rounded.columns) == ["class", "IoU"]
    assert rounded["IoU"].iloc[-1] == round(100 * np.nanmean(iou_val), 1)


class _LookupModel(torch.nn.Module):
    """Predicts the class id written in channel 0 of the (normalised) image, at the image size."""

    def forward(self, images):  # (N, 3, h, w) -> (N, C, h, w)
        ids = images[:, 0].round().long().clamp(0, NUM_CLASSES - 1)
        return torch.nn.functional.one_hot(ids, NUM_CLASSES).permute(0, 3, 1, 2).float()


class _Frames(torch.utils.data.Dataset):
    """Eval-transform-like items: float image (3, h, w), int64 mask (2h, 2w); names in ``images``.

    Channel 0 of the image holds the true class of each 2x2 block of the mask, so
    ``_LookupModel`` (logits upsampled to the mask) is right everywhere but on void pixels.
    """

    def __init__(self, count=3, size=(3, 4)):
        from pathlib import Path

        generator = torch.Generator().manual_seed(5)
        small = torch.randint(0, NUM_CLASSES, (count, *size), generator=generator)  # (N, h, w)
        self.masks = small.repeat_interleave(2, 1).repeat_interleave(2, 2)  # (N, 2h, 2w)
        self.masks[:, 0, 0] = IGNORE_INDEX
        self.pictures = torch.randn(count, 3, *size, generator=generator)
        self.pictures[:, 0] = small.float()
        self.images = [Path(f"SEQ{i % 2}_{i:04d}.png") for i in range(count)]

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, index):
        return self.pictures[index], self.masks[index]


def test_show_predictions_rows_columns_labels_and_legend():
    from segtut.viz import show_predictions

    frames = _Frames()
    fig = show_predictions(_LookupModel(), frames, [2, 0], torch.device("cpu"), title="oracle")
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 4
    axes = np.array(fig.axes).reshape(2, 4)
    assert [ax.get_title() for ax in axes[0]] == ["image", "ground truth", "prediction", "errors"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["SEQ0_0002.png", "SEQ0_0000.png"]
    assert axes[1, 2].get_xlabel() == "mIoU 100.0%" and axes[1, 3].get_xlabel() == "0.0% wrong"
    # The image is shown de-normalised at its own size, the labels at the mask's size.
    assert axes[0, 0].get_images()[0].get_array().shape == (3, 4, 3)
    assert axes[0, 2].get_images()[0].get_array().shape == (6, 8, 3)
    labels = [text.get_text() for text in fig.legends[0].get_texts()]
    assert labels == list(CLASS_NAMES) + ["void", "right", "wrong"]
    assert fig._suptitle.get_text() == "oracle"
    fig.canvas.draw()


def test_show_predictions_compares_models_and_takes_given_ious():
    import pandas as pd

    from segtut.viz import show_predictions

    frames = _Frames()
    wrong = torch.nn.Conv2d(3, NUM_CLASSES, 1)
    torch.nn.init.zeros_(wrong.weight)
    with torch.no_grad():
        wrong.bias.copy_(torch.arange(NUM_CLASSES, dtype=torch.float))  # always the last class
    fig = show_predictions({"oracle": _LookupModel(), "constant": wrong}, frames, [1],
                           torch.device("cpu"))
    assert len(fig.axes) == 4  # image, ground truth, two predictions: no error maps by default
    assert [ax.get_title() for ax in fig.axes] == ["image", "ground truth", "oracle", "constant"]
    assert fig.axes[2].get_xlabel() == "mIoU 100.0%"
    # The constant prediction: IoU of the last class = its true share, 0 for the other classes.
    scored = frames.masks[1][frames.masks[1] != IGNORE_INDEX]
    last = NUM_CLASSES - 1
    expected = float((scored == last).float().mean()) / len(set(scored.tolist()) | {last})
    assert fig.axes[3].get_xlabel() == f"mIoU {expected:.1%}"
    assert len(show_predictions({"a": wrong, "b": wrong}, frames, [0, 1], "cpu",
                                show_errors=True).axes) == 2 * 6
    # Given scores keyed by dataset index (as per_image_iou's column is) are printed instead.
    ious = pd.Series([0.1, 0.2, 0.3], index=pd.RangeIndex(3, name="index"))
    fig = show_predictions(wrong, frames, [2, 1], "cpu", ious=ious)
    assert [fig.axes[2].get_xlabel(), fig.axes[6].get_xlabel()] == ["mIoU 30.0%", "mIoU 20.0%"]
    fig = show_predictions(wrong, frames, [2, 1], "cpu", ious=[0.5, 0.25])
    assert fig.axes[6].get_xlabel() == "mIoU 25.0%"


def test_show_predictions_explains_wrong_inputs():
    from segtut.viz import show_predictions

    frames = _Frames()
    with pytest.raises(ValueError, match="single model"):
        show_predictions({"a": _LookupModel(), "b": _LookupModel()}, frames, [0], "cpu",
                         ious=[0.5])
    with pytest.raises(ValueError, match="one per index"):
        show_predictions(_LookupModel(), frames, [0, 1], "cpu", ious=[0.5])
    with pytest.raises(ValueError, match="no indices"):
        show_predictions(_LookupModel(), frames, [], "cpu")
    uint8 = torch.utils.data.TensorDataset(torch.zeros(1, 3, 4, 4, dtype=torch.uint8),
                                           torch.zeros(1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="EvalTransform"):
        show_predictions(_LookupModel(), uint8, [0], "cpu")
    # Without file names, rows are labelled by their index.
    plain = torch.utils.data.TensorDataset(frames.pictures, frames.masks)
    fig = show_predictions(_LookupModel(), plain, [1], "cpu")
    assert fig.axes[0].get_ylabel() == "item 1"
