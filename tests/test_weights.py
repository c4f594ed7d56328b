"""segtut.weights: one offline rule, one weight finder, no downloads in tests."""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from segtut import weights


class FakeWeights:
    """Looks like a torchvision ``WeightsEnum`` member: only ``url`` is used."""

    url = "https://download.pytorch.org/models/fake_net-0123abcd.pth"


def test_weights_module_needs_only_torch_and_the_standard_library():
    code = ("import sys, segtut.weights; "
            "heavy = [m for m in ('torchvision', 'segmentation_models_pytorch', 'fastai', "
            "'huggingface_hub', 'timm') if m in sys.modules]; print(heavy)")
    src = Path(weights.__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(src), "PATH": ""}, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_every_on_value_blocks_downloads(value, no_network, monkeypatch):
    monkeypatch.setenv("SEGTUT_OFFLINE", value)
    assert weights.download_blocked("download.pytorch.org") == f"SEGTUT_OFFLINE={value} is set"
    with pytest.raises(weights.WeightsUnavailable, match=f"SEGTUT_OFFLINE={value}"):
        weights.torchvision_state(FakeWeights())


def test_a_typo_in_the_offline_switch_is_an_error_not_online(no_network, monkeypatch):
    # The old rule of segtut.models.library read "ture" as "online" and went to the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "ture")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        weights.download_blocked("huggingface.co")


def test_torchvision_state_prefers_the_weights_dir(no_network, monkeypatch):
    folder = no_network / "w"
    folder.mkdir()
    torch.save({"x": torch.ones(2)}, folder / "fake_net-0123abcd.pth")
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folder))
    state, where = weights.torchvision_state(FakeWeights())
    assert torch.equal(state["x"], torch.ones(2)) and str(folder) in where


def test_torchvision_file_uses_the_cache_and_never_downloads_offline(no_network, monkeypatch):
    path = weights.torchvision_cache_path(FakeWeights())
    assert path == no_network / "torch-home" / "hub" / "checkpoints" / "fake_net-0123abcd.pth"
    with pytest.raises(weights.WeightsUnavailable, match="cannot reach download.pytorch.org"):
        weights.torchvision_file(FakeWeights())  # unreachable (no_network): no download tried
    with pytest.raises(weights.WeightsUnavailable, match="download=False"):
        weights.torchvision_file(FakeWeights(), download=False)
    path.parent.mkdir(parents=True)
    torch.save({}, path)
    assert weights.torchvision_file(FakeWeights())[0] == path


def test_load_pretrained_warns_and_keeps_random_weights(no_network):
    def fetch():
        raise weights.WeightsUnavailable("SEGTUT_OFFLINE=1 is set; not found")

    applied = []
    with pytest.warns(UserWarning, match="RANDOM initialisation"):
        source = weights.load_pretrained("ImageNet (toy)", fetch, applied.append)
    assert applied == []
    assert source == ("random initialisation (ImageNet (toy) weights unavailable offline: "
                      "SEGTUT_OFFLINE=1 is set; not found)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        source = weights.load_pretrained("ImageNet (toy)", lambda: ({"a": 1}, "from disk"),
                                         applied.append)
    assert applied == [{"a": 1}] and source == "ImageNet (toy), from disk"


def test_adapt_input_channels_keeps_what_the_rgb_filters_see():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1))
    rgb_stem = model[0]
    grey = torch.rand(2, 1, 5, 6)
    expected = rgb_stem(grey.expand(-1, 3, -1, -1))  # a grey image given as RGB
    assert weights.adapt_input_channels(model, 3) is None and model[0] is rgb_stem
    assert "0" in weights.adapt_input_channels(model, 1)
    assert model[0].in_channels == 1 and model[2].in_channels == 4  # only the stem changed
    assert torch.allclose(model[0](grey), expected, atol=1e-6)
    five = nn.Sequential(nn.Conv2d(3, 4, 3))
    weights.adapt_input_channels(five, 5)
    assert five[0].weight.shape == (4, 5, 3, 3)
    with pytest.raises(ValueError, match="no 3-channel"):
        weights.adapt_input_channels(nn.Sequential(nn.Conv2d(2, 4, 3)), 1)
