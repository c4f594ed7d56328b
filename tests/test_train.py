"""The training loop: it can learn, it evaluates at native size, and it resumes exactly."""

import math
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from segtut.losses import build_loss
from segtut.models import build_model
from segtut.train import (CheckpointError, LabelWarning, evaluate, fit, load_checkpoint,
                          one_cycle_schedule, poly_schedule, predict, save_checkpoint,
                          train_one_epoch)

IGNORE = 3
CPU = torch.device("cpu")


def toy_data(count=8, size=(24, 32), seed=0):
    """Images whose red channel tells the class of each pixel: learnable in a few steps."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 3, (count, size[0] // 4, size[1] // 4), generator=generator)
    masks = masks.repeat_interleave(4, 1).repeat_interleave(4, 2)  # (N, H, W) blocks of 4x4
    masks[:, 0, :] = IGNORE  # a void row
    images = torch.randn(count, 3, *size, generator=generator) * 0.1
    images[:, 0] += masks.clamp(max=2).float() - 1.0  # (N, 3, H, W)
    return TensorDataset(images, masks)


def small_unet():
    return build_model("unet", num_classes=3, base_channels=4, depth=2)


def test_overfits_one_batch():
    torch.manual_seed(0)
    data = toy_data(4)
    loader = DataLoader(data, batch_size=4)
    model = build_model("unet", num_classes=3, base_channels=8, depth=2)
    loss_fn = build_loss("ce", ignore_index=IGNORE)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = train_one_epoch(model, loader, loss_fn, optimizer, CPU, progress=False)["loss"]
    for _ in range(60):
        last = train_one_epoch(model, loader, loss_fn, optimizer, CPU, progress=False)["loss"]
    assert last < 0.05 < first
    result = evaluate(model, loader, CPU, num_classes=3, ignore_index=IGNORE, progress=False)
    assert result["mean_iou"] > 0.95


def test_evaluate_upsamples_logits_to_the_label_size():
    images = torch.randn(2, 3, 16, 16)
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    model = small_unet()
    logits = predict(model, images, size=(32, 32))
    assert logits.shape == (2, 3, 32, 32)
    loader = DataLoader(TensorDataset(images, masks), batch_size=2)
    with pytest.warns(LabelWarning, match="class 1, class 2"):  # the masks are all class 0
        result = evaluate(model, loader, CPU, num_classes=3, ignore_index=IGNORE, progress=False)
    assert sum(map(sum, result["confusion"])) == 2 * 32 * 32  # counted at 32x32, not 16x16


def test_torchvision_style_dict_outputs_are_accepted():
    class DictModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = small_unet()

        def forward(self, x):
            return {"out": self.inner(x), "aux": self.inner(x)}

    logits = predict(DictModel(), torch.randn(1, 3, 8, 8))
    assert logits.shape == (1, 3, 8, 8)


def run(epochs, checkpoint, resume):
    torch.manual_seed(123)  # same initial weights in every run
    model = small_unet()
    data = toy_data(12)
    train_loader = DataLoader(data, batch_size=4, shuffle=True)
    val_loader = DataLoader(toy_data(4, seed=1), batch_size=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    scheduler = one_cycle_schedule(optimizer, total_steps=3 * len(train_loader), max_lr=5e-3)
    history = fit(model, train_loader, val_loader, loss_fn=build_loss("ce", ignore_index=IGNORE),
                  optimizer=optimizer, scheduler=scheduler, epochs=epochs, device=CPU, seed=7,
                  num_classes=3, ignore_index=IGNORE, checkpoint_path=checkpoint, resume=resume,
                  progress=False, log=None)
    return model, optimizer, history


def test_resume_is_exact(tmp_path):
    straight, _, straight_history = run(3, tmp_path / "straight.pt", resume=False)
    run(2, tmp_path / "interrupted.pt", resume=False)  # "killed" after 2 epochs
    resumed, _, resumed_history = run(3, tmp_path / "interrupted.pt", resume=True)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert [h["val_mean_iou"] for h in straight_history] == [h["val_mean_iou"] for h in resumed_history]
    assert len(resumed_history) == 3


def test_checkpoint_round_trip_and_weights_only(tmp_path):
    model, optimizer, history = run(1, tmp_path / "c.pt", resume=False)
    fresh = small_unet()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1.0)
    state = load_checkpoint(tmp_path / "c.pt", fresh, fresh_optimizer)
    assert state["epoch"] == 1 and state["history"] == history
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    # A checkpoint holding arbitrary Python objects is refused by weights_only loading.
    torch.save({"model": {}, "evil": object()}, tmp_path / "bad.pt")
    with pytest.raises(Exception):
        load_checkpoint(tmp_path / "bad.pt", fresh)
    assert not (tmp_path / "c.pt.tmp").exists()


def test_time_budget_stops_early(tmp_path):
    torch.manual_seed(0)
    model = small_unet()
    loader = DataLoader(toy_data(4), batch_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = fit(model, loader, loader, loss_fn=build_loss("ce", ignore_index=IGNORE),
                  optimizer=optimizer, epochs=50, device=CPU, seed=0, num_classes=3,
                  ignore_index=IGNORE, time_budget_s=0.0, progress=False, log=None)
    assert len(history) == 1


def test_schedules():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    poly = poly_schedule(optimizer, total_steps=10, power=1.0, warmup_steps=2)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        poly.step()
    assert rates[0] == pytest.approx(0.5) and rates[1] == pytest.approx(1.0)
    assert rates[2] == pytest.approx(0.8) and rates[-1] == pytest.approx(0.1)


def test_diverging_loss_raises():
    model = small_unet()
    loader = DataLoader(toy_data(4), batch_size=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e30)
    with pytest.raises(FloatingPointError, match="learning rate"):
        for _ in range(5):
            train_one_epoch(model, loader, build_loss("ce", ignore_index=IGNORE), optimizer, CPU,
                            progress=False)


# ---------------------------------------------------------------------------------------------
# Loud rather than silent: void batches, suspicious labels, unusable checkpoints
# ---------------------------------------------------------------------------------------------

def test_an_all_void_batch_is_skipped_with_one_warning_not_a_divergence():
    torch.manual_seed(0)
    data = toy_data(4)
    images, masks = data.tensors
    masks = masks.clone()
    masks[:2] = IGNORE  # the first batch of two images is all void
    loader = DataLoader(TensorDataset(images, masks), batch_size=2)
    model = small_unet()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(LabelWarning, match="1 training batch.*ignore label 3"):
        result = train_one_epoch(model, loader, build_loss("ce", ignore_index=IGNORE), optimizer,
                                 CPU, progress=False, max_steps=1)
    assert result["skipped_batches"] == 1 and result["steps"] == 1
    assert math.isfinite(result["loss"]) and result["loss"] > 0  # the labelled batch's loss
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fit_warns_once_about_void_batches_and_missing_classes(tmp_path):
    torch.manual_seed(0)
    images, masks = toy_data(4).tensors
    masks = masks.clone()
    masks[:1] = IGNORE
    train_loader = DataLoader(TensorDataset(images, masks), batch_size=1)
    val_masks = masks.clone()
    val_masks[val_masks == 2] = IGNORE  # class 2 never occurs in the validation targets
    val_loader = DataLoader(TensorDataset(images, val_masks), batch_size=4)
    model = small_unet()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model, train_loader, val_loader, loss_fn=build_loss("ce", ignore_index=IGNORE),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.01), epochs=2, device=CPU,
            seed=0, num_classes=3, ignore_index=IGNORE, progress=False, log=None,
            class_names=["road", "car", "tree"], max_steps_per_epoch=1)
    messages = [str(w.message) for w in caught if issubclass(w.category, LabelWarning)]
    assert len([m for m in messages if "skipped" in m]) == 1  # once per fit, not per epoch
    absent = [m for m in messages if "never occur" in m]
    assert len(absent) == 1 and "'tree' (2)" in absent[0]


def test_a_binary_mask_mapped_to_void_is_reported_not_scored_perfect():
    # 0/255 masks with 255 mapped to the ignore label: only background is left, and a model
    # predicting background everywhere scored mean IoU 1.0 with IoU [1.0, nan] in silence.
    masks = torch.full((2, 8, 8), IGNORE)
    masks[:, :2] = 0  # a quarter background, the rest (the former foreground) void
    images = torch.zeros(2, 3, 8, 8)

    class Background(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 2, *x.shape[-2:])
            logits[:, 0] = 1.0
            return logits

    loader = DataLoader(TensorDataset(images, masks), batch_size=2)
    with pytest.warns(LabelWarning) as caught:
        result = evaluate(Background(), loader, CPU, num_classes=2, ignore_index=IGNORE,
                          progress=False)
    assert result["mean_iou"] == 1.0 and result["ignored_pixels"] == 2 * 48
    text = " ".join(str(w.message) for w in caught)
    assert "class 1" in text and "75%" in text and "0/255" in text


def test_a_clean_split_gives_no_label_warning():
    torch.manual_seed(0)
    loader = DataLoader(toy_data(4), batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LabelWarning)
        result = evaluate(small_unet(), loader, CPU, num_classes=3, ignore_index=IGNORE,
                          progress=False)
    assert result["label_problems"] == []


@pytest.mark.parametrize("content, expected", [
    (None, "No checkpoint at"),
    (b"", "empty \\(0 bytes\\)"),
    ("truncated", "truncated"),
    ("bare", "bare state_dict.*model.load_state_dict"),
    ("other", "not a segtut checkpoint"),
    ("evil", "cannot be loaded safely"),
    ("mismatch", "do not fit this model"),
])
def test_unusable_checkpoints_raise_a_clear_error(tmp_path, content, expected):
    path = tmp_path / "run.pt"
    model = small_unet()
    if content == "truncated":
        save_checkpoint(path, model, epoch=1)
        path.write_bytes(path.read_bytes()[:1000])
    elif content == "bare":
        torch.save(model.state_dict(), path)
    elif content == "other":
        torch.save({"weights": torch.zeros(1)}, path)
    elif content == "evil":
        torch.save({"model": {}, "epoch": 1, "evil": object()}, path)
    elif content == "mismatch":
        save_checkpoint(path, build_model("unet", num_classes=5, base_channels=4, depth=2))
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as error:
        load_checkpoint(path, model)
    assert str(path) in str(error.value)
    assert isinstance(error.value, ValueError)


def test_resume_past_the_requested_epochs_warns(tmp_path):
    run(2, tmp_path / "c.pt", resume=False)
    with pytest.warns(UserWarning, match="already holds 2 epochs.*epochs=1: nothing was trained"):
        _, _, history = run(1, tmp_path / "c.pt", resume=True)
    assert len(history) == 2
