"""One rank of the two-process test in test_distributed.py (started as a script, as torchrun would).

Reads torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) from the environment,
trains :func:`tiny_model` with :func:`segtut.train.fit` on its shard of :func:`dataset`, and
writes what the test compares to ``<out>/rank<RANK>.pt``. The test imports the same builders
for its single-process reference run.
"""

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

IGNORE = 255
NUM_CLASSES = 3
PER_RANK_BATCH = 2
ACCUMULATION = 2
EPOCHS = 2
SEED = 3
SHUFFLE_SEED = 5


def dataset(count: int, seed: int) -> TensorDataset:
    """8x8 images whose red channel tells the class; row 0 void, so every image has the same
    number of labelled pixels (then the mean loss of 2B images is the mean of two B means)."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, NUM_CLASSES, (count, 4, 4), generator=generator)
    masks = masks.repeat_interleave(2, 1).repeat_interleave(2, 2)  # (N, 8, 8)
    masks[:, 0, :] = IGNORE
    images = torch.randn(count, 3, 8, 8, generator=generator) * 0.3
    images[:, 0] += masks.clamp(max=NUM_CLASSES - 1).float() - 1.0
    return TensorDataset(images, masks)


def tiny_model() -> torch.nn.Module:
    """No BatchNorm: its batch statistics would differ between B and 2B images."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, NUM_CLASSES, 1))


def train_data() -> TensorDataset:
    return dataset(16, seed=1)


def val_data() -> TensorDataset:
    return dataset(5, seed=2)  # odd: 3 + 2 samples on two ranks, 3 + 3 if padded


def fit_kwargs() -> dict:
    from segtut.losses import build_loss

    return dict(loss_fn=build_loss("ce", ignore_index=IGNORE), epochs=EPOCHS,
                device=torch.device("cpu"), seed=SEED, num_classes=NUM_CLASSES,
                ignore_index=IGNORE, progress=False, log=None,
                accumulation_steps=ACCUMULATION, select_best="val_mean_iou")


def optimizer_of(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)


def main(out: Path) -> None:
    from segtut import distributed
    from segtut.train import evaluate, fit

    torch.set_num_threads(1)
    context = distributed.init_distributed(device="cpu")
    assert distributed.is_distributed() and context.world_size == 2
    model = distributed.wrap_model(tiny_model(), context)
    train_loader = distributed.shard_loader(train_data(), PER_RANK_BATCH, train=True,
                                            seed=SHUFFLE_SEED)
    val_loader = distributed.shard_loader(val_data(), PER_RANK_BATCH, train=False)
    rows = []
    history = fit(model, train_loader, val_loader, optimizer=optimizer_of(model),
                  checkpoint_path=out / f"checkpoint{context.rank}.pt",
                  on_epoch_end=rows.append, **fit_kwargs())
    kwargs = dict(num_classes=NUM_CLASSES, ignore_index=IGNORE, progress=False, warn=False)
    result = evaluate(model, val_loader, context.device, **kwargs)
    # The counter-example: DistributedSampler pads 5 samples to 3 + 3, one counted twice.
    padded = DataLoader(val_data(), batch_size=PER_RANK_BATCH,
                        sampler=DistributedSampler(val_data(), shuffle=False))
    padded_result = evaluate(model, padded, context.device, **kwargs)
    torch.save({"weights": distributed.unwrap(model).state_dict(), "history": history,
                "rows": rows, "confusion": result["confusion"],
                "padded_confusion": padded_result["confusion"],
                "shard": list(val_loader.sampler), "is_main": context.is_main},
               out / f"rank{context.rank}.pt")
    distributed.cleanup()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
