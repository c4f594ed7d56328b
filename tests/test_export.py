"""segtut.export: ONNX export with dynamic batch and image size, parity with PyTorch, speed rows.

The dynamo export of the tiny U-Net takes a few seconds, so it runs once per module.
"""

import ast
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx", reason="onnx is not installed (`python -m pip install onnx`)")
pytest.importorskip("onnxruntime",
                    reason="onnxruntime is not installed (`python -m pip install onnxruntime`)")

from segtut import export  # noqa: E402
from segtut.models import build_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return build_model("unet", 3, base_channels=4).eval()


@pytest.fixture(scope="module")
def dynamic_file(tiny_unet, tmp_path_factory):
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    path = tmp_path_factory.mktemp("onnx") / "unet.onnx"
    assert export.export_onnx(tiny_unet, path, input_size=(1, 3, 75, 99)) == path
    return path


def test_export_declares_batch_height_and_width_dynamic(dynamic_file):
    import onnx

    graph = onnx.load(str(dynamic_file)).graph
    (images,), (logits,) = graph.input, graph.output
    assert (images.name, logits.name) == (export.INPUT_NAME, export.OUTPUT_NAME)
    dims = images.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1] == 3
    assert all(dims[i].dim_param for i in (0, 2, 3)), "batch, height and width must be symbolic"
    assert not list(dynamic_file.parent.glob("*.data")), "weights belong inside the .onnx file"


def test_parity_at_two_odd_sizes_and_two_batch_sizes(tiny_unet, dynamic_file):
    images = [torch.randn(1, 3, 67, 93), torch.randn(2, 3, 80, 71)]  # neither is the export size
    result = export.check_parity(tiny_unet, dynamic_file, images)
    assert result["max_abs_diff"] < 1e-4
    assert result["argmax_agreement"] > 0.999
    assert result["shapes"] == [(1, 3, 67, 93), (2, 3, 80, 71)]


def test_parity_notices_a_model_that_changed_after_export(dynamic_file):
    torch.manual_seed(0)
    changed = build_model("unet", 3, base_channels=4).eval()  # same init as tiny_unet ...
    with torch.no_grad():
        changed.head.bias += 1.0  # ... then every logit moves by 1
    result = export.check_parity(changed, dynamic_file, torch.randn(1, 3, 67, 93))
    assert result["max_abs_diff"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.filterwarnings("ignore::UserWarning")  # the tracer's constant-folding notes
def test_a_fixed_size_export_fails_at_another_size_with_the_shape_named(tiny_unet, tmp_path):
    path = export.export_onnx(tiny_unet, tmp_path / "fixed.onnx", input_size=(1, 3, 32, 48),
                              dynamic=False, exporter="torchscript")  # the fast tracer
    assert export.check_parity(tiny_unet, path, torch.randn(1, 3, 32, 48))["max_abs_diff"] < 1e-4
    # what export_onnx(dynamic=True) checks, and refuses, when an exporter fixed a size
    assert export._fixed_dimensions(path) == ["batch (= 1)", "height (= 32)", "width (= 48)"]
    with pytest.raises(RuntimeError, match=r"\(1, 3, 37, 53\)"):
        export.check_parity(tiny_unet, path, torch.randn(1, 3, 37, 53))
    assert not tiny_unet.training  # the mode it came in with


def test_onnx_speed_rows_cover_every_size_and_batch(tiny_unet, dynamic_file):
    rows = export.onnx_speed(tiny_unet, dynamic_file, sizes=[(20, 24), (16, 16)],
                             batch_sizes=(1, 2), warmup=0, repeats=1, threads=1)
    assert [(row["input"], row["batch"]) for row in rows] == [
        ("20x24", 1), ("20x24", 2), ("16x16", 1), ("16x16", 2)]
    for row in rows:
        assert row["PyTorch ms"] > 0 and row["ONNX Runtime ms"] > 0 and row["threads"] == 1
        assert row["ONNX Runtime speed-up"] == pytest.approx(
            row["PyTorch ms"] / row["ONNX Runtime ms"])


def test_unknown_exporter_names_the_choices(tiny_unet, tmp_path):
    with pytest.raises(ValueError, match="dynamo, torchscript"):
        export.export_onnx(tiny_unet, tmp_path / "x.onnx", exporter="jit")


def test_segtut_export_imports_no_onnx_package_at_module_level():
    tree = ast.parse(Path(export.__file__).read_text())
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in top_level for alias in node.names]
    names += [node.module for node in top_level if isinstance(node, ast.ImportFrom)]
    assert not [name for name in names if name and name.startswith("onnx")]
