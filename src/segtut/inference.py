"""Use a trained model on any image: one image (:func:`predict_image`) or many (:func:`predict_folder`).

Training sees fixed-size, normalised crops; real images come in any size and format. Prediction
therefore:

1. reads the image (a path, a PIL image, a NumPy ``(H, W, 3)`` uint8 array or a uint8
   ``(3, H, W)`` tensor) and normalises it as in training (``(x / 255 - mean) / std``);
2. optionally resizes it to the model's input size (``input_size``), when the model was trained
   and evaluated on resized images;
3. pads it at the bottom and right to a multiple of the model's stride (``pad_multiple``) by
   reflecting the image, so the border looks like more of the same scene rather than a black
   frame, and crops the logits back (``pad_mode="constant"`` pads with zeros instead, which after
   normalisation is the mean colour);
4. optionally runs the model on overlapping tiles (``tile``), for images much larger than the
   training crops, blending the tiles' class probabilities with Gaussian weights (the centre of
   a tile, which saw the most context, counts most) or uniform weights;
5. optionally averages the class probabilities of the image and of its mirror image
   (``flip=True``, horizontal-flip test-time augmentation);
6. returns the class probabilities and the class ids at the image's own resolution. After a
   resize the log-probabilities are resized back bilinearly: for the plain model that is exactly
   ``softmax(resize(logits))``, the same as :func:`segtut.train.evaluate` scores.

Shapes: the model maps float ``(N, 3, h, w)`` to logits ``(N, C, h, w)``; :class:`Prediction`
holds int64 ``labels (H, W)`` and float32 ``probabilities (C, H, W)``, on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segtut.data import IGNORE_INDEX, DataError, list_images, read_image
from segtut.train import progress_bar, logits_of
from segtut.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "Prediction", "FolderResult", "OutputError", "as_image_tensor", "normalize_image",
    "pad_to_multiple", "window_starts", "window_weights", "predict_image", "predict_folder",
    "output_paths",
]


class Prediction(NamedTuple):
    """One image's prediction at the image's own size, on the CPU.

    Attributes:
        labels: int64 ``(H, W)``, the most probable class of each pixel.
        probabilities: float32 ``(C, H, W)``, class probabilities summing to 1 at each pixel.
    """

    labels: torch.Tensor
    probabilities: torch.Tensor


class OutputError(OSError):
    """The output folder cannot be created or written."""


# ---------------------------------------------------------------------------------------------
# Images in, tensors out
# ---------------------------------------------------------------------------------------------

def as_image_tensor(image) -> torch.Tensor:
    """Any supported image as a uint8 tensor ``(3, H, W)``.

    Args:
        image: a path (``str`` or ``Path``), a PIL image (any mode; converted to RGB), a NumPy
            uint8 array ``(H, W, 3)``, ``(H, W, 4)`` (alpha dropped) or ``(H, W)`` (grey), or a
            uint8 tensor ``(3, H, W)``.

    Raises:
        DataError: a path that is missing or not an image (the message names it).
        ValueError: an array or tensor of another dtype or shape (float images are refused
            because their scale, 0..1 or 0..255, normalised or not, cannot be told apart).
    """
    if isinstance(image, (str, Path)):
        return read_image(image).as_subclass(torch.Tensor)
    try:
        from PIL import Image
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
    except ImportError:  # pragma: no cover - pillow is a dependency
        pass
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"Expected a uint8 image array, got {image.dtype}. Convert it with "
                             "(array * 255).round().astype(np.uint8) if it holds values in [0, 1].")
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"Expected an (H, W, 3) RGB array, got shape {image.shape}.")
        return torch.from_numpy(np.array(image[..., :3])).permute(2, 0, 1)  # (3, H, W), a copy
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"Expected a uint8 tensor (3, H, W), got {image.dtype} "
                             f"{tuple(image.shape)}. Pass the image before normalisation (as a "
                             "dataset without transform returns it).")
        return image.as_subclass(torch.Tensor)
    raise ValueError(f"Cannot read an image from a {type(image).__name__}: pass a path, a PIL "
                     "image, a uint8 (H, W, 3) array or a uint8 (3, H, W) tensor.")


def normalize_image(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(3, H, W)`` -> float32 ``(1, 3, H, W)``, ``(image / 255 - mean) / std``."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=image.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=image.device).view(3, 1, 1)
    return ((image.float() / 255.0 - mean_t) / std_t).unsqueeze(0)  # (1, 3, H, W)


def pad_to_multiple(images: torch.Tensor, multiple: int, mode: str = "reflect") -> torch.Tensor:
    """Pad ``(N, C, H, W)`` at the bottom and right so H and W are multiples of ``multiple``.

    Args:
        mode: "reflect" (falls back to "replicate" when the pad is as large as the image, which
            reflection cannot do), "replicate" or "constant" (zeros).

    Returns:
        ``(N, C, H', W')``; ``padded[..., :H, :W]`` is the input unchanged.
    """
    if mode not in ("reflect", "replicate", "constant"):
        raise ValueError(f"Unknown pad mode {mode!r}; choose 'reflect', 'replicate' or 'constant'.")
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not (pad_h or pad_w):
        return images
    if mode == "reflect" and (pad_h >= height or pad_w >= width):
        mode = "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)  # (N, C, H + pad_h, W + pad_w)


# ---------------------------------------------------------------------------------------------
# Running the model
# ---------------------------------------------------------------------------------------------

def _forward(model: nn.Module, images: torch.Tensor, pad_multiple: int, pad_mode: str) -> torch.Tensor:
    """Logits ``(N, C, H, W)`` of normalised ``(N, 3, H, W)`` images, padded and cropped back."""
    height, width = images.shape[-2:]
    padded = pad_to_multiple(images, pad_multiple, pad_mode)  # (N, 3, H', W')
    logits = logits_of(model(padded)).float()  # (N, C, H', W')
    if logits.shape[-2:] != padded.shape[-2:]:
        raise ValueError(f"The model returned logits of size {tuple(logits.shape[-2:])} for an "
                         "input it should keep the size of: segtut models return logits at the "
                         "input size; wrap other models so they do.")
    return logits[..., :height, :width]  # (N, C, H, W)


def window_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of windows of length ``tile`` covering ``0 .. size`` with ``overlap``.

    Consecutive windows start ``round(tile * (1 - overlap))`` apart (at least 1); the last one
    is moved back to end exactly at ``size``. One window at 0 when ``size <= tile``.
    """
    if size <= tile:
        return [0]
    step = max(1, int(round(tile * (1.0 - overlap))))
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def window_weights(height: int, width: int, blend: str = "gaussian") -> torch.Tensor:
    """Blending weights ``(height, width)``, all positive, largest (1) at the centre.

    "gaussian": a Gaussian with sigma = 1/8 of the window size (as nnU-Net uses), so the tile
    centre, which saw the most context, dominates and seams between tiles disappear;
    "uniform": all ones (plain averaging).
    """
    if blend == "uniform":
        return torch.ones(height, width)
    if blend != "gaussian":
        raise ValueError(f"Unknown blend {blend!r}; choose 'gaussian' or 'uniform'.")

    def profile(n: int) -> torch.Tensor:
        positions = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        sigma = max(n / 8, 1e-6)
        return torch.exp(-0.5 * (positions / sigma) ** 2)

    weights = profile(height)[:, None] * profile(width)[None, :]  # (height, width)
    weights = weights / weights.max()
    # A pixel at a tile corner that no other tile covers must still count: keep weights > 0.
    return weights.clamp_min(1e-4).float()


def _sliding_probabilities(model: nn.Module, images: torch.Tensor, tile: tuple[int, int],
                           overlap: float, blend: str, pad_multiple: int, pad_mode: str,
                           batch_size: int) -> torch.Tensor:
    """Class probabilities ``(1, C, H, W)`` of ``(1, 3, H, W)``, blended over overlapping tiles."""
    height, width = images.shape[-2:]
    tile_h, tile_w = min(tile[0], height), min(tile[1], width)
    boxes = [(top, left) for top in window_starts(height, tile_h, overlap)
             for left in window_starts(width, tile_w, overlap)]
    weights = window_weights(tile_h, tile_w, blend).to(images.device)  # (tile_h, tile_w)
    total = None
    weight_sum = torch.zeros(height, width, device=images.device)
    for first in range(0, len(boxes), batch_size):
        chunk = boxes[first:first + batch_size]
        crops = torch.cat([images[..., t:t + tile_h, l:l + tile_w] for t, l in chunk])  # (n, 3, th, tw)
        probabilities = _forward(model, crops, pad_multiple, pad_mode).softmax(dim=1)  # (n, C, th, tw)
        if total is None:
            total = torch.zeros(1, probabilities.shape[1], height, width, device=images.device)
        for (top, left), tile_probabilities in zip(chunk, probabilities):
            total[0, :, top:top + tile_h, left:left + tile_w] += tile_probabilities * weights
            weight_sum[top:top + tile_h, left:left + tile_w] += weights
    return total / weight_sum  # (1, C, H, W)


def _log_probabilities(model: nn.Module, images: torch.Tensor, tile, overlap: float, blend: str,
                       pad_multiple: int, pad_mode: str, batch_size: int) -> torch.Tensor:
    """Log class probabilities ``(1, C, H, W)`` of one normalised image ``(1, 3, H, W)``."""
    if tile is None:
        return _forward(model, images, pad_multiple, pad_mode).log_softmax(dim=1)
    probabilities = _sliding_probabilities(model, images, tile, overlap, blend, pad_multiple,
                                           pad_mode, batch_size)
    return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _pair(value, name: str) -> Optional[tuple[int, int]]:
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"{name} must be (height, width) of positive integers, got {value}.")
    return value


@torch.no_grad()
def predict_image(model, image, *, mean: Optional[Sequence[float]] = None,
                  std: Optional[Sequence[float]] = None, num_classes: Optional[int] = None,
                  pad_multiple: Optional[int] = None, pad_mode: str = "reflect",
                  input_size: Optional[Sequence[int]] = None,
                  tile: Optional[Sequence[int] | int] = None, overlap: float = 0.5,
                  blend: str = "gaussian", flip: bool = False,
                  device: Optional[str | torch.device] = None, batch_size: int = 4) -> Prediction:
    """Predict the class of every pixel of one image of any size.

    Args:
        model: an ``nn.Module`` mapping ``(N, 3, h, w)`` to logits ``(N, C, h, w)``, or a
            :class:`~segtut.saved_model.SavedModel` from :func:`~segtut.saved_model.load_model`,
            whose card supplies every argument left at None below.
        image: a path, a PIL image, a uint8 NumPy ``(H, W, 3)`` array or a uint8 ``(3, H, W)``
            tensor (see :func:`as_image_tensor`).
        mean, std: the training normalisation (default: the card's, else ImageNet's).
        num_classes: if given, the model's output channels are checked against it.
        pad_multiple: pad inputs to a multiple of this (default: the card's, else 32).
        pad_mode: "reflect" (default), "replicate" or "constant" (zeros = the mean colour).
        input_size: ``(height, width)`` to resize the image to before the model (bilinear, with
            antialiasing); the result is resized back (default: the card's ``input_size``, else
            None: the image's own size).
        tile: ``(height, width)`` (or one int) of sliding windows; None runs the whole image at
            once. Use the training crop size for images much larger than it.
        overlap: fraction of a tile shared with the next one, in ``[0, 1)``.
        blend: "gaussian" or "uniform" weights for combining overlapping tiles.
        flip: also predict the mirrored image and average the two probability maps.
        device: run here; the model is moved to it. Default: where the model already is.
        batch_size: tiles per forward pass.

    Returns:
        :class:`Prediction`: labels int64 ``(H, W)`` and probabilities float32 ``(C, H, W)`` at
        the image's own size, on the CPU.

    Raises:
        DataError: ``image`` is a path that cannot be read (the message names it).
        ValueError: a bad argument, or a model with another number of classes than
            ``num_classes``.
    """
    from segtut.saved_model import SavedModel

    if isinstance(model, SavedModel):
        card = model.card
        mean = card.mean if mean is None else mean
        std = card.std if std is None else std
        num_classes = card.num_classes if num_classes is None else num_classes
        pad_multiple = card.pad_multiple if pad_multiple is None else pad_multiple
        input_size = card.input_size if input_size is None else input_size
        model = model.model
    mean = IMAGENET_MEAN if mean is None else mean
    std = IMAGENET_STD if std is None else std
    pad_multiple = 32 if pad_multiple is None else int(pad_multiple)
    tile, input_size = _pair(tile, "tile"), _pair(input_size, "input_size")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}.")
    if pad_multiple < 1:
        raise ValueError(f"pad_multiple must be a positive integer, got {pad_multiple}.")

    if device is not None:
        model.to(device)
    device = _model_device(model)
    model.eval()
    pixels = as_image_tensor(image)  # (3, H, W) uint8
    height, width = pixels.shape[-2:]
    images = normalize_image(pixels.to(device), mean, std)  # (1, 3, H, W)
    if input_size is not None and input_size != (height, width):
        images = F.interpolate(images, size=input_size, mode="bilinear", align_corners=False,
                               antialias=True)  # (1, 3, h, w)

    settings = dict(tile=tile, overlap=overlap, blend=blend, pad_multiple=pad_multiple,
                    pad_mode=pad_mode, batch_size=batch_size)
    log_probabilities = _log_probabilities(model, images, **settings)  # (1, C, h, w)
    if num_classes is not None and log_probabilities.shape[1] != num_classes:
        raise ValueError(f"The model predicts {log_probabilities.shape[1]} classes, not "
                         f"num_classes={num_classes}.")
    if flip:
        mirrored = _log_probabilities(model, images.flip(-1), **settings).flip(-1)
        # log((p + q) / 2), computed without leaving log space
        log_probabilities = torch.logaddexp(log_probabilities, mirrored) - math.log(2.0)
    if tuple(log_probabilities.shape[-2:]) != (height, width):
        log_probabilities = F.interpolate(log_probabilities, size=(height, width),
                                          mode="bilinear", align_corners=False)
    probabilities = log_probabilities.softmax(dim=1)[0].float().cpu()  # (C, H, W)
    return Prediction(probabilities.argmax(dim=0), probabilities)


# ---------------------------------------------------------------------------------------------
# Folders of images
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class FolderResult:
    """What :func:`predict_folder` did.

    Attributes:
        out_dir: the output folder.
        written: ``{input image: {"mask": colour PNG, "labels": class-id PNG, "overlay": JPEG}}``.
        failed: ``{input path: reason}`` for every image that could not be read or written.
    """

    out_dir: Path
    written: dict = dataclasses.field(default_factory=dict)
    failed: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """One line, plus one per failure."""
        lines = [f"{len(self.written)} image(s) predicted into {self.out_dir}, "
                 f"{len(self.failed)} failed."]
        lines += [f"  FAILED {path}: {reason}" for path, reason in self.failed.items()]
        return "\n".join(lines)


def output_paths(out_dir: Path, name: str) -> dict[str, Path]:
    """The three files written for an image named ``name`` (its file stem)."""
    return {"mask": out_dir / f"{name}_mask.png", "labels": out_dir / f"{name}_labels.png",
            "overlay": out_dir / f"{name}_overlay.jpg"}


def _expand(inputs: Iterable[str | Path], failed: dict) -> list[Path]:
    """Image files of ``inputs`` (folders: their images, sorted); problems go to ``failed``."""
    images: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = list_images(path)
            if not found:
                failed[path] = "the folder holds no image files (.png, .jpg, .jpeg, .bmp, .tif)"
            images.extend(found)
        elif path.exists():
            images.append(path)
        else:
            failed[path] = "no such file or folder"
    return images


def _prepare_output(out_dir: Path) -> None:
    """Create ``out_dir`` and check a file can be written there, or raise :class:`OutputError`."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".segtut-write-test-"):
            pass
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"Cannot write predictions to {out_dir}: a file is in the way (it or "
                          "one of its parents is a file, not a folder). Choose another --out "
                          "folder or move the file.") from None
    except PermissionError as error:
        raise OutputError(f"Cannot write predictions to {out_dir}: permission denied ({error}). "
                          "Choose a folder you can write to.") from None
    except OSError as error:
        raise OutputError(f"Cannot write predictions to {out_dir}: {error}. Choose another "
                          "folder.") from None


def _unique_names(images: list[Path]) -> list[str]:
    """File stems, disambiguated (``a_jpg``, ``a_png``) when two inputs share a stem."""
    stems = [p.stem for p in images]
    return [f"{p.stem}_{p.suffix.lstrip('.').lower()}" if stems.count(p.stem) > 1 else p.stem
            for p in images]


def predict_folder(model, inputs: str | Path | Iterable[str | Path], out_dir: str | Path, *,
                   palette: Optional[Sequence[Sequence[int]]] = None,
                   ignore_index: Optional[int] = None, alpha: float = 0.5,
                   progress: bool = True, **options) -> FolderResult:
    """Predict every image of ``inputs`` and write three files per image into ``out_dir``.

    For ``street.jpg``: ``street_mask.png`` (the classes in palette colours),
    ``street_labels.png`` (8-bit grey, pixel value = class id, ready to score or to use as a
    mask) and ``street_overlay.jpg`` (the colours blended over the photo). A file that cannot
    be read (or written) is skipped and recorded in :attr:`FolderResult.failed` with the reason;
    nothing stops the other images.

    Args:
        model: an ``nn.Module`` or a :class:`~segtut.saved_model.SavedModel`.
        inputs: image files and/or folders (a folder's images, not its sub-folders).
        out_dir: created if needed.
        palette: colours per class then void (default: the card's; required for a bare model
            unless it predicts CamVid's 11 classes).
        ignore_index: void label for the palette (default: the card's, else 11).
        alpha: weight of the colours in the overlay.
        progress: show a progress bar (``TQDM_DISABLE=1`` hides it too).
        options: passed to :func:`predict_image` (``tile``, ``flip``, ``device``, ...).

    Returns:
        :class:`FolderResult`.

    Raises:
        OutputError: ``out_dir`` cannot be created or written (before any prediction is made).
    """
    from PIL import Image

    from segtut.data import PALETTE
    from segtut.saved_model import SavedModel
    from segtut.viz import colorize, overlay

    if isinstance(model, SavedModel):
        palette = model.card.palette if palette is None else palette
        ignore_index = model.card.ignore_index if ignore_index is None else ignore_index
    palette = PALETTE if palette is None else palette
    ignore_index = IGNORE_INDEX if ignore_index is None else ignore_index
    if len(palette) > 256:
        raise ValueError(f"{len(palette) - 1} classes do not fit an 8-bit label PNG.")
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    out_dir = Path(out_dir)
    _prepare_output(out_dir)
    result = FolderResult(out_dir)
    images = _expand(inputs, result.failed)
    for path, name in zip(progress_bar(images, "predict", progress), _unique_names(images)):
        try:
            pixels = as_image_tensor(path)  # (3, H, W) uint8
            prediction = predict_image(model, pixels, **options)
            labels = prediction.labels.numpy().astype(np.uint8)  # (H, W)
            paths = output_paths(out_dir, name)
            Image.fromarray(colorize(labels, palette, ignore_index)).save(paths["mask"])
            Image.fromarray(labels).save(paths["labels"])  # 8-bit grey: value = class id
            Image.fromarray(overlay(pixels, labels, alpha, palette, ignore_index)).save(
                paths["overlay"], quality=90)
        except (DataError, OSError) as error:
            result.failed[path] = str(error)
            continue
        result.written[path] = paths
    return result
