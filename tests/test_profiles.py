"""Run profiles: names, the synthetic fallback of the smoke profile, and the run card."""

import pytest
import torch

import segtut.download as download
from segtut.data import CamVid
from segtut.download import DataError
from segtut.profiles import camvid_for_profile, load_camvid_splits, resolve_profile, run_card
from segtut.synthetic import describe_source
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
    splits = load_camvid_splits("smoke", *transforms(), data_dir=tmp_path, log=lines.append)
    assert splits.synthetic and "SYNTHETIC" in splits.source
    assert any("SYNTHETIC DATA" in line for line in lines)
    image, mask = splits.train[0]
    assert image.shape == (3, 32, 48) and mask.dtype == torch.int64
    assert describe_source(splits.val).startswith("SYNTHETIC")  # the datasets say so too


def test_cpu_profile_never_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    with pytest.raises(DataError):
        load_camvid_splits("cpu", *transforms(), data_dir=tmp_path, log=lambda line: None)


def test_real_camvid_with_limits(camvid_dir):
    splits = load_camvid_splits("smoke", *transforms(), train_images=3, eval_images=2,
                                data_dir=camvid_dir.parent, log=lambda line: None)
    assert not splits.synthetic and "real CamVid" in splits.source
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 2, 2)
    image, mask = splits.val[0]
    assert image.shape == (3, 32, 48) and mask.shape == (360, 480)  # labels stay native


def banner(lines, root):
    """The banner with its one run-specific part, the scratch folder, made generic."""
    return [line.replace(str(root), "<scratch>") for line in lines]


def test_one_smoke_fallback_for_every_loader(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "urlopen", None)  # smoke never downloads, even when online
    monkeypatch.delenv("SEGTUT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    data = tmp_path / "empty"
    direct, through_splits = [], []
    folder = camvid_for_profile("smoke", data, train_images=3, eval_images=2,
                                scratch=tmp_path / "a", log=direct.append)
    splits = load_camvid_splits("smoke", *transforms(), train_images=3, eval_images=2,
                                data_dir=data, scratch=tmp_path / "b", log=through_splits.append)
    assert folder.synthetic and folder.root == tmp_path / "a"
    assert banner(direct, tmp_path / "a") == banner(through_splits, tmp_path / "b")
    assert any("SYNTHETIC DATA" in line and str(data / "camvid") in line for line in direct)
    assert folder.source == splits.source and "NOT CamVid" in folder.source
    # A CamVid-like folder, so chapters 1 and 2 read it exactly as real CamVid.
    train = CamVid(folder.root, "train")
    assert train.is_synthetic and len(train) == 3 and len(CamVid(folder.root, "test")) == 2
    image, mask = train.load(0)
    assert image.shape == (3, 96, 128) and mask.shape == (96, 128)  # CamVid's 3:4 shape
    assert len(splits.train) == 3 and len(splits.val) == 2
    try:
        from segtut.fastai_adapter import camvid_folder
    except ImportError:
        return
    through_fastai = []
    assert camvid_folder("smoke", data, train_images=3, eval_images=2, scratch=tmp_path / "c",
                         log=through_fastai.append).synthetic
    assert banner(through_fastai, tmp_path / "c") == banner(direct, tmp_path / "a")


@pytest.mark.parametrize("problem", ["incomplete", "camvid folder", "file"])
def test_smoke_falls_back_only_when_camvid_is_missing(tmp_path, monkeypatch, problem):
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    data = tmp_path / "data"
    if problem == "incomplete":
        (data / "camvid" / "train").mkdir(parents=True)
    elif problem == "camvid folder":
        (data / "trainannot").mkdir(parents=True)
    else:
        data.write_text("a file")
    with pytest.raises(DataError):
        camvid_for_profile("smoke", data, log=lambda line: pytest.fail(line))


def test_data_root_is_gone_with_a_message(tmp_path):
    with pytest.raises(TypeError, match=f"data_dir.*{tmp_path}"):
        load_camvid_splits("smoke", *transforms(), data_root=tmp_path / "camvid")


def test_run_card_records_the_run():
    card = run_card("cpu", {"epochs": 3}, source="real CamVid", device=torch.device("cpu"), seed=5,
                    model=torch.nn.Linear(2, 3), pretrained="none")
    for text in ("profile      cpu", "real CamVid", "seed         5", "epochs", "torch", "Linear"):
        assert text in card
