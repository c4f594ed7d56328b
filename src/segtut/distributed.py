"""Data-parallel training on several GPUs (or CPU processes) with standard ``torch.distributed``.

One process per device, started by ``torchrun --nproc_per_node=N script.py``; each process runs
the same script, and these helpers turn it into a data-parallel run:

* :func:`init_distributed` reads torchrun's ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and joins
  the process group (``nccl`` on CUDA, ``gloo`` on CPU). Started plainly (no torchrun), it
  returns rank 0 of a world of 1 and creates no group, so the same script runs on a laptop.
* :func:`shard_loader` gives each rank its share of the data. Training shards are shuffled by a
  :class:`~torch.utils.data.DistributedSampler`; evaluation shards are ``dataset[rank::world]``
  and never repeat a sample (see below).
* :func:`wrap_model` wraps the model in :class:`~torch.nn.parallel.DistributedDataParallel`
  (gradients are averaged over the ranks in backward), optionally with SyncBatchNorm.
* :func:`all_reduce_sum` sums counts over the ranks: :func:`segtut.train.evaluate` sums the
  confusion matrices *before* computing IoUs. Averaging per-rank IoUs would be wrong: IoU is a
  ratio of pixel counts, and the mean of ratios is not the ratio of the summed counts.

Why evaluation shards must not repeat samples: ``DistributedSampler`` evens out the shards by
repeating indices (5 samples on 2 ranks become 3 + 3, one sample twice) or, with
``drop_last=True``, by dropping some. Either way the summed confusion matrix counts some
pixels twice or never, and the "validation mIoU" is not the one of the split. Uneven shards
(3 + 2) are fine for evaluation: no collective runs per batch, only one sum at the end.

Batches: a rank with per-rank batch ``B`` on ``W`` ranks trains with an effective batch of
``W * B`` (DDP averages the per-rank mean gradients, which equals the mean over ``W * B``
samples when every rank's loss averages the same number of pixels).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

#: Backend per device type: NCCL talks GPU to GPU; Gloo works on CPUs (and anywhere else).
BACKENDS = {"cuda": "nccl", "cpu": "gloo"}


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the run.

    Attributes:
        rank: global index of this process, ``0 .. world_size - 1``.
        local_rank: index on this machine; picks the GPU ``cuda:local_rank``.
        world_size: number of processes (1 for a plain, single-process run).
        device: the device this process trains on.
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"The environment variable {name}={value!r} is not an integer; torchrun "
                         "sets RANK, WORLD_SIZE and LOCAL_RANK to integers. Unset it to run "
                         "as a single process.") from None


def init_distributed(backend: Optional[str] = None,
                     device: Optional[str] = None) -> DistributedContext:
    """Join the process group that torchrun set up, or describe a plain single-process run.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and ``MASTER_ADDR`` / ``MASTER_PORT``
    through ``init_method="env://"``). Without ``WORLD_SIZE`` (or with 1): rank 0, world 1, no
    process group. Calling it again in the same process reuses the group.

    Args:
        backend: ``"nccl"`` or ``"gloo"``; None picks ``nccl`` for CUDA devices, else ``gloo``.
        device: e.g. ``"cpu"`` or ``"cuda"``; None picks ``cuda:LOCAL_RANK`` when CUDA is
            available, else the CPU (a single process may also get Apple's MPS).

    Returns:
        The :class:`DistributedContext` of this process.
    """
    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", rank)
    if not 0 <= rank < max(world_size, 1):
        raise ValueError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world_size}): "
                         "start the processes with torchrun, which sets both consistently.")
    if device is not None:
        chosen = torch.device(device)
        if chosen.type == "cuda" and chosen.index is None:
            chosen = torch.device("cuda", local_rank)  # one GPU per process on this machine
    elif torch.cuda.is_available():
        chosen = torch.device("cuda", local_rank)
    elif world_size == 1:
        from segtut.train import pick_device  # lazy: segtut.train imports this module

        chosen = pick_device()
    else:
        chosen = torch.device("cpu")
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)  # so NCCL and plain .cuda() use this process's GPU
    if world_size > 1 and not dist.is_initialized():
        backend = backend or BACKENDS.get(chosen.type, "gloo")
        dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                                world_size=world_size)
    return DistributedContext(rank=rank, local_rank=local_rank, world_size=world_size,
                              device=chosen)


def is_distributed() -> bool:
    """True when a process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True on rank 0, and always when not distributed."""
    return not is_distributed() or dist.get_rank() == 0


def cleanup() -> None:
    """Destroy the process group, if any (call it at the end of a torchrun script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of a data set, in order: every sample once.

    Unlike :class:`~torch.utils.data.DistributedSampler` it neither pads nor drops, so the
    shards differ in size by at most one and together hold each sample exactly once.
    """

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = range(rank, length, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def shard_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0,
                 num_workers: int = 0, drop_last: bool = True) -> DataLoader:
    """A DataLoader over this rank's share of ``dataset``.

    Args:
        batch_size: per rank; the effective batch is ``world_size * batch_size``.
        train: True: a shuffled shard, new each epoch (``DistributedSampler(shuffle=True,
            seed=seed)`` when distributed; :func:`segtut.train.fit` calls its ``set_epoch``).
            Alone, a plain ``shuffle=True`` loader, whose order comes from the global torch
            seed that ``fit`` sets every epoch, so resumed runs repeat it exactly.
            False: ``dataset[rank::world_size]``, in order, without padding or repeats, so
            summed confusion matrices count every sample exactly once.
        drop_last: drop the last incomplete training batch (ignored for evaluation, which
            always sees every sample).
    """
    pin = torch.cuda.is_available()
    if not train:
        sampler = ShardSampler(len(dataset), _rank(), _world_size())
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                          num_workers=num_workers, drop_last=False, pin_memory=pin)
    if is_distributed():
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                          num_workers=num_workers, drop_last=drop_last, pin_memory=pin)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=pin)


def _rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def wrap_model(model: nn.Module, context: DistributedContext, *,
               sync_batchnorm: bool = False) -> nn.Module:
    """Move ``model`` to the context's device and, when distributed, wrap it in DDP.

    Args:
        sync_batchnorm: replace BatchNorm layers by :class:`~torch.nn.SyncBatchNorm`, which
            computes the batch statistics over all ranks. Worth it when the per-GPU batch is
            small (segmentation often fits 2-4 images per GPU): statistics of 2 images are
            noisy, those of 2 x 8 ranks are not. Only while distributed on GPUs; a single
            process keeps its BatchNorm (the same thing there).

    Returns:
        The DDP-wrapped model (its ``.module`` is the model), or the model itself alone.
        :func:`unwrap` gets the plain model back, e.g. to save its ``state_dict``.
    """
    distributed = context.world_size > 1 and is_distributed()
    if sync_batchnorm and distributed:
        if context.device.type != "cuda":
            raise ValueError(f"sync_batchnorm=True needs GPUs: PyTorch's SyncBatchNorm only runs "
                             f"on CUDA (this rank trains on {context.device}). Use "
                             "sync_batchnorm=False on CPUs, or a model without BatchNorm.")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(context.device)
    if not distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place, and return it; alone it is left as it is.

    With NCCL the tensor must be on this rank's GPU.
    """
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``torch.compile`` / DDP / DataParallel wrappers (any nesting)."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model
