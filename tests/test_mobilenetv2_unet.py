"""MobileNetV2 U-Net (segtut.models.mobilenetv2_unet): the taps match the TensorFlow tutorial's
layers, shapes at odd sizes, parameter counts, and ImageNet weights found on disk or replaced
by random initialisation offline. Nothing here touches the network."""

import math

import pytest
import torch
import torchvision
from torch import nn

from segtut.models import build_model, count_parameters
from segtut.models import library
from segtut.models.mobilenetv2_unet import (BOTTLENECK, SKIP_TAPS, MobileNetV2Encoder, MobileNetV2UNet,
                                            UpBlock, mobilenetv2_unet)

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"  # torchvision's MobileNet_V2_Weights.IMAGENET1K_V1


pytestmark = pytest.mark.usefixtures("one_thread")



def test_weights_file_name_is_torchvisions():
    url = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.url
    assert url.endswith("/" + WEIGHTS_FILE)


def test_taps_are_the_tensorflow_tutorials_layers():
    # Keras block b is torchvision's features[b + 1]; the taps are expansion outputs, then the
    # last block's output. Compare with forward hooks on an unmodified torchvision MobileNetV2.
    assert {index: name for index, name in SKIP_TAPS.items()} == {
        2: "block_1_expand_relu", 4: "block_3_expand_relu", 7: "block_6_expand_relu",
        14: "block_13_expand_relu"}
    assert all(int(name.split("_")[1]) + 1 == index for index, name in SKIP_TAPS.items())
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v2().eval()
    encoder = MobileNetV2Encoder().eval()
    encoder.load_imagenet_state(reference.state_dict())
    seen = {}
    for index in SKIP_TAPS:
        reference.features[index].conv[0].register_forward_hook(
            lambda module, args, output, index=index: seen.__setitem__(index, output))
    reference.features[BOTTLENECK].register_forward_hook(
        lambda module, args, output: seen.__setitem__("bottleneck", output))
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        reference(images)
        skips, bottleneck = encoder(images)
    # The shapes the TensorFlow tutorial lists (there at 128x128, here at 224x224, channels first).
    assert [tuple(s.shape[1:]) for s in skips] == [(96, 112, 112), (144, 56, 56), (192, 28, 28),
                                                   (576, 14, 14)]
    assert tuple(bottleneck.shape[1:]) == (320, 7, 7)
    for skip, index in zip(skips, SKIP_TAPS):
        assert torch.equal(skip, seen[index])
    assert torch.equal(bottleneck, seen["bottleneck"])


@pytest.mark.parametrize("size", [(67, 93), (97, 131), (64, 96), (1, 1), (360, 480)])
def test_any_input_size_gives_logits_at_that_size(size):
    model = MobileNetV2UNet(num_classes=5, decoder_channels=(32, 16, 16, 8)).eval()
    images = torch.randn(1, 3, *size)
    with torch.no_grad():
        skips, bottleneck = model.encoder(images)
        logits = model(images)
    assert logits.shape == (1, 5, *size) and logits.dtype == torch.float32
    # Every stride-2 layer rounds up: the map at stride s is ceil(H / s) x ceil(W / s).
    for skip, stride in zip(skips + [bottleneck], (2, 4, 8, 16, 32)):
        assert tuple(skip.shape[-2:]) == (math.ceil(size[0] / stride), math.ceil(size[1] / stride))


def test_up_block_doubles_exactly_and_overlaps_evenly():
    assert UpBlock(3, 4)(torch.randn(2, 3, 5, 7)).shape == (2, 4, 10, 14)
    # A 4x4 kernel with stride 2 gives every interior output pixel 2x2 taps (a flat response to
    # a flat input); a 3x3 kernel alternates 1, 2 and 4 taps: a checkerboard.
    ones = torch.ones(1, 1, 6, 6)
    for kernel_size, padding, output_padding, flat in ((4, 1, 0, True), (3, 1, 1, False)):
        conv = nn.ConvTranspose2d(1, 1, kernel_size, stride=2, padding=padding,
                                  output_padding=output_padding, bias=False)
        nn.init.ones_(conv.weight)
        with torch.no_grad():
            interior = conv(ones)[0, 0, 2:-2, 2:-2]
        assert conv(ones).shape[-2:] == (12, 12)
        assert bool((interior == interior[0, 0]).all()) == flat


def tutorial_decoder_parameters(num_classes: int, widths=(512, 256, 128, 64)) -> int:
    """Up blocks (bias-free 4x4 transposed convs + BatchNorm) and the head, counted by hand."""
    skips = (576, 192, 144, 96)
    inputs = [320] + [w + s for w, s in zip(widths, skips)]
    blocks = sum(i * o * 16 + 2 * o for i, o in zip(inputs, widths))
    return blocks + inputs[4] * num_classes * 16 + num_classes


def test_parameter_counts():
    # torchvision's MobileNetV2 (width 1.0): 3.50 M parameters, the paper's "3.4M".
    classifier = torchvision.models.mobilenet_v2()
    assert count_parameters(classifier) == 3_504_872
    encoder_reference = count_parameters(classifier.features[:18])  # without the 1280-channel conv
    model = MobileNetV2UNet(num_classes=11)
    assert count_parameters(model.encoder) == encoder_reference == 1_811_712
    decoder = count_parameters(model.ups) + count_parameters(model.head)
    assert decoder == tutorial_decoder_parameters(11) == 8_304_011
    assert count_parameters(model) == 10_115_723
    slim = MobileNetV2UNet(num_classes=11, decoder_channels=(256, 128, 64, 32))
    assert count_parameters(slim) == encoder_reference + tutorial_decoder_parameters(11, (256, 128, 64, 32))


def test_norm_dropout_and_invalid_options():
    model = MobileNetV2UNet(num_classes=3, decoder_channels=(16, 8, 8, 8), norm="group", dropout=0.5)
    dropouts = [any(isinstance(m, nn.Dropout) for m in up.modules()) for up in model.ups]
    assert dropouts == [True, True, True, False]  # pix2pix: the deepest blocks only
    assert all(isinstance(up[1], nn.GroupNorm) for up in model.ups)
    assert model(torch.randn(2, 3, 33, 47)).shape == (2, 3, 33, 47)
    plain = MobileNetV2UNet(num_classes=3, decoder_channels=(16, 8, 8, 8), norm="none")
    assert all(up[0].bias is not None for up in plain.ups)  # no norm: the conv keeps its bias
    with pytest.raises(ValueError, match="batch"):
        MobileNetV2UNet(num_classes=3, norm="layer")
    with pytest.raises(ValueError, match="4 widths"):
        MobileNetV2UNet(num_classes=3, decoder_channels=(64, 32, 16))


def test_pretrained_false_says_so():
    model = build_model("mobilenetv2_unet", num_classes=5, pretrained=False)
    assert isinstance(model, MobileNetV2UNet)
    assert model.weights_source == "random initialisation (pretrained=False)"


def test_offline_falls_back_to_random_weights_and_says_so(no_network, monkeypatch):
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        model = mobilenetv2_unet(num_classes=5, decoder_channels=(16, 8, 8, 8), pretrained=True)
    assert model.weights_source.startswith("random initialisation")
    assert "SEGTUT_OFFLINE=1" in model.weights_source
    assert model(torch.randn(2, 3, 67, 93)).shape == (2, 5, 67, 93)


def test_unreachable_server_falls_back_without_waiting(no_network):
    with pytest.warns(UserWarning, match="cannot reach download.pytorch.org"):
        model = mobilenetv2_unet(num_classes=5, decoder_channels=(16, 8, 8, 8), pretrained=True)
    assert "cannot reach download.pytorch.org" in model.weights_source


@pytest.mark.parametrize("place", ["weights dir", "torch cache"])
def test_encoder_weights_load_from_disk(place, no_network, monkeypatch):
    torch.manual_seed(2)
    state = torchvision.models.mobilenet_v2().state_dict()  # random, but any values will do
    if place == "weights dir":
        folder = no_network / "weights"
        monkeypatch.setenv(library.WEIGHTS_DIR_ENV, str(folder))
    else:
        folder = no_network / "torch-home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / WEIGHTS_FILE)
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    torch.manual_seed(3)
    model = build_model("mobilenetv2_unet", num_classes=5, decoder_channels=(16, 8, 8, 8), pretrained=True)
    assert model.weights_source.startswith("ImageNet (mobilenet_v2 encoder), from ")
    if place == "weights dir":
        assert WEIGHTS_FILE in model.weights_source
    encoder_state = model.encoder.state_dict()
    assert len(encoder_state) > 0
    for key, value in encoder_state.items():  # weights and BatchNorm statistics alike
        assert torch.equal(value, state[key]), key
    assert "features.18.0.weight" not in encoder_state  # the 1280-channel conv is not used


def test_incomplete_weights_raise():
    with pytest.raises(KeyError, match="lack"):
        MobileNetV2Encoder().load_imagenet_state({"features.0.0.weight": torch.zeros(32, 3, 3, 3)})
