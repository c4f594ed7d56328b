"""Self-describing model files: the weights as safetensors plus a JSON card that says how to use them.

A trained model is only useful with what surrounds it: which architecture and options rebuild it,
which class each output channel is, the colours to draw them in, the normalisation the images
need, and the size the model was trained at. :func:`save_model` writes all of it into one folder::

    my_model/
        model.safetensors   the weights (a state dict; tensors only, no pickled code)
        model.json          the card: everything else, readable by people and programs

and :func:`load_model` rebuilds the model from the card and loads the weights::

    >>> saved = load_model("my_model")            # the folder, the card or the weights file
    >>> model, card = saved                       # a SavedModel unpacks like a tuple
    >>> prediction = saved.predict("street.png")  # normalisation etc. come from the card

Nothing is unpickled: the card is JSON and the weights are safetensors, so loading a file from
someone else can run no code. Every failure (a file that is missing, empty, truncated, tampered
with, foreign, or whose weights do not fit its architecture) raises :class:`ModelFileError`
naming the file and saying what to do.

Resume checkpoints written by :func:`segtut.train.save_checkpoint` (``torch.save`` files) do not
say which architecture they hold; ``load_model(path, architecture=..., options=...)`` loads them
with ``torch.load(weights_only=True)``, which only accepts tensors and plain containers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import torch
from torch import nn

from segtut.data import CLASS_NAMES, IGNORE_INDEX, PALETTE
from segtut.transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CARD_NAME", "WEIGHTS_NAME", "FORMAT", "FORMAT_VERSION", "ModelFileError", "ModelCard",
    "SavedModel", "save_model", "load_model", "read_card", "default_palette", "infer_pad_multiple",
]

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
#: The ``"format"`` entry of every card; a JSON file without it is not a segtut card.
FORMAT = "segtut-model"
#: Version of the card layout; a newer card than this code understands is refused.
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A model file is missing, unreadable, tampered with, or not a segtut model."""


def _error(path: Path, problem: str, what_to_do: str) -> ModelFileError:
    return ModelFileError(f"Cannot load the model {path}: {problem}. {what_to_do}")


@dataclasses.dataclass
class ModelCard:
    """Everything needed to rebuild and use a model, stored as ``model.json`` next to the weights.

    Attributes:
        architecture: name in :data:`segtut.models.MODELS`.
        options: keyword arguments of :func:`segtut.models.build_model` (``pretrained`` aside:
            loading always builds with ``pretrained=False`` and then loads the saved weights).
        num_classes: number of output channels (classes, void not included).
        class_names: one name per class, in channel order.
        palette: RGB colour per class, then the void colour last (``num_classes + 1`` colours).
        ignore_index: label of void pixels in the training masks.
        mean, std: per-channel normalisation of ``image / 255`` the model was trained with.
        image_size: ``(height, width)`` of the training images (or crops).
        input_size: ``(height, width)`` every image is resized to before the model at inference
            (what ``EvalTransform(size)`` did during evaluation), or None to run at the image's
            own size.
        pad_multiple: inputs are padded to a multiple of this (the model's total stride).
        metrics: scores of the saved model, e.g. ``{"val_mean_iou": 0.41}`` (NaN stored as null).
        extra: anything else (JSON-serialisable).
        versions: library versions that wrote the file.
        created: ISO 8601 date and time (UTC) of the save.
        weights_file: file name of the weights, in the card's folder.
        weights_sha256: SHA-256 of the weights file, checked on every load.
        format, format_version: :data:`FORMAT` and :data:`FORMAT_VERSION`.
    """

    architecture: str
    options: dict
    num_classes: int
    class_names: list
    palette: list
    ignore_index: int
    mean: list
    std: list
    image_size: Optional[list]
    input_size: Optional[list]
    pad_multiple: int
    metrics: dict
    extra: dict
    versions: dict
    created: str
    weights_file: str
    weights_sha256: str
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {"format": data.pop("format"), "format_version": data.pop("format_version"), **data}

    def to_json(self) -> str:
        """The card as JSON text: one entry per line, each value on that line."""
        entries = [f"  {json.dumps(key)}: {json.dumps(value, allow_nan=False)}"
                   for key, value in self.to_dict().items()]
        return "{\n" + ",\n".join(entries) + "\n}\n"

    @classmethod
    def from_dict(cls, data: Any, path: Path) -> "ModelCard":
        """Check a parsed card and build it; ``path`` is only used in error messages."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise _error(path, "this JSON file is not a segtut model card (no "
                         f'"format": "{FORMAT}" entry)',
                         "Pass the folder (or model.json) written by segtut.saved_model.save_model.")
        version = data.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise _error(path, f"the card has format_version {version!r}, this segtut reads "
                         f"version {FORMAT_VERSION} and older", "Update segtut.")
        names = {field.name for field in dataclasses.fields(cls)}
        missing = sorted(name for name in names if name not in data)
        if missing:
            raise _error(path, f"the card lacks the entries {missing}",
                         "The card was edited or cut short: save the model again.")
        card = cls(**{name: data[name] for name in names})
        checks = [
            (isinstance(card.architecture, str), "architecture must be a string"),
            (isinstance(card.options, dict), "options must be a JSON object"),
            (isinstance(card.num_classes, int) and card.num_classes > 0,
             "num_classes must be a positive integer"),
            (isinstance(card.class_names, list) and len(card.class_names) == card.num_classes,
             "class_names must list num_classes names"),
            (isinstance(card.palette, list) and len(card.palette) == card.num_classes + 1,
             "palette must hold num_classes + 1 colours (void last)"),
            (isinstance(card.mean, list) and len(card.mean) == 3 and isinstance(card.std, list)
             and len(card.std) == 3, "mean and std must hold 3 numbers each"),
            (isinstance(card.pad_multiple, int) and card.pad_multiple > 0,
             "pad_multiple must be a positive integer"),
            (isinstance(card.weights_file, str) and Path(card.weights_file).name == card.weights_file,
             "weights_file must be a file name in the card's folder"),
            (isinstance(card.weights_sha256, str) and len(card.weights_sha256) == 64,
             "weights_sha256 must be a SHA-256 hex digest"),
        ]
        for ok, rule in checks:
            if not ok:
                raise _error(path, f"the card is invalid: {rule}",
                             "The card was edited by hand: restore it or save the model again.")
        for key in ("palette", "image_size", "input_size"):
            value = getattr(card, key)
            if value is not None:
                setattr(card, key, [list(v) if isinstance(v, list) else v for v in value])
        return card


class SavedModel(NamedTuple):
    """A loaded model (in eval mode, on the requested device) and its card.

    Unpacks like a tuple: ``model, card = load_model(path)``.
    """

    model: nn.Module
    card: ModelCard

    def predict(self, image, **options):
        """:func:`segtut.inference.predict_image` with the card's normalisation, input size and
        stride; ``options`` (``tile``, ``flip``, ...) are passed on.

        Returns:
            :class:`segtut.inference.Prediction`: labels int64 ``(H, W)``, probabilities float32
            ``(C, H, W)`` at the image's own size.
        """
        from segtut.inference import predict_image

        return predict_image(self, image, **options)


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------

def default_palette(num_classes: int) -> list[list[int]]:
    """A colour per class (PASCAL VOC's colour map, skipping its black), then black for void."""
    colours = []
    index = 1
    while len(colours) < num_classes:
        red = green = blue = 0
        value = index
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours.append([red, green, blue])
        index += 1
    return colours + [[0, 0, 0]]


def infer_pad_multiple(model: nn.Module) -> int:
    """The size a model's inputs should be divisible by.

    :class:`~segtut.models.library.PadToMultiple` models say it (``.multiple``); a
    :class:`~segtut.models.unet.UNet` halves the size once per ``Down`` block; anything else gets
    32, the total stride of the usual five-stage encoders (padding more than needed costs a
    little time, never accuracy).
    """
    multiple = getattr(model, "multiple", None)
    if isinstance(multiple, int) and multiple > 0:
        return multiple
    downs = getattr(model, "downs", None)
    if isinstance(downs, nn.ModuleList):
        return 2 ** len(downs)
    return 32


def _jsonable(value: Any) -> Any:
    """Tensors, arrays, tuples and NumPy numbers as JSON values; NaN and infinities as null."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # NumPy arrays and scalars
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{value!r} ({type(value).__name__}) cannot be stored in a JSON card.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict:
    import safetensors
    import torchvision

    import segtut

    return {"segtut": segtut.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}


def _build(architecture: str, num_classes: int, options: dict) -> nn.Module:
    """``build_model`` with random weights: ``pretrained=False`` where the builder takes it."""
    from segtut.models import MODELS, build_model

    options = dict(options)
    if architecture in MODELS and "pretrained" in inspect.signature(MODELS[architecture]).parameters:
        options["pretrained"] = False
    return build_model(architecture, num_classes, **options)


def _tensors_of(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory or are not contiguous: store plain copies.
    return {name: tensor.detach().to("cpu").contiguous().clone()
            for name, tensor in model.state_dict().items()}


def save_model(folder: str | Path, model: nn.Module, *, architecture: str, options: dict,
               class_names: Sequence[str], palette: Optional[Sequence[Sequence[int]]] = None,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               image_size: Optional[Sequence[int]], input_size: Optional[Sequence[int]] = None,
               ignore_index: int = IGNORE_INDEX, pad_multiple: Optional[int] = None,
               metrics: Optional[dict] = None, extra: Optional[dict] = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/model.json`` (see :class:`ModelCard`).

    The card is checked before anything is written: the model is rebuilt from ``architecture``
    and ``options`` and the weights must load into it exactly, so a card that could not rebuild
    its model fails now, not when someone tries to use it. Both files are written to temporary
    names and renamed, so an interrupted save never leaves a half-written model.

    Args:
        folder: created if needed; a model already there is replaced.
        model: the trained model (any device).
        architecture, options: what rebuilds it, ``build_model(architecture, num_classes,
            **options)``. ``pretrained`` may be among the options: it is ignored on loading.
        class_names: one name per output channel; their number is ``num_classes``.
        palette: RGB colours, one per class and then the void colour; ``num_classes`` colours get
            black appended for void; None: CamVid's palette for CamVid's classes, else
            :func:`default_palette`.
        mean, std: the normalisation of the training images.
        image_size: ``(height, width)`` of the training images or crops (None if unknown).
        input_size: ``(height, width)`` to resize images to at inference, or None for native size.
        ignore_index: label of void pixels in the training masks.
        pad_multiple: stride to pad inputs to; None: :func:`infer_pad_multiple`.
        metrics, extra: JSON-serialisable dicts (tensors, arrays and NumPy numbers are converted).

    Returns:
        The card's path, ``folder / "model.json"``.

    Raises:
        ModelFileError: the architecture and options do not rebuild ``model``.
        ValueError: inconsistent class names, palette, mean or std.
        TypeError: a value of ``options``, ``metrics`` or ``extra`` is not JSON-serialisable.
    """
    folder = Path(folder)
    class_names = [str(name) for name in class_names]
    num_classes = len(class_names)
    if palette is None:
        palette = PALETTE if tuple(class_names) == CLASS_NAMES else default_palette(num_classes)
    palette = [[int(channel) for channel in colour] for colour in palette]
    if len(palette) == num_classes:
        palette.append([0, 0, 0])
    if len(palette) != num_classes + 1 or any(len(colour) != 3 for colour in palette):
        raise ValueError(f"palette has {len(palette)} colours for {num_classes} classes; give one "
                         "RGB colour per class, then optionally the void colour.")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need one value per RGB channel, got {mean} and {std}.")
    options = _jsonable(dict(options))
    tensors = _tensors_of(model)

    # The card must rebuild the model: build a fresh one and load the weights strictly.
    try:
        _build(architecture, num_classes, options).load_state_dict(tensors, strict=True)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ModelFileError(
            f"Refusing to save to {folder}: build_model({architecture!r}, {num_classes}, "
            f"**{options}) does not rebuild this model ({str(error).splitlines()[0]}). Pass the "
            "architecture and options the model was built with, and one class name per output "
            "channel.") from None

    from safetensors.torch import save_file

    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"Cannot save the model to {folder}: it is a file. Choose "
                                 "another folder name or remove the file.")
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_NAME
    temporary_weights = folder / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(temporary_weights), metadata={"format": "pt", "written_by": "segtut"})
    card = ModelCard(
        architecture=architecture, options=options, num_classes=num_classes,
        class_names=class_names, palette=palette, ignore_index=int(ignore_index),
        mean=[float(v) for v in mean], std=[float(v) for v in std],
        image_size=None if image_size is None else [int(v) for v in image_size],
        input_size=None if input_size is None else [int(v) for v in input_size],
        pad_multiple=int(pad_multiple or infer_pad_multiple(model)),
        metrics=_jsonable(dict(metrics or {})), extra=_jsonable(dict(extra or {})),
        versions=_versions(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        weights_file=WEIGHTS_NAME, weights_sha256=_sha256(temporary_weights))
    card_path = folder / CARD_NAME
    temporary_card = folder / (CARD_NAME + ".tmp")
    temporary_card.write_text(card.to_json(), encoding="utf-8")
    # Weights first: a crash between the two renames leaves an old card whose checksum fails,
    # never a card that silently describes other weights.
    os.replace(temporary_weights, weights)
    os.replace(temporary_card, card_path)
    return card_path


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _kind(path: Path) -> str:
    """What a file holds, from its first bytes: "json", "safetensors", "torch" or "unknown"."""
    size = path.stat().st_size
    if size == 0:
        raise _error(path, "the file is empty (0 bytes)",
                     "The save was interrupted or the copy failed: copy or save it again.")
    with open(path, "rb") as file:
        head = file.read(16)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"  # torch.save's zip archive, or a bare pickle (protocol 2+)
    if len(head) >= 9:
        header_bytes = int.from_bytes(head[:8], "little")
        # A header that runs past the end still marks a (truncated) safetensors file.
        if 0 < header_bytes < 1 << 30 and head[8:9] == b"{":
            return "safetensors"
    if head.lstrip()[:1] == b"{":
        return "json"
    return "unknown"


def read_card(path: str | Path) -> ModelCard:
    """Read and check a ``model.json`` card (no weights are loaded)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _error(path, "the file does not exist", "Check the path.") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _error(path, f"the card is not valid JSON ({error})",
                     "The card is damaged or cut short: restore it or save the model again.") from None
    return ModelCard.from_dict(data, path)


def _resolve(path: Path) -> tuple[Optional[Path], Optional[Path], str]:
    """``(card, weights, kind of weights)`` for a folder, a card or a weights file."""
    if path.is_dir():
        card = path / CARD_NAME
        if not card.is_file():
            contents = sorted(p.name for p in path.iterdir())[:10]
            raise _error(path, f"the folder has no {CARD_NAME} (it holds {contents or 'nothing'})",
                         "Pass the folder written by segtut.saved_model.save_model, or the "
                         "checkpoint file itself.")
        return card, None, "safetensors"
    if not path.exists():
        raise _error(path, "the file does not exist", "Check the path.")
    kind = _kind(path)
    if kind == "json":
        return path, None, "safetensors"
    if kind == "safetensors":
        for card in (path.with_suffix(".json"), path.parent / CARD_NAME):
            if card.is_file():
                return card, path, kind
        return None, path, kind
    return None, path, kind


def load_model(path: str | Path, device: str | torch.device = "cpu", *,
               architecture: Optional[str] = None, options: Optional[dict] = None,
               class_names: Optional[Sequence[str]] = None,
               image_size: Optional[Sequence[int]] = None) -> SavedModel:
    """Rebuild a saved model and load its weights, without unpickling anything.

    Args:
        path: the folder written by :func:`save_model`, its ``model.json``, or its
            ``model.safetensors``. With ``architecture`` also: a resume checkpoint of
            :func:`segtut.train.save_checkpoint`, a ``torch.save``-d state dict, or a bare
            safetensors state dict.
        device: where to put the model.
        architecture, options: only for files without a card (see ``path``); a card's own
            architecture always wins, and passing a different one is an error.
        class_names: for files without a card: one name per output channel (default: CamVid's).
        image_size: for files without a card: the training size, stored in the made-up card.

    Returns:
        :class:`SavedModel` ``(model, card)``: the model in eval mode on ``device``. For a file
        without a card, the card is made up from the arguments (ImageNet normalisation,
        CamVid's palette or :func:`default_palette`) and its ``weights_sha256`` is that of the
        file as loaded.

    Raises:
        ModelFileError: the file is missing, empty, truncated, modified since it was saved,
            not a segtut model, names an unknown architecture, or holds weights that do not fit
            the architecture; the message names the file and says what to do.
    """
    path = Path(path)
    card_path, weights_path, kind = _resolve(path)
    if card_path is not None:
        card = read_card(card_path)
        if architecture is not None and architecture != card.architecture:
            raise _error(card_path, f"its card says architecture {card.architecture!r}, not "
                         f"{architecture!r}", "Drop the architecture argument: the card knows.")
        weights_path = card_path.parent / card.weights_file
        if not weights_path.is_file():
            raise _error(weights_path, "the weights file named by the card is missing",
                         f"Keep {card.weights_file} next to {card_path.name}, as save_model wrote them.")
        if weights_path.stat().st_size == 0:
            raise _error(weights_path, "the weights file is empty (0 bytes)",
                         "The save or the copy was interrupted: copy the model folder again.")
        sha = _sha256(weights_path)
        if sha != card.weights_sha256:
            raise _error(weights_path, "its SHA-256 does not match the card (the file was changed, "
                         "truncated or replaced after saving)",
                         "Copy the model folder again from its source; never edit the weights by hand.")
        state = _read_safetensors(weights_path)
    else:
        assert weights_path is not None
        if kind == "unknown":
            raise _error(path, "it is not a segtut model (neither a JSON card, nor safetensors, "
                         "nor a torch checkpoint)",
                         "Pass the folder written by segtut.saved_model.save_model.")
        if architecture is None:
            what = ("a torch.save file (pickle), such as a resume checkpoint of "
                    "segtut.train.save_checkpoint" if kind == "torch" else
                    "a safetensors file without a model.json card")
            raise _error(path, f"it is {what}, which does not say which model it holds",
                         "Pass architecture= and options= (as given to build_model) to load it "
                         "safely, or load the folder written by segtut.saved_model.save_model.")
        state = _read_torch(path) if kind == "torch" else _read_safetensors(path)
        card = _made_up_card(path, state, architecture, options or {}, class_names, image_size)
    model = _model_from(card, state, weights_path)
    if card_path is None:
        card.pad_multiple = infer_pad_multiple(model)
    return SavedModel(model.to(device).eval(), card)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise _error(path, f"the safetensors file is damaged ({error})",
                     "Copy the model again from its source or save it again.") from None


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    """The model state of a resume checkpoint (``{"model": state, ...}``) or a bare state dict."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _error(path, f"torch.load(weights_only=True) refused it ({first})",
                     "It is truncated or holds pickled objects other than tensors; segtut does "
                     "not unpickle code. Use a checkpoint of segtut.train.save_checkpoint or a "
                     "state dict.") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not (isinstance(state, dict) and state
            and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise _error(path, "it holds no model state dict (expected a dict of tensors, or a "
                     'resume checkpoint with a "model" entry)',
                     "Use a checkpoint of segtut.train.save_checkpoint or torch.save(model.state_dict()).")
    return state


def _guess_num_classes(state: dict[str, torch.Tensor]) -> Optional[int]:
    """Output channels of the last weight of rank 4 or 2 (the usual head), or None."""
    for name in reversed(list(state)):
        if name.endswith("weight") and state[name].ndim in (2, 4):
            tensor = state[name]
            # A transposed convolution stores (in, out, kh, kw), a convolution (out, in, kh, kw).
            return int(tensor.shape[0])
    return None


def _made_up_card(path: Path, state: dict, architecture: str, options: dict,
                  class_names: Optional[Sequence[str]], image_size) -> ModelCard:
    if class_names is None:
        guessed = _guess_num_classes(state)
        class_names = (list(CLASS_NAMES) if guessed in (None, len(CLASS_NAMES))
                       else [f"class {i}" for i in range(guessed)])
    class_names = [str(name) for name in class_names]
    num_classes = len(class_names)
    palette = ([list(c) for c in PALETTE] if tuple(class_names) == CLASS_NAMES
               else default_palette(num_classes))
    return ModelCard(
        architecture=architecture, options=_jsonable(dict(options)), num_classes=num_classes,
        class_names=class_names, palette=palette, ignore_index=IGNORE_INDEX,
        mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD),
        image_size=None if image_size is None else [int(v) for v in image_size], input_size=None,
        pad_multiple=32, metrics={}, extra={"loaded_from": str(path)}, versions=_versions(),
        created=datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds"),
        weights_file=path.name, weights_sha256=_sha256(path))


def _model_from(card: ModelCard, state: dict[str, torch.Tensor], weights_path: Path) -> nn.Module:
    try:
        model = _build(card.architecture, card.num_classes, card.options)
    except (ValueError, TypeError) as error:
        raise _error(weights_path, f"build_model({card.architecture!r}, {card.num_classes}, "
                     f"**{card.options}) failed: {str(error).splitlines()[0]}",
                     "The model was saved by another version of segtut, or its card was edited: "
                     "update segtut or fix the card's architecture and options.") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0]
        raise _error(weights_path, f"its weights do not fit {card.architecture} with options "
                     f"{card.options} and {card.num_classes} classes ({detail[:300]})",
                     "Pass the architecture, options and class names the model was trained "
                     "with.") from None
    return model
