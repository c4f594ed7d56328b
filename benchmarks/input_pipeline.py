"""Is data loading ever the bottleneck? CamVid's input pipeline against the U-Net's training.

The pipeline is chapter 3's: :func:`segtut.profiles.load_camvid_splits` (PNG decoding and mask
checks, or decoded files from the cache) with :func:`segtut.transforms.train_transforms` (random
rescale around 180x240, random 128x160 crop, flip, colour jitter, normalise), batched by a
shuffling ``DataLoader`` of 8. Its throughput (images/s, no model) is measured with
``num_workers`` 0 and 2 and the cache off and on (on: every file decoded once beforehand). The
model's throughput is chapter 3's U-Net (16 base channels) training on the same crops held in
memory (:func:`segtut.train.train_one_epoch`, AdamW, cross-entropy), in images/s.

Ratio = pipeline images/s / model images/s:

* ``num_workers=0``: loading and training take turns in one process, so the times add up; the
  table gives the share of each step spent loading, ``model / (pipeline + model)`` in rates.
* ``num_workers>0``: workers load while the model trains; below 1 the model waits for data (data
  is the bottleneck). On a machine with few cores the workers also take cores from the model,
  which this separate measurement does not show (``cpu_training_speed.py`` times them together).

Run from the repository root (``SEGTUT_DATA_DIR`` = the folder that holds ``camvid/``)::

    python benchmarks/input_pipeline.py --markdown input_pipeline.md
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time

import torch

import report
import workload as wl

MODEL = "unet"


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


def pipeline_images_per_second(loader, batches: int, repeats: int) -> tuple[float, float, int]:
    """Median images/s of drawing ``batches`` batches from ``loader`` (after an untimed first
    batch: worker start-up), median seconds to that first batch, and the batches timed.

    Every repeat starts a fresh iterator, as every epoch does without ``persistent_workers``.
    """
    batches = min(batches, len(loader) - 1)
    if batches < 1:
        raise SystemExit(f"The loader has {len(loader)} batch(es); timing after the first "
                         "batch needs at least 2. Use more images.")
    rates, first = [], []
    for _ in range(repeats):
        iterator = iter(loader)
        start = time.perf_counter()
        next(iterator)
        first.append(time.perf_counter() - start)
        images = 0
        start = time.perf_counter()
        for batch_images, _ in itertools.islice(iterator, batches):
            images += batch_images.shape[0]
        rates.append(images / (time.perf_counter() - start))
        del iterator  # shuts the workers down before the next repeat
    return statistics.median(rates), statistics.median(first), batches


def verdict(workers: int, ratio: float) -> str:
    """What the ratio of pipeline to model images/s means for this number of workers."""
    if workers == 0:
        return f"loading takes {1 / (1 + ratio):.0%} of each step (times add up)"
    if ratio < 1:
        return "data is the bottleneck (the model waits)"
    return f"model-bound: data {ratio:.1f}x faster than needed (before sharing cores)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=None,
                        help="timed batches per run (default: one epoch minus the first)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed training steps of the model per run (10)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs, median (3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed model steps (3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the main process (default: torch's; --quick: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings, seconds (smoke test); results mean nothing")
    parser.add_argument("--markdown", default=None, help="also write the output to this file")
    args = parser.parse_args()
    defaults = (dict(steps=2, repeats=1, warmup=1, threads=1) if args.quick
                else dict(steps=10, repeats=3, warmup=3, threads=torch.get_num_threads()))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    workload = wl.QUICK if args.quick else wl.CHAPTER3_CPU

    progress("loading CamVid (cache off and cache on; filling the cache)")
    splits = {"off": wl.load_splits(workload, cache=False, log=progress),
              "on": wl.load_splits(workload, cache=True, log=lambda line: None)}
    wl.fill_cache(splits["on"].train)
    epoch_batches = wl.steps_per_epoch(splits["on"].train, workload)
    batches = args.batches if args.batches is not None else epoch_batches - 1
    settings = {"model": MODEL, **workload.describe(), "batches": batches,
                "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
                "threads": args.threads, "quick": args.quick}
    lines = report.header_lines("Input pipeline vs model: is data the bottleneck?", settings)
    lines.append(f"data: {splits['on'].source}")
    torch.set_num_threads(args.threads)

    progress(f"{MODEL}: training throughput on crops in memory")
    model = wl.new_model(MODEL)
    loss_fn = wl.loss_function()
    step = wl.median_step_seconds(model, wl.fixed_batches(splits["on"].train, workload,
                                                          args.steps),
                                  wl.optimizer_for(model, workload), loss_fn, steps=args.steps,
                                  warmup=args.warmup, repeats=args.repeats)
    model_rate = workload.batch_size / step

    rows = []
    for cache in ("off", "on"):
        for workers in (0, 2):
            progress(f"pipeline: cache {cache}, num_workers={workers}")
            loader = wl.train_loader(splits[cache].train, workload, num_workers=workers)
            rate, first, timed = pipeline_images_per_second(loader, batches, args.repeats)
            ratio = rate / model_rate
            rows.append([cache, workers, f"{rate:.1f}", f"{model_rate:.1f}", f"{ratio:.2f}",
                         verdict(workers, ratio), f"{first:.2f}", timed])
    lines += ["", f"Pipeline: decode (cache off) + train_transforms + collate, batches of "
              f"{workload.batch_size}, no model. Model: {MODEL} training steps on crops in "
              f"memory ({args.threads} torch thread(s)). Ratio = pipeline images/s / model "
              "images/s.", ""]
    lines += report.markdown_table(
        ["cache", "num_workers", "pipeline images/s", "model images/s", "ratio pipeline/model",
         "meaning", "first batch s (untimed)", "batches timed"], rows)
    lines += ["", "Cache on: every file decoded once beforehand in the main process (as from "
              "epoch 2 of a num_workers=0 run); workers forked afterwards inherit it. A real "
              "run with num_workers>0 and no persistent_workers refills the cache in new "
              "workers every epoch, so it behaves like cache off."]
    report.emit(lines, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
