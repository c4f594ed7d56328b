"""Time segtut's ConfusionMatrix against torchmetrics' MulticlassJaccardIndex on CPU.

One CamVid-sized batch: 8 label maps of 360x480, 11 classes, about 4% void pixels (label 11).
Each timed call is reset + update + compute of one metric object, after warm-up calls; the
median of several repeats is reported, with torch's default number of threads and with one
thread. Both metrics must give the same per-class IoU.

Run from the repository root::

    python benchmarks/metric_speed.py

Exits with status 1 if segtut is less than 2x faster than torchmetrics with its default
settings (``validate_args=True``) at either thread count, or if the two disagree.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torchmetrics
from torchmetrics.classification import MulticlassJaccardIndex

from segtut.metrics import ConfusionMatrix

NUM_CLASSES = 11
IGNORE_INDEX = 11
SHAPE = (8, 360, 480)
VOID_FRACTION = 0.04
REQUIRED_SPEEDUP = 2.0


def make_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random int64 predictions and targets ``SHAPE``, about 4% of the targets void."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, NUM_CLASSES, SHAPE, generator=generator)
    targets[torch.rand(SHAPE, generator=generator) < VOID_FRACTION] = IGNORE_INDEX
    predictions = torch.randint(0, NUM_CLASSES, SHAPE, generator=generator)
    return predictions, targets


def median_seconds(function, repeats: int, warmup: int) -> float:
    """Median wall time of ``function()`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    predictions, targets = make_inputs()
    ours = ConfusionMatrix(NUM_CLASSES, ignore_index=IGNORE_INDEX)

    def run_ours():
        ours.reset()
        ours.update(predictions, targets)
        return ours.compute()

    def torchmetrics_runner(average, validate_args=True):
        metric = MulticlassJaccardIndex(num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX,
                                        average=average, validate_args=validate_args)

        def run():
            metric.reset()
            metric.update(predictions, targets)
            return metric.compute()
        return run

    # Same answers first: per-class IoU (every class is present here) and mean IoU.
    our_iou = torch.tensor(run_ours()["iou"], dtype=torch.float64)
    reference_iou = torchmetrics_runner(None)().double()
    reference_mean = float(torchmetrics_runner("macro")())
    same = (torch.allclose(our_iou, reference_iou, rtol=1e-5, atol=1e-7)
            and abs(float(our_iou.mean()) - reference_mean) < 1e-5)

    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, "
          f"{torch.get_num_threads()} torch threads by default, load average "
          f"{os.getloadavg()[0]:.1f} (other processes share the cpus)")
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"torchmetrics {torchmetrics.__version__}")
    print(f"inputs: int64 predictions and targets {SHAPE}, {NUM_CLASSES} classes, "
          f"ignore_index={IGNORE_INDEX} on {float((targets == IGNORE_INDEX).double().mean()):.1%} "
          f"of targets; median of {args.repeats} runs after {args.warmup} warm-up runs")
    print(f"per-class IoU identical: {same} "
          f"(max |difference| {float((our_iou - reference_iou).abs().max()):.2e})")

    default_threads = torch.get_num_threads()
    ratios = []
    for threads in dict.fromkeys([default_threads, 1]):  # torch's default, then one thread
        torch.set_num_threads(threads)
        print(f"-- torch.set_num_threads({threads})")
        ours_time = median_seconds(run_ours, args.repeats, args.warmup)
        print(f"{'segtut ConfusionMatrix':<72} {ours_time * 1e3:8.1f} ms")
        for average, validate_args in [(None, True), ("macro", True), (None, False)]:
            seconds = median_seconds(torchmetrics_runner(average, validate_args),
                                     args.repeats, args.warmup)
            label = f"torchmetrics MulticlassJaccardIndex(average={average!r}"
            label += ")" if validate_args else ", validate_args=False)"
            print(f"{label:<72} {seconds * 1e3:8.1f} ms   ratio {seconds / ours_time:5.1f}x")
            if validate_args:  # the required speed-up is against torchmetrics' defaults
                ratios.append(seconds / ours_time)
    torch.set_num_threads(default_threads)

    ratio = min(ratios)
    print(f"speed-up against torchmetrics defaults: {ratio:.1f}x (required: "
          f"{REQUIRED_SPEEDUP:.0f}x)")
    if not same:
        print("FAIL: segtut and torchmetrics give different per-class IoUs.")
        return 1
    if ratio < REQUIRED_SPEEDUP:
        print(f"FAIL: segtut is only {ratio:.2f}x faster than torchmetrics, below the required "
              f"{REQUIRED_SPEEDUP:.0f}x. Look for extra passes over the pixels in "
              "ConfusionMatrix.update (boolean gathering, repeated validation).")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
