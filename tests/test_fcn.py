"""FCN-8s (segtut.models.fcn): bilinear transposed convolutions, shapes at any size, the paper's
parameter count, and the depthwise-separable variant."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segtut.models import build_model, count_parameters
from segtut.models.fcn import (FCN8s, BilinearUpsample, SeparableConvNormReLU, bilinear_kernel,
                               crop_to, fcn8s_separable)


pytestmark = pytest.mark.usefixtures("one_thread")


def interior(x: torch.Tensor, margin: int) -> torch.Tensor:
    return x[..., margin:-margin, margin:-margin]


def test_bilinear_kernel_is_a_separable_tent_on_the_diagonal():
    weight = bilinear_kernel(3, 4)
    assert weight.shape == (3, 3, 4, 4) and weight.dtype == torch.float32
    tent = torch.tensor([0.25, 0.75, 0.75, 0.25])
    for c in range(3):
        assert torch.equal(weight[c, c], tent[:, None] * tent[None, :])
    off_diagonal = weight.clone()
    off_diagonal[range(3), range(3)] = 0
    assert not off_diagonal.any(), "a class channel must not leak into another"


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_transposed_conv_with_bilinear_kernel_keeps_a_constant_image_constant(factor):
    up = nn.ConvTranspose2d(2, 2, kernel_size=2 * factor, stride=factor, padding=factor // 2,
                            bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(2, 2 * factor))
        out = up(torch.full((1, 2, 5, 7), 3.0))
    assert out.shape == (1, 2, 5 * factor, 7 * factor)
    assert torch.allclose(interior(out, factor // 2), torch.tensor(3.0), atol=1e-6)
    assert out[0, 0, 0, 0] < 3.0  # the border gets only part of the tent


@pytest.mark.parametrize("factor", [2, 8])
def test_bilinear_upsample_equals_interpolate_away_from_the_border(factor):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 9)
    with torch.no_grad():
        ours = BilinearUpsample(3, factor)(x)
    reference = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert ours.shape == reference.shape
    assert torch.allclose(interior(ours, factor // 2), interior(reference, factor // 2), atol=1e-5)


def test_bilinear_upsample_rejects_odd_factors_and_can_be_fixed():
    with pytest.raises(ValueError, match="even"):
        BilinearUpsample(3, 3)
    fixed = BilinearUpsample(3, 8, learnable=False)
    assert not list(fixed.parameters()) and torch.equal(fixed.weight, bilinear_kernel(3, 16))
    assert "weight" in fixed.state_dict()


def test_crop_to_keeps_the_top_left_window():
    x = torch.arange(5 * 6.0).reshape(1, 1, 5, 6)
    assert torch.equal(crop_to(x, torch.empty(1, 1, 4, 4)), x[..., :4, :4])


@pytest.mark.parametrize("size", [(1, 1), (31, 33), (67, 93), (97, 131), (128, 160), (180, 240)])
@pytest.mark.parametrize("separable", [False, True])
def test_logits_have_the_input_size(size, separable):
    model = FCN8s(num_classes=5, base_channels=4, separable=separable).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, *size))
    assert logits.shape == (1, 5, *size) and logits.dtype == torch.float32


def test_score_layers_start_at_zero_and_the_final_upsampling_is_fixed():
    torch.manual_seed(0)
    model = FCN8s(num_classes=4, base_channels=4)
    images = torch.randn(2, 3, 40, 56)
    logits = model(images)
    assert not logits.any(), "zero-initialised score layers: the network starts predicting zeros"
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"up_conv7.weight", "up_fused.weight"} <= trainable
    assert "up_final.weight" not in dict(model.named_parameters())
    assert dict(model.named_buffers())["up_final.weight"].shape == (4, 4, 16, 16)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_a_few_steps_reduce_the_loss_on_one_batch():
    torch.manual_seed(0)
    model = FCN8s(num_classes=3, base_channels=4, dropout=0.0)
    images = torch.randn(2, 3, 32, 48)
    masks = torch.zeros(2, 32, 48, dtype=torch.long)
    masks[:, :, 24:] = 1
    masks[:, 16:, :] = 2
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def paper_parameter_count(num_classes: int) -> int:
    """FCN-8s on VGG16 (no normalisation), layer by layer: weights + biases."""
    conv = lambda k, c_in, c_out: k * k * c_in * c_out + c_out  # noqa: E731
    vgg = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
           (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    total = sum(conv(3, c_in, c_out) for c_in, c_out in vgg)  # 14,714,688: VGG16's conv layers
    total += conv(7, 512, 4096) + conv(1, 4096, 4096)  # fc6 and fc7 as convolutions
    total += conv(1, 4096, num_classes) + conv(1, 512, num_classes) + conv(1, 256, num_classes)
    total += 2 * num_classes * num_classes * 4 * 4  # the two learnt x2 upsamplings, no bias
    return total  # the fixed x8 upsampling is a buffer, not a parameter


def test_paper_configuration_has_134_million_parameters():
    # Long et al. (2015), Table 1: FCN-VGG16 has 134M parameters (PASCAL VOC: 21 classes).
    with torch.device("meta"):
        model = FCN8s(num_classes=21, norm="none")
    assert count_parameters(model) == paper_parameter_count(21) == 134_376_863


@pytest.mark.parametrize("base_channels", [16, 64])
def test_separable_variant_has_about_six_times_fewer_parameters(base_channels):
    with torch.device("meta"):
        dense = count_parameters(FCN8s(11, base_channels=base_channels))
        separable = count_parameters(fcn8s_separable(11, base_channels=base_channels))
    assert 6.0 < dense / separable < 7.0


def test_separable_variant_has_no_dense_spatial_convolution():
    model = build_model("fcn8s_separable", num_classes=5, base_channels=4)
    spatial = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    assert spatial and all(m.groups == m.in_channels == m.out_channels for m in spatial)
    assert sum(isinstance(m, SeparableConvNormReLU) for m in model.modules()) == 14  # 13 + conv6
    dense = build_model("fcn8s", num_classes=5, base_channels=4)
    assert not any(isinstance(m, SeparableConvNormReLU) for m in dense.modules())


def test_separable_block_parameter_count():
    block = SeparableConvNormReLU(32, 64, kernel_size=3, norm="none")
    assert count_parameters(block) == (3 * 3 * 32 + 32) + (32 * 64 + 64)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_norm_variants(norm):
    model = FCN8s(num_classes=3, base_channels=8, norm=norm).eval()
    assert model(torch.randn(2, 3, 33, 47)).shape == (2, 3, 33, 47)


def test_unknown_norm_is_rejected():
    with pytest.raises(ValueError, match="batch"):
        FCN8s(num_classes=3, base_channels=4, norm="layer")
