"""segtut.saved_model: self-describing model files that load without unpickling anything."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segtut.models import build_model
from segtut.saved_model import (CARD_NAME, WEIGHTS_NAME, ModelFileError, SavedModel,
                                default_palette, load_model, read_card, save_model)
from segtut.train import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = {"base_channels": 4, "depth": 2}
NAMES = ["background", "horse", "rider"]


def tiny_unet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("unet", len(NAMES), **OPTIONS).eval()


def save_tiny(folder: Path, model=None, **overrides) -> Path:
    arguments = dict(architecture="unet", options=OPTIONS, class_names=NAMES, image_size=(32, 48))
    arguments.update(overrides)
    return save_model(folder, model if model is not None else tiny_unet(), **arguments)


@pytest.fixture
def saved(tmp_path) -> Path:
    save_tiny(tmp_path / "model")
    return tmp_path / "model"


def edit_card(folder: Path, **changes) -> None:
    card = json.loads((folder / CARD_NAME).read_text())
    card.update(changes)
    (folder / CARD_NAME).write_text(json.dumps(card))


def test_round_trip_gives_identical_logits_and_a_complete_card(tmp_path):
    model = tiny_unet()
    # BatchNorm running statistics must travel too: change them away from their initial values.
    model.train()
    model(torch.randn(2, 3, 16, 16))
    model.eval()
    card_path = save_tiny(tmp_path / "m", model, metrics={"val_mean_iou": torch.tensor(0.5),
                                                          "iou": [0.25, float("nan")]})
    assert card_path == tmp_path / "m" / CARD_NAME
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [CARD_NAME, WEIGHTS_NAME]

    loaded, card = load_model(tmp_path / "m")
    images = torch.randn(1, 3, 37, 53)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    assert not loaded.training
    assert card.architecture == "unet" and card.options == OPTIONS
    assert card.num_classes == 3 and card.class_names == NAMES
    assert len(card.palette) == 4 and card.palette[-1] == [0, 0, 0]
    assert card.image_size == [32, 48] and card.input_size is None
    assert card.pad_multiple == 4  # two poolings
    assert card.mean == pytest.approx([0.485, 0.456, 0.406])
    assert card.metrics == {"val_mean_iou": 0.5, "iou": [0.25, None]}  # NaN -> null
    assert set(card.versions) >= {"segtut", "torch", "torchvision"}
    # The card is plain JSON, readable by anything.
    raw = json.loads(card_path.read_text())
    assert raw["format"] == "segtut-model" and len(raw["weights_sha256"]) == 64


def test_the_folder_the_card_and_the_weights_file_all_load(saved):
    reference = load_model(saved)
    images = torch.randn(1, 3, 20, 20)
    for path in (saved / CARD_NAME, saved / WEIGHTS_NAME, str(saved)):
        result = load_model(path)
        assert isinstance(result, SavedModel)
        with torch.no_grad():
            assert torch.equal(result.model(images), reference.model(images))


def test_save_refuses_a_card_that_does_not_rebuild_the_model(tmp_path):
    with pytest.raises(ModelFileError, match="does not rebuild"):
        save_tiny(tmp_path / "m", options={"base_channels": 8, "depth": 2})
    with pytest.raises(ModelFileError, match="does not rebuild"):
        save_tiny(tmp_path / "m", class_names=["one", "two"])  # 2 names, 3 output channels
    assert not (tmp_path / "m" / CARD_NAME).exists()


def test_palette_defaults_and_checks(tmp_path):
    assert save_tiny(tmp_path / "a", palette=[(1, 2, 3), (4, 5, 6), (7, 8, 9)]).exists()
    assert read_card(tmp_path / "a" / CARD_NAME).palette[-1] == [0, 0, 0]  # void appended
    with pytest.raises(ValueError, match="palette"):
        save_tiny(tmp_path / "b", palette=[(1, 2, 3)])
    colours = default_palette(30)
    assert len(colours) == 31 and len({tuple(c) for c in colours}) == 31


def test_tampered_weights_fail_the_checksum(saved):
    weights = saved / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256") as error:
        load_model(saved)
    assert str(weights) in str(error.value)


def test_truncated_weights_fail(saved):
    weights = saved / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_model(saved)
    # Without the card (bare safetensors + architecture) safetensors itself notices.
    (saved / CARD_NAME).unlink()
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(weights, architecture="unet", options=OPTIONS)


def test_empty_file_fails(tmp_path):
    empty = tmp_path / "model.pt"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty") as error:
        load_model(empty)
    assert str(empty) in str(error.value)


def test_foreign_binary_file_fails(tmp_path):
    foreign = tmp_path / "weights.bin"
    foreign.write_bytes(bytes(range(7, 256)) * 4)
    with pytest.raises(ModelFileError, match="not a segtut model"):
        load_model(foreign)


def test_json_that_is_not_a_card_fails(tmp_path):
    other = tmp_path / "config.json"
    other.write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelFileError, match="not a segtut model card"):
        load_model(other)


def test_a_pickle_is_never_unpickled_without_being_asked(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "last.pt", tiny_unet())
    with pytest.raises(ModelFileError, match="architecture="):
        load_model(checkpoint)


class _Payload:
    """Unpickling this would create a file: the test checks it never happens."""

    marker = None

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_with_code_is_refused_and_its_code_never_runs(tmp_path):
    payload = _Payload()
    payload.marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": payload}, evil)
    with pytest.raises(ModelFileError, match="weights_only"):
        load_model(evil, architecture="unet", options=OPTIONS)
    assert not payload.marker.exists()


def test_unknown_architecture_fails_and_lists_the_choices(saved):
    edit_card(saved, architecture="transformer9000")
    with pytest.raises(ModelFileError, match="Unknown model 'transformer9000'.*unet"):
        load_model(saved)


def test_weights_that_do_not_fit_the_architecture_fail(saved):
    edit_card(saved, options={"base_channels": 8, "depth": 2})
    with pytest.raises(ModelFileError, match="do not fit unet") as error:
        load_model(saved)
    assert str(saved / WEIGHTS_NAME) in str(error.value)


def test_a_card_from_a_newer_segtut_or_cut_short_is_refused(saved):
    edit_card(saved, format_version=99)
    with pytest.raises(ModelFileError, match="Update segtut"):
        load_model(saved)
    (saved / CARD_NAME).write_text('{"format": "segtut-model", "format_ver')
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(saved)


def test_missing_weights_or_card_are_named(saved, tmp_path):
    (saved / WEIGHTS_NAME).unlink()
    with pytest.raises(ModelFileError, match="weights file named by the card is missing"):
        load_model(saved)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ModelFileError, match=f"no {CARD_NAME}"):
        load_model(tmp_path / "nothing")
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nowhere.json")


def test_a_resume_checkpoint_loads_with_architecture_and_options(tmp_path):
    model = tiny_unet(seed=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint = save_checkpoint(tmp_path / "last.pt", model, optimizer, epoch=4)
    loaded, card = load_model(checkpoint, architecture="unet", options=OPTIONS)
    images = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    assert card.num_classes == 3 and card.class_names == ["class 0", "class 1", "class 2"]
    assert card.pad_multiple == 4
    # The same checkpoint with the wrong options names the file and what to do.
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model(checkpoint, architecture="unet", options={"base_channels": 4, "depth": 3})


def test_segtut_load_model_is_lazy():
    import segtut
    from segtut.saved_model import load_model as real

    assert segtut.load_model is real
    with pytest.raises(AttributeError, match="no attribute 'load_modle'"):
        segtut.load_modle  # noqa: B018 - a typo still fails as usual
    # ... and ``import segtut`` alone still imports no torch.
    code = "import sys, segtut; assert 'torch' not in sys.modules, 'import segtut imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
