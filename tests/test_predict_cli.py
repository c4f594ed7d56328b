"""python -m segtut.predict: the command line, run in-process through main(argv)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from segtut import inference
from segtut.models import build_model
from segtut.predict import main
from segtut.saved_model import save_model
from segtut.train import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = {"base_channels": 4, "depth": 2}


def tiny_unet():
    torch.manual_seed(0)
    return build_model("unet", 3, **OPTIONS).eval()


@pytest.fixture
def checkpoint(tmp_path):
    save_model(tmp_path / "model", tiny_unet(), architecture="unet", options=OPTIONS,
               class_names=["sky", "road", "car"], image_size=(16, 16))
    return tmp_path / "model"


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("first.png", (13, 19)), ("second.jpg", (20, 16))):
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(folder / name)
    return folder


def outputs(folder):
    return sorted(p.name for p in folder.iterdir())


EXPECTED = ["first_labels.png", "first_mask.png", "first_overlay.jpg",
            "second_labels.png", "second_mask.png", "second_overlay.jpg"]


def test_two_images_write_the_expected_files(checkpoint, images, tmp_path, capsys):
    status = main([str(checkpoint), str(images / "first.png"), str(images / "second.jpg"),
                   "--out", str(tmp_path / "out"), "--quiet"])
    assert status == 0
    assert outputs(tmp_path / "out") == EXPECTED
    assert "2 image(s) predicted" in capsys.readouterr().out
    labels = np.asarray(Image.open(tmp_path / "out" / "second_labels.png"))
    assert labels.shape == (20, 16) and labels.max() < 3


def test_a_folder_with_tiles_and_flip(checkpoint, images, tmp_path):
    status = main([str(checkpoint / "model.json"), str(images), "--out", str(tmp_path / "out"),
                   "--tile", "8", "8", "--flip", "--device", "cpu", "--quiet"])
    assert status == 0
    assert outputs(tmp_path / "out") == EXPECTED


def test_an_unreadable_image_is_named_and_the_others_still_predicted(checkpoint, images, tmp_path,
                                                                     capsys):
    (images / "broken.png").write_bytes(b"\x89PNG but not really")
    status = main([str(checkpoint), str(images), "--out", str(tmp_path / "out"), "--quiet"])
    assert status == 2
    error = capsys.readouterr().err
    assert "broken.png" in error and "Traceback" not in error
    assert outputs(tmp_path / "out") == EXPECTED


def test_a_checkpoint_with_another_number_of_classes(checkpoint, images, tmp_path, capsys):
    status = main([str(checkpoint), str(images), "--out", str(tmp_path / "out"),
                   "--num-classes", "11"])
    assert status == 2
    assert "predicts 3 classes" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_file_that_is_not_a_segtut_model(images, tmp_path, capsys):
    foreign = tmp_path / "weights.bin"
    foreign.write_bytes(bytes(range(1, 200)))
    assert main([str(foreign), str(images), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "weights.bin" in error and "not a segtut model" in error and "Traceback" not in error


def test_a_resume_checkpoint_needs_and_accepts_the_architecture(images, tmp_path, capsys):
    resume = save_checkpoint(tmp_path / "last.pt", tiny_unet())
    assert main([str(resume), str(images), "--out", str(tmp_path / "out")]) == 2
    assert "--architecture" in capsys.readouterr().err
    status = main([str(resume), str(images), "--out", str(tmp_path / "out"), "--quiet",
                   "--architecture", "unet", "--options", '{"base_channels": 4, "depth": 2}'])
    assert status == 0
    assert outputs(tmp_path / "out") == EXPECTED


def test_an_output_folder_blocked_by_a_file(checkpoint, images, tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    assert main([str(checkpoint), str(images), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "a file is in the way" in error and str(tmp_path / "out") in error


def test_an_output_folder_without_permission(checkpoint, images, tmp_path, capsys, monkeypatch):
    # Tests run as root, who may write anywhere: simulate the refusal.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "out"))

    monkeypatch.setattr(inference.tempfile, "NamedTemporaryFile", refuse)
    assert main([str(checkpoint), str(images), "--out", str(tmp_path / "out")]) == 2
    assert "permission denied" in capsys.readouterr().err


def test_help_runs_as_a_module():
    result = subprocess.run([sys.executable, "-m", "segtut.predict", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--tile" in result.stdout and "CHECKPOINT" in result.stdout.upper()
