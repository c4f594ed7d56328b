"""Joint image + mask transforms, built on ``torchvision.transforms.v2``.

An image and its mask must move together: the same random scale, crop and flip. torchvision's
v2 transforms do this when the pair is passed as ``(tv_tensors.Image, tv_tensors.Mask)``, and
they resize ``Mask`` tensors with nearest-neighbour interpolation, so no new labels are invented
at object borders. Colour jitter and normalisation touch the image only.

Input: ``tv_tensors.Image`` uint8 ``(3, H, W)`` and ``tv_tensors.Mask`` int64 ``(H, W)``.
Output: float32 ``(3, h, w)`` normalised image, int64 ``(h, w)`` mask.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_model_input() -> list:
    """uint8 image -> normalised float32 image; mask -> int64. Masks pass through untouched."""
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
                   scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def train_transforms(size: tuple[int, int], *, ignore_index: int, scale: tuple[float, float] = (0.75, 1.25),
                     crop_size: tuple[int, int] | None = None, jitter: float = 0.2) -> v2.Compose:
    """Random scale, random crop, horizontal flip, colour jitter, normalise.

    Args:
        size: ``(height, width)`` the model sees at evaluation; sets the scale of the objects.
        ignore_index: label used to pad the mask where the crop runs past the image.
        scale: range of the random rescale, relative to ``size``.
        crop_size: ``(height, width)`` of the training crops (default: ``size``). Crops smaller
            than ``size`` keep the objects' scale while costing fewer pixels per step.
        jitter: brightness/contrast/saturation jitter strength (0 disables it).
    """
    height = size[0]
    steps = [
        # The shorter side becomes height * s, s drawn from ``scale``: zooms in and out.
        v2.RandomResize(int(height * scale[0]), int(height * scale[1]) + 1, antialias=True),
        v2.RandomCrop(crop_size or size, pad_if_needed=True,
                      fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index, "others": 0}),
        v2.RandomHorizontalFlip(),
    ]
    if jitter:
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
    return v2.Compose(steps + _to_model_input())


def resize_transforms(size: tuple[int, int]) -> v2.Compose:
    """Resize image and mask to ``size`` (mask nearest-neighbour), then normalise."""
    return v2.Compose([v2.Resize(size, antialias=True)] + _to_model_input())


class EvalTransform:
    """Resize the image to the model's input ``size``; keep the mask at its native size.

    Metrics are computed at the label's own resolution: the model's logits are upsampled to the
    mask, never the mask downsampled to the logits.
    """

    def __init__(self, size: tuple[int, int] | None):
        self.size = size
        self.to_input = v2.Compose(_to_model_input())

    def __call__(self, image: tv_tensors.Image, mask: tv_tensors.Mask):
        if self.size is not None:
            image = tv_tensors.Image(F.resize(image, list(self.size), antialias=True))
        return self.to_input(image, mask)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size})"
