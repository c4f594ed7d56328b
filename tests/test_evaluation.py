"""segtut.evaluation: split tables, per-image scores, worst images, frames over sequences."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from segtut.evaluation import (evaluate_splits, file_names, image_scores, per_image_iou,
                               pick_frames, score_tables, sequence_of, worst_images)
from segtut.train import evaluate
import segtut.viz  # noqa: F401  (score_tables imports it; load it with the module, not in a test)

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES = 4
VOID = 11
NAMES = ("sky", "road", "car", "tree")


class LookupModel(nn.Module):
    """Predicts the class id written in channel 0 of the image: logits are its one-hot code."""

    def forward(self, images):  # (N, 3, H, W) -> (N, C, H, W)
        ids = images[:, 0].round().long().clamp(0, NUM_CLASSES - 1)  # (N, H, W)
        return nn.functional.one_hot(ids, NUM_CLASSES).permute(0, 3, 1, 2).float()


def random_split_data(seed: int, count: int = 6, size=(6, 8), absent: int | None = None):
    """Random float images (count, 3, H, W) and masks with void; class ``absent`` never occurs."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, *size, generator=generator)
    masks = torch.randint(0, NUM_CLASSES, (count, *size), generator=generator)
    if absent is not None:
        masks[masks == absent] = (absent + 1) % NUM_CLASSES
    masks[torch.rand(count, *size, generator=generator) < 0.2] = VOID
    return images, masks


class NamedFrames(Dataset):
    """Items (image, mask) with file names in ``images``, like segtut.data.SegmentationFolder."""

    def __init__(self, names, size=(4, 6)):
        self.images = [Path("/nowhere") / name for name in names]
        self.size = size

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        mask = torch.full(self.size, index % NUM_CLASSES, dtype=torch.int64)
        return torch.zeros(3, *self.size), mask


def test_evaluate_splits_numbers_equal_train_evaluate():
    torch.manual_seed(0)
    model = nn.Conv2d(3, NUM_CLASSES, kernel_size=1)
    val = TensorDataset(*random_split_data(1, absent=2))  # class 2 never true in val
    test = TensorDataset(*random_split_data(2))
    loaders = {"val": DataLoader(val, batch_size=4), "test": DataLoader(test, batch_size=4)}
    summary, per_class = evaluate_splits(model, loaders, torch.device("cpu"),
                                         num_classes=NUM_CLASSES, ignore_index=VOID,
                                         class_names=NAMES, decimals=None, progress=False)
    assert list(summary.index) == ["val", "test"]
    assert list(summary.columns) == ["mIoU %", "pixel accuracy %", "mean Dice %"]
    assert list(per_class.columns) == ["class", "val IoU %", "test IoU %"]
    assert list(per_class["class"]) == list(NAMES) + ["mean"]
    for split, loader in loaders.items():
        expected = evaluate(model, loader, torch.device("cpu"), num_classes=NUM_CLASSES,
                            ignore_index=VOID, progress=False)
        np.testing.assert_allclose(per_class[f"{split} IoU %"].iloc[:-1],
                                   100 * np.array(expected["iou"]), equal_nan=True)
        assert summary.loc[split, "mIoU %"] == pytest.approx(100 * expected["mean_iou"])
        accuracy = summary.loc[split, "pixel accuracy %"]
        assert accuracy == pytest.approx(100 * expected["pixel_accuracy"])
        assert summary.loc[split, "mean Dice %"] == pytest.approx(100 * expected["mean_dice"])
        # The per-class table's mean row is the split's mIoU, absent classes left out.
        assert per_class[f"{split} IoU %"].iloc[-1] == pytest.approx(100 * expected["mean_iou"])
    # Class 2 is never true in val but is predicted there: IoU 0, counted in the mean.
    assert per_class["val IoU %"].iloc[2] == 0.0 and per_class["test IoU %"].iloc[2] > 0
    # Rounded by default, for display.
    rounded, _ = evaluate_splits(model, loaders, torch.device("cpu"), num_classes=NUM_CLASSES,
                                 ignore_index=VOID, class_names=NAMES, progress=False)
    assert rounded.loc["test", "mIoU %"] == round(summary.loc["test", "mIoU %"], 1)


def test_evaluate_splits_of_an_oracle_is_perfect():
    images, masks = random_split_data(3)
    images[:, 0] = masks.clamp(max=NUM_CLASSES - 1).float()  # the answer, written in the image
    loaders = {"val": DataLoader(TensorDataset(images, masks), batch_size=4)}
    summary, per_class = evaluate_splits(LookupModel(), loaders, torch.device("cpu"),
                                         num_classes=NUM_CLASSES, ignore_index=VOID,
                                         class_names=NAMES, progress=False)
    assert per_class["val IoU %"].tolist() == [100.0] * (NUM_CLASSES + 1)
    assert summary.loc["val"].tolist() == [100.0, 100.0, 100.0]


def test_evaluate_splits_rejects_class_names_of_another_length():
    with pytest.raises(ValueError, match="class names"):
        evaluate_splits(LookupModel(), {}, torch.device("cpu"), num_classes=NUM_CLASSES,
                        ignore_index=VOID, class_names=NAMES[:3])


def test_score_tables_compares_runs():
    run = {"iou": [0.5, 0.25, math.nan, 1.0], "mean_iou": 1.75 / 3, "pixel_accuracy": 0.9,
           "mean_dice": 0.7}
    summary, per_class = score_tables({"A val": run, "B val": {**run, "mean_iou": 0.1}},
                                      class_names=NAMES, decimals=None)
    assert list(per_class.columns) == ["class", "A val IoU %", "B val IoU %"]
    assert per_class["A val IoU %"].iloc[-1] == pytest.approx(100 * 1.75 / 3)
    assert summary.loc["B val", "mIoU %"] == pytest.approx(10.0)
    assert summary.index.name == "split"


# A hand-scored pair (void in the middle of the bottom row):
#   mask        prediction
#   0 0 1 1     0 1 1 1
#   0 V 1 2     0 0 2 2
# 7 scored pixels, 5 right. Class 0: TP 2, FN 1, FP 0 -> 2/3. Class 1: TP 2, FN 1 (the 1 taken
# for 2), FP 1 (the 0 taken for 1) -> 2/4. Class 2: TP 1, FP 1 -> 1/2. Class 3: in neither, left
# out. The 0 predicted on the void pixel counts nowhere.
HAND_MASK = torch.tensor([[0, 0, 1, 1], [0, VOID, 1, 2]])
HAND_PREDICTION = torch.tensor([[0, 1, 1, 1], [0, 0, 2, 2]])
HAND_MEAN_IOU = (2 / 3 + 1 / 2 + 1 / 2) / 3  # 5/9


def test_image_scores_of_a_hand_scored_pair():
    scores = image_scores(HAND_PREDICTION, HAND_MASK, num_classes=NUM_CLASSES, ignore_index=VOID)
    assert scores["mean_iou"] == pytest.approx(HAND_MEAN_IOU)
    assert scores["pixel_accuracy"] == pytest.approx(5 / 7)
    assert scores["classes"] == 3
    void = torch.full((2, 4), VOID)
    empty = image_scores(HAND_PREDICTION, void, num_classes=NUM_CLASSES, ignore_index=VOID)
    assert math.isnan(empty["mean_iou"]) and math.isnan(empty["pixel_accuracy"])


def test_per_image_iou_scores_each_item_and_worst_images_ranks_them():
    image = torch.zeros(3, 2, 4)
    image[0] = HAND_PREDICTION.float()  # LookupModel predicts exactly HAND_PREDICTION
    perfect = torch.zeros(3, 2, 4)
    perfect[0] = HAND_MASK.clamp(max=NUM_CLASSES - 1).float()
    images = torch.stack([perfect, image, perfect, image])  # (4, 3, 2, 4)
    masks = torch.stack([HAND_MASK, HAND_MASK, torch.full((2, 4), VOID), HAND_MASK])

    class Items(NamedFrames):
        def __getitem__(self, index):
            return images[index], masks[index]

    items = Items(["A_001.png", "A_002.png", "B_001.png", "plain.png"])
    scores = per_image_iou(LookupModel(), items, torch.device("cpu"), num_classes=NUM_CLASSES,
                           ignore_index=VOID, batch_size=3)
    assert scores.index.name == "index" and list(scores.index) == [0, 1, 2, 3]
    assert list(scores.columns) == ["file", "sequence", "mean_iou", "pixel_accuracy", "classes"]
    assert scores["file"].tolist() == ["A_001.png", "A_002.png", "B_001.png", "plain.png"]
    assert scores["sequence"].tolist()[:3] == ["A", "A", "B"] and pd.isna(scores["sequence"][3])
    np.testing.assert_allclose(scores["mean_iou"], [1.0, HAND_MEAN_IOU, math.nan, HAND_MEAN_IOU])
    np.testing.assert_allclose(scores["pixel_accuracy"], [1.0, 5 / 7, math.nan, 5 / 7])
    # Worst first, ties in dataset order, the all-void image left out.
    worst = worst_images(scores, 3)
    assert list(worst.index) == [1, 3, 0]
    assert list(worst_images(scores, 1).index) == [1]
    assert list(worst_images(scores, 3, by="pixel_accuracy").index) == [1, 3, 0]
    # A Subset keeps its own positions and the file names of the items it holds.
    subset = per_image_iou(LookupModel(), Subset(items, [3, 0]), torch.device("cpu"),
                           num_classes=NUM_CLASSES, ignore_index=VOID)
    assert subset["file"].tolist() == ["plain.png", "A_001.png"]
    np.testing.assert_allclose(subset["mean_iou"], [HAND_MEAN_IOU, 1.0])
    with pytest.raises(ValueError, match="columns"):
        worst_images(scores, 2, by="iou")


def test_file_names_and_sequences():
    frames = NamedFrames(["0001TP_008550.png", "Seq05VD_f02370.png", "horse001.png"])
    assert file_names(frames) == ["0001TP_008550.png", "Seq05VD_f02370.png", "horse001.png"]
    assert [sequence_of(name) for name in file_names(frames)] == ["0001TP", "Seq05VD", None]
    assert file_names(Subset(frames, [2, 0])) == ["horse001.png", "0001TP_008550.png"]
    assert file_names(TensorDataset(torch.zeros(2, 3))) == [None, None]
    assert sequence_of("aachen_000000_000019.png") == "aachen"


SIZES = {"A": 10, "B": 3, "C": 20}


def sequences_dataset():
    names = [f"{sequence}_{frame:03d}.png" for sequence, count in SIZES.items()
             for frame in range(count)]
    return NamedFrames(names)


def positions_of(dataset, sequence):
    return [i for i, name in enumerate(file_names(dataset)) if name.startswith(sequence + "_")]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_pick_frames_covers_every_sequence_evenly(seed):
    dataset = sequences_dataset()
    picks = pick_frames(dataset, 6, seed=seed)
    assert picks == sorted(set(picks)) and len(picks) == 6
    for sequence in SIZES:
        members = positions_of(dataset, sequence)
        chosen = [members.index(p) for p in picks if p in members]
        assert len(chosen) == 2, sequence
        # One frame from each half of the sequence (a middle frame may belong to both halves).
        count = len(members)
        assert chosen[0] <= math.ceil(count / 2) - 1 and chosen[1] >= count // 2
    assert pick_frames(dataset, 6, seed=seed) == picks  # same seed, same frames


def test_pick_frames_shares_out_by_size():
    dataset = sequences_dataset()

    def by_sequence(picks):
        return {s: sum(p in positions_of(dataset, s) for p in picks) for s in SIZES}

    assert by_sequence(pick_frames(dataset, 2)) == {"A": 1, "B": 0, "C": 1}  # largest first
    assert by_sequence(pick_frames(dataset, 10)) == {"A": 3, "B": 3, "C": 4}
    assert by_sequence(pick_frames(dataset, 20)) == {"A": 8, "B": 3, "C": 9}
    assert pick_frames(dataset, 100) == list(range(33))
    assert pick_frames(dataset, 0) == []
    assert pick_frames(dataset, 6, seed=0) != pick_frames(dataset, 6, seed=3)


def test_pick_frames_through_a_subset_and_without_file_names():
    dataset = sequences_dataset()
    subset = Subset(dataset, positions_of(dataset, "C")[:4] + positions_of(dataset, "B"))
    picks = pick_frames(subset, 2)
    names = [file_names(subset)[p] for p in picks]
    assert sorted(sequence_of(name) for name in names) == ["B", "C"]
    plain = TensorDataset(torch.zeros(10, 1))
    picks = pick_frames(plain, 5, seed=4)
    assert [p // 2 for p in picks] == [0, 1, 2, 3, 4]  # one in each stretch of two
