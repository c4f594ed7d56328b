"""Run profiles: names, the synthetic fallback of the smoke profile, and the run card."""

import pytest
import torch

from segtut.download import DataError
from segtut.profiles import load_camvid_splits, resolve_profile, run_card
from segtut.transforms import EvalTransform, train_transforms


def test_resolve_profile(monkeypatch):
    monkeypatch.delenv("SEGTUT_PROFILE", raising=False)
    assert resolve_profile(None) == ("gpu" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("SEGTUT_PROFILE", "smoke")
    assert resolve_profile(None) == "smoke"
    assert resolve_profile("CPU") == "cpu"
    with pytest.raises(ValueError, match="smoke, cpu, gpu"):
        resolve_profile("fast")


def transforms():
    return train_transforms((32, 48), ignore_index=11), EvalTransform((32, 48))


def test_smoke_profile_falls_back_to_synthetic_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    lines = []
    splits = load_camvid_splits("smoke", *transforms(), data_root=tmp_path, log=lines.append)
    assert splits.synthetic and "SYNTHETIC" in splits.source
    assert any("SYNTHETIC DATA" in line for line in lines)
    image, mask = splits.train[0]
    assert image.shape == (3, 32, 48) and mask.dtype == torch.int64


def test_cpu_profile_never_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    with pytest.raises(DataError):
        load_camvid_splits("cpu", *transforms(), data_root=tmp_path, log=lambda line: None)


def test_real_camvid_with_limits(camvid_dir):
    splits = load_camvid_splits("smoke", *transforms(), train_images=3, eval_images=2,
                                data_root=camvid_dir, log=lambda line: None)
    assert not splits.synthetic and "real CamVid" in splits.source
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 2, 2)
    image, mask = splits.val[0]
    assert image.shape == (3, 32, 48) and mask.shape == (360, 480)  # labels stay native


def test_run_card_records_the_run():
    card = run_card("cpu", {"epochs": 3}, source="real CamVid", device=torch.device("cpu"), seed=5,
                    model=torch.nn.Linear(2, 3), pretrained="none")
    for text in ("profile      cpu", "real CamVid", "seed         5", "epochs", "torch", "Linear"):
        assert text in card
