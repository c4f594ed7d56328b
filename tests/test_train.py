"""The training loop: it can learn, it evaluates at native size, and it resumes exactly."""

import math
import os
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


# ---------------------------------------------------------------------------------------------
# fit's options: accumulation, channels_last, compile, amp_dtype, best epoch, early stopping
# ---------------------------------------------------------------------------------------------

def tiny_net():
    """No BatchNorm (its statistics depend on the batch size), so batch sizes can be compared."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 3, 1))


def test_two_accumulated_batches_of_b_train_like_one_batch_of_2b():
    # Exact for a mean loss only when each batch has as many labelled pixels (here: every
    # image has one void row), since the mean over 2B is then the mean of the two B-means.
    data = toy_data(8)
    loss_fn = build_loss("ce", ignore_index=IGNORE)
    results = {}
    for batch, steps in ((2, 2), (4, 1)):
        model = tiny_net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        info = train_one_epoch(model, DataLoader(data, batch_size=batch), loss_fn, optimizer,
                               CPU, scheduler=scheduler, progress=False,
                               accumulation_steps=steps)
        results[batch] = (model, info, optimizer.param_groups[0]["lr"])
    (small, small_info, small_lr), (large, large_info, large_lr) = results[2], results[4]
    assert small_info["steps"] == large_info["steps"] == 2 and small_info["batches"] == 4
    assert small_lr == large_lr == 0.125  # the scheduler follows the optimiser steps
    for a, b in zip(small.parameters(), large.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(next(tiny_net().parameters()), next(small.parameters()))


def test_accumulation_steps_on_the_last_batch_and_counts_max_steps_in_steps():
    model = tiny_net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(toy_data(6), batch_size=2)  # 3 batches
    info = train_one_epoch(model, loader, build_loss("ce", ignore_index=IGNORE), optimizer,
                           CPU, progress=False, accumulation_steps=2)
    assert (info["steps"], info["batches"]) == (2, 3)  # 2 + the last one alone
    info = train_one_epoch(model, loader, build_loss("ce", ignore_index=IGNORE), optimizer,
                           CPU, progress=False, accumulation_steps=2, max_steps=1)
    assert (info["steps"], info["batches"]) == (1, 2)
    with pytest.raises(ValueError, match="accumulation_steps"):
        train_one_epoch(model, loader, build_loss("ce", ignore_index=IGNORE), optimizer, CPU,
                        accumulation_steps=0)


def test_float16_with_a_grad_scaler_trains_like_float16_without_one():
    """The path of a GPU without bfloat16 (fit's GradScaler), run on the CPU.

    The scale is a power of two, so scaling the loss and unscaling the gradients is exact: two
    steps with the scaler give the weights of two steps without it. A step whose gradients
    overflow is skipped by the scaler (and the scale halved) instead of writing inf weights.
    """
    loader = DataLoader(toy_data(4), batch_size=2)
    loss_fn = build_loss("ce", ignore_index=IGNORE)
    models = {}
    for name in ("plain", "scaled"):
        model = tiny_net()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if name == "scaled" else None
        info = train_one_epoch(model, loader, loss_fn, optimizer, CPU, amp=True,
                               amp_dtype=torch.float16, scaler=scaler, progress=False)
        assert info["steps"] == 2
        models[name] = model
    for a, b in zip(models["plain"].parameters(), models["scaled"].parameters()):
        torch.testing.assert_close(a, b)
    assert not torch.equal(next(tiny_net().parameters()), next(models["scaled"].parameters()))

    model = tiny_net()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 60)  # overflows float16 gradients
    train_one_epoch(model, DataLoader(toy_data(2), batch_size=2), loss_fn, optimizer, CPU,
                    amp=True, amp_dtype=torch.float16, scaler=scaler, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # step skipped
    assert scaler.get_scale() == 2.0 ** 59


def fit_tiny(model, epochs=2, **kwargs):
    loader = DataLoader(toy_data(4), batch_size=2)
    return fit(model, loader, loader, loss_fn=build_loss("ce", ignore_index=IGNORE),
               optimizer=torch.optim.SGD(model.parameters(), lr=0.2), epochs=epochs,
               device=CPU, seed=0, num_classes=3, ignore_index=IGNORE, progress=False,
               log=None, **kwargs)


def test_channels_last_changes_the_layout_not_the_numbers():
    plain, fast = tiny_net(), tiny_net()
    layouts = []
    fast[0].register_forward_pre_hook(lambda module, args: layouts.append(
        args[0].is_contiguous(memory_format=torch.channels_last)))
    plain_history, fast_history = fit_tiny(plain), fit_tiny(fast, channels_last=True)
    assert layouts and all(layouts)
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(plain.parameters(), fast.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert fast_history[-1]["val_mean_iou"] == pytest.approx(plain_history[-1]["val_mean_iou"])


def test_on_epoch_end_gets_each_row_and_set_epoch_is_called():
    epochs_set = []

    class EpochSampler(torch.utils.data.SequentialSampler):
        def set_epoch(self, epoch):
            epochs_set.append(epoch)

    data = toy_data(4)
    loader = DataLoader(data, batch_size=2, sampler=EpochSampler(data))
    model = tiny_net()
    rows = []
    history = fit(model, loader, loader, loss_fn=build_loss("ce", ignore_index=IGNORE),
                  optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=3, device=CPU,
                  seed=0, num_classes=3, ignore_index=IGNORE, progress=False, log=None,
                  on_epoch_end=rows.append)
    assert rows == history and len(rows) == 3 and epochs_set == [0, 1, 2]


def test_amp_dtype_choices_are_checked():
    model = tiny_net()
    with pytest.raises(ValueError, match=r"'fp32'.*\['bf16', 'fp16'\]"):
        fit_tiny(model, amp=True, amp_dtype="fp32")
    with pytest.raises(ValueError, match="fp16.*CUDA.*bf16"):
        fit_tiny(model, amp=True, amp_dtype="fp16")
    history = fit_tiny(model, epochs=1, amp=True, amp_dtype="bf16")  # CPU bf16 autocast
    assert math.isfinite(history[0]["train_loss"])
    with pytest.raises(ValueError, match="'val_iou' is not one of"):
        fit_tiny(model, select_best="val_iou")
    with pytest.raises(ValueError, match="patience=2 needs select_best"):
        fit_tiny(model, patience=2)


def compile_and_compare(tmp_path):
    plain, compiled = tiny_net(), tiny_net()
    fit_tiny(plain, epochs=1)
    history = fit_tiny(compiled, epochs=1, compile=True, checkpoint_path=tmp_path / "c.pt")
    for a, b in zip(plain.parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert math.isfinite(history[0]["val_mean_iou"])
    state = load_checkpoint(tmp_path / "c.pt", tiny_net())  # plain keys, no "_orig_mod."
    assert state["epoch"] == 1


def test_compile_trains_the_same_model(tmp_path, monkeypatch):
    # Dynamo's graph capture with the "eager" backend: fit's wiring in a few seconds, without
    # the C++ code generation that takes ~30 s on a small CPU (the slow test below).
    compiled_modules = []
    real_compile = torch.compile

    def eager_compile(model, **kwargs):
        compiled_modules.append(model)
        return real_compile(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    compile_and_compare(tmp_path)
    assert len(compiled_modules) == 1


@pytest.mark.slow
def test_compile_with_inductor_trains_the_same_model(tmp_path):
    import shutil

    if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("cc") is None:
        pytest.skip("torch.compile on the CPU needs a C++ compiler (g++ or cc); none found")
    compile_and_compare(tmp_path)


SCORES = [0.5, 0.8, 0.3, 0.2, 0.1, 0.9]  # epoch 2 is best until epoch 6


def scripted_evaluate(monkeypatch, start=0):
    """evaluate() returning SCORES as val mIoU, one per epoch, from epoch ``start + 1``."""
    calls = iter(SCORES[start:])

    def fake(*args, **kwargs):
        return {"loss": 1.0, "mean_iou": next(calls), "pixel_accuracy": 0.5,
                "label_problems": [], "seconds": 0.0}

    monkeypatch.setattr("segtut.train.evaluate", fake)


def snapshot_each_epoch(model, snapshots):
    return lambda row: snapshots.append({k: v.clone() for k, v in model.state_dict().items()})


def test_select_best_restores_the_best_epoch_and_patience_stops(monkeypatch, tmp_path):
    scripted_evaluate(monkeypatch)
    model, snapshots = tiny_net(), []
    history = fit_tiny(model, epochs=6, select_best="val_mean_iou", patience=2,
                       best_checkpoint_path=tmp_path / "best.pt",
                       on_epoch_end=snapshot_each_epoch(model, snapshots))
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]  # 2 epochs without a new best
    assert [row["best_epoch"] for row in history] == [1, 2, 2, 2]
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshots[1][name])  # epoch 2's weights, not epoch 4's
        assert not torch.equal(value, snapshots[3][name])
    fresh = tiny_net()
    assert load_checkpoint(tmp_path / "best.pt", fresh)["epoch"] == 2
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, snapshots[1][name])


def test_resume_keeps_the_best_epoch(monkeypatch, tmp_path):
    options = dict(select_best="val_mean_iou", patience=3, checkpoint_path=tmp_path / "run.pt",
                   best_checkpoint_path=tmp_path / "best.pt")
    scripted_evaluate(monkeypatch)
    straight, straight_snapshots = tiny_net(), []
    straight_history = fit_tiny(straight, epochs=6, **options,
                                on_epoch_end=snapshot_each_epoch(straight, straight_snapshots))
    assert [row["best_epoch"] for row in straight_history] == [1, 2, 2, 2, 2]  # stops at 5

    (tmp_path / "run.pt").unlink()
    scripted_evaluate(monkeypatch)
    fit_tiny(tiny_net(), epochs=3, **options)  # "killed" after epoch 3, best epoch 2
    scripted_evaluate(monkeypatch, start=3)
    resumed = tiny_net()
    resumed_history = fit_tiny(resumed, epochs=6, resume=True, **options)
    timing = ("train_seconds", "train_seconds_total", "eval_seconds")
    assert [{k: v for k, v in row.items() if k not in timing} for row in resumed_history] == \
        [{k: v for k, v in row.items() if k not in timing} for row in straight_history]
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, straight_snapshots[1][name])  # epoch 2's, from best.pt

    (tmp_path / "best.pt").unlink()  # the best weights are gone: say so, do not guess
    with pytest.raises(CheckpointError, match="epoch 2 was the best.*best.pt.*does not exist"):
        fit_tiny(tiny_net(), epochs=8, resume=True, **options)
