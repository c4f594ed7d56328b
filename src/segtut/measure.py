"""What a model costs: parameters, FLOPs, latency, throughput and peak training memory.

Every chapter that compares architectures measures the same few things; they are measured here,
one way, so two chapters' numbers mean the same:

* :func:`count_parameters`: trainable parameters;
* :func:`gflops`: billions of floating-point operations of one forward pass, counted by
  PyTorch's :class:`torch.utils.flop_counter.FlopCounterMode` (a multiply-add counts as **2**);
* :func:`latency_ms`: the median milliseconds of a call after warm-up runs, with its spread;
* :func:`throughput`: images per second of forward passes on one batch;
* :func:`peak_memory_mib` and :func:`training_step_memory_mib`: the peak memory of one training
  step, on a GPU from CUDA's allocator statistics, on a CPU from ``torch.profiler``'s record of
  every allocation (see :func:`peak_memory_mib` for exactly what is counted);
* :func:`saved_for_backward_mib`: the activations autograd keeps for the backward pass;
* :func:`cost_table`: parameters, GFLOPs and latency of several models at several input sizes,
  as a pandas DataFrame.

Timings depend on the machine, on its other work and on ``torch.get_num_threads()``; FLOPs and
parameters do not. Report the thread count with every timing.

This module imports only torch (pandas inside :func:`cost_table`), so it can be copied alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
from torch import nn

Inputs = Union[torch.Tensor, Sequence[torch.Tensor]]


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of parameters (only those with ``requires_grad`` unless ``trainable_only=False``).

    Buffers (BatchNorm's running statistics, fixed upsampling kernels) are not parameters and are
    never counted.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _as_tuple(inputs: Inputs) -> tuple:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(module: object):
    """Put an ``nn.Module`` in eval mode for the block and restore its previous mode after."""
    if not isinstance(module, nn.Module):
        yield
        return
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@contextlib.contextmanager
def _threads(count: Optional[int]):
    """Run the block with ``count`` torch threads (unchanged when None), then restore them."""
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def gflops(model: nn.Module, input_size: Sequence[int] = (1, 3, 360, 480), *,
           inputs: Optional[Inputs] = None, train: bool = False) -> float:
    """Billions of floating-point operations of one forward pass of ``model``.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts a multiply-add as
    **two** operations (so halve the result for "MACs" or "mult-adds", the unit of many papers)
    and counts only the operators it knows (convolutions, matrix products, attention); additions,
    activations, normalisation, pooling and interpolation count as zero. The count does not
    depend on the machine or on the weights.

    Args:
        model: any module; it runs on the device of its first parameter.
        input_size: the shape of one random input, ``(N, C, H, W)``; the result is for the whole
            batch, so use ``N = 1`` for "GFLOPs per image".
        inputs: the input(s) to use instead of a random tensor of ``input_size`` (for a part of a
            network that takes features, not images).
        train: count in training mode (dropout, an auxiliary head) instead of eval mode. The
            module's own mode is restored afterwards either way.

    Returns:
        GFLOPs (1e9 operations) of the forward pass, as a float.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if inputs is None:
        inputs = torch.randn(*input_size, device=_model_device(model))
    was_training = model.training
    model.train(train)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*_as_tuple(inputs))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def _synchronize(tensors_or_devices: tuple) -> None:
    """Wait for the CUDA device of the first tensor (or device) given; nothing otherwise."""
    for item in tensors_or_devices:
        if isinstance(item, torch.Tensor):
            item = item.device
        if isinstance(item, (str, torch.device)):
            if torch.device(item).type == "cuda":
                torch.cuda.synchronize(item)
            return


def latency_ms(fn_or_model: Callable, inputs: Inputs = (), *, warmup: int = 3,
               repeats: int = 10, threads: Optional[int] = None, inference: bool = True,
               device: Union[str, torch.device, None] = None,
               clock: Callable[[], float] = time.perf_counter) -> dict:
    """Milliseconds per call of ``fn_or_model(*inputs)``: the median of ``repeats`` timed calls.

    The first ``warmup`` calls are run and thrown away (they pay for memory allocation, cuDNN's
    algorithm search and lazy initialisation). With ``inference=True`` (the default) every call
    runs under ``torch.no_grad()`` and a module is put in eval mode for the measurement, then
    given back its previous mode. On CUDA the clock is read only after
    ``torch.cuda.synchronize``, since kernels run asynchronously.

    To time a training step, pass a function that does the whole step and no inputs:
    ``latency_ms(step, inference=False, warmup=1, repeats=3, device=device)``.

    Args:
        fn_or_model: a module or any callable taking ``*inputs``.
        inputs: one tensor or a sequence of tensors, already on the right device.
        warmup: untimed calls before the measurement.
        repeats: timed calls (at least 1).
        threads: run with this many torch CPU threads (restored afterwards); None keeps the
            current ``torch.get_num_threads()``.
        inference: no gradients and eval mode (True), or run ``fn_or_model`` as it is (False).
        device: the device to synchronize; None means the device of the first tensor input.
        clock: seconds as a float; ``time.perf_counter`` (tests pass a fake one).

    Returns:
        ``{"median": ..., "p10": ..., "p90": ..., "min": ..., "max": ..., "mean": ...,
        "repeats": repeats, "threads": threads used}``, times in milliseconds. Quote the median;
        p10 to p90 shows how noisy the machine was.
    """
    if repeats < 1:
        raise ValueError(f"latency_ms needs repeats >= 1, got {repeats}.")
    inputs = _as_tuple(inputs)
    sync = (device,) if device is not None else inputs
    times = []
    mode = _eval_mode(fn_or_model) if inference else contextlib.nullcontext()
    with _threads(threads), mode, torch.set_grad_enabled(not inference and torch.is_grad_enabled()):
        for run in range(warmup + repeats):
            _synchronize(sync)
            start = clock()
            fn_or_model(*inputs)
            _synchronize(sync)
            if run >= warmup:
                times.append(1000 * (clock() - start))
        used_threads = torch.get_num_threads()
    ordered = sorted(times)

    def quantile(q: float) -> float:  # linear interpolation between the two nearest runs
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (position - low) * (ordered[high] - ordered[low])

    return {"median": statistics.median(times), "p10": quantile(0.1), "p90": quantile(0.9),
            "min": ordered[0], "max": ordered[-1], "mean": statistics.fmean(times),
            "repeats": repeats, "threads": used_threads}


def throughput(model: Callable, batch: torch.Tensor, *, warmup: int = 3, repeats: int = 10,
               threads: Optional[int] = None) -> float:
    """Images per second of forward passes on ``batch`` ``(N, C, H, W)``: N / median latency.

    Measured with :func:`latency_ms` (eval mode, no gradients, warm-up, CUDA synchronised).
    """
    timing = latency_ms(model, batch, warmup=warmup, repeats=repeats, threads=threads)
    return batch.shape[0] / (timing["median"] / 1000)


def _storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages behind ``tensors``; a storage shared by several (views) counts once."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[(tensor.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def _cpu_allocation_peak(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by PyTorch's CPU allocator during ``fn()``, above the start.

    ``torch.profiler`` with ``profile_memory=True`` records every allocation (+bytes) and release
    (-bytes); their running sum in time order is the memory ``fn`` holds at each moment.
    """
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # keep the profiler's C++ log lines quiet
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        fn()
    with tempfile.TemporaryDirectory() as folder:  # the trace is the profiler's public output
        profiler.export_chrome_trace(os.path.join(folder, "trace.json"))
        events = json.loads(Path(folder, "trace.json").read_text())["traceEvents"]
    changes = sorted((e["ts"], e["args"]["Bytes"]) for e in events if e.get("name") == "[memory]")
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak


def peak_memory_mib(fn: Callable[[], object], *, device: Union[str, torch.device] = "cpu",
                    held: Iterable[torch.Tensor] = ()) -> float:
    """Peak memory of one call ``fn()``, in MiB (2**20 bytes): ``held`` + what ``fn`` adds.

    What is counted, the same way on both devices:

    * the tensors in ``held``, counted from their sizes (pass what lives through a whole
      training run: the weights, buffers and optimizer state; a storage counts once);
    * plus the peak, over the call, of the memory ``fn`` allocates above what was allocated when
      it started (activations kept for the backward pass, gradients, temporaries).

    Tensors that existed before the call and are not in ``held`` (the input batch, other models)
    are not counted. On CUDA the peak comes from ``torch.cuda.max_memory_allocated`` after
    ``reset_peak_memory_stats`` (the caching allocator's reserved memory, which
    ``nvidia-smi`` shows, can be larger). On the CPU PyTorch keeps no peak statistic, so ``fn``
    runs under ``torch.profiler`` with ``profile_memory=True`` and the recorded allocations and
    releases are summed in time order; memory allocated outside PyTorch's allocator (by Python
    itself, NumPy, or a library with its own allocator such as oneDNN's scratch space) is not
    seen, and the profiler slows the call down (do not time it here). Other devices (Apple's MPS)
    return ``nan``.

    Args:
        fn: the work to measure, e.g. one training step; called once. Run one step before, so
            the optimizer's state exists and the measured step is a typical one.
        device: where ``fn`` allocates: ``"cpu"`` or a CUDA device.
        held: tensors to add to the peak by their sizes (see above).

    Returns:
        MiB as a float.
    """
    device = torch.device(device)
    held_bytes = _storage_bytes(held)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - start
    elif device.type == "cpu":
        peak = _cpu_allocation_peak(fn)
    else:
        return float("nan")
    return (held_bytes + peak) / 2**20


def training_step_memory_mib(model: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                             loss_fn: Callable, *, lr: float = 1e-6,
                             autocast: Optional[bool] = None) -> float:
    """Peak memory (MiB) of one AdamW training step of ``model`` on one batch.

    The weights, buffers and AdamW's two moment estimates per weight (the memory a training run
    holds all along) plus the step's own peak (activations, gradients, temporaries), measured
    with :func:`peak_memory_mib` on the model's device. One untimed step runs first to create
    AdamW's state; the model's weights change slightly (``lr``), so pass a copy you can spare.

    Args:
        model: the network, already on its device; it is put in training mode.
        images: ``(N, 3, H, W)`` float, on the model's device.
        masks: ``(N, H, W)`` int64 class ids (ignore label allowed if ``loss_fn`` ignores it).
        loss_fn: ``loss_fn(logits, masks) -> scalar``.
        lr: AdamW's learning rate (tiny: only the memory matters here).
        autocast: bfloat16 autocast as ``segtut.train.fit`` uses it; None means "on CUDA only".

    Returns:
        MiB as a float (nan on devices other than the CPU and CUDA).
    """
    device = _model_device(model)
    autocast = device.type == "cuda" if autocast is None else autocast
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model(images).float(), masks)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # creates AdamW's state
    state = [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]
    return peak_memory_mib(step, device=device,
                           held=[*model.parameters(), *model.buffers(), *state])


def saved_for_backward_mib(module: nn.Module, inputs: Inputs) -> float:
    """MiB of the tensors autograd keeps for the backward pass of ``module(*inputs)``.

    Counted with ``torch.autograd.graph.saved_tensors_hooks``: every tensor saved for backward,
    by its storage, so a tensor saved twice (or views of one) counts once, and the weights are
    left out. The module runs in its current mode (training mode shows what training keeps).
    """
    inputs = _as_tuple(inputs)
    weights = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved = {}  # storage address -> bytes

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        module(*inputs)
    return sum(saved.values()) / 2**20


def cost_table(models: dict, sizes: Sequence[Sequence[int]] = ((180, 240),), *,
               batch_size: int = 1, warmup: int = 3, repeats: int = 10,
               threads: Optional[int] = None, device: Union[str, torch.device] = "cpu"):
    """Parameters, GFLOPs and forward latency of each model at each input size.

    Args:
        models: display name -> module; each is moved to ``device``.
        sizes: input ``(H, W)`` sizes; every model is measured at each.
        batch_size: images per forward pass (GFLOPs are per image whatever the batch).
        warmup, repeats, threads: as in :func:`latency_ms`.
        device: where the models run.

    Returns:
        A pandas DataFrame indexed by ``("model", "input")`` (input as ``"HxW"``) with columns
        ``"M params"``, ``"GFLOPs / image"``, ``"ms median"``, ``"ms p10"``, ``"ms p90"``,
        ``"images/s"``. The thread count is in ``table.attrs["threads"]``.
    """
    import pandas as pd

    device = torch.device(device)
    rows = []
    used_threads = None
    for name, model in models.items():
        model = model.to(device)
        for size in sizes:
            images = torch.randn(batch_size, 3, *size, device=device)
            timing = latency_ms(model, images, warmup=warmup, repeats=repeats, threads=threads)
            used_threads = timing["threads"]
            rows.append({"model": name, "input": "x".join(map(str, size)),
                         "M params": count_parameters(model) / 1e6,
                         "GFLOPs / image": gflops(model, (1, 3, *size)),
                         "ms median": timing["median"], "ms p10": timing["p10"],
                         "ms p90": timing["p90"],
                         "images/s": batch_size / (timing["median"] / 1000)})
    table = pd.DataFrame(rows).set_index(["model", "input"])
    table.attrs["threads"] = used_threads
    return table
