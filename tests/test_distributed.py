"""Data-parallel training: two gloo processes on the CPU train and score like one process.

The key test starts two ranks of tests/ddp_worker.py (as torchrun would: RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT) and checks that per-rank batches of B (with 2-step accumulation)
train the same weights as one process with batches of 2B, and that the summed confusion
matrix over an odd number of validation samples is exactly the single-process one.
"""

import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from segtut import distributed
from segtut.train import evaluate, fit

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


def load_worker():
    spec = importlib.util.spec_from_file_location("ddp_worker", TESTS / "ddp_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_ranks(out: Path) -> float:
    port = free_port()
    processes = []
    start = time.perf_counter()
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   CUDA_VISIBLE_DEVICES="",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(SRC),
                                                            os.environ.get("PYTHONPATH")])))
        processes.append(subprocess.Popen([sys.executable, str(TESTS / "ddp_worker.py"),
                                           str(out)], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=90)[0])
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            pytest.fail("the two gloo ranks did not finish within 90 s (a hang in a collective?)")
    for rank, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, f"rank {rank} failed:\n{output[-3000:]}"
    return time.perf_counter() - start


def test_two_gloo_ranks_train_and_score_like_one_process_with_twice_the_batch(tmp_path):
    worker = load_worker()
    seconds = run_two_ranks(tmp_path)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]

    # The reference: one process, batches of 2B in the same order (the permutation of a
    # DistributedSampler of one replica is the one the two ranks interleave).
    data = worker.train_data()
    loader = DataLoader(data, batch_size=2 * worker.PER_RANK_BATCH,
                        sampler=DistributedSampler(data, num_replicas=1, rank=0, shuffle=True,
                                                   seed=worker.SHUFFLE_SEED))
    val_loader = DataLoader(worker.val_data(), batch_size=worker.PER_RANK_BATCH)
    model = worker.tiny_model()
    initial = [p.detach().clone() for p in model.parameters()]
    history = fit(model, loader, val_loader, optimizer=worker.optimizer_of(model),
                  **worker.fit_kwargs())

    for name, value in model.state_dict().items():
        assert torch.equal(ranks[0]["weights"][name], ranks[1]["weights"][name])  # in lockstep
        torch.testing.assert_close(ranks[0]["weights"][name], value, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(a, b, atol=1e-3) for a, b in zip(initial, model.parameters()))

    # Evaluation: 5 samples as 3 + 2, summed counts == the single-process matrix, exactly.
    assert ranks[0]["shard"] == [0, 2, 4] and ranks[1]["shard"] == [1, 3]
    reference = evaluate(model, val_loader, torch.device("cpu"), num_classes=3,
                         ignore_index=worker.IGNORE, progress=False, warn=False)
    assert ranks[0]["confusion"] == ranks[1]["confusion"] == reference["confusion"]
    labelled = 5 * 7 * 8  # 5 images of 8x8, one void row each
    assert sum(map(sum, reference["confusion"])) == labelled
    # DistributedSampler's padding counts one image twice: the reason for shard_loader.
    assert sum(map(sum, ranks[0]["padded_confusion"])) == labelled + 7 * 8

    # Every rank saw the same history (the val counts are summed), equal to the reference's;
    # only the main process called on_epoch_end and wrote its checkpoint.
    keys = ("epoch", "val_mean_iou", "val_pixel_accuracy", "best_epoch")
    for row, other, single in zip(ranks[0]["history"], ranks[1]["history"], history):
        assert [row[k] for k in keys] == [other[k] for k in keys]
        assert row["val_mean_iou"] == pytest.approx(single["val_mean_iou"], abs=1e-9)
    assert ranks[0]["rows"] == ranks[0]["history"] and ranks[1]["rows"] == []
    assert (tmp_path / "checkpoint0.pt").is_file() and not (tmp_path / "checkpoint1.pt").exists()
    print(f"two gloo ranks: {seconds:.1f} s including start-up")
    assert seconds < 60


def test_alone_nothing_is_distributed(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    context = distributed.init_distributed(device="cpu")
    assert (context.rank, context.world_size, context.is_main) == (0, 1, True)
    assert not distributed.is_distributed() and distributed.is_main_process()
    assert not dist.is_initialized()
    model = torch.nn.Conv2d(3, 2, 1)
    assert distributed.wrap_model(model, context, sync_batchnorm=True) is model
    counts = torch.tensor([1, 2])
    assert distributed.all_reduce_sum(counts) is counts and counts.tolist() == [1, 2]
    distributed.cleanup()  # no group: nothing to do, no error


def test_shard_loaders_alone():
    data = TensorDataset(torch.arange(7))
    evaluation = distributed.shard_loader(data, 3, train=False)
    assert [batch[0].tolist() for batch in evaluation] == [[0, 1, 2], [3, 4, 5], [6]]
    training = distributed.shard_loader(data, 3, train=True)
    torch.manual_seed(0)
    first = [batch[0].tolist() for batch in training]
    torch.manual_seed(0)
    assert [batch[0].tolist() for batch in training] == first  # the global seed decides
    assert len(first) == 2 and sorted(sum(first, [])) != list(range(6))  # shuffled, last dropped


def test_shards_cover_every_sample_once_without_padding():
    shards = [list(distributed.ShardSampler(7, rank, 3)) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shards, [])) == list(range(7))


def test_unwrap_finds_the_module_inside_wrappers():
    model = torch.nn.Linear(2, 2)
    assert distributed.unwrap(torch.nn.DataParallel(model)) is model
    assert distributed.unwrap(model) is model

    class Compiled(torch.nn.Module):  # what torch.compile returns keeps the module here
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert distributed.unwrap(Compiled(torch.nn.DataParallel(model))) is model


def test_bad_torchrun_variables_are_explained(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two'.*torchrun"):
        distributed.init_distributed(device="cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ValueError, match="RANK=5"):
        distributed.init_distributed(device="cpu")
