"""FC-DenseNet (Jégou et al., 2017) and the DenseNet-encoder U-Net: sizes, shapes, weights."""

import ast
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from segtut.models import build_model, count_parameters
from segtut.models.fc_densenet import (
    DENSENET_BACKBONES, FC_DENSENET_CONFIGS, DenseBlock, FCDenseNet, TransitionUp,
    densenet_features_state, densenet_unet, fc_densenet56, fc_densenet67, fc_densenet103,
)

BUILDERS = {"fc_densenet56": fc_densenet56, "fc_densenet67": fc_densenet67,
            "fc_densenet103": fc_densenet103}


def expected_parameters(num_classes, growth_rate, down_layers, bottleneck_layers,
                        first_channels=48, in_channels=3, batchnorm_statistics=False):
    """The parameter count from the paper's description alone, layer by layer.

    Dense layer on c channels: BN (2c, or 4c with the running statistics) + 3x3 conv c -> k
    with bias. Transition down on c: BN + 1x1 conv c -> c with bias. Transition up on c:
    3x3 transposed conv c -> c with bias.
    """
    bn = 4 if batchnorm_statistics else 2
    k = growth_rate
    total = 9 * in_channels * first_channels + first_channels  # first conv

    def block(channels, layers):
        return sum(bn * (channels + i * k) + 9 * (channels + i * k) * k + k for i in range(layers))

    channels, skips = first_channels, []
    for layers in down_layers:
        total += block(channels, layers)
        channels += layers * k
        skips.append(channels)
        total += bn * channels + channels * channels + channels  # transition down
    total += block(channels, bottleneck_layers)
    upsampled = bottleneck_layers * k
    for layers in reversed(down_layers):
        total += 9 * upsampled * upsampled + upsampled  # transition up
        channels = upsampled + skips.pop()
        total += block(channels, layers)
        upsampled = layers * k
    channels += upsampled  # the last block keeps its input
    return total + channels * num_classes + num_classes  # 1x1 classifier


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_parameter_count_follows_the_paper_description(name):
    model = BUILDERS[name](num_classes=11)
    assert count_parameters(model) == expected_parameters(11, **FC_DENSENET_CONFIGS[name])


@pytest.mark.parametrize("name, paper_millions, tolerance", [
    ("fc_densenet56", 1.5, 0.08),  # 1.40 M: the paper's 1.5 M is 7% higher (rounded up?)
    ("fc_densenet67", 3.5, 0.01),  # 3.50 M
    ("fc_densenet103", 9.4, 0.01),  # 9.43 M
])
def test_parameter_count_matches_the_paper(name, paper_millions, tolerance):
    # The authors' code counts every Lasagne parameter, BatchNorm's running mean and inverse
    # standard deviation included; with those, 67 and 103 agree with the paper to 1%.
    model = BUILDERS[name](num_classes=11)
    statistics = sum(2 * m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    counted = count_parameters(model) + statistics
    assert counted == expected_parameters(11, **FC_DENSENET_CONFIGS[name], batchnorm_statistics=True)
    assert abs(counted / 1e6 - paper_millions) / paper_millions < tolerance


@pytest.mark.parametrize("name, layers", [("fc_densenet56", 56), ("fc_densenet67", 67),
                                          ("fc_densenet103", 103)])
def test_the_name_is_the_number_of_convolutions(name, layers):
    model = BUILDERS[name](num_classes=11)
    convolutions = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convolutions) == layers


def test_fc_densenet103_channels_match_the_paper_table():
    # Table 2 of the paper, with the authors' correction of the upsampling path (README of
    # their code: add 16 to every m from the bottleneck on; 578 is a typo for 576).
    model = fc_densenet103(num_classes=11)
    assert [b.out_channels for b in model.down_blocks] == [112, 192, 304, 464, 656]
    assert model.bottleneck.out_channels == 240  # only the 15 x 16 new maps go up
    stacks = [block.layers[0][0].num_features + len(block.layers) * 16 for block in model.up_blocks]
    assert 656 + 240 == 896
    assert stacks == [1088, 816, 576, 384, 256]
    assert model.head.in_channels == 256


@pytest.mark.parametrize("size", [(67, 93), (32, 32), (97, 131), (64, 96)])
def test_output_has_the_input_size(size):
    torch.manual_seed(0)
    model = fc_densenet56(num_classes=5, first_channels=8, growth_rate=4).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, *size))
    assert logits.shape == (1, 5, *size) and logits.dtype == torch.float32


@pytest.mark.parametrize("height", [4, 5])
def test_transition_up_crops_to_the_skip_for_even_and_odd_sizes(height):
    up = TransitionUp(channels=3)
    x = torch.randn(1, 3, height // 2, height // 2)
    skip = torch.randn(1, 2, height, height)
    out = up(x, skip)
    assert out.shape == (1, 5, height, height)
    assert torch.equal(out[:, 3:], skip)  # upsampled maps first, then the skip


def test_dense_block_keeps_or_drops_its_input():
    x = torch.randn(2, 6, 9, 11)
    kept = DenseBlock(6, num_layers=3, growth_rate=4, dropout=0.0).eval()
    assert kept.out_channels == 6 + 12
    out = kept(x)
    assert out.shape == (2, 18, 9, 11) and torch.equal(out[:, :6], x)
    dropped = DenseBlock(6, num_layers=3, growth_rate=4, dropout=0.0, keep_input=False).eval()
    dropped.load_state_dict(kept.state_dict())
    assert dropped.out_channels == 12 and torch.equal(dropped(x), out[:, 6:])


def test_dense_layers_see_every_earlier_map():
    block = DenseBlock(5, num_layers=4, growth_rate=3)
    assert [layer[0].num_features for layer in block.layers] == [5, 8, 11, 14]


def test_he_uniform_initialisation():
    torch.manual_seed(0)
    model = fc_densenet56(num_classes=11)
    conv = model.down_blocks[2].layers[3][2]  # a 3x3 conv on 168 channels
    fan_in = conv.weight[0].numel()
    bound = math.sqrt(6 / fan_in)  # HeUniform(gain="relu")
    assert conv.weight.abs().max() <= bound
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    assert all(torch.count_nonzero(m.bias) == 0 for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))


def test_up_layers_must_match_the_poolings():
    with pytest.raises(ValueError, match="one entry per pooling"):
        FCDenseNet(num_classes=3, down_layers=(2, 2), up_layers=(2,))


def test_registered_builders_accept_overrides():
    model = build_model("fc_densenet103", num_classes=4, growth_rate=4, first_channels=8, dropout=0.0)
    assert model.head.out_channels == 4
    assert all(not isinstance(m, nn.Dropout) or m.p == 0.0 for m in model.modules())


def test_module_imports_only_torch_at_the_top():
    # The file is meant to be copied: torchvision and segtut are imported inside densenet_unet.
    path = Path(__file__).resolve().parents[1] / "src" / "segtut" / "models" / "fc_densenet.py"
    tree = ast.parse(path.read_text())
    modules = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module.split(".")[0])
    assert modules <= {"__future__", "re", "torch"}


# --- DenseNet encoder + light decoder --------------------------------------------------------

@pytest.mark.parametrize("backbone, deep_channels", [
    ("densenet121", (256, 512, 1024, 1024)),
    ("densenet169", (256, 512, 1280, 1664)),
    ("densenet201", (256, 512, 1792, 1920)),
])
def test_densenet_skips_at_strides_4_to_32(backbone, deep_channels):
    model = densenet_unet(num_classes=3, backbone=backbone, pretrained=False).eval()
    with torch.no_grad():
        skips = model.encode(torch.randn(1, 3, 128, 160))
        logits = model(torch.randn(1, 3, 67, 93))
    assert [s.shape[1] for s in skips] == list(deep_channels)
    assert [tuple(s.shape[-2:]) for s in skips] == [(32, 40), (16, 20), (8, 10), (4, 5)]
    assert logits.shape == (1, 3, 67, 93)
    assert model.weights_source == "random initialisation (pretrained=False)"


def test_unknown_backbone_lists_the_valid_choices():
    with pytest.raises(ValueError) as error:
        densenet_unet(num_classes=3, backbone="densenet161")
    for name in DENSENET_BACKBONES:
        assert name in str(error.value)


def test_offline_pretrained_falls_back_to_random_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    monkeypatch.delenv("SEGTUT_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        model = densenet_unet(num_classes=3, pretrained=True)
    assert model.weights_source.startswith("random initialisation")
    assert "SEGTUT_OFFLINE" in model.weights_source


def _old_style_keys(state: dict) -> dict:
    """A file like torchvision's published DenseNets: ``norm.1`` for ``norm1``, and no
    ``num_batches_tracked`` (the files predate it)."""
    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key): value
            for key, value in state.items() if not key.endswith("num_batches_tracked")}


def test_pretrained_weights_load_from_the_weights_dir(monkeypatch, tmp_path):
    import torchvision.models as models

    torch.manual_seed(1)
    reference = models.densenet121(weights=None)
    filename = Path(models.DenseNet121_Weights.IMAGENET1K_V1.url).name
    published = _old_style_keys(reference.state_dict())
    assert "features.denseblock1.denselayer1.norm.1.weight" in published
    torch.save(published, tmp_path / filename)
    monkeypatch.setenv("SEGTUT_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        model = densenet_unet(num_classes=3, backbone="densenet121", pretrained=True)
    assert str(tmp_path) in model.weights_source
    for key, value in reference.features.state_dict().items():
        assert torch.equal(model.features.state_dict()[key], value), key


def test_features_state_drops_the_classifier_and_renames_old_keys():
    state = {"features.denseblock2.denselayer3.conv.2.weight": 1,
             "features.norm5.running_mean": 2, "classifier.weight": 3}
    assert densenet_features_state(state) == {"denseblock2.denselayer3.conv2.weight": 1,
                                              "norm5.running_mean": 2}
