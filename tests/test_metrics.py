"""Tests of segtut.metrics: known answers, the ignore label, absent classes, streaming, errors,
and agreement with torchmetrics."""

import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from segtut.data import IGNORE_INDEX, NUM_CLASSES
from segtut.metrics import (
    ConfusionMatrix,
    class_accuracy,
    dice_per_class,
    iou_per_class,
    mean_dice,
    mean_iou,
    pixel_accuracy,
)

# A 2x3 image with 3 classes and the ignore label 3, worked out by hand.
#   targets      predictions
#   0 0 1        0 1 1
#   2 3 2        2 0 1
# Pixel (1, 1) is ignored. Counted pixels (true, predicted):
#   (0,0) (0,1) (1,1) (2,2) (2,1)
# matrix rows = true, columns = predicted:
#   [[1, 1, 0],
#    [0, 1, 0],
#    [0, 1, 1]]
TARGETS = torch.tensor([[[0, 0, 1], [2, 3, 2]]])  # (1, 2, 3)
PREDICTIONS = torch.tensor([[[0, 1, 1], [2, 0, 1]]])  # (1, 2, 3)
EXPECTED_MATRIX = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 1, 1]])


def small_metric():
    metric = ConfusionMatrix(3, ignore_index=3)
    metric.update(PREDICTIONS, TARGETS)
    return metric


def random_batch(generator, batch=2, height=9, width=13, num_classes=NUM_CLASSES,
                 ignore_index=IGNORE_INDEX, void_fraction=0.1):
    targets = torch.randint(0, num_classes, (batch, height, width), generator=generator)
    void = torch.rand(targets.shape, generator=generator) < void_fraction
    targets[void] = ignore_index
    predictions = torch.randint(0, num_classes, (batch, height, width), generator=generator)
    return predictions, targets


def test_matrix_known_answer():
    metric = small_metric()
    assert metric.matrix.dtype == torch.int64
    assert torch.equal(metric.matrix, EXPECTED_MATRIX)


def test_scores_known_answer():
    scores = small_metric().compute()
    # pixel accuracy: 3 right of 5 counted pixels
    assert scores["pixel_accuracy"] == pytest.approx(3 / 5)
    # IoU: class 0: 1 / (2 + 1 - 1) = 1/2; class 1: 1 / (1 + 3 - 1) = 1/3; class 2: 1/2
    assert scores["iou"] == pytest.approx([1 / 2, 1 / 3, 1 / 2])
    assert scores["mean_iou"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    # Dice: 2 TP / (row + column): 2/(2+1), 2/(1+3), 2/(2+1)
    assert scores["dice"] == pytest.approx([2 / 3, 1 / 2, 2 / 3])
    assert scores["mean_dice"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    # recall: 1/2, 1/1, 1/2
    assert scores["mean_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert set(scores) == {"pixel_accuracy", "mean_iou", "iou", "mean_dice", "dice",
                           "mean_accuracy"}


def test_pure_functions_of_a_matrix():
    matrix = torch.tensor([[5, 1], [2, 2]])
    assert pixel_accuracy(matrix) == pytest.approx(7 / 10)
    iou = iou_per_class(matrix)
    assert iou.dtype == torch.float64 and iou.shape == (2,)
    assert iou.tolist() == pytest.approx([5 / 8, 2 / 5])
    assert mean_iou(matrix) == pytest.approx((5 / 8 + 2 / 5) / 2)
    assert dice_per_class(matrix).tolist() == pytest.approx([10 / 13, 4 / 7])
    assert mean_dice(matrix) == pytest.approx((10 / 13 + 4 / 7) / 2)
    assert class_accuracy(matrix).tolist() == pytest.approx([5 / 6, 2 / 4])


def test_changing_predictions_at_ignored_pixels_changes_nothing():
    generator = torch.Generator().manual_seed(0)
    predictions, targets = random_batch(generator, void_fraction=0.3)
    other = predictions.clone()
    void = targets == IGNORE_INDEX
    other[void] = (other[void] + 1) % NUM_CLASSES  # every prediction at void pixels changes
    first = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE_INDEX)
    second = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE_INDEX)
    first.update(predictions, targets)
    second.update(other, targets)
    assert torch.equal(first.matrix, second.matrix)
    assert int(first.matrix.sum()) == int((~void).sum())


def test_ignore_label_other_than_num_classes():
    metric = ConfusionMatrix(3, ignore_index=255)
    metric.update(PREDICTIONS, TARGETS.masked_fill(TARGETS == 3, 255))
    assert torch.equal(metric.matrix, EXPECTED_MATRIX)
    negative = ConfusionMatrix(3, ignore_index=-1)
    negative.update(PREDICTIONS, TARGETS.masked_fill(TARGETS == 3, -1))
    assert torch.equal(negative.matrix, EXPECTED_MATRIX)


def test_ignore_index_none_counts_every_pixel():
    metric = ConfusionMatrix(4, ignore_index=None)
    metric.update(PREDICTIONS, TARGETS)  # 3 is now a real class
    assert int(metric.matrix.sum()) == 6
    assert metric.matrix[3, 0] == 1


def test_ignore_index_must_not_be_a_class():
    with pytest.raises(ValueError, match="class ids"):
        ConfusionMatrix(3, ignore_index=1)


def test_ignore_index_is_a_required_keyword():
    with pytest.raises(TypeError):
        ConfusionMatrix(3)  # noqa: the point is that this fails
    with pytest.raises(TypeError):
        ConfusionMatrix(3, 3)


def test_absent_class_is_nan_and_left_out_of_means():
    # Class 2 is neither true nor predicted anywhere; class 3 is predicted but never true.
    targets = torch.tensor([[[0, 0, 1], [1, 4, 0]]])
    predictions = torch.tensor([[[0, 3, 1], [1, 2, 0]]])  # the 2 sits on an ignored pixel
    metric = ConfusionMatrix(4, ignore_index=4)
    metric.update(predictions, targets)
    scores = metric.compute()
    assert math.isnan(scores["iou"][2]) and math.isnan(scores["dice"][2])
    assert scores["iou"][3] == 0.0  # predicted only: a real mistake, counted
    assert scores["iou"][:2] == pytest.approx([2 / 3, 1.0])
    assert scores["mean_iou"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert scores["mean_dice"] == pytest.approx((4 / 5 + 1 + 0) / 3)
    # class accuracy (recall) is NaN for classes 2 and 3: no true pixels
    assert scores["mean_accuracy"] == pytest.approx((2 / 3 + 1) / 2)


def test_empty_metric_gives_nan():
    scores = ConfusionMatrix(3, ignore_index=3).compute()
    assert math.isnan(scores["pixel_accuracy"]) and math.isnan(scores["mean_iou"])


def test_accumulating_batches_equals_one_big_batch():
    generator = torch.Generator().manual_seed(1)
    batches = [random_batch(generator) for _ in range(4)]
    streamed = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE_INDEX)
    for predictions, targets in batches:
        streamed.update(predictions, targets)
    whole = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE_INDEX)
    whole.update(torch.cat([p for p, _ in batches]), torch.cat([t for _, t in batches]))
    assert torch.equal(streamed.matrix, whole.matrix)
    assert streamed.compute() == whole.compute()

    # ...and differs from averaging per-batch mIoUs, which is why the matrix exists.
    per_batch = []
    for predictions, targets in batches:
        single = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE_INDEX)
        single.update(predictions, targets)
        per_batch.append(single.compute()["mean_iou"])
    assert sum(per_batch) / len(per_batch) != pytest.approx(whole.compute()["mean_iou"], abs=1e-9)


def test_reset():
    metric = small_metric()
    metric.reset()
    assert int(metric.matrix.sum()) == 0
    metric.update(PREDICTIONS, TARGETS)
    assert torch.equal(metric.matrix, EXPECTED_MATRIX)


def test_logits_are_argmaxed_over_the_class_dimension():
    logits = torch.nn.functional.one_hot(PREDICTIONS, 3).permute(0, 3, 1, 2).float()  # (1, 3, 2, 3)
    logits = logits * 5 + torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    metric = ConfusionMatrix(3, ignore_index=3)
    metric.update(logits, TARGETS)
    assert torch.equal(metric.matrix, EXPECTED_MATRIX)


def test_size_mismatch_tells_to_upsample_logits():
    metric = ConfusionMatrix(3, ignore_index=3)
    with pytest.raises(ValueError, match="[Uu]psample"):
        metric.update(torch.zeros(1, 3, 4, 6), torch.zeros(1, 2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="[Uu]psample"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.int64), TARGETS)


def test_logits_with_wrong_number_of_channels():
    with pytest.raises(ValueError, match="channels"):
        ConfusionMatrix(3, ignore_index=3).update(torch.zeros(1, 5, 2, 3), TARGETS)


@pytest.mark.parametrize("ignore_index", [3, 255, None])
def test_bad_target_values_are_named(ignore_index):
    metric = ConfusionMatrix(3, ignore_index=ignore_index)
    targets = torch.tensor([[[0, 1, 7], [2, -2, 0]]])
    with pytest.raises(ValueError, match=r"\[-2, 7\]"):
        metric.update(PREDICTIONS, targets)
    assert int(metric.matrix.sum()) == 0  # nothing was counted


def test_binary_0_255_mask_is_rejected():
    metric = ConfusionMatrix(2, ignore_index=None)
    with pytest.raises(ValueError, match="255"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.int64),
                      torch.tensor([[[0, 255], [255, 0]]]))


def test_bad_prediction_values_are_rejected():
    metric = ConfusionMatrix(3, ignore_index=3)
    with pytest.raises(ValueError, match=r"\[3\]"):
        metric.update(TARGETS.clone(), TARGETS)  # the 3 (void) is not a valid prediction
    with pytest.raises(ValueError, match="integer"):
        metric.update(PREDICTIONS.float(), TARGETS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_torchmetrics_on_random_inputs(seed):
    generator = torch.Generator().manual_seed(seed)
    predictions, targets = random_batch(generator, batch=3, height=17, width=23)
    # Make class 4 absent from both truth and prediction: torchmetrics reports 0, we NaN.
    targets[targets == 4] = IGNORE_INDEX
    predictions[predictions == 4] = 5
    ours = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE_INDEX)
    ours.update(predictions, targets)
    scores = ours.compute()
    reference = MulticlassJaccardIndex(num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX,
                                       average=None)
    expected = reference(predictions, targets).double()
    iou = torch.tensor(scores["iou"], dtype=torch.float64)
    present = ~iou.isnan()
    assert present.tolist() == [c != 4 for c in range(NUM_CLASSES)]
    torch.testing.assert_close(iou[present], expected[present])
    assert scores["mean_iou"] == pytest.approx(float(expected[present].mean()))


def test_matrix_follows_the_device_of_the_inputs_or_the_given_device():
    metric = ConfusionMatrix(3, ignore_index=3, device="cpu")
    metric.update(PREDICTIONS, TARGETS)
    assert metric.matrix.device.type == "cpu"
    if torch.cuda.is_available():
        lazy = ConfusionMatrix(3, ignore_index=3)
        lazy.update(PREDICTIONS.cuda(), TARGETS.cuda())
        assert lazy.matrix.device.type == "cuda"
        assert torch.equal(lazy.matrix.cpu(), EXPECTED_MATRIX)


def test_ignored_pixels_are_counted_beside_the_matrix():
    for ignore_index in (3, 255):  # the fast path (ignore = C) and the general one
        metric = ConfusionMatrix(3, ignore_index=ignore_index)
        targets = torch.tensor([[[0, 1, ignore_index], [ignore_index, ignore_index, 2]]])
        metric.update(torch.zeros(1, 2, 3, dtype=torch.long), targets)
        metric.update(torch.zeros(1, 2, 3, dtype=torch.long), targets)
        assert int(metric.ignored) == 6 and int(metric.matrix.sum()) == 6
        metric.reset()
        assert int(metric.ignored) == 0
