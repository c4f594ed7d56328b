"""Joint transforms: image and mask stay aligned, masks keep integer labels."""

import pytest
import torch
from torchvision import tv_tensors

from segtut.transforms import IMAGENET_MEAN, EvalTransform, resize_transforms, train_transforms

IGNORE = 11


def striped_pair(height=60, width=220):
    """An image whose red channel encodes the column's class, and the matching mask."""
    labels = (torch.arange(width) * 11 // width).expand(height, width)  # (H, W) 0..10 by column
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[0] = (labels * 20).to(torch.uint8)  # red = 20 * class
    return tv_tensors.Image(image), tv_tensors.Mask(labels.clone())


def test_train_transform_keeps_image_and_mask_aligned():
    torch.manual_seed(0)
    transform = train_transforms((48, 64), ignore_index=IGNORE, jitter=0.0)
    for _ in range(20):
        image, mask = transform(*striped_pair())
        assert image.shape == (3, 48, 64) and image.dtype == torch.float32
        assert mask.shape == (48, 64) and mask.dtype == torch.int64
        red = image[0] * 0.229 + IMAGENET_MEAN[0]  # undo the normalisation: red = 20 * class / 255
        labelled = mask != IGNORE
        expected = mask[labelled].float() * 20 / 255
        # Interior pixels agree exactly; the image's bilinear resize may blur a column at borders.
        agree = (red[labelled] - expected).abs() < 0.02
        assert agree.float().mean() > 0.9  # a flip or shift of one of the two gives < 0.2


def test_masks_only_hold_existing_labels_after_resize():
    torch.manual_seed(0)
    image, mask = striped_pair()
    _, small = resize_transforms((17, 23))(image, mask)
    assert set(small.unique().tolist()) <= set(mask.unique().tolist())


def test_crop_past_the_border_pads_the_mask_with_ignore():
    torch.manual_seed(0)
    image, mask = striped_pair(20, 20)
    transform = train_transforms((64, 64), ignore_index=IGNORE, scale=(0.5, 0.5), jitter=0.0)
    _, out = transform(image, mask)
    assert (out == IGNORE).any()
    assert set(out.unique().tolist()) <= set(range(11)) | {IGNORE}


def test_eval_transform_keeps_the_mask_at_native_size():
    image, mask = striped_pair(90, 120)
    out_image, out_mask = EvalTransform((45, 60))(image, mask)
    assert out_image.shape == (3, 45, 60)
    assert out_mask.shape == (90, 120) and torch.equal(out_mask, mask)


def test_a_plain_tensor_mask_moves_with_the_image():
    # torchvision passes a plain tensor through untouched: the mask stayed 60x220 (or was
    # misaligned) while the image was scaled and cropped. It is now wrapped as a Mask.
    image, mask = striped_pair()
    plain = mask.as_subclass(torch.Tensor)
    torch.manual_seed(0)
    expected_image, expected_mask = train_transforms((48, 64), ignore_index=IGNORE, jitter=0.0)(image, mask)
    torch.manual_seed(0)
    out_image, out_mask = train_transforms((48, 64), ignore_index=IGNORE, jitter=0.0)(image, plain)
    assert out_mask.shape == (48, 64)
    assert torch.equal(out_mask, expected_mask) and torch.equal(out_image, expected_image)
    _, resized = resize_transforms((17, 23))(image, plain)
    assert resized.shape == (17, 23) and resized.dtype == torch.int64
    _, channel_first = resize_transforms((17, 23))(image, plain[None])
    assert channel_first.shape == (1, 17, 23)  # (1, H, W) stays (1, h, w), resized too


def test_a_plain_tensor_image_is_normalised_like_an_image():
    image, mask = striped_pair(30, 40)
    plain = image.as_subclass(torch.Tensor)
    for transform in (resize_transforms((15, 20)), EvalTransform((15, 20))):
        expected, _ = transform(image, mask)
        out, _ = transform(plain, mask)
        assert out.dtype == torch.float32 and torch.equal(out, expected)
        out, out_mask = transform(plain, mask.as_subclass(torch.Tensor))
        assert torch.equal(out, expected) and out_mask.dtype == torch.int64


def test_masks_that_cannot_be_class_ids_are_refused():
    image, mask = striped_pair(20, 30)
    for transform in (train_transforms((16, 16), ignore_index=IGNORE), resize_transforms((8, 8)),
                      EvalTransform((8, 8))):
        with pytest.raises(TypeError, match="integer class ids"):
            transform(image, mask.as_subclass(torch.Tensor).float())
        with pytest.raises(ValueError, match="RGB colour mask"):
            transform(image, torch.zeros(3, 20, 30, dtype=torch.uint8))
        with pytest.raises(TypeError, match="tv_tensors.Mask"):
            transform(image, mask.numpy())


def test_eval_transform_with_an_int_resizes_the_shorter_side_and_keeps_the_mask():
    from segtut.transforms import EvalTransform

    image = torch.randint(0, 256, (3, 300, 400), dtype=torch.uint8)
    mask = torch.zeros(300, 400, dtype=torch.int64)
    out_image, out_mask = EvalTransform(150)(image, mask)
    assert tuple(out_image.shape) == (3, 150, 200)  # aspect ratio kept
    assert tuple(out_mask.shape) == (300, 400)  # the metric's resolution is untouched
