"""Train any segtut model on CamVid from the command line, on one CPU, one GPU or many.

Chapter 3's first recipe is the default (AdamW, one-cycle learning rate stepped per optimiser
step, cross-entropy, float32, random scale/crop/flip/jitter, 22 epochs in the cpu profile), with
the sizes of the chosen profile; chapter 3's current recipe adds four flags::

    python scripts/train.py --model unet --profile cpu            # ~10 minutes on 2 cores
    python scripts/train.py --model unet --profile cpu --loss dice --amp --channels-last \
        --epochs 70 --select-best                                 # chapter 3's recipe
    python scripts/train.py --model smp_unet --encoder resnet34 --profile gpu --track
    torchrun --nproc_per_node 4 scripts/train.py --model unet --profile gpu --sync-batchnorm
    python scripts/train.py --model fcn8s --profile gpu --dry-run  # print the settings, exit

Under ``torchrun`` every process runs this script: each trains on its shard of the data
(:mod:`segtut.distributed`), gradients are averaged by DistributedDataParallel, the metrics
count every validation and test image once, and only the main process (rank 0) prints, writes
files and logs to MLflow. ``--batch-size`` is per process: the batch of one optimiser step is
``batch_size * processes * accumulation_steps``.

At the end the model is evaluated on val and test (mIoU and per-class IoU printed), saved with
:func:`segtut.saved_model.save_model` to ``<output-dir>/<run name>/model/`` and, with
``--track``, its run is logged to ``<output-dir>/mlflow.db`` (:mod:`segtut.tracking`; browse
with ``mlflow ui --backend-store-uri sqlite:///<output-dir>/mlflow.db``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Optional, Sequence

# Chapter 3's first parameters cell (notebooks/03_unet_from_scratch.ipynb, before it moved to the
# Dice loss, bfloat16 autocast, channels-last, 70 epochs and best-epoch selection), per profile. base_channels
# sizes the from-scratch models that have it; time_budget_s stops after the epoch that passes it.
PROFILE_SETTINGS = {
    "smoke": dict(image_size=(64, 96), crop_size=None, base_channels=8, batch_size=2, epochs=1,
                  lr=3e-3, train_images=4, eval_images=2, time_budget_s=None, num_workers=0),
    "cpu": dict(image_size=(180, 240), crop_size=(128, 160), base_channels=16, batch_size=8,
                epochs=22, lr=3e-3, train_images=None, eval_images=None, time_budget_s=600,
                num_workers=0),
    "gpu": dict(image_size=(360, 480), crop_size=(288, 384), base_channels=64, batch_size=8,
                epochs=150, lr=1e-3, train_images=None, eval_images=None, time_budget_s=None,
                num_workers=4),
}
WEIGHT_DECAY = 1e-4  # chapter 3's AdamW weight decay
# The option of each registered model that --encoder sets, and the one --base-channels sets.
ENCODER_OPTION = {"smp_unet": "encoder_name", "smp_fpn": "encoder_name",
                  "smp_segformer": "encoder_name", "deeplabv3": "backbone",
                  "densenet_unet": "backbone"}
WIDTH_OPTION = {"unet": "base_channels", "fcn8s": "base_channels",
                "fcn8s_separable": "base_channels"}
CHECKPOINT_NAME, BEST_NAME, MODEL_FOLDER = "checkpoint.pt", "best.pt", "model"


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line; every default that depends on the profile is None here."""
    p = argparse.ArgumentParser(
        description="Train a segtut model on CamVid (chapter 3's recipe; any registered model).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = p.add_argument_group("model")
    model.add_argument("--model", default="unet", help="a name of segtut.models.MODELS")
    model.add_argument("--encoder", help="encoder/backbone of a library model, e.g. resnet34 "
                       f"(models: {', '.join(ENCODER_OPTION)})")
    model.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                       help="ImageNet encoder weights (default: the model's own default)")
    model.add_argument("--base-channels", type=int,
                       help=f"width of {', '.join(WIDTH_OPTION)} (default: the profile's)")
    data = p.add_argument_group("data and sizes (defaults: the profile's)")
    data.add_argument("--profile", default=None,
                      help="smoke, cpu, gpu or auto (default: $SEGTUT_PROFILE, else gpu with "
                      "CUDA, else cpu)")
    data.add_argument("--data-dir", help="the folder that holds camvid/ (default: "
                      "$SEGTUT_DATA_DIR or ~/.cache/segtut; downloaded when missing)")
    data.add_argument("--camvid-root", help="a folder in CamVid's SegNet layout (train/, "
                      "trainannot/, ...) read as it is: a subset, SYNTHETIC scenes "
                      "(segtut.synthetic.write_synthetic_camvid) or your own frames; replaces "
                      "--data-dir, nothing is downloaded")
    data.add_argument("--image-size", nargs=2, type=positive_int, metavar=("H", "W"))
    data.add_argument("--crop-size", nargs=2, type=positive_int, metavar=("H", "W"))
    data.add_argument("--train-images", type=int, help="use only the first N training images")
    data.add_argument("--eval-images", type=int, help="use only the first N val and test images")
    data.add_argument("--num-workers", type=int)
    recipe = p.add_argument_group("training (defaults: the profile's)")
    recipe.add_argument("--epochs", type=int)
    recipe.add_argument("--batch-size", type=int, help="per process")
    recipe.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule")
    recipe.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY)
    recipe.add_argument("--loss", default="ce", help="a name of segtut.losses.LOSSES")
    recipe.add_argument("--seed", type=int, default=0)
    recipe.add_argument("--max-steps-per-epoch", type=int)
    recipe.add_argument("--time-budget-s", type=float,
                        help="stop after the epoch that passes this many training seconds "
                        "(default: the profile's; 0: no budget)")
    recipe.add_argument("--accumulation-steps", type=int, default=1)
    recipe.add_argument("--select-best", nargs="?", const="val_mean_iou", default=None,
                        metavar="KEY", help="keep the weights of the best epoch by this history "
                        "key (val_mean_iou when the flag has no value)")
    recipe.add_argument("--patience", type=int, help="stop when --select-best has not improved "
                        "for this many epochs")
    recipe.add_argument("--resume", action="store_true",
                        help="continue from <output-dir>/<run name>/checkpoint.pt")
    speed = p.add_argument_group("speed")
    speed.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available; "
                       "under torchrun, cuda:<local rank>)")
    speed.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                       help="mixed precision (default: on with CUDA)")
    speed.add_argument("--amp-dtype", choices=("bf16", "fp16"),
                       help="default: bf16 where supported, else fp16")
    speed.add_argument("--channels-last", action="store_true")
    speed.add_argument("--compile", action="store_true", help="torch.compile the model")
    speed.add_argument("--sync-batchnorm", action="store_true",
                       help="BatchNorm statistics over all processes (distributed runs)")
    output = p.add_argument_group("output")
    output.add_argument("--output-dir", default="runs")
    output.add_argument("--run-name", help="default: <model>[_<encoder>]_<profile>")
    output.add_argument("--track", action=argparse.BooleanOptionalAction, default=False,
                        help="log the run to MLflow (<output-dir>/mlflow.db, or "
                        "$MLFLOW_TRACKING_URI)")
    output.add_argument("--experiment", default="segtut-camvid", help="MLflow experiment")
    output.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")
    output.add_argument("--dry-run", action="store_true",
                        help="print the resolved settings and exit (nothing is loaded)")
    return p


def resolve(args: argparse.Namespace, error) -> dict:
    """The settings of the run: the flags, the profile's defaults for the rest, checked.

    ``error`` is the parser's error function (prints the usage and exits with status 2).
    """
    from segtut.losses import LOSSES
    from segtut.models import MODELS
    from segtut.profiles import resolve_profile

    if args.model not in MODELS:
        error(f"unknown --model {args.model!r}. Valid names: {', '.join(sorted(MODELS))}.")
    if args.loss not in LOSSES:
        error(f"unknown --loss {args.loss!r}. Valid names: {', '.join(sorted(LOSSES))}.")
    if args.encoder and args.model not in ENCODER_OPTION:
        error(f"--encoder does not apply to {args.model!r}; it sets the encoder of "
              f"{', '.join(sorted(ENCODER_OPTION))}.")
    if args.base_channels and args.model not in WIDTH_OPTION:
        error(f"--base-channels does not apply to {args.model!r}; it sets the width of "
              f"{', '.join(sorted(WIDTH_OPTION))}.")
    try:
        profile = resolve_profile(args.profile)
    except ValueError as problem:
        error(str(problem))
    defaults = PROFILE_SETTINGS[profile]

    def pick(name: str):
        given = getattr(args, name)
        return defaults[name] if given is None else given

    settings = {
        "model": args.model, "encoder": args.encoder, "pretrained": args.pretrained,
        "profile": profile,
        "image_size": tuple(pick("image_size")),
        "crop_size": tuple(pick("crop_size")) if pick("crop_size") is not None else None,
        "base_channels": pick("base_channels") if args.model in WIDTH_OPTION else None,
        "epochs": pick("epochs"), "batch_size": pick("batch_size"), "lr": pick("lr"),
        "weight_decay": args.weight_decay, "loss": args.loss, "optimizer": "AdamW",
        "schedule": "one-cycle", "seed": args.seed, "num_workers": pick("num_workers"),
        "train_images": pick("train_images"), "eval_images": pick("eval_images"),
        "max_steps_per_epoch": args.max_steps_per_epoch,
        "time_budget_s": (None if args.time_budget_s == 0 else pick("time_budget_s")),
        "accumulation_steps": args.accumulation_steps, "select_best": args.select_best,
        "patience": args.patience, "resume": args.resume, "device": args.device,
        "amp": args.amp, "amp_dtype": args.amp_dtype, "channels_last": args.channels_last,
        "compile": args.compile, "sync_batchnorm": args.sync_batchnorm,
        "data_dir": args.data_dir, "camvid_root": args.camvid_root,
        "output_dir": args.output_dir, "track": args.track, "experiment": args.experiment,
        "progress": args.progress,
    }
    for name in ("epochs", "batch_size", "accumulation_steps"):
        if settings[name] < 1:
            error(f"--{name.replace('_', '-')} must be at least 1, got {settings[name]}.")
    if settings["lr"] <= 0:
        error(f"--lr must be positive, got {settings['lr']}.")
    if args.camvid_root and args.data_dir:
        error("give --camvid-root (the camvid folder itself) or --data-dir (the folder holding "
              "camvid/), not both.")
    if args.patience is not None and args.select_best is None:
        error("--patience stops on the --select-best key: add --select-best (val_mean_iou).")
    encoder = f"_{args.encoder}" if args.encoder else ""
    settings["run_name"] = args.run_name or f"{args.model}{encoder}_{profile}"
    return settings


def model_options(settings: dict) -> dict:
    """The keyword arguments of ``build_model`` (and of the saved model's card)."""
    options = {}
    if settings["base_channels"] is not None:
        options[WIDTH_OPTION[settings["model"]]] = settings["base_channels"]
    if settings["encoder"]:
        options[ENCODER_OPTION[settings["model"]]] = settings["encoder"]
    if settings["pretrained"] is not None:
        options["pretrained"] = settings["pretrained"]
    return options


def print_settings(settings: dict, world_size: Optional[int] = None) -> None:
    print("settings:")
    for key, value in settings.items():
        print(f"  {key:<20} {value}")
    if world_size is not None:
        print(f"  {'processes':<20} {world_size}")


def print_result(split: str, result: dict, class_names: Sequence[str]) -> None:
    print(f"{split}: mIoU {result['mean_iou']:.4f}  pixel accuracy "
          f"{result['pixel_accuracy']:.4f}  mean Dice {result['mean_dice']:.4f}")
    for name, iou in zip(class_names, result["iou"]):
        shown = "  n/a (absent)" if iou is None or math.isnan(iou) else f"{100 * iou:6.1f} %"
        print(f"    {name:<12} {shown}")


def folder_splits(root: str, train_transform, eval_transform, *,
                  train_images: Optional[int], eval_images: Optional[int]):
    """Train, val and test of a folder in CamVid's layout, read as it is (``--camvid-root``).

    Returns:
        :class:`segtut.profiles.Splits`; SYNTHETIC scenes are marked as such in ``source``.
    """
    from torch.utils.data import Subset

    from segtut.data import CamVid
    from segtut.profiles import Splits

    datasets = {}
    for split, transform, limit in (("train", train_transform, train_images),
                                    ("val", eval_transform, eval_images),
                                    ("test", eval_transform, eval_images)):
        dataset = CamVid(root, split, transform, cache=True)
        datasets[split] = dataset if limit is None or limit >= len(dataset) else \
            Subset(dataset, range(limit))
    synthetic = bool(getattr(datasets["train"], "is_synthetic", False)
                     or getattr(getattr(datasets["train"], "dataset", None), "is_synthetic", False))
    source = f"{root}: " + ", ".join(f"{split} {len(d)}" for split, d in datasets.items()) + \
        (" images (SYNTHETIC scenes, NOT CamVid: the scores mean nothing)" if synthetic
         else " images")
    return Splits(datasets["train"], datasets["val"], datasets["test"], source=source,
                  synthetic=synthetic)


def tracked_params(settings: dict, context, source: str, model) -> dict:
    """What MLflow records about the run (the library versions are added by the Tracker)."""
    skip = ("data_dir", "camvid_root", "output_dir", "track", "experiment", "resume", "progress")
    params = {key: value for key, value in settings.items()
              if key not in skip and value is not None}
    params.update(device=str(context.device), world_size=context.world_size, dataset=source,
                  weights=getattr(model, "weights_source", "unknown"),
                  parameters=sum(p.numel() for p in model.parameters()))
    return params


def train(settings: dict) -> dict:
    """Run the training the settings describe; returns ``{"val": ..., "test": ...}`` results."""
    import torch

    from segtut.data import CLASS_NAMES, IGNORE_INDEX, NUM_CLASSES
    from segtut.distributed import (cleanup, init_distributed, is_distributed, shard_loader,
                                    unwrap, wrap_model)
    from segtut.losses import build_loss
    from segtut.models import build_model
    from segtut.models.library import AuxLoss, TorchvisionSegmentation
    from segtut.profiles import camvid_for_profile, load_camvid_splits, run_card
    from segtut.saved_model import save_model
    from segtut.tracking import Tracker
    from segtut.train import evaluate, fit, one_cycle_schedule, seed_everything
    from segtut.transforms import EvalTransform, train_transforms

    context = init_distributed(device=settings["device"])
    main = context.is_main
    say = print if main else (lambda *args, **kwargs: None)
    try:
        folder = Path(settings["output_dir"]) / settings["run_name"]
        if main:
            print_settings(settings, context.world_size)
            folder.mkdir(parents=True, exist_ok=True)
        if is_distributed() and not settings["camvid_root"]:
            # The main process finds (or downloads) CamVid first; the others then read it.
            if main:
                camvid_for_profile(settings["profile"], settings["data_dir"],
                                   train_images=settings["train_images"],
                                   eval_images=settings["eval_images"],
                                   scratch=folder / "synthetic")
        if is_distributed():
            torch.distributed.barrier()
        seed_everything(settings["seed"])
        image_size = settings["image_size"]
        transforms = (train_transforms(image_size, crop_size=settings["crop_size"],
                                       ignore_index=IGNORE_INDEX), EvalTransform(image_size))
        if settings["camvid_root"]:
            splits = folder_splits(settings["camvid_root"], *transforms,
                                   train_images=settings["train_images"],
                                   eval_images=settings["eval_images"])
        else:
            splits = load_camvid_splits(
                settings["profile"], *transforms, train_images=settings["train_images"],
                eval_images=settings["eval_images"], data_dir=settings["data_dir"],
                scratch=folder / "synthetic", log=say)
        workers, batch = settings["num_workers"], settings["batch_size"]
        train_loader = shard_loader(splits.train, batch, train=True, seed=settings["seed"],
                                    num_workers=workers, drop_last=True)
        if len(train_loader) == 0:
            raise SystemExit(f"The training split has {len(splits.train)} images, fewer than "
                             f"one batch of {batch} per process x {context.world_size} "
                             "processes: lower --batch-size or use more images.")
        val_loader = shard_loader(splits.val, batch, train=False, num_workers=workers,
                                  drop_last=False)
        test_loader = shard_loader(splits.test, batch, train=False, num_workers=workers,
                                   drop_last=False)

        seed_everything(settings["seed"])  # the same initial weights on every process
        options = model_options(settings)
        try:
            model = build_model(settings["model"], NUM_CLASSES, **options)
        except ValueError as problem:  # e.g. --pretrained for a model trained from scratch
            raise SystemExit(f"Cannot build {settings['model']!r} with {options}: {problem}")
        model = model.to(context.device)
        loss_fn = build_loss(settings["loss"], ignore_index=IGNORE_INDEX)
        if isinstance(model, TorchvisionSegmentation):  # DeepLabV3's auxiliary head learns too
            loss_fn = AuxLoss(loss_fn, model)
        say(run_card(settings["profile"], {k: settings[k] for k in (
            "image_size", "crop_size", "epochs", "batch_size", "lr", "loss")},
            source=splits.source, device=context.device, seed=settings["seed"], model=model,
            pretrained=getattr(model, "weights_source", None)))
        trained = wrap_model(model, context, sync_batchnorm=settings["sync_batchnorm"])
        optimizer = torch.optim.AdamW(trained.parameters(), lr=settings["lr"],
                                      weight_decay=settings["weight_decay"])
        # One scheduler step per optimiser step: accumulation makes fewer of them.
        steps = math.ceil(len(train_loader) / settings["accumulation_steps"])
        if settings["max_steps_per_epoch"]:
            steps = min(steps, settings["max_steps_per_epoch"])
        scheduler = one_cycle_schedule(optimizer, total_steps=settings["epochs"] * steps,
                                       max_lr=settings["lr"])

        tracker = Tracker(settings["experiment"], run_name=settings["run_name"],
                          output_dir=settings["output_dir"], enabled=settings["track"] and main,
                          tags={"script": "scripts/train.py"})
        with tracker:
            tracker.log_params(tracked_params(settings, context, splits.source, model))
            checkpoint = folder / CHECKPOINT_NAME
            history = fit(
                trained, train_loader, val_loader, loss_fn=loss_fn, optimizer=optimizer,
                scheduler=scheduler, epochs=settings["epochs"], device=context.device,
                seed=settings["seed"], num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX,
                amp=settings["amp"], amp_dtype=settings["amp_dtype"],
                time_budget_s=settings["time_budget_s"],
                max_steps_per_epoch=settings["max_steps_per_epoch"],
                checkpoint_path=checkpoint, resume=settings["resume"],
                progress=settings["progress"] and main, log=say if main else None,
                class_names=CLASS_NAMES, accumulation_steps=settings["accumulation_steps"],
                channels_last=settings["channels_last"], compile=settings["compile"],
                select_best=settings["select_best"],
                best_checkpoint_path=folder / BEST_NAME if settings["select_best"] else None,
                patience=settings["patience"], on_epoch_end=tracker.log_epoch)

            amp = context.device.type == "cuda" if settings["amp"] is None else settings["amp"]
            results = {}
            for split, loader in (("val", val_loader), ("test", test_loader)):
                results[split] = evaluate(trained, loader, context.device,
                                          num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX,
                                          amp=amp, progress=False,
                                          class_names=CLASS_NAMES, warn=main)
            if main:
                for split, result in results.items():
                    print_result(split, result, CLASS_NAMES)
                    tracker.log_result(split, result, CLASS_NAMES)
                card = save_model(
                    folder / MODEL_FOLDER, unwrap(trained), architecture=settings["model"],
                    options=options, class_names=CLASS_NAMES, image_size=settings["crop_size"]
                    or image_size, input_size=image_size,
                    metrics={f"{split}_mean_iou": result["mean_iou"]
                             for split, result in results.items()},
                    extra={"script": "scripts/train.py", "profile": settings["profile"],
                           "epochs": len(history), "dataset": splits.source,
                           "settings": {key: value for key, value in settings.items()
                                        if key not in ("data_dir", "camvid_root",
                                                       "output_dir")}})
                print(f"saved the model to {card.parent}")
                (folder / "history.json").write_text(json.dumps(history, indent=1))
                if settings["track"]:
                    _log_figures(tracker, history, results, CLASS_NAMES)
                    tracker.log_artifact(folder / "history.json")
                    tracker.log_artifact(card.parent)
                    print(f"logged to MLflow: experiment {settings['experiment']!r}, run "
                          f"{tracker.run_id} in {tracker.tracking_uri}")
        return results
    finally:
        cleanup()


def _log_figures(tracker, history, results, class_names) -> None:
    import matplotlib

    matplotlib.use("Agg")  # scripts draw into files, never windows
    import matplotlib.pyplot as plt

    from segtut import viz

    figures = {"history.png": viz.plot_history(history, show_lr=True),
               "iou_val_test.png": viz.plot_iou_bars(
                   results["val"]["iou"], class_names=class_names, title="Per-class IoU",
                   compare={"test": results["test"]["iou"]}, label="val")}
    for name, figure in figures.items():
        figure = getattr(figure, "figure", figure)  # an Axes -> its Figure
        tracker.log_figure(figure, name)
        plt.close(figure)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    settings = resolve(args, p.error)
    if args.dry_run:
        print_settings(settings)
        print("dry run: nothing was loaded or trained.")
        return 0
    train(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
