"""Export a segmentation model to ONNX, check it against PyTorch, and time both.

>>> path = export_onnx(model, "unet.onnx")                      # dynamic batch, height, width
>>> check_parity(model, path, [torch.randn(1, 3, 181, 243), torch.randn(2, 3, 96, 130)])
{'max_abs_diff': 4.7e-07, 'argmax_agreement': 1.0, ...}
>>> pd.DataFrame(onnx_speed(model, path, sizes=[(180, 240)], batch_sizes=(1, 8)))

The ONNX file has one input ``images`` float32 ``(batch, 3, height, width)`` and one output
``logits`` float32 ``(batch, num_classes, height, width)``; all three sizes are dynamic, so one
file serves any batch and any image size the model itself accepts.

Which exporter. PyTorch 2.14 has two: ``torch.onnx.export(..., dynamo=True)``, the default
since PyTorch 2.9 and the only one still developed, captures the model with ``torch.export``
and needs the ``onnxscript`` package; ``dynamo=False`` is the older TorchScript tracer,
deprecated. :func:`export_onnx` uses the dynamo exporter (``exporter="dynamo"``) and keeps the
tracer as ``exporter="torchscript"`` for the two models below that need it. Neither exporter can
be trusted blindly with dynamic sizes:

* the tracer records the Python ``if`` it happened to take at the example size. A model that pads
  its input to a multiple of 32 (``PadToMultiple``, every smp model) exported at a multiple of
  32 has no padding in its graph, and fails or returns the wrong shape at other sizes;
* the dynamo exporter, when ``torch.export`` cannot prove the model's shape arithmetic for
  every size, quietly re-exports with the restrictions it suggests (a batch of 1, heights that
  are multiples of 4). :func:`export_onnx` refuses a file whose input sizes were fixed that way,
  but a restriction that keeps the sizes symbolic can only be seen by running the file.

So always run :func:`check_parity` on batches of two sizes that are not multiples of 32, and two
batch sizes, before using an exported file.

Every registered model (``segtut.models.MODELS``; random weights, ``pretrained=False``, small
widths: ``base_channels=8`` for unet and the FCNs, defaults otherwise, zero-initialised layers
given small random weights so the logits are not all equal) exported at 1x3x64x96 with dynamic
batch, height and width (opset 18; torch 2.14.1, onnx 1.23, onnxscript 0.7.2, onnxruntime 1.32;
one thread), then compared with PyTorch on batches 1x3x67x93 and 2x3x96x130. "pass": largest
absolute logit difference < 1e-3 and the same argmax at > 99.9 % of the pixels (every pass had
100 %).

================  ====================  ======================================================
model             dynamo (default)      torchscript tracer
================  ====================  ======================================================
unet              pass (3e-08)          pass (3e-08)
fcn8s             pass (7e-09)          pass (7e-09)
fcn8s_separable   pass (7e-09)          pass (7e-09)
fc_densenet56     pass (7e-06)          pass (7e-06)
fc_densenet67     pass (8e-06)          pass (8e-06)
fc_densenet103    pass (1e-05)          pass (1e-05)
smp_unet          pass (9e-06)          pass (9e-06)
smp_fpn           FAIL (a)              FAIL at 64x96 (b); pass (9e-06) exported at 70x90
smp_segformer     FAIL (c)              FAIL at 64x96 (d); pass (4e-06) exported at 70x90
deeplabv3         pass (1e-08)          pass (1e-08)
mobilenetv2_unet  pass (9e-08)          pass (9e-08)
densenet_unet     pass (3e-06)          pass (3e-06)
pspnet            FAIL (e)              FAIL (f)
================  ====================  ======================================================

(a) The export succeeds, but onnxruntime fails at 67x93 ("Attempting to broadcast an axis by a
    dimension other than 1. 5 by 6" in an Add of the FPN), as if the graph did not pad. Exported at
    70x90 instead, ``torch.export`` itself fails ("Cannot create Dim with inconsistent min=0,
    max=-256" while solving PadToMultiple's ``-height % 32`` constraints).
(b) The same onnxruntime error: the tracer took PadToMultiple's no-padding branch at 64x96.
(c) ``export_onnx`` refuses the file: the exporter fixed the batch to 1 (it had also assumed
    heights and widths that are multiples of 4: a 67x93 input gave 64x92 logits). At 70x90
    ``torch.export`` fails as in (a).
(d) 64x92 logits for a 67x93 input: no padding in the traced graph.
(e) pspnet with ``backbone="resnet18"``: no error at 1x3x67x93, then onnxruntime fails at
    2x3x96x130 ("invalid index found" in a GatherND node), probably in the pyramid's adaptive
    pooling (the model's only size-dependent pooling; not traced further). Exported with
    ``dynamic=False`` at 64x96 it passes (9e-07) at that size.
(f) The export fails: "ONNX export of operator adaptive_avg_pool2d, input size not accessible".

For smp_fpn and smp_segformer, use ``export_onnx(model, path, exporter="torchscript",
input_size=(1, 3, 180, 240))`` (any height and width that are not multiples of 32) and check
parity. The cause is ``PadToMultiple.forward`` in ``segtut.models.library`` (a Python ``if`` on
the padding and a crop computed from it), not the smp models themselves: smp_unet goes through
the same wrapper and passes because its decoder resizes to each skip's size.

``onnx``, ``onnxruntime`` and ``onnxscript`` are imported inside the functions, so ``segtut``
imports without them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from segtut.measure import latency_ms

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18  # the dynamo exporter's own default; onnxruntime >= 1.14 runs it
EXPORTERS = ("dynamo", "torchscript")
# The ranges declared to torch.export for the dynamic sizes (dynamo exporter).
MAX_BATCH, MIN_SIZE, MAX_SIZE = 1024, 8, 8192


def _require(module: str, purpose: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{purpose} needs the {module!r} package, which is not installed. "
                          f"Install it with `python -m pip install {module}` (it is listed in "
                          "segtut's requirements.txt).")


def export_onnx(model: nn.Module, path: Union[str, Path], *,
                input_size: Sequence[int] = (1, 3, 180, 240), opset: int = DEFAULT_OPSET,
                dynamic: bool = True, exporter: str = "dynamo") -> Path:
    """Write ``model`` (in eval mode) to an ONNX file and return its path.

    Args:
        model: maps images ``(N, 3, H, W)`` to logits ``(N, C, H, W)``, on the CPU. Its mode
            (train or eval) is restored afterwards.
        path: the ``.onnx`` file to write (the folder is created). The weights are stored in the
            file itself, not in a separate ``.data`` file.
        input_size: the example input ``(N, 3, H, W)`` the export runs once. With
            ``dynamic=True`` it fixes nothing, but pick a height and width that are NOT
            multiples of 32 so a model that pads (every smp model) is exported with its padding
            branch; ``export_onnx`` does not check this for you, :func:`check_parity` does.
        opset: the ONNX operator set version.
        dynamic: make batch, height and width dynamic; ``False`` fixes them to ``input_size``.
        exporter: ``"dynamo"`` (``torch.export``-based, needs ``onnxscript``) or
            ``"torchscript"`` (the deprecated tracer); see the module docstring.

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Raises:
        ImportError: ``onnx`` (or ``onnxscript`` for the dynamo exporter) is not installed.
        RuntimeError: ``dynamic=True`` but the exporter fixed the batch, height or width of
            the input (the file is deleted); torch's own export errors pass through unchanged.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"Unknown exporter {exporter!r}. Valid choices: {', '.join(EXPORTERS)}.")
    _require("onnx", "ONNX export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(*input_size)
    was_training = model.training
    model.eval()
    try:
        if exporter == "dynamo":
            _require("onnxscript", "The dynamo ONNX exporter (torch.onnx.export(dynamo=True))")
            dynamic_shapes = None
            if dynamic:
                dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH),
                                   2: torch.export.Dim("height", min=MIN_SIZE, max=MAX_SIZE),
                                   3: torch.export.Dim("width", min=MIN_SIZE, max=MAX_SIZE)},)
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=dynamic_shapes, external_data=False, verbose=False)
        else:
            axes = {0: "batch", 2: "height", 3: "width"}
            dynamic_axes = {INPUT_NAME: axes, OUTPUT_NAME: axes} if dynamic else None
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes=dynamic_axes)
    finally:
        model.train(was_training)
    if dynamic:
        fixed = _fixed_dimensions(path)
        if fixed:
            path.unlink()  # a file that looks dynamic but is not must not be used by accident
            raise RuntimeError(
                f"{path}: the exporter fixed {', '.join(fixed)} of the input instead of keeping "
                f"it dynamic: {type(model).__name__}'s code only runs at some sizes once "
                "traced. Try exporter='torchscript' with a height and width that are not "
                "multiples of 32, or dynamic=False; segtut.export's docstring lists the models "
                "concerned.")
    return path


def _fixed_dimensions(onnx_path: Path) -> list[str]:
    """Which of the input's batch, height and width are numbers instead of symbols."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim  # (batch, 3, height, width)
    names = {0: "batch", 2: "height", 3: "width"}
    return [f"{name} (= {dims[axis].dim_value})" for axis, name in names.items()
            if not dims[axis].dim_param]


def onnx_session(onnx_path: Union[str, Path], *, threads: Optional[int] = None):
    """An onnxruntime ``InferenceSession`` on the CPU (``CPUExecutionProvider``).

    Args:
        onnx_path: a file written by :func:`export_onnx`.
        threads: onnxruntime's intra-op threads; None uses ``torch.get_num_threads()``, so a
            comparison with PyTorch runs both on the same number of cores.
    """
    _require("onnxruntime", "Running an ONNX model")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers
    return onnxruntime.InferenceSession(str(onnx_path), options,
                                        providers=["CPUExecutionProvider"])


def onnx_predict(session, images: torch.Tensor) -> torch.Tensor:
    """Logits ``(N, C, H, W)`` float32 of ``images`` ``(N, 3, H, W)`` from an ONNX session."""
    array = images.detach().to("cpu", torch.float32).contiguous().numpy()
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: array})
    return torch.from_numpy(logits)


def check_parity(model: nn.Module, onnx_path: Union[str, Path],
                 images: Union[torch.Tensor, Sequence[torch.Tensor]], *,
                 threads: Optional[int] = None) -> dict:
    """Compare the ONNX model's logits with PyTorch's on each batch of ``images``.

    Pass batches of at least two sizes (and two batch sizes) to check that the dynamic shapes
    work, e.g. ``[torch.randn(1, 3, 67, 93), torch.randn(2, 3, 96, 130)]``.

    Args:
        model: the PyTorch model the file was exported from (run in eval mode, on the CPU; its
            mode is restored afterwards).
        onnx_path: the exported file.
        images: one batch ``(N, 3, H, W)`` or a sequence of batches of any sizes.
        threads: onnxruntime's threads (see :func:`onnx_session`).

    Returns:
        ``{"max_abs_diff": float, "argmax_agreement": float, "shapes": [...]}``: the largest
        absolute logit difference over all batches, the fraction of pixels (over all batches)
        whose predicted class is the same, and the input shapes checked. A difference around
        1e-6 is float rounding; agreement below 1.0 at such differences means near-ties.

    Raises:
        RuntimeError: onnxruntime cannot run a batch (e.g. a size the export fixed), or the
            output shape differs from PyTorch's; the message names the shape.
    """
    batches = [images] if isinstance(images, torch.Tensor) else list(images)
    session = onnx_session(onnx_path, threads=threads)
    max_diff, same, pixels = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            with torch.no_grad():
                expected = model(batch.to("cpu", torch.float32))  # (N, C, H, W)
            try:
                got = onnx_predict(session, batch)
            except Exception as error:  # onnxruntime's own exception types vary by version
                raise RuntimeError(f"onnxruntime failed on input {tuple(batch.shape)} with "
                                   f"{onnx_path}: {error}") from error
            if got.shape != expected.shape:
                raise RuntimeError(f"{onnx_path} returned {tuple(got.shape)} for input "
                                   f"{tuple(batch.shape)}; PyTorch returns "
                                   f"{tuple(expected.shape)}.")
            max_diff = max(max_diff, (got - expected).abs().max().item())
            same += (got.argmax(1) == expected.argmax(1)).sum().item()
            pixels += expected.shape[0] * expected.shape[2] * expected.shape[3]
    finally:
        model.train(was_training)
    return {"max_abs_diff": max_diff, "argmax_agreement": same / pixels,
            "shapes": [tuple(batch.shape) for batch in batches]}


def onnx_speed(model: nn.Module, onnx_path: Union[str, Path], *,
               sizes: Sequence[Sequence[int]] = ((180, 240), (360, 480)),
               batch_sizes: Sequence[int] = (1, 8), warmup: int = 3, repeats: int = 10,
               threads: Optional[int] = None) -> list[dict]:
    """Forward-pass latency of PyTorch and onnxruntime on the CPU, side by side.

    Each runtime is timed with :func:`segtut.measure.latency_ms` (median of ``repeats`` calls
    after ``warmup``; PyTorch in eval mode under ``no_grad``) on the same random batch, with the
    same number of threads.

    Args:
        model: the PyTorch model (on the CPU) the file was exported from.
        onnx_path: the exported file (dynamic shapes, so every size and batch runs).
        sizes: input ``(H, W)`` sizes.
        batch_sizes: images per forward pass.
        warmup, repeats: as in :func:`segtut.measure.latency_ms`.
        threads: threads for both runtimes; None uses ``torch.get_num_threads()``.

    Returns:
        One dict per (size, batch): ``{"input": "HxW", "batch": N, "threads": T,
        "PyTorch ms": median, "PyTorch ms p10": ..., "PyTorch ms p90": ...,
        "ONNX Runtime ms": median, "ONNX Runtime ms p10": ..., "ONNX Runtime ms p90": ...,
        "ONNX Runtime speed-up": PyTorch ms / ONNX Runtime ms}`` (times per batch, not per
        image); ``pandas.DataFrame(rows)`` makes the table.
    """
    threads = threads or torch.get_num_threads()
    session = onnx_session(onnx_path, threads=threads)
    rows = []
    for size in sizes:
        for batch_size in batch_sizes:
            images = torch.randn(batch_size, 3, *size)
            pytorch = latency_ms(model, images, warmup=warmup, repeats=repeats, threads=threads)
            onnx = latency_ms(lambda batch: onnx_predict(session, batch), images, warmup=warmup,
                              repeats=repeats, threads=threads)
            rows.append({"input": "x".join(map(str, size)), "batch": batch_size,
                         "threads": threads, "PyTorch ms": pytorch["median"],
                         "PyTorch ms p10": pytorch["p10"], "PyTorch ms p90": pytorch["p90"],
                         "ONNX Runtime ms": onnx["median"], "ONNX Runtime ms p10": onnx["p10"],
                         "ONNX Runtime ms p90": onnx["p90"],
                         "ONNX Runtime speed-up": pytorch["median"] / onnx["median"]})
    return rows
