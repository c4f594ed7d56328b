"""Training speed on the CPU: what each usual trick buys for chapter 3's workload.

For each model (chapter 3's U-Net with 16 base channels and library models), training steps of
chapter 3's ``cpu`` profile (random 128x160 crops of CamVid, batches of 8, AdamW, cross-entropy
ignoring void; :mod:`workload`) are timed with :func:`segtut.train.train_one_epoch`:

* ``eager``: the baseline: eager mode, NCHW tensors, ``--threads`` torch threads (default:
  torch's default; every row but ``threads_*`` uses them), batches of real crops held in
  memory (the model alone, no data loading);
* ``channels_last``: the model and the batches in ``torch.channels_last``;
* ``compile``: ``torch.compile(model)``; the compile time (first step) is reported apart, and a
  failure is reported in the table instead of stopping the run;
* ``amp_bf16``: bfloat16 autocast (``fit(..., amp=True)`` on a CPU: convolutions and matrix
  products in bfloat16, the rest in float32), NCHW; ``amp_bf16_channels_last``: the same with
  the model and batches in ``torch.channels_last`` (chapter 16's fastest combination);
* ``threads_1`` / ``threads_2``: ``torch.set_num_threads(1)`` / ``(2)``;
* ``loader_w{0,2}_{nocache,cache}``: the real pipeline instead of batches in memory: chapter 3's
  ``DataLoader`` over :func:`segtut.profiles.load_camvid_splits`, ``num_workers`` 0 or 2, decoded
  files cached or not (see the table's notes for what "cache" means with workers);
* ``evaluate``: :func:`segtut.train.evaluate` over the val split at 180x240 (masks native
  360x480), which :func:`segtut.train.fit` runs after every epoch, against one training epoch.

Each training time is the median of ``--repeats`` runs of ``--steps`` steps after ``--warmup``
untimed steps; an epoch is 45 steps (367 training images // 8). Ratios are taken within the run.

Run from the repository root (``SEGTUT_DATA_DIR`` = the folder that holds ``camvid/``)::

    python benchmarks/cpu_training_speed.py --markdown cpu_training_speed.md

``--quick`` runs tiny settings in seconds (the smoke test's mode; without compile unless
``--techniques`` names it).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from typing import Optional

import torch
from torch.utils.data import DataLoader

import report
import workload as wl
from segtut.data import IGNORE_INDEX, NUM_CLASSES
from segtut.train import evaluate

TECHNIQUES = {
    "eager": "baseline: eager, NCHW, --threads threads, batches in memory",
    "channels_last": "model and batches in torch.channels_last",
    "compile": "torch.compile(model), default mode",
    "amp_bf16": "bfloat16 autocast (fit(..., amp=True) on a CPU), NCHW",
    "amp_bf16_channels_last": "bfloat16 autocast, model and batches in torch.channels_last",
    "threads_1": "torch.set_num_threads(1)",
    "threads_2": "torch.set_num_threads(2)",
    "loader_w0_nocache": "real pipeline, num_workers=0, cache off",
    "loader_w0_cache": "real pipeline, num_workers=0, cache on (filled)",
    "loader_w2_nocache": "real pipeline, num_workers=2, cache off",
    "loader_w2_cache": "real pipeline, num_workers=2, cache on (filled)",
    "evaluate": "evaluate() over val at image_size, per epoch",
}
DEFAULT_MODELS = "unet,smp_unet,smp_segformer"


def parse_techniques(text: Optional[str], quick: bool) -> list[str]:
    """The techniques to run: all by default (``--quick``: all but compile)."""
    if text is None:
        return [name for name in TECHNIQUES if not (quick and name == "compile")]
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TECHNIQUES]
    if unknown or not names:
        raise SystemExit(f"Unknown technique(s) {unknown or text!r} in --techniques. Valid "
                         f"choices: {', '.join(TECHNIQUES)} (comma-separated).")
    if "eager" not in names:
        names.insert(0, "eager")  # every ratio is against it
    return names


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


def loader_step_seconds(model, loader: DataLoader, optimizer, loss_fn, *, steps: int,
                        repeats: int) -> tuple[float, float, int]:
    """Median seconds per step of training from ``loader``, and median seconds to its first
    batch (worker start-up and the first batch, not timed in the steps), and steps timed.

    Every repeat starts a fresh iterator, as every epoch does without ``persistent_workers``.
    """
    steps = min(steps, len(loader) - 1)  # one batch goes to the untimed first fetch
    if steps < 1:
        raise SystemExit(f"The training loader has {len(loader)} batch(es); timing steps after "
                         "the first batch needs at least 2. Use more images.")
    per_step, first = [], []
    for _ in range(repeats):
        iterator = iter(loader)
        start = time.perf_counter()
        next(iterator)
        first.append(time.perf_counter() - start)
        seconds, done = wl.train_seconds(model, itertools.islice(iterator, steps), optimizer,
                                         loss_fn)
        per_step.append(seconds / done)
        del iterator  # shuts the workers down before the next repeat
    return statistics.median(per_step), statistics.median(first), steps


def measure_model(name: str, techniques: list[str], workload: wl.Workload, data: dict,
                  args) -> tuple[list[list], Optional[list]]:
    """Rows of the training table and the row of the evaluation table for one model."""
    loss_fn = wl.loss_function()
    batches = data["batches"]
    epoch_steps = data["epoch_steps"]
    results = {}  # technique -> (seconds per step, notes)

    def timed(model, model_batches, threads=None, amp=False):
        optimizer = wl.optimizer_for(model, workload)
        return wl.median_step_seconds(model, model_batches, optimizer, loss_fn,
                                      steps=args.steps, warmup=args.warmup,
                                      repeats=args.repeats, threads=threads, amp=amp)

    channels_last_batches = [(images.contiguous(memory_format=torch.channels_last), masks)
                             for images, masks in batches]

    eval_row = None
    for technique in techniques:
        progress(f"{name}: {technique}")
        model = wl.new_model(name)
        notes = ""
        if technique == "eager":
            seconds = timed(model, batches)
        elif technique == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            seconds = timed(model, channels_last_batches)
        elif technique == "amp_bf16":
            seconds = timed(model, batches, amp=True)
        elif technique == "amp_bf16_channels_last":
            model = model.to(memory_format=torch.channels_last)
            seconds = timed(model, channels_last_batches, amp=True)
        elif technique == "compile":
            compiled = torch.compile(model)
            optimizer = wl.optimizer_for(compiled, workload)
            try:
                start = time.perf_counter()
                wl.train_steps(compiled, batches, optimizer, loss_fn, 1)
                compile_seconds = time.perf_counter() - start
                seconds = wl.median_step_seconds(compiled, batches, optimizer, loss_fn,
                                                 steps=args.steps, warmup=args.warmup,
                                                 repeats=args.repeats)
                notes = f"compile + first step {compile_seconds:.1f} s (not in the timing)"
            except Exception as error:  # noqa: BLE001 - any failure is a result to report
                seconds, notes = None, "FAILED: " + report.one_line(error)
            finally:
                torch._dynamo.reset()  # drop the compiled graphs before the next model
        elif technique.startswith("threads_"):
            seconds = timed(model, batches, threads=int(technique.split("_")[1]))
        elif technique.startswith("loader_"):
            workers = int(technique.split("_")[1][1:])
            cached = technique.endswith("_cache")
            dataset = data["cached"].train if cached else data["uncached"].train
            optimizer = wl.optimizer_for(model, workload)
            wl.train_steps(model, batches, optimizer, loss_fn, args.warmup)  # warm the model
            loader = wl.train_loader(dataset, workload, num_workers=workers)
            seconds, first, steps = loader_step_seconds(model, loader, optimizer, loss_fn,
                                                        steps=args.steps,
                                                        repeats=args.repeats)
            notes = f"first batch {first:.2f} s (worker start + fetch, untimed)"
            if steps != args.steps:
                notes += f"; {steps} steps timed (the loader is short)"
        elif technique == "evaluate":
            val_loader = DataLoader(data["cached"].val, batch_size=8, num_workers=0)
            evaluate(model, val_loader, torch.device("cpu"), num_classes=NUM_CLASSES,
                     ignore_index=IGNORE_INDEX, loss_fn=loss_fn, progress=False, warn=False,
                     max_batches=1)  # warm-up
            eval_seconds = statistics.median(
                evaluate(model, val_loader, torch.device("cpu"), num_classes=NUM_CLASSES,
                         ignore_index=IGNORE_INDEX, loss_fn=loss_fn, progress=False,
                         warn=False)["seconds"] for _ in range(args.repeats))
            eval_row = [name, eval_seconds, len(data["cached"].val)]
            continue
        else:  # pragma: no cover - TECHNIQUES and this chain are kept in step
            raise AssertionError(technique)
        results[technique] = (seconds, notes)

    baseline = results["eager"][0]
    rows = []
    for technique, (seconds, notes) in results.items():
        if seconds is None:
            rows.append([name, technique, "-", "-", "-", "-", notes])
            continue
        rows.append([name, technique, f"{workload.batch_size / seconds:.1f}",
                     f"{seconds:.3f}", f"{seconds * epoch_steps:.1f}",
                     f"{baseline / seconds:.2f}x", notes])
    if eval_row is not None:
        model_name, eval_seconds, images = eval_row
        train_epoch = baseline * epoch_steps
        eval_row = [model_name, f"{train_epoch:.1f}", f"{eval_seconds:.1f}",
                    f"{eval_seconds / train_epoch:.2f}", f"{images / eval_seconds:.1f}"]
    return rows, eval_row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS,
                        help=f"comma-separated, of: {', '.join(wl.MODELS)}")
    parser.add_argument("--techniques", default=None,
                        help=f"comma-separated, of: {', '.join(TECHNIQUES)} (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per run (10)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs, median (3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for every row but threads_* (default: torch's; "
                             "--quick: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings, seconds (smoke test); results mean nothing")
    parser.add_argument("--markdown", default=None, help="also write the output to this file")
    args = parser.parse_args()
    quick_defaults = dict(steps=2, repeats=1, warmup=1, threads=1)
    full_defaults = dict(steps=10, repeats=3, warmup=3, threads=torch.get_num_threads())
    for key, value in (quick_defaults if args.quick else full_defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--steps and --repeats must be >= 1 and --warmup >= 0.")
    models = wl.parse_models(args.models)
    techniques = parse_techniques(args.techniques, args.quick)
    workload = wl.QUICK if args.quick else wl.CHAPTER3_CPU

    progress("loading CamVid (cache off and cache on; filling the cache)")
    data = {"cached": wl.load_splits(workload, cache=True, log=progress)}
    wl.fill_cache(data["cached"].train)
    wl.fill_cache(data["cached"].val)
    if any(t.endswith("_nocache") for t in techniques):  # the same files: no second banner
        data["uncached"] = wl.load_splits(workload, cache=False, log=lambda line: None)
    data["batches"] = wl.fixed_batches(data["cached"].train, workload, args.steps)
    data["epoch_steps"] = wl.steps_per_epoch(data["cached"].train, workload)
    settings = {"models": ",".join(models), **workload.describe(), "steps": args.steps,
                "repeats": args.repeats, "warmup": args.warmup,
                "epoch": f"{data['epoch_steps']} steps", "threads": args.threads,
                "quick": args.quick}
    lines = report.header_lines("Training speed on the CPU (chapter 3's cpu workload)",
                                settings, ("segmentation_models_pytorch", "timm"))
    lines.append(f"data: {data['cached'].source}")
    torch.set_num_threads(args.threads)

    rows, eval_rows = [], []
    for name in models:
        model_rows, eval_row = measure_model(name, techniques, workload, data, args)
        rows += model_rows
        if eval_row is not None:
            eval_rows.append(eval_row)
    lines += ["", "Training steps; speed-up = eager seconds / this technique's seconds "
              "(above 1: faster). loader_* rows include decoding and augmenting in the "
              "step; the others train on batches already in memory.", ""]
    lines += report.markdown_table(
        ["model", "technique", "images/s", "s/step",
         f"s/epoch ({data['epoch_steps']} steps)", "speed-up vs eager", "notes"], rows)
    lines += ["", "Techniques: " + "; ".join(f"{name}: {TECHNIQUES[name]}"
                                              for name in techniques) + ".",
              "Cache on (filled): every file decoded once beforehand in the main process, as "
              "from epoch 2 of a num_workers=0 run; workers forked afterwards inherit it. "
              "With num_workers>0 and no persistent_workers, a real run's cache fills in "
              "each epoch's new workers and is thrown away (every epoch is then 'cache off')."]
    if eval_rows:
        lines += ["", f"Evaluation after every epoch (fit): evaluate() over val at "
                  f"{workload.describe()['image_size']}, masks native, batch 8, cache filled; "
                  f"{args.threads} torch thread(s).", ""]
        lines += report.markdown_table(
            ["model", "train s/epoch (eager)", "evaluate s", "evaluate / train",
             "eval images/s"], eval_rows)
    report.emit(lines, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
