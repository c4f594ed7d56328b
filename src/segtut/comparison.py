"""Every registered model, one shared recipe, several seeds: the runs behind chapter 15's table.

Each chapter trains its model with its own recipe, so their scores cannot be ranked. This
module trains every model of :data:`segtut.models.MODELS` the same way (:data:`RECIPES`: the
same input size, crops, augmentation, loss, optimiser, schedule and a FIXED number of epochs,
never a wall-clock budget, which a busy machine cuts short), once per seed, and logs each run to
an MLflow store (:mod:`segtut.tracking`)::

    from segtut.comparison import run_comparison, summary_table, load_runs
    run_comparison("results/camvid_comparison", profile="cpu", seeds=(0, 1, 2))
    table = summary_table(load_runs("results/camvid_comparison"))

Two kinds of run go into the experiment :data:`EXPERIMENT` (the ``kind`` parameter):

* ``train``: one model, one seed: per-epoch training loss, learning rate and seconds; the val
  and test mIoU and per-class IoU of the LAST epoch (the recipe fixes the number of epochs, so
  no test-set peeking picks an epoch); the test split's per-image scores
  (``test_per_image.csv``) and the model itself (``model/``, :mod:`segtut.saved_model`; only for
  the seeds in ``keep_models``: the weights are large and stay out of version control).
* ``cost``: one model, once: parameters, GFLOPs of one 360x480 image, inference latency (batch
  1) and throughput (batch 8) at the recipe's input size, training images/s and the peak
  memory of one training step. Timings are medians after warm-up; they are only meaningful on
  a machine that does nothing else meanwhile.

A run already in the store (same model, seed, recipe and profile, status FINISHED) is never
repeated, so the grid can be filled over several sittings, or a model at a time
(``scripts/compare.py --models unet --seeds 0 1 2``).
"""

from __future__ import annotations

import math
import statistics
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

__all__ = ["EXPERIMENT", "RECIPES", "MODEL_OPTIONS", "run_comparison", "train_run", "cost_run",
           "load_runs", "summary_table", "markdown_table", "per_image_scores", "model_folder",
           "run_folder", "MODEL_LABELS"]

EXPERIMENT = "camvid-comparison"

#: The shared recipe of each profile. ``epochs`` is fixed; ``amp`` is bfloat16 autocast (on a
#: CPU it made chapter 3's U-Net 1.9x faster, chapter 16); ``flops_size`` is the input whose
#: GFLOPs are reported (CamVid's native 360x480); latency and throughput are measured at
#: ``image_size``, the size the models are trained and evaluated at.
RECIPES = {
    "smoke": dict(image_size=(64, 96), crop_size=None, batch_size=2, epochs=1, lr=1e-3,
                  weight_decay=1e-4, loss="ce", optimizer="AdamW", schedule="one-cycle",
                  amp=False, train_images=4, eval_images=2, flops_size=(64, 96),
                  timing_warmup=1, timing_repeats=2),
    "cpu": dict(image_size=(180, 240), crop_size=(128, 160), batch_size=8, epochs=8, lr=1e-3,
                weight_decay=1e-4, loss="ce", optimizer="AdamW", schedule="one-cycle",
                amp=True, train_images=None, eval_images=None, flops_size=(360, 480),
                timing_warmup=2, timing_repeats=5),
    "gpu": dict(image_size=(360, 480), crop_size=(288, 384), batch_size=8, epochs=100, lr=1e-3,
                weight_decay=1e-4, loss="ce", optimizer="AdamW", schedule="one-cycle",
                amp=True, train_images=None, eval_images=None, flops_size=(360, 480),
                timing_warmup=5, timing_repeats=20),
}

#: Each registered model's options in the comparison: the size its own chapter trains in the
#: ``cpu`` profile (``pretrained=False`` is added: no run here starts from ImageNet weights).
MODEL_OPTIONS = {
    "unet": dict(base_channels=16),
    "fcn8s": dict(base_channels=16),
    "fcn8s_separable": dict(base_channels=16),
    "fc_densenet56": {},
    "fc_densenet67": {},
    "fc_densenet103": {},
    "smp_unet": dict(encoder_name="resnet18"),
    "smp_fpn": dict(encoder_name="resnet18"),
    "smp_segformer": dict(encoder_name="mit_b0"),
    "deeplabv3": dict(backbone="mobilenet_v3_large"),
    "mobilenetv2_unet": {},
    "densenet_unet": dict(backbone="densenet121"),
    "pspnet": dict(backbone="resnet18", output_stride=16, head_channels=256),
}

#: How the tables and figures name each model (its registry name and :data:`MODEL_OPTIONS`).
MODEL_LABELS = {
    "unet": "U-Net, width 16 (ch. 3)",
    "fcn8s": "FCN-8s, width 16 (ch. 8)",
    "fcn8s_separable": "FCN-8s separable, width 16 (ch. 8)",
    "fc_densenet56": "FC-DenseNet56 (ch. 10)",
    "fc_densenet67": "FC-DenseNet67 (ch. 10)",
    "fc_densenet103": "FC-DenseNet103 (ch. 10)",
    "smp_unet": "smp U-Net, ResNet-18 (ch. 5)",
    "smp_fpn": "smp FPN, ResNet-18 (ch. 6)",
    "smp_segformer": "SegFormer MiT-B0 (ch. 11)",
    "deeplabv3": "DeepLabV3, MobileNetV3-L (ch. 7)",
    "mobilenetv2_unet": "MobileNetV2 U-Net (ch. 9)",
    "densenet_unet": "DenseNet-121 U-Net (ch. 10)",
    "pspnet": "PSPNet, ResNet-18 (ch. 11b)",
}

_RECIPE_KEYS = ("image_size", "crop_size", "batch_size", "epochs", "lr", "weight_decay", "loss",
                "optimizer", "schedule", "amp")


def _identity(kind: str, model: str, profile: str, recipe: dict, seed: Optional[int] = None
              ) -> dict:
    """The parameters that make two runs "the same run" (what :func:`find_run` matches)."""
    params = {"kind": kind, "model": model, "profile": profile,
              "options": MODEL_OPTIONS.get(model, {})}
    if kind == "train":
        params.update(seed=seed, **{key: recipe[key] for key in _RECIPE_KEYS})
    else:
        params.update(image_size=recipe["image_size"], flops_size=recipe["flops_size"],
                      batch_size=recipe["batch_size"], amp=recipe["amp"])
    return params


def _build(name: str, num_classes: int):
    from segtut.models import build_model  # refuses unknown names, listing the valid ones

    return build_model(name, num_classes, pretrained=False, **MODEL_OPTIONS.get(name, {}))


def _loss_for(model, loss_name: str, ignore_index: int):
    from segtut.losses import build_loss
    from segtut.models.library import AuxLoss

    loss_fn = build_loss(loss_name, ignore_index=ignore_index)
    # DeepLabV3 keeps its auxiliary head (torchvision's default): it learns through AuxLoss.
    return AuxLoss(loss_fn, model) if hasattr(model, "aux_logits") else loss_fn


def run_folder(store: str | Path) -> Path:
    """The folder of a store given as a folder or as its ``mlflow.db`` file."""
    store = Path(store)
    return store.parent if store.suffix == ".db" else store


def _uri(store: str | Path) -> str:
    from segtut.tracking import default_tracking_uri

    return default_tracking_uri(run_folder(store))


def cost_run(name: str, *, store: str | Path, profile: str = "cpu", device=None,
             log: Callable[[str], None] = print) -> str:
    """Measure one model's cost and log it as a ``kind=cost`` run; returns the run id.

    Skipped (the existing run's id is returned) when the store already holds it.
    """
    from segtut.data import IGNORE_INDEX, NUM_CLASSES
    from segtut.measure import count_parameters, gflops, latency_ms, training_step_memory_mib
    from segtut.tracking import Tracker, find_run
    from segtut.train import amp_dtype_of, logits_of, pick_device

    recipe = RECIPES[profile]
    identity = _identity("cost", name, profile, recipe)
    found = find_run(EXPERIMENT, identity, _uri(store))
    if found:
        return found
    device = pick_device(device)
    torch.manual_seed(0)
    model = _build(name, NUM_CLASSES).to(device)
    height, width = recipe["image_size"]
    crop = recipe["crop_size"] or recipe["image_size"]
    batch = recipe["batch_size"]
    warmup, repeats = recipe["timing_warmup"], recipe["timing_repeats"]
    dtype = amp_dtype_of(device) if recipe["amp"] else None
    autocast = torch.autocast(device.type, dtype=dtype, enabled=bool(dtype))

    def forward(images):
        with autocast:
            return logits_of(model(images))

    one = torch.randn(1, 3, height, width, device=device)
    eight = torch.randn(8, 3, height, width, device=device)
    model.eval()  # latency_ms switches modules to eval mode, not a function that calls one
    latency = latency_ms(forward, one, warmup=warmup, repeats=repeats, device=device)
    eight_ms = latency_ms(forward, eight, warmup=warmup, repeats=repeats, device=device)
    loss_fn = _loss_for(model, recipe["loss"], IGNORE_INDEX)
    images = torch.randn(batch, 3, *crop, device=device)
    masks = torch.randint(0, NUM_CLASSES, (batch, *crop), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step():
        model.train()
        with autocast:
            loss = loss_fn(logits_of(model(images)).float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step_ms = latency_ms(step, inference=False, warmup=1, repeats=max(2, repeats // 2),
                         device=device)
    metrics = {
        "parameters_m": count_parameters(model) / 1e6,
        "gflops": gflops(model, (1, 3, *recipe["flops_size"])),
        "gflops_input": gflops(model, (1, 3, height, width)),
        "latency_ms": latency["median"], "latency_p10_ms": latency["p10"],
        "latency_p90_ms": latency["p90"],
        "throughput_images_s": 8 / (eight_ms["median"] / 1000),
        "train_images_s": batch / (step_ms["median"] / 1000),
        "train_memory_mib": training_step_memory_mib(model, images, masks, loss_fn,
                                                     autocast=bool(dtype)),
    }
    with Tracker(EXPERIMENT, run_name=f"{name}-cost", tracking_uri=_uri(store),
                 tags={"kind": "cost"}) as tracker:
        tracker.log_params({**identity, "device": str(device), "threads": torch.get_num_threads(),
                            "weights": getattr(model, "weights_source", "unknown")})
        tracker.log_metrics(metrics)
        run_id = tracker.run_id
    log(f"{name:<17} cost: {metrics['parameters_m']:.2f} M parameters, "
        f"{metrics['gflops']:.1f} GFLOPs at {recipe['flops_size'][0]}x{recipe['flops_size'][1]}, "
        f"{metrics['latency_ms']:.0f} ms (batch 1), {metrics['throughput_images_s']:.1f} images/s "
        f"(batch 8), training {metrics['train_images_s']:.1f} images/s, "
        f"{metrics['train_memory_mib']:.0f} MiB")
    return run_id


def train_run(name: str, seed: int, splits, *, store: str | Path, profile: str = "cpu",
              device=None, keep_model: bool = False,
              log: Callable[[str], None] = print) -> str:
    """Train ``name`` with the profile's recipe and seed ``seed``; log it as a ``kind=train``
    run and return its id (the existing run's id when the store already holds it).

    Args:
        splits: :class:`segtut.profiles.Splits` made with the recipe's transforms (see
            :func:`run_comparison`).
        keep_model: store the trained model in the run (``model/``: safetensors + card).
    """
    from torch.utils.data import DataLoader

    from segtut.data import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
    from segtut.evaluation import per_image_iou
    from segtut.saved_model import save_model
    from segtut.tracking import Tracker, find_run
    from segtut.train import (amp_dtype_of, evaluate, one_cycle_schedule, pick_device,
                              seed_everything, train_one_epoch)

    recipe = RECIPES[profile]
    identity = _identity("train", name, profile, recipe, seed)
    found = find_run(EXPERIMENT, identity, _uri(store))
    if found:
        log(f"{name:<17} seed {seed}: already in the store (run {found}), skipped")
        return found
    device = pick_device(device)
    seed_everything(seed)
    model = _build(name, NUM_CLASSES).to(device)
    loss_fn = _loss_for(model, recipe["loss"], IGNORE_INDEX)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(splits.train, batch_size=recipe["batch_size"], shuffle=True,
                              drop_last=True, generator=generator)
    loaders = {split: DataLoader(getattr(splits, split), batch_size=recipe["batch_size"])
               for split in ("val", "test")}
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"],
                                  weight_decay=recipe["weight_decay"])
    epochs = recipe["epochs"]
    scheduler = one_cycle_schedule(optimizer, total_steps=epochs * len(train_loader),
                                   max_lr=recipe["lr"])
    dtype = amp_dtype_of(device) if recipe["amp"] else None
    with Tracker(EXPERIMENT, run_name=f"{name}-seed{seed}", tracking_uri=_uri(store),
                 tags={"kind": "train"}) as tracker:
        tracker.log_params({**identity, "device": str(device), "threads": torch.get_num_threads(),
                            "dataset": splits.source, "synthetic": splits.synthetic,
                            "weights": getattr(model, "weights_source", "unknown"),
                            "train_images": len(splits.train), "val_images": len(splits.val),
                            "test_images": len(splits.test)})
        seconds = []
        for epoch in range(epochs):
            torch.manual_seed(seed + epoch)  # as segtut.train.fit: shuffles and crops by epoch
            train = train_one_epoch(model, train_loader, loss_fn, optimizer, device,
                                    scheduler=scheduler, amp=bool(dtype), amp_dtype=dtype,
                                    ignore_index=IGNORE_INDEX, progress=False)
            seconds.append(train["seconds"])
            tracker.log_epoch({"epoch": epoch + 1, "train_loss": train["loss"],
                               "lr": optimizer.param_groups[0]["lr"],
                               "train_seconds": train["seconds"]})
        images = len(train_loader) * recipe["batch_size"]
        results = {split: evaluate(model, loader, device, num_classes=NUM_CLASSES,
                                   ignore_index=IGNORE_INDEX, amp=bool(dtype), amp_dtype=dtype,
                                   progress=False, class_names=CLASS_NAMES, warn=False)
                   for split, loader in loaders.items()}
        for split, result in results.items():
            tracker.log_result(split, result, CLASS_NAMES)
        tracker.log_metrics({"train_minutes": sum(seconds) / 60,
                             "train_loop_images_s": images / statistics.median(seconds)})
        scores = per_image_iou(model, splits.test, device, num_classes=NUM_CLASSES,
                               ignore_index=IGNORE_INDEX, batch_size=recipe["batch_size"])
        with tempfile.TemporaryDirectory() as scratch:
            table = Path(scratch) / "test_per_image.csv"
            scores.to_csv(table)
            tracker.log_artifact(table)
            if keep_model:
                folder = save_model(Path(scratch) / "model", model, architecture=name,
                                    options={**MODEL_OPTIONS.get(name, {}), "pretrained": False},
                                    class_names=CLASS_NAMES,
                                    image_size=recipe["crop_size"] or recipe["image_size"],
                                    input_size=recipe["image_size"],
                                    metrics={f"{s}_mean_iou": r["mean_iou"]
                                             for s, r in results.items()}).parent
                tracker.log_artifact(folder)
        run_id = tracker.run_id
    log(f"{name:<17} seed {seed}: val mIoU {results['val']['mean_iou']:.3f}, test mIoU "
        f"{results['test']['mean_iou']:.3f} ({sum(seconds) / 60:.1f} min of training)")
    return run_id


def run_comparison(store: str | Path, *, profile: str = "cpu",
                   models: Optional[Sequence[str]] = None, seeds: Sequence[int] = (0, 1, 2),
                   keep_models: Sequence[int] = (0,), data_dir=None, device=None,
                   costs: bool = True, log: Callable[[str], None] = print) -> None:
    """Fill the store with the grid: a cost run per model, then every (seed, model) pair.

    Seeds go in the outer loop, so an interrupted grid has every model at the first seeds.

    Args:
        store: the folder of the MLflow store (``mlflow.db`` and ``mlartifacts/``).
        profile: which recipe of :data:`RECIPES` (``smoke`` uses SYNTHETIC scenes when CamVid is
            not on disk, and says so).
        models: names of :data:`segtut.models.MODELS` (None: all of them, in registry order).
        seeds: one training run per seed and model.
        keep_models: the seeds whose trained models are stored in their runs.
        data_dir: the folder that holds ``camvid/`` (None: ``$SEGTUT_DATA_DIR`` or the cache).
        costs: measure each model's cost too.
    """
    from segtut.data import IGNORE_INDEX
    from segtut.models import MODELS
    from segtut.profiles import load_camvid_splits
    from segtut.transforms import EvalTransform, train_transforms

    if profile not in RECIPES:
        raise ValueError(f"Unknown profile {profile!r}. Valid choices: {', '.join(RECIPES)}.")
    models = list(MODELS) if models is None else list(models)
    unknown = [name for name in models if name not in MODELS]
    if unknown:
        raise ValueError(f"Unknown model(s) {unknown}. Valid choices: {', '.join(MODELS)}.")
    recipe = RECIPES[profile]
    run_folder(store).mkdir(parents=True, exist_ok=True)
    if costs:
        for name in models:
            cost_run(name, store=store, profile=profile, device=device, log=log)
    if not seeds:
        return
    splits = load_camvid_splits(
        profile, train_transforms(recipe["image_size"], crop_size=recipe["crop_size"],
                                  ignore_index=IGNORE_INDEX),
        EvalTransform(recipe["image_size"]), train_images=recipe["train_images"],
        eval_images=recipe["eval_images"], data_dir=data_dir, log=log)
    for seed in seeds:
        for name in models:
            train_run(name, seed, splits, store=store, profile=profile, device=device,
                      keep_model=seed in keep_models, log=log)


def load_runs(store: str | Path, *, profile: Optional[str] = None):
    """The FINISHED runs of the store as a DataFrame (see :func:`segtut.tracking.runs_frame`),
    optionally only one profile's."""
    from segtut.tracking import runs_frame

    runs = runs_frame(EXPERIMENT, _uri(store))
    if runs.empty:
        return runs
    runs = runs[runs["status"] == "FINISHED"]
    if profile is not None:
        runs = runs[runs["params.profile"] == profile]
    return runs.reset_index(drop=True)


def summary_table(runs):
    """One row per model: seeds, val and test mIoU (mean and standard deviation over seeds),
    and the cost measurements; sorted by test mIoU, best first.

    Columns: ``model``, ``seeds``, ``val_miou``, ``val_std``, ``test_miou``, ``test_std``,
    ``train_minutes``, ``parameters_m``, ``gflops``, ``latency_ms``, ``throughput_images_s``,
    ``train_images_s``, ``train_memory_mib``. A model with only a cost run has ``seeds`` 0 and
    NaN scores; the standard deviation (``ddof=1``) is NaN for one seed.
    """
    import pandas as pd

    train = runs[runs["params.kind"] == "train"]
    cost = runs[runs["params.kind"] == "cost"].drop_duplicates("params.model")
    rows = []
    models = list(dict.fromkeys(list(cost["params.model"]) + list(train["params.model"])))
    for name in models:
        mine = train[train["params.model"] == name]
        row = {"model": name, "seeds": len(mine)}
        for split in ("val", "test"):
            values = mine[f"metrics.{split}_mean_iou"].astype(float)
            row[f"{split}_miou"] = values.mean() if len(values) else math.nan
            row[f"{split}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        row["train_minutes"] = (mine["metrics.train_minutes"].astype(float).mean()
                                if len(mine) else math.nan)
        measured = cost[cost["params.model"] == name]
        for key in ("parameters_m", "gflops", "latency_ms", "throughput_images_s",
                    "train_images_s", "train_memory_mib"):
            column = f"metrics.{key}"
            row[key] = (float(measured[column].iloc[0])
                        if len(measured) and column in measured else math.nan)
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    return table.sort_values("test_miou", ascending=False, na_position="last",
                             kind="stable").reset_index(drop=True)


def _score(mean: float, std: float, seeds: int) -> str:
    """``41.3 ± 1.2`` (percent, one decimal); one seed has no spread; no seed: "not trained"."""
    if not seeds or math.isnan(mean):
        return "not trained"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if seeds > 1 else " (1 seed)")


def markdown_table(table) -> str:
    """The summary table (:func:`summary_table`) as the markdown of the landing page, in the
    table's order (best test mIoU first; models without a training run last).

    Scores are percent, mean ± standard deviation over the seeds; latency is batch 1 at the
    recipe's input size; GFLOPs are for one 360x480 image.
    """
    lines = ["| Model | Seeds | val mIoU | test mIoU | Parameters (M) | GFLOPs | Latency (ms) | "
             "Training (min) |",
             "|---|---|---|---|---|---|---|---|"]
    for _, row in table.iterrows():
        trained = row["seeds"] > 0 and not math.isnan(row["test_miou"])
        minutes = f"{row['train_minutes']:.1f}" if trained else "–"
        lines.append(
            f"| {MODEL_LABELS.get(row['model'], row['model'])} | {int(row['seeds'])} | "
            f"{_score(row['val_miou'], row['val_std'], row['seeds'])} | "
            f"{_score(row['test_miou'], row['test_std'], row['seeds'])} | "
            f"{row['parameters_m']:.2f} | {row['gflops']:.1f} | {row['latency_ms']:.0f} | "
            f"{minutes} |")
    return "\n".join(lines)


def _artifact_folder(run, store: str | Path) -> Path:
    """A run's artifact folder, found next to the store when the logged absolute path is gone
    (a store that was copied or cloned elsewhere)."""
    from urllib.parse import unquote, urlparse

    logged = Path(unquote(urlparse(run["artifact_uri"]).path))
    if logged.exists():
        return logged
    from segtut.tracking import ARTIFACTS_NAME

    return run_folder(store) / ARTIFACTS_NAME / run["run_id"] / "artifacts"


def per_image_scores(runs, store: str | Path):
    """The test split's per-image scores of every training run, one row per (run, image).

    Columns: ``model``, ``seed``, ``index`` (position in the test split), ``file``,
    ``mean_iou``, ``pixel_accuracy``, ``classes`` (see :func:`segtut.evaluation.per_image_iou`).
    Runs whose ``test_per_image.csv`` cannot be found are left out.
    """
    import pandas as pd

    frames = []
    for _, run in runs[runs["params.kind"] == "train"].iterrows():
        path = _artifact_folder(run, store) / "test_per_image.csv"
        if path.exists():
            frame = pd.read_csv(path)
            frame.insert(0, "seed", int(run["params.seed"]))
            frame.insert(0, "model", run["params.model"])
            frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["model", "seed", "index", "file", "mean_iou",
                                     "pixel_accuracy", "classes"])
    return pd.concat(frames, ignore_index=True)


def model_folder(run, store: str | Path) -> Optional[Path]:
    """The folder of the model stored in a training run (:func:`segtut.saved_model.load_model`
    reads it), or None when the run kept no model."""
    folder = _artifact_folder(run, store) / "model"
    return folder if folder.exists() else None
