"""Joint image + mask transforms, built on ``torchvision.transforms.v2``.

An image and its mask must move together: the same random scale, crop and flip. torchvision's
v2 transforms do this when the pair is passed as ``(tv_tensors.Image, tv_tensors.Mask)``, and
they resize ``Mask`` tensors with nearest-neighbour interpolation, so no new labels are invented
at object borders. Colour jitter and normalisation touch the image only.

Input: ``tv_tensors.Image`` uint8 ``(3, H, W)`` and ``tv_tensors.Mask`` int64 ``(H, W)``.
Plain tensors are wrapped first (:func:`as_image_and_mask`): torchvision passes a plain mask
tensor through its geometric transforms *unchanged*, so a crop of the image would no longer
match its labels. A plain integer tensor ``(H, W)`` or ``(1, H, W)`` becomes a ``Mask``; a float
"mask" is refused.
Output: float32 ``(3, h, w)`` normalised image, int64 ``(h, w)`` mask.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def as_image_and_mask(image: Any, mask: Any = None) -> tuple:
    """Wrap a plain image and mask as ``tv_tensors.Image`` and ``tv_tensors.Mask``.

    torchvision's v2 transforms move a ``Mask`` with the image but pass a plain tensor through
    untouched: ``train_transforms(...)(Image(img), mask_tensor)`` would scale and crop the image
    and return the mask as it was. Every segtut transform therefore calls this first.

    Args:
        image: ``tv_tensors.Image``, a plain tensor ``(C, H, W)`` (uint8 or float) or a PIL image.
        mask: ``tv_tensors.Mask``, a plain integer (or bool) tensor ``(H, W)`` or ``(1, H, W)``,
            a PIL image of class ids (mode "L", "P", "I"), or None (image only).

    Returns:
        ``(Image, Mask)``, or ``(Image,)`` when ``mask`` is None.

    Raises:
        TypeError: a float mask (class ids must be integers), or an input of another type.
        ValueError: a mask that is neither ``(H, W)`` nor ``(1, H, W)``.
    """
    image = _as_image(image)
    if mask is None:
        return (image,)
    return image, _as_mask(mask)


def _as_image(image: Any) -> tv_tensors.Image:
    if isinstance(image, tv_tensors.Image):
        return image
    if isinstance(image, tv_tensors.TVTensor):
        raise TypeError(f"Expected the image first, got a {type(image).__name__}: call "
                        "transform(image, mask).")
    if isinstance(image, torch.Tensor):
        return tv_tensors.Image(image)
    if _is_pil(image):
        return tv_tensors.Image(F.pil_to_tensor(image))
    raise TypeError(f"Expected the image as a tv_tensors.Image, a (C, H, W) tensor or a PIL "
                    f"image, got {type(image).__name__}. Convert it, e.g. "
                    "tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1)).")


def _as_mask(mask: Any) -> tv_tensors.Mask:
    if _is_pil(mask):
        if mask.mode not in ("L", "P", "I", "I;16"):
            raise TypeError(f"A PIL mask in mode {mask.mode!r} is not a map of class ids (an "
                            "RGB colour mask?): convert the colours to class ids first.")
        mask = F.pil_to_tensor(mask)[0].long()  # (H, W)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"Expected the mask as a tv_tensors.Mask or an integer tensor (H, W), "
                        f"got {type(mask).__name__}. Wrap it: "
                        "tv_tensors.Mask(torch.as_tensor(mask, dtype=torch.int64)).")
    if isinstance(mask, tv_tensors.TVTensor) and not isinstance(mask, tv_tensors.Mask):
        raise TypeError(f"Expected the mask second, got a {type(mask).__name__}: call "
                        "transform(image, mask).")
    if mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"The mask is a {mask.dtype} tensor, but masks hold integer class ids "
                        "(resized nearest-neighbour). Convert it with mask.long() and wrap it "
                        "as tv_tensors.Mask; if it holds probabilities, it is not a label map.")
    if not (mask.ndim == 2 or (mask.ndim == 3 and mask.shape[0] == 1)):
        raise ValueError(f"A mask must be (H, W) or (1, H, W), got size {tuple(mask.shape)}"
                         + (" (an RGB colour mask? convert colours to class ids first)"
                            if mask.ndim == 3 and mask.shape[0] in (3, 4) else "") + ".")
    return mask if isinstance(mask, tv_tensors.Mask) else tv_tensors.Mask(mask)


def _is_pil(value: Any) -> bool:
    try:
        from PIL import Image as PILImage
    except ImportError:  # pragma: no cover - Pillow comes with torchvision
        return False
    return isinstance(value, PILImage.Image)


class JointCompose(v2.Compose):
    """``v2.Compose`` for ``(image, mask)`` pairs: plain tensors are wrapped first
    (:func:`as_image_and_mask`), so they can never be transformed apart."""

    def forward(self, *inputs: Any) -> Any:
        if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)) and len(inputs[0]) == 2:
            return super().forward(as_image_and_mask(*inputs[0]))  # transform((image, mask))
        if len(inputs) not in (1, 2):
            raise TypeError(f"Call the transform with (image, mask) or (image,), got "
                            f"{len(inputs)} arguments.")
        wrapped = as_image_and_mask(*inputs)
        return super().forward(*wrapped)


def _to_model_input() -> list:
    """uint8 image -> normalised float32 image; mask -> int64. Masks pass through untouched."""
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
                   scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]


def train_transforms(size: tuple[int, int], *, ignore_index: int, scale: tuple[float, float] = (0.75, 1.25),
                     crop_size: tuple[int, int] | None = None, jitter: float = 0.2) -> JointCompose:
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
    return JointCompose(steps + _to_model_input())


def resize_transforms(size: tuple[int, int]) -> JointCompose:
    """Resize image and mask to ``size`` (mask nearest-neighbour), then normalise."""
    return JointCompose([v2.Resize(size, antialias=True)] + _to_model_input())


class EvalTransform:
    """Resize the image to the model's input ``size``; keep the mask at its native size.

    Metrics are computed at the label's own resolution: the model's logits are upsampled to the
    mask, never the mask downsampled to the logits.

    Args:
        size: ``(height, width)`` of the model input; an int resizes the shorter side to it
            and keeps the aspect ratio (data sets whose images have many shapes: evaluate
            them with ``batch_size=1``); None keeps the image as it is.
    """

    def __init__(self, size: tuple[int, int] | int | None):
        if isinstance(size, int):
            size = (size,)  # torchvision: one number = the shorter side
        self.size = size
        self.to_input = v2.Compose(_to_model_input())

    def __call__(self, image: tv_tensors.Image, mask: Optional[tv_tensors.Mask] = None):
        """``(image, mask)`` -> normalised image at ``size``, mask unchanged (int64); plain
        tensors are wrapped first (:func:`as_image_and_mask`). ``(image,)`` -> the image only."""
        wrapped = as_image_and_mask(image, mask)
        image = wrapped[0]
        if self.size is not None:
            image = tv_tensors.Image(F.resize(image, list(self.size), antialias=True))
        if mask is None:
            return self.to_input(image)
        return self.to_input(image, wrapped[1])

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size})"
