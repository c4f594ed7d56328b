"""Tests of segtut.losses: known answers, the ignore label, agreement with PyTorch and smp,
class weights, build_loss and gradients."""

import math

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from segtut.data import IGNORE_INDEX, NUM_CLASSES
from segtut.losses import (
    LOSSES,
    CEDiceLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    build_loss,
    class_frequencies,
    class_pixel_counts,
    median_frequency_weights,
)


def random_batch(seed, batch=2, num_classes=NUM_CLASSES, height=7, width=9,
                 ignore_index=IGNORE_INDEX, void_fraction=0.15):
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, num_classes, height, width, generator=generator)
    targets = torch.randint(0, num_classes, (batch, height, width), generator=generator)
    targets[torch.rand(targets.shape, generator=generator) < void_fraction] = ignore_index
    return logits, targets


# A 2x3 image with 2 classes and the ignore label 2, small enough to work out by hand.
#   targets        probabilities of class 1 (class 0 is 1 - p)
#   0 1 2          0.2 0.9 0.5
#   1 0 2          0.6 0.3 0.5
TARGETS = torch.tensor([[[0, 1, 2], [1, 0, 2]]])  # (1, 2, 3)
P1 = torch.tensor([[[0.2, 0.9, 0.5], [0.6, 0.3, 0.5]]])
LOGITS = torch.stack([torch.zeros_like(P1), torch.log(P1 / (1 - P1))], dim=1)  # (1, 2, 2, 3)
# probability of the true class at the 4 counted pixels: 0.8, 0.9, 0.6, 0.7
P_TRUE = torch.tensor([0.8, 0.9, 0.6, 0.7])


# --- class statistics -------------------------------------------------------------------------

def test_class_pixel_counts_known_answer():
    masks = [torch.tensor([[0, 0, 3], [1, 3, 0]]), torch.tensor([[[2, 0], [0, 3]]])]
    counts = class_pixel_counts(masks, 3, ignore_index=3)
    assert counts.dtype == torch.int64
    assert counts.tolist() == [5, 1, 1]


def test_class_pixel_counts_rejects_bad_values():
    with pytest.raises(ValueError, match=r"\[255\]"):
        class_pixel_counts([torch.tensor([[0, 255], [1, 1]])], 3, ignore_index=3)


def test_median_frequency_weights_from_counts():
    weights = median_frequency_weights(torch.tensor([10, 20, 40, 0]))
    # frequencies 1/7, 2/7, 4/7 (class 3 absent); median 2/7
    assert weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx([2.0, 1.0, 0.5, 0.0])


def test_class_frequencies_follow_eigen_and_fergus():
    # Image A (4 labelled pixels): class 0 x3, class 1 x1. Image B (5 labelled pixels + 1 void):
    # class 0 x2, class 2 x3. freq_c = pixels of c / labelled pixels of the images that contain c.
    image_a = torch.tensor([[0, 0], [0, 1]])
    image_b = torch.tensor([[0, 2, 9], [0, 2, 2]])  # class 0 x2, class 2 x3, one void (9)
    frequencies = class_frequencies([image_a, image_b], 3, ignore_index=9)
    assert frequencies.tolist() == pytest.approx([5 / 9, 1 / 4, 3 / 5])
    # A batch (N, H, W) counts as N images, same answer.
    batch = class_frequencies([torch.stack([image_a, image_b[:, :2]])], 3, ignore_index=9)
    assert batch.tolist() == pytest.approx([5 / 8, 1 / 4, 2 / 4])
    weights = median_frequency_weights(frequencies)  # median 5/9
    assert weights.tolist() == pytest.approx([1.0, (5 / 9) / (1 / 4), (5 / 9) / (3 / 5)])


# --- cross-entropy ----------------------------------------------------------------------------

def test_cross_entropy_known_answer_skips_ignored_pixels():
    loss = CrossEntropyLoss(ignore_index=2)(LOGITS, TARGETS)
    assert float(loss) == pytest.approx(float(-P_TRUE.log().mean()), rel=1e-5)


def test_cross_entropy_class_weights_known_answer():
    loss = CrossEntropyLoss(ignore_index=2, class_weights=[1.0, 3.0])(LOGITS, TARGETS)
    # true classes at the counted pixels: 0, 1, 1, 0 -> weights 1, 3, 3, 1 (weighted mean)
    weights = torch.tensor([1.0, 3.0, 3.0, 1.0])
    expected = -(weights * P_TRUE.log()).sum() / weights.sum()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


# --- Dice -------------------------------------------------------------------------------------

def test_dice_known_answer():
    # Counted pixels, (p0, p1) and target: (0.8, 0.2)->0, (0.1, 0.9)->1, (0.4, 0.6)->1,
    # (0.7, 0.3)->0. Class 0: intersection 0.8 + 0.7 = 1.5, cardinality 2.0 + 2 = 4.0.
    # Class 1: intersection 1.5, cardinality 2.0 + 2 = 4.0. Dice = 2 * 1.5 / 4 = 0.75 each.
    loss = DiceLoss(ignore_index=2)(LOGITS, TARGETS)
    assert float(loss) == pytest.approx(0.25, rel=1e-5)


def test_dice_absent_class_contributes_zero_but_counts_in_the_mean():
    # Add a third class that never appears and gets near-zero probability: its term is 0.
    logits = torch.cat([LOGITS, torch.full((1, 1, 2, 3), -30.0)], dim=1)  # (1, 3, 2, 3)
    targets = TARGETS.masked_fill(TARGETS == 2, 3)
    loss = DiceLoss(ignore_index=3)(logits, targets)
    assert float(loss) == pytest.approx((0.25 + 0.25 + 0.0) / 3, rel=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_dice_agrees_with_smp(seed, smooth):
    logits, targets = random_batch(seed, num_classes=5, ignore_index=5)
    targets[targets == 3] = 5  # class 3 absent from the targets
    ours = DiceLoss(ignore_index=5, smooth=smooth)(logits, targets)
    reference = smp.losses.DiceLoss(mode="multiclass", from_logits=True, ignore_index=5,
                                    smooth=smooth)(logits, targets)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_dice_class_weights_agree_with_smp():
    logits, targets = random_batch(3, num_classes=4, ignore_index=255)
    weights = [0.5, 1.0, 2.0, 4.0]
    ours = DiceLoss(ignore_index=255, class_weights=weights)(logits, targets)
    reference = smp.losses.DiceLoss(mode="multiclass", ignore_index=255,
                                    class_weights=weights)(logits, targets)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_dice_perfect_prediction_is_near_zero():
    targets = TARGETS.masked_fill(TARGETS == 2, 0)
    logits = 50.0 * F.one_hot(targets, 2).permute(0, 3, 1, 2).float()
    assert float(DiceLoss(ignore_index=None)(logits, targets)) == pytest.approx(0.0, abs=1e-6)


# --- focal ------------------------------------------------------------------------------------

def test_focal_known_answer():
    loss = FocalLoss(ignore_index=2, gamma=2.0)(LOGITS, TARGETS)
    expected = -((1 - P_TRUE) ** 2 * P_TRUE.log()).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_focal_with_gamma_zero_is_cross_entropy(seed):
    logits, targets = random_batch(seed)
    focal = FocalLoss(ignore_index=IGNORE_INDEX, gamma=0.0)(logits, targets)
    cross_entropy = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(focal, cross_entropy)


def test_focal_alpha_weights_each_pixel_and_divides_by_pixel_count():
    logits, targets = random_batch(4)
    alpha = torch.linspace(0.5, 2.0, NUM_CLASSES)
    focal = FocalLoss(ignore_index=IGNORE_INDEX, gamma=0.0, alpha=alpha)(logits, targets)
    valid_pixels = (targets != IGNORE_INDEX).sum()
    expected = F.cross_entropy(logits, targets, weight=alpha, ignore_index=IGNORE_INDEX,
                               reduction="sum") / valid_pixels
    torch.testing.assert_close(focal, expected)


def test_focal_down_weights_easy_pixels():
    logits, targets = random_batch(5)
    cross_entropy = float(F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX))
    focal = float(FocalLoss(ignore_index=IGNORE_INDEX, gamma=2.0)(logits, targets))
    assert 0 < focal < cross_entropy


def test_focal_with_every_pixel_ignored_is_zero():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = FocalLoss(ignore_index=3)(logits, torch.full((1, 2, 2), 3))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(logits.grad).all()


# --- all losses -------------------------------------------------------------------------------

def test_ce_plus_dice_is_the_weighted_sum():
    logits, targets = random_batch(6)
    combined = CEDiceLoss(ignore_index=IGNORE_INDEX, ce_weight=0.3, dice_weight=2.0)
    expected = (0.3 * F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
                + 2.0 * DiceLoss(ignore_index=IGNORE_INDEX)(logits, targets))
    torch.testing.assert_close(combined(logits, targets), expected)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_changing_logits_at_ignored_pixels_changes_nothing(name):
    logits, targets = random_batch(7)
    other = logits.clone()
    void = (targets == IGNORE_INDEX).unsqueeze(1).expand_as(logits)
    other[void] = 100 * torch.randn(int(void.sum()))
    loss_fn = build_loss(name, ignore_index=IGNORE_INDEX)
    assert float(loss_fn(logits, targets)) == pytest.approx(float(loss_fn(other, targets)),
                                                            rel=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_are_differentiable_scalars(name):
    logits, targets = random_batch(8)
    logits.requires_grad_(True)
    loss = build_loss(name, ignore_index=IGNORE_INDEX)(logits, targets)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0
    # Ignored pixels get no gradient at all.
    void = (targets == IGNORE_INDEX).unsqueeze(1).expand_as(logits)
    assert torch.count_nonzero(logits.grad[void]) == 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ignore_index_is_required(name):
    with pytest.raises(TypeError):
        LOSSES[name]()
    with pytest.raises(TypeError):
        build_loss(name)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_size_mismatch_tells_to_upsample(name):
    loss_fn = build_loss(name, ignore_index=IGNORE_INDEX)
    with pytest.raises(ValueError, match="[Uu]psample"):
        loss_fn(torch.randn(2, NUM_CLASSES, 4, 4), torch.zeros(2, 8, 8, dtype=torch.int64))


def test_build_loss_passes_class_weights_and_options():
    weights = torch.linspace(0.5, 2.0, NUM_CLASSES)
    assert torch.equal(build_loss("ce", ignore_index=IGNORE_INDEX, class_weights=weights).weight,
                       weights)
    focal = build_loss("focal", ignore_index=IGNORE_INDEX, class_weights=weights, gamma=1.0)
    assert torch.equal(focal.alpha, weights) and focal.gamma == 1.0
    combined = build_loss("ce+dice", ignore_index=IGNORE_INDEX, class_weights=weights)
    assert torch.equal(combined.cross_entropy.weight, weights)
    # Weighted cross-entropy gives a different value from the unweighted one.
    logits, targets = random_batch(9)
    plain = build_loss("ce", ignore_index=IGNORE_INDEX)(logits, targets)
    weighted = build_loss("ce", ignore_index=IGNORE_INDEX, class_weights=weights)(logits, targets)
    assert float(plain) != pytest.approx(float(weighted))


def test_build_loss_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        build_loss("lovasz", ignore_index=IGNORE_INDEX)
    for name in ["ce", "dice", "focal", "ce+dice"]:
        assert repr(name)[1:-1] in str(error.value)
    assert "lovasz" in str(error.value)


# ---------------------------------------------------------------------------------------------
# Wrong class weights and all-ignored batches: the same answer from every loss
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("length", [1, 4, 6])
def test_class_weights_of_the_wrong_length_are_refused(name, length):
    # focal and Dice used to accept them (indexing a longer alpha, broadcasting one weight).
    logits, targets = random_batch(0, num_classes=5, ignore_index=IGNORE_INDEX)
    loss_fn = build_loss(name, ignore_index=IGNORE_INDEX, class_weights=[1.0] * length)
    with pytest.raises(ValueError, match=f"expected 5 weights.*got {length}"):
        loss_fn(logits, targets)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_batch_with_every_pixel_ignored_gives_a_connected_zero(name):
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    targets = torch.full((2, 4, 5), 7)
    loss = build_loss(name, ignore_index=7, class_weights=[1.0, 2.0, 3.0])(logits, targets)
    assert loss.ndim == 0 and loss.item() == 0.0  # cross-entropy used to give NaN
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))
