"""The model registry: every architecture of the series, built by name.

>>> model = build_model("unet", num_classes=11, base_channels=16)

Each entry is a function ``(num_classes, **options) -> nn.Module`` whose model maps images
``(N, 3, H, W)`` to logits ``(N, num_classes, H, W)`` at the input size.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from segtut.models.unet import UNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
}


def build_model(name: str, num_classes: int, **options) -> nn.Module:
    """Build a registered model by name, e.g. ``build_model("unet", 11, base_channels=32)``."""
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Valid choices: {', '.join(sorted(MODELS))}.")
    return MODELS[name](num_classes=num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
