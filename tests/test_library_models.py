"""Library models (segtut.models.library): shapes at odd sizes, backward, and pretrained weights
found on disk or replaced by random initialisation offline. Nothing here touches the network."""

import pytest
import torch
import torchvision
from torch import nn

from segtut.losses import build_loss
from segtut.models import build_model
from segtut import weights
from segtut.models.library import AuxLoss, PadToMultiple, TorchvisionSegmentation

LIBRARY_MODELS = {
    "smp_unet": {},
    "smp_fpn": {},
    "smp_segformer": {},
    "deeplabv3": {},
    "deeplabv3 resnet50": dict(backbone="resnet50"),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def build(label: str, **options) -> nn.Module:
    return build_model(label.split()[0], num_classes=5, **{**LIBRARY_MODELS[label], **options})



@pytest.mark.parametrize("label", sorted(LIBRARY_MODELS))
def test_forward_at_odd_size_and_backward(label):
    torch.manual_seed(0)
    model = build(label, pretrained=False)
    images = torch.randn(2, 3, 67, 93)  # neither divisible by 32 nor by 8
    logits = model(images)
    assert logits.shape == (2, 5, 67, 93)
    assert logits.dtype == torch.float32
    logits.mean().backward()
    used = [p for name, p in model.named_parameters() if "aux_classifier" not in name]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in used)
    assert model.weights_source.startswith("random initialisation (pretrained=False)")
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 5, 64, 96)  # already divisible


@pytest.mark.parametrize("label", sorted(LIBRARY_MODELS))
def test_offline_falls_back_to_random_weights_and_says_so(label, no_network, monkeypatch):
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        model = build(label, pretrained=True)
    assert model.weights_source.startswith("random initialisation")
    assert "SEGTUT_OFFLINE=1" in model.weights_source
    assert model(torch.randn(2, 3, 67, 93)).shape == (2, 5, 67, 93)


def test_timm_encoder_offline_falls_back(no_network, monkeypatch):
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        model = build_model("smp_unet", num_classes=5, encoder_name="tu-resnet10t", pretrained=True)
    assert model.weights_source.startswith("random initialisation")
    assert model(torch.randn(2, 3, 67, 93)).shape == (2, 5, 67, 93)


def test_unreachable_server_falls_back_without_waiting(no_network):
    with pytest.warns(UserWarning, match="cannot reach huggingface.co"):
        model = build("smp_unet", pretrained=True)
    assert "cannot reach huggingface.co" in model.weights_source


def test_smp_encoder_weights_load_from_the_weights_dir(no_network, monkeypatch):
    from safetensors.torch import save_file
    import segmentation_models_pytorch as smp

    torch.manual_seed(1)
    state = smp.encoders.get_encoder("resnet18", weights=None).state_dict()
    state = {key: value.clone().contiguous() for key, value in state.items()}
    save_file(state, str(no_network / "resnet18.imagenet.safetensors"))
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(no_network))
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    model = build("smp_unet", pretrained=True)
    assert model.weights_source.startswith("ImageNet (resnet18 encoder), from ")
    assert "resnet18.imagenet.safetensors" in model.weights_source
    assert torch.equal(model.model.encoder.conv1.weight, state["conv1.weight"])


@pytest.mark.parametrize("place", ["weights dir", "torch cache"])
def test_torchvision_backbone_weights_load_from_disk(place, no_network, monkeypatch):
    import torchvision

    torch.manual_seed(2)
    state = torchvision.models.mobilenet_v3_large().state_dict()
    filename = "mobilenet_v3_large-8738ca79.pth"
    if place == "weights dir":
        folder = no_network / "weights"
        monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folder))
    else:
        folder = no_network / "torch-home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / filename)
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    model = build("deeplabv3", pretrained=True)
    assert model.weights_source.startswith("ImageNet (mobilenet_v3_large backbone), from ")
    # torchvision keeps MobileNetV3's "features" blocks as the backbone, without the prefix.
    assert torch.equal(model.model.backbone["0"][0].weight, state["features.0.0.weight"])
    assert torch.equal(model.model.backbone["16"][0].weight, state["features.16.0.weight"])
    # fine-tuning from ImageNet statistics keeps torchvision's slow BatchNorm average
    assert _batchnorm_momenta(model.model.backbone) == {0.01}


def _batchnorm_momenta(module):
    return {layer.momentum for layer in module.modules() if isinstance(layer, nn.BatchNorm2d)}


def test_random_deeplabv3_backbone_gets_default_batchnorm_momentum():
    # torchvision's MobileNetV3 uses momentum 0.01; from random weights that made evaluation-mode
    # predictions collapse to one class on CamVid, so the random path resets it to 0.1.
    assert _batchnorm_momenta(torchvision.models.mobilenet_v3_large().features) == {0.01}
    model = build("deeplabv3", pretrained=False)
    assert _batchnorm_momenta(model.model.backbone) == {0.1}
    assert "momentum 0.01 to 0.1" in model.weights_source


def test_pad_to_multiple_pads_and_crops_back():
    class NeedsMultipleOf32(nn.Module):
        def forward(self, images):
            assert images.shape[-2] % 32 == 0 and images.shape[-1] % 32 == 0
            return images[:, :2] * 2  # (N, 2, H', W'): position i keeps pixel i

    wrapped = PadToMultiple(NeedsMultipleOf32(), multiple=32)
    images = torch.randn(1, 3, 40, 50)
    assert torch.equal(wrapped(images), images[:, :2] * 2)  # cropped back exactly
    tiny = torch.randn(1, 3, 5, 7)  # the pad (27, 25) is larger than the image: replicate
    assert wrapped(tiny).shape == (1, 2, 5, 7)
    with pytest.raises(ValueError, match="reflect"):
        PadToMultiple(NeedsMultipleOf32(), mode="circular")


def test_aux_loss_adds_the_auxiliary_head_in_training_only():
    torch.manual_seed(0)
    model = build("deeplabv3", pretrained=False)
    assert isinstance(model, TorchvisionSegmentation)
    ce = build_loss("ce", ignore_index=4)
    loss_fn = AuxLoss(ce, model, aux_weight=0.4)
    images, masks = torch.randn(2, 3, 45, 61), torch.randint(0, 5, (2, 45, 61))

    model.train()
    torch.manual_seed(3)
    out, aux = model.forward_with_aux(images)
    expected = ce(out, masks) + 0.4 * ce(aux, masks)
    torch.manual_seed(3)  # same dropout masks
    logits = model(images)
    assert model.aux_logits is not None and model.aux_logits.shape == (2, 5, 45, 61)
    loss = loss_fn(logits, masks)
    assert torch.allclose(loss, expected)
    assert model.aux_logits is None  # used once
    loss.backward()
    aux_grads = [p.grad for p in model.model.aux_classifier.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in aux_grads)
    assert list(loss_fn.parameters()) == []  # the model is not a submodule of the loss

    model.eval()
    with torch.no_grad():
        logits = model(images)
        assert model.aux_logits is None  # the aux head is skipped at evaluation
        assert torch.allclose(loss_fn(logits, masks), ce(logits, masks))


def test_invalid_choices_are_explained():
    with pytest.raises(ValueError, match="mobilenet_v3_large"):
        build_model("deeplabv3", num_classes=5, backbone="vgg16", pretrained=False)
    with pytest.raises(ValueError, match="get_encoder_names"):
        build_model("smp_unet", num_classes=5, encoder_name="resnet19", pretrained=False)
    with pytest.raises(ValueError, match="pretrained=True/False"):
        build_model("smp_fpn", num_classes=5, encoder_weights="imagenet")


def test_deeplabv3_atrous_rates_are_applied_not_ignored():
    from segtut.models.library import torchvision_deeplabv3

    default = torchvision_deeplabv3(3, pretrained=False)
    small = torchvision_deeplabv3(3, pretrained=False, atrous_rates=(2, 4, 6))
    rates = [branch[0].dilation[0] for branch in small.model.classifier[0].convs[1:-1]]
    assert rates == [2, 4, 6]
    assert [b[0].dilation[0] for b in default.model.classifier[0].convs[1:-1]] == [12, 24, 36]
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in default.parameters())
    with pytest.raises(ValueError, match="positive"):
        torchvision_deeplabv3(3, pretrained=False, atrous_rates=(0, 4))
