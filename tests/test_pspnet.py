"""PSPNet (segtut.models.pspnet): shapes at odd sizes, output stride, dilation done right, the
auxiliary head, parameter counts, ImageNet weights or the offline fallback, and the pyramid
pooling module against segmentation-models-pytorch's. Nothing here touches the network."""

import math
import re

import pytest
import torch
import torchvision
from torch import nn

from segtut.models import MODELS, build_model, count_parameters
from segtut.models.library import AuxLoss
from segtut.models.pspnet import DilatedResNet, PSPNet, PyramidPooling, dilate_stage, pspnet

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(head_channels=32)  # the 3x3 head conv is most of a ResNet-18 PSPNet's cost


@pytest.mark.parametrize("backbone, size", [("resnet18", (97, 131)), ("resnet18", (1, 1)),
                                            ("resnet34", (67, 93)), ("resnet50", (97, 131)),
                                            ("resnet101", (33, 47))])
def test_logits_at_any_input_size(backbone, size):
    torch.manual_seed(0)
    model = PSPNet(5, backbone=backbone, **SMALL).eval()
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        _, features = model.encoder(images)
        logits = model(images)
    assert logits.shape == (1, 5, *size) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # Output stride 8: every stride-2 layer rounds up, so the map is ceil(H / 8) x ceil(W / 8).
    assert features.shape[1:] == (model.encoder.channels[1], math.ceil(size[0] / 8),
                                  math.ceil(size[1] / 8))


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride_sets_the_feature_map_size(output_stride):
    model = PSPNet(3, backbone="resnet18", output_stride=output_stride, **SMALL).eval()
    with torch.no_grad():
        layer3, layer4 = model.encoder(torch.randn(1, 3, 97, 131))
        logits = model(torch.randn(1, 3, 97, 131))
    size = (math.ceil(97 / output_stride), math.ceil(131 / output_stride))
    assert layer4.shape[-2:] == size
    assert layer3.shape[-2:] == (math.ceil(97 / min(16, output_stride)),
                                 math.ceil(131 / min(16, output_stride)))
    assert logits.shape == (1, 3, 97, 131)


def test_invalid_options_name_the_choices():
    with pytest.raises(ValueError, match="resnet18, resnet34, resnet50, resnet101"):
        PSPNet(3, backbone="vgg16")
    with pytest.raises(ValueError, match="8, 16, 32"):
        PSPNet(3, backbone="resnet18", output_stride=4)
    with pytest.raises(ValueError, match="1, 2, 3, 6"):
        PyramidPooling(8, bins=())


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = PSPNet(4, backbone="resnet18", **SMALL).train()
    logits = model(torch.randn(2, 3, 41, 53))
    nn.functional.cross_entropy(logits, torch.randint(0, 4, (2, 41, 53))).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("backbone, output_stride", [("resnet18", 8), ("resnet18", 16),
                                                     ("resnet50", 8)])
def test_dilated_encoder_computes_the_strided_one_densely(backbone, output_stride):
    """Same weights, same function: every k-th output of the dilated network is the plain one's.

    This is what "a trous" means and fails for a wrong dilation rule, e.g. giving both 3x3
    convolutions of a BasicBlock the stage's new dilation (checked below).
    """
    torch.manual_seed(0)
    plain = DilatedResNet(backbone, output_stride=32).eval()
    dilated = DilatedResNet(backbone, output_stride=output_stride).eval()
    dilated.load_state_dict(plain.state_dict())
    images = torch.randn(1, 3, 64, 96)  # divisible by 32, so the sampling grids line up
    step = 32 // output_stride
    with torch.no_grad():
        expected = plain(images)[1]  # (1, C4, 2, 3)
        got = dilated(images)[1][..., ::step, ::step]
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())
        if backbone == "resnet18":
            dilated.layer4[0].conv1.dilation = dilated.layer4[0].conv1.padding = (
                dilated.layer4[0].conv2.dilation)  # the naive rule
            wrong = dilated(images)[1][..., ::step, ::step]
            assert not torch.allclose(wrong, expected, rtol=1e-2, atol=1e-2 * expected.abs().max())


def test_dilate_stage_is_torchvisions_rule_on_bottleneck_resnets():
    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True])
    ours = torchvision.models.resnet50()
    dilate_stage(ours.layer3, 2, 1)
    dilate_stage(ours.layer4, 4, 2)
    convs = [(name, conv.stride, conv.dilation, conv.padding)
             for name, conv in ours.named_modules() if isinstance(conv, nn.Conv2d)]
    expected = [(name, conv.stride, conv.dilation, conv.padding)
                for name, conv in reference.named_modules() if isinstance(conv, nn.Conv2d)]
    assert convs == expected
    assert ("layer4.1.conv2", (1, 1), (4, 4), (4, 4)) in convs  # i.e. the check compares values


def test_basicblock_dilation_rates():
    encoder = DilatedResNet("resnet18", output_stride=8)
    rates = {name: conv.dilation[0] for name, conv in encoder.named_modules()
             if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)}
    assert {k: v for k, v in rates.items() if k.startswith(("layer3", "layer4"))} == {
        "layer3.0.conv1": 1, "layer3.0.conv2": 2, "layer3.1.conv1": 2, "layer3.1.conv2": 2,
        "layer4.0.conv1": 2, "layer4.0.conv2": 4, "layer4.1.conv1": 4, "layer4.1.conv2": 4}
    assert all(conv.stride == (1, 1) for name, conv in encoder.named_modules()
               if isinstance(conv, nn.Conv2d) and name.startswith(("layer3", "layer4")))


def test_aux_head_in_training_only():
    torch.manual_seed(0)
    model = PSPNet(6, backbone="resnet18", aux_loss=True, **SMALL)
    images, masks = torch.randn(2, 3, 45, 61), torch.randint(0, 6, (2, 45, 61))
    model.train()
    logits = model(images)
    assert logits.shape == model.aux_logits.shape == (2, 6, 45, 61)
    # AuxLoss (called as segtut.train.fit calls a loss) trains the aux head.
    AuxLoss(nn.functional.cross_entropy, model)(logits, masks).backward()
    assert model.aux_logits is None  # used once
    assert model.aux_head[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (2, 6, 45, 61)
        assert model.aux_logits is None
        both = model.forward_with_aux(images)
    assert set(both) == {"out", "aux"} and both["aux"].shape == (2, 6, 45, 61)
    assert PSPNet(6, backbone="resnet18", **SMALL).aux_head is None


def test_registry_builds_pspnet():
    assert "pspnet" in MODELS
    model = build_model("pspnet", 11, backbone="resnet18", pretrained=False)
    assert isinstance(model, PSPNet)
    assert model.weights_source == "random initialisation (pretrained=False)"
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 45)).shape == (1, 11, 37, 45)


def test_one_channel_images():
    model = build_model("pspnet", 3, backbone="resnet18", pretrained=False, in_channels=1,
                        **SMALL).eval()
    assert model.encoder.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 29, 35)).shape == (2, 3, 29, 35)
    direct = PSPNet(3, backbone="resnet18", in_channels=1, **SMALL)
    assert direct.encoder.conv1.in_channels == 1


def test_offline_falls_back_to_random_weights_and_says_so(no_network, monkeypatch):
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        model = pspnet(4, backbone="resnet18", pretrained=True, **SMALL)
    assert model.weights_source.startswith("random initialisation (ImageNet (resnet18 encoder)")
    assert "SEGTUT_OFFLINE=1" in model.weights_source


def test_encoder_weights_load_from_the_weights_dir(no_network, monkeypatch):
    torch.manual_seed(2)
    state = torchvision.models.resnet18().state_dict()  # random, but any values will do
    folder = no_network / "weights"
    folder.mkdir()
    torch.save(state, folder / "resnet18-f37072fd.pth")  # torchvision's IMAGENET1K_V1 file name
    monkeypatch.setenv("SEGTUT_WEIGHTS_DIR", str(folder))
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    model = build_model("pspnet", 4, backbone="resnet18", in_channels=1, **SMALL)
    assert model.weights_source.startswith("ImageNet (resnet18 encoder), from ")
    assert "adapted from 3 to 1 input channels" in model.weights_source
    encoder = model.encoder.state_dict()
    for key, value in encoder.items():
        expected = state[key].sum(1, keepdim=True) if key == "conv1.weight" else state[key]
        assert torch.equal(value, expected), key
    assert not any(key.startswith("fc.") for key in encoder)
    with pytest.raises(KeyError, match="lack"):
        model.encoder.load_imagenet_state({"conv1.weight": state["conv1.weight"]})


def test_parameter_counts():
    """The numbers in the module's docstring (21 classes, PASCAL VOC's)."""
    model = PSPNet(21, backbone="resnet50", aux_loss=True)
    assert count_parameters(model.encoder) == 23_508_032  # torchvision's ResNet-50 minus its fc
    assert count_parameters(model.encoder) == (count_parameters(torchvision.models.resnet50())
                                               - 2048 * 1000 - 1000)
    # Four 1x1 convs 2048 -> 512; BatchNorm on bins 2, 3, 6; a bias on bin 1.
    assert count_parameters(model.ppm) == 4 * 2048 * 512 + 3 * 2 * 512 + 512 == 4_197_888
    assert count_parameters(model.head) == 4096 * 512 * 9 + 2 * 512 + 512 * 21 + 21 == 18_886_165
    assert count_parameters(model.aux_head) == 2_365_205
    assert count_parameters(model) == 48_957_290
    assert count_parameters(model) - count_parameters(model.aux_head) == 46_592_085
    assert count_parameters(PSPNet(21, backbone="resnet18")) == 16_169_941


# --- the pyramid pooling module against segmentation-models-pytorch ---------------------------

def smp_to_ours(key: str) -> str:
    """``blocks.<i>.pool.1.<j>.<p>`` (smp: pool, then Conv2dReLU = conv, norm, ReLU) ->
    ``stages.<i>.<j + 1>.<p>`` (ours: one Sequential of pool, conv, norm, ReLU)."""
    match = re.fullmatch(r"blocks\.(\d+)\.pool\.1\.(\d+)\.(.+)", key)
    assert match, key
    return f"stages.{match[1]}.{int(match[2]) + 1}.{match[3]}"


def test_pyramid_pooling_equals_smps_psp_module():
    """smp's PSPModule is ours with align_corners=True and the input concatenated last.

    Same as ours: adaptive average pooling per bin, a 1x1 conv to C / len(bins) channels,
    BatchNorm (bias-free conv) and ReLU, except bin 1, which has no BatchNorm and a conv bias
    in both. Different: smp upsamples with align_corners=True (ours: False, a parameter) and
    puts the input after the pyramid levels (ours first, as the paper's author does).
    """
    from segmentation_models_pytorch.decoders.pspnet.decoder import PSPModule

    torch.manual_seed(0)
    channels, bins = 64, (1, 2, 3, 6)
    theirs = PSPModule(channels, bins, use_norm="batchnorm")
    for module in theirs.modules():  # non-trivial BatchNorm statistics, so they are compared
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.running_mean, -1, 1)
            nn.init.uniform_(module.running_var, 0.5, 2)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    theirs.eval()
    ours = PyramidPooling(channels, bins, align_corners=True).eval()
    mapped = {smp_to_ours(key): value for key, value in theirs.state_dict().items()}
    assert set(mapped) == set(ours.state_dict())  # the same layers, one for one
    ours.load_state_dict(mapped)
    x = torch.randn(2, channels, 13, 17)
    with torch.no_grad():
        expected = theirs(x)  # (2, 2C, 13, 17): levels, then the input
        got = ours(x)  # (2, 2C, 13, 17): the input, then the levels
    assert got.shape == expected.shape == (2, 2 * channels, 13, 17)
    reordered = torch.cat([expected[:, -channels:], expected[:, :-channels]], dim=1)
    assert torch.allclose(got, reordered, atol=1e-6)
    # The documented difference is real: with align_corners=False only bin 1 (a constant) agrees.
    ours.align_corners = False
    with torch.no_grad():
        default = ours(x)
    level = channels // len(bins)
    assert torch.allclose(default[:, :channels + level], reordered[:, :channels + level])
    assert not torch.allclose(default, reordered, atol=1e-3)


def test_pyramid_pooling_widths():
    ppm = PyramidPooling(512)
    assert ppm.out_channels == 1024
    assert ppm(torch.randn(2, 512, 5, 7)).shape == (2, 1024, 5, 7)
    custom = PyramidPooling(30, bins=(1, 3), reduction_channels=8)
    assert custom.out_channels == 30 + 2 * 8
    assert custom.eval()(torch.randn(1, 30, 1, 1)).shape == (1, 46, 1, 1)
    # Bin 1 has no BatchNorm, so training with a batch of one works.
    PyramidPooling(16).train()(torch.randn(1, 16, 4, 4))
