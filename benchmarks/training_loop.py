"""Training-loop overhead: segtut's ``fit`` and fastai's ``Learner.fit`` against a bare loop.

The same model (chapter 3's U-Net, 16 base channels), the same data (real CamVid training crops
of chapter 3's ``cpu`` profile, made once and held in memory as a ``TensorDataset``, so no loop
pays for decoding) and the same loss (segtut's cross-entropy ignoring void) train for one epoch
in each of these loops:

* ``bare``: ``for images, masks in loader: forward, loss, zero_grad, backward, step`` with
  ``torch.optim.AdamW``;
* ``segtut_fit``: :func:`segtut.train.fit` for one epoch with the same loader and AdamW; only
  its training part is timed (``history[0]["train_seconds"]``: the validation pass after the
  epoch is left out);
* ``fastai``: fastai's ``Learner(dls, model, loss_func, lr, wd).fit(1)`` with its default
  optimizer (fastai's own ``Adam`` with decoupled weight decay) and default callbacks, no
  progress bar and no logging; ``dls`` is ``DataLoaders.from_dsets`` over the same tensors.
  Only the training phase is timed (a callback reads the clock in ``before_train`` and
  ``after_train``);
* ``fastai_torch_adamw``: the same with ``opt_func=partial(OptimWrapper, opt=torch.optim.AdamW)``,
  which separates the cost of fastai's optimizer from the cost of its loop.

Every repeat builds a fresh model (same seed) for every loop, and the loops take turns within
a repeat, so a slow spell of the machine does not land on one loop only. Reported: the median
seconds per epoch and the ratio to the bare loop.

Run from the repository root (``SEGTUT_DATA_DIR`` = the folder that holds ``camvid/``)::

    python benchmarks/training_loop.py --markdown training_loop.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from functools import partial

import torch
from torch.utils.data import DataLoader, TensorDataset

import report
import workload as wl
from segtut.data import IGNORE_INDEX, NUM_CLASSES
from segtut.train import LabelWarning, fit, seed_everything

LOOPS = {
    "bare": "plain PyTorch loop, torch AdamW",
    "segtut_fit": "segtut.train.fit, 1 epoch, training part only, torch AdamW",
    "fastai": "fastai Learner.fit(1), default callbacks and optimizer (fastai Adam)",
    "fastai_torch_adamw": "fastai Learner.fit(1), opt_func=OptimWrapper(torch AdamW)",
}
MODEL = "unet"


def progress(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


def real_crops(workload: wl.Workload, count: int | None) -> tuple[TensorDataset, str]:
    """The first ``count`` CamVid training images (None: all) through chapter 3's training
    transform once, as tensors: float32 images ``(n, 3, h, w)`` and int64 masks ``(n, h, w)``."""
    splits = wl.load_splits(workload, cache=False, log=progress)
    dataset = splits.train
    count = len(dataset) if count is None else min(count, len(dataset))
    seed_everything(wl.SEED)
    pairs = [dataset[i] for i in range(count)]
    images = torch.stack([image.as_subclass(torch.Tensor) for image, _ in pairs])
    masks = torch.stack([mask.as_subclass(torch.Tensor) for _, mask in pairs])
    return TensorDataset(images, masks), splits.source


def bare_epoch(model, loader, optimizer, loss_fn) -> float:
    """Seconds of one epoch of the smallest correct training loop."""
    model.train()
    start = time.perf_counter()
    for images, masks in loader:
        loss = loss_fn(model(images), masks)  # logits (B, C, h, w), masks (B, h, w)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def segtut_epoch(model, loader, val_loader, optimizer, loss_fn) -> float:
    """Training seconds of one epoch of :func:`segtut.train.fit` (its validation left out)."""
    with warnings.catch_warnings():
        # The few validation crops lack some classes; fit says so, and it does not matter here.
        warnings.simplefilter("ignore", LabelWarning)
        history = fit(model, loader, val_loader, loss_fn=loss_fn, optimizer=optimizer, epochs=1,
                      device=torch.device("cpu"), seed=wl.SEED, num_classes=NUM_CLASSES,
                      ignore_index=IGNORE_INDEX, progress=False, log=None)
    return history[0]["train_seconds"]


def fastai_epoch(model, train_set, val_set, workload: wl.Workload, loss_fn,
                 torch_adamw: bool) -> tuple[float, int, str]:
    """Training-phase seconds and steps of fastai's ``Learner.fit(1)``, and its callbacks."""
    # Imported here: fastai takes seconds to import, and only these loops need it.
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.optimizer import OptimWrapper

    class TrainTimer(Callback):
        """Reads the clock around the training phase of each epoch (validation left out)."""

        def before_train(self):
            self.steps, self.start = 0, time.perf_counter()

        def after_batch(self):
            self.steps += int(self.training)

        def after_train(self):
            self.seconds = time.perf_counter() - self.start

    dls = DataLoaders.from_dsets(train_set, val_set, bs=workload.batch_size,
                                 device=torch.device("cpu"), num_workers=0)
    options = {"opt_func": partial(OptimWrapper, opt=torch.optim.AdamW)} if torch_adamw else {}
    timer = TrainTimer()
    learn = Learner(dls, model, loss_func=loss_fn, lr=workload.lr, wd=workload.weight_decay,
                    cbs=[timer], **options)
    bars = [cb for cb in learn.cbs if type(cb).__name__ == "ProgressCallback"]
    learn.remove_cbs(bars)  # present only when fastai's progress module was imported
    callbacks = ", ".join(type(cb).__name__ for cb in learn.cbs if cb is not timer)
    with learn.no_logging():
        learn.fit(1, lr=workload.lr)
    return timer.seconds, timer.steps, callbacks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None,
                        help="training crops per epoch (default: all 367, 45 steps)")
    parser.add_argument("--repeats", type=int, default=None, help="epochs per loop, median (3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; --quick: 1)")
    parser.add_argument("--loops", default=",".join(LOOPS),
                        help=f"comma-separated, of: {', '.join(LOOPS)} (bare is always run)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny settings, seconds (smoke test); results mean nothing")
    parser.add_argument("--markdown", default=None, help="also write the output to this file")
    args = parser.parse_args()
    defaults = (dict(repeats=1, warmup=1, threads=1) if args.quick
                else dict(repeats=3, warmup=3, threads=torch.get_num_threads()))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    loops = [name.strip() for name in args.loops.split(",") if name.strip()]
    unknown = [name for name in loops if name not in LOOPS]
    if unknown:
        raise SystemExit(f"Unknown loop(s) {unknown} in --loops. Valid choices: "
                         f"{', '.join(LOOPS)} (comma-separated).")
    loops = ["bare"] + [name for name in loops if name != "bare"]
    workload = wl.QUICK if args.quick else wl.CHAPTER3_CPU

    progress("making the training crops")
    train_set, source = real_crops(workload, args.images)
    images, masks = train_set.tensors
    val_set = TensorDataset(images[:workload.batch_size], masks[:workload.batch_size])
    loader = wl.train_loader(train_set, workload)
    val_loader = DataLoader(val_set, batch_size=workload.batch_size)
    steps = len(loader)
    if steps == 0:
        raise SystemExit(f"{len(train_set)} crops cannot fill one batch of "
                         f"{workload.batch_size}: raise --images.")
    options = ", ".join(f"{key}={value}" for key, value in wl.MODELS[MODEL][1].items())
    settings = {"model": f"{MODEL}({options})", **workload.describe(),
                "crops": len(train_set), "epoch": f"{steps} steps", "repeats": args.repeats,
                "warmup": args.warmup, "threads": args.threads, "quick": args.quick}
    lines = report.header_lines("Training-loop overhead: bare PyTorch vs segtut fit vs fastai",
                                settings, ("fastai",))
    lines.append(f"data: {source}; crops made once with chapter 3's train_transforms, held in "
                 "memory (TensorDataset), num_workers=0")
    torch.set_num_threads(args.threads)
    loss_fn = wl.loss_function()

    def fresh():
        model = wl.new_model(MODEL)
        return model, wl.optimizer_for(model, workload)

    progress("warm-up")
    model, optimizer = fresh()
    batches = [batch for _, batch in zip(range(max(1, args.warmup)), loader)]
    wl.train_steps(model, batches, optimizer, loss_fn, args.warmup)

    seconds = {name: [] for name in loops}
    notes = {name: "" for name in loops}
    for repeat in range(args.repeats):
        for name in loops:  # the loops take turns, so drift spreads over all of them
            progress(f"repeat {repeat + 1}/{args.repeats}: {name}")
            model, optimizer = fresh()
            if name == "bare":
                seconds[name].append(bare_epoch(model, loader, optimizer, loss_fn))
            elif name == "segtut_fit":
                seconds[name].append(segtut_epoch(model, loader, val_loader, optimizer, loss_fn))
            else:
                took, done, callbacks = fastai_epoch(model, train_set, val_set, workload,
                                                     loss_fn, torch_adamw=name != "fastai")
                seconds[name].append(took)
                notes[name] = f"callbacks: {callbacks}"
                if done != steps:  # the ratio would compare different amounts of work
                    notes[name] += f"; WARNING: {done} steps, not {steps}"

    bare = statistics.median(seconds["bare"])
    rows = []
    for name in loops:
        median = statistics.median(seconds[name])
        rows.append([name, f"{median:.2f}", f"{steps * workload.batch_size / median:.1f}",
                     f"{median / bare:.3f}", f"{(median - bare) / steps * 1000:+.1f}",
                     notes[name] or LOOPS[name]])
    lines += ["", "One training epoch per loop; ratio = this loop's seconds / the bare loop's "
              "(above 1: slower); overhead = extra milliseconds per step.", ""]
    lines += report.markdown_table(
        ["loop", f"s/epoch ({steps} steps)", "images/s", "ratio vs bare", "overhead ms/step",
         "notes"], rows)
    lines += ["", "Loops: " + "; ".join(f"{name}: {LOOPS[name]}" for name in loops) + "."]
    report.emit(lines, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
