"""Every registered model: forward shape at an odd size, a backward pass, no downloads."""

import pytest
import torch

from segtut.models import MODELS, build_model, count_parameters
from segtut.models.unet import UNet

# Small options per model, so the whole file runs in seconds on a CPU.
# Library models never download here: pretrained=False (tests/test_library_models.py covers the
# pretrained and offline paths); DeepLabV3's auxiliary head gets no gradient from the main
# logits alone, so it is left out (test_library_models.py trains it through AuxLoss).
SMALL = {
    "unet": dict(base_channels=4, depth=3),
    "fcn8s": dict(base_channels=4),
    "fcn8s_separable": dict(base_channels=4),
    "smp_unet": dict(pretrained=False),
    "smp_fpn": dict(pretrained=False),
    "smp_segformer": dict(pretrained=False),
    "deeplabv3": dict(pretrained=False, aux_loss=False),
    "mobilenetv2_unet": dict(pretrained=False, decoder_channels=(32, 16, 16, 8)),
    "fc_densenet56": dict(first_channels=8, growth_rate=4),
    "fc_densenet67": dict(first_channels=8, growth_rate=4),
    "fc_densenet103": dict(first_channels=8, growth_rate=4),
    "densenet_unet": dict(pretrained=False, decoder_channels=(32, 16, 16, 8)),
    "pspnet": dict(pretrained=False, backbone="resnet18", head_channels=32),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape_at_odd_size_and_backward(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=5, **SMALL.get(name, {}))
    images = torch.randn(2, 3, 67, 93)  # odd on purpose: every pooling drops a row
    logits = model(images)
    assert logits.shape == (2, 5, 67, 93)
    assert logits.dtype == torch.float32
    logits.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


FROM_SCRATCH = ("unet", "fcn8s", "fcn8s_separable", "fc_densenet56", "fc_densenet67",
                "fc_densenet103")


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_has_one_signature(name, in_channels, one_thread):
    """pretrained=False and in_channels are accepted (and honoured) by every registered model."""
    torch.manual_seed(0)
    options = {key: value for key, value in SMALL.get(name, {}).items() if key != "pretrained"}
    model = build_model(name, num_classes=4, pretrained=False, in_channels=in_channels, **options)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, in_channels, 37, 45))
    assert logits.shape == (1, 4, 37, 45)
    assert model.weights_source.startswith("random initialisation")
    stems = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert stems[0].in_channels == in_channels


def test_every_builder_declares_pretrained_and_in_channels():
    import inspect

    for name, builder in MODELS.items():
        parameters = inspect.signature(builder).parameters
        assert {"pretrained", "in_channels"} <= set(parameters), name
        assert parameters["pretrained"].default is (name not in FROM_SCRATCH), name


@pytest.mark.parametrize("name", FROM_SCRATCH)
def test_from_scratch_models_refuse_pretrained_weights(name):
    with pytest.raises(ValueError, match=f"no pretrained weights for '{name}'"):
        build_model(name, num_classes=4, pretrained=True)


def test_pretrained_stem_is_adapted_not_rebuilt(no_network, monkeypatch):
    """A 1-channel model keeps the ImageNet stem, summed over R, G and B."""
    import torchvision

    torch.manual_seed(4)
    state = torchvision.models.mobilenet_v3_large().state_dict()
    folder = no_network / "weights"
    folder.mkdir()
    torch.save(state, folder / "mobilenet_v3_large-8738ca79.pth")
    monkeypatch.setenv("SEGTUT_WEIGHTS_DIR", str(folder))
    model = build_model("deeplabv3", num_classes=4, in_channels=1, aux_loss=False)
    stem = model.model.backbone["0"][0]
    assert stem.in_channels == 1
    assert torch.allclose(stem.weight, state["features.0.0.weight"].sum(1, keepdim=True))
    assert "adapted from 3 to 1 input channels" in model.weights_source


def test_unknown_model_lists_the_valid_choices():
    with pytest.raises(ValueError) as error:
        build_model("unte", num_classes=11)
    for name in MODELS:
        assert name in str(error.value)


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_unet_norm_variants(norm):
    model = UNet(num_classes=3, base_channels=8, depth=2, norm=norm, dropout=0.1)
    assert model(torch.randn(2, 3, 33, 47)).shape == (2, 3, 33, 47)


def test_unet_rejects_unknown_norm():
    with pytest.raises(ValueError, match="batch"):
        UNet(num_classes=3, norm="layer")


def test_unet_paper_size_has_31_million_parameters():
    # Ronneberger et al.'s configuration: 64 base channels, depth 4 (about 31.0 M parameters).
    assert 30.5e6 < count_parameters(UNet(num_classes=2, base_channels=64, depth=4)) < 31.5e6
