"""The notebooks follow the house layout, and from-scratch code matches its segtut module."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
# Cells tagged "segtut:<path>" show, in order, the code of src/segtut/<path> after its
# "# %% notebook-copy starts here" line.
MARKER = "# %% notebook-copy starts here\n"


def cells(path):
    return json.loads(path.read_text())["cells"]


def source(cell):
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_holds_the_parameters(path):
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", []), "first code cell must be tagged parameters"
    assert "SEGTUT_PROFILE" in source(code[0])
    assert "setup" in code[1]["metadata"].get("tags", [])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_copied_code_matches_its_module(path):
    shown = {}
    for cell in cells(path):
        for tag in cell["metadata"].get("tags", []):
            if tag.startswith("segtut:"):
                shown.setdefault(tag.split(":", 1)[1], []).append(source(cell).strip())
    for module, parts in shown.items():
        text = (ROOT / "src" / "segtut" / module).read_text()
        assert MARKER in text, f"{module} has no notebook-copy marker"
        expected = text.split(MARKER, 1)[1].strip()
        assert "\n\n\n".join(parts) == expected, (
            f"{path.name} shows code that differs from src/segtut/{module}; edit both together")


def test_unet_chapter_shows_the_unet():
    chapter = ROOT / "notebooks" / "03_unet_from_scratch.ipynb"
    tags = [t for c in cells(chapter) for t in c["metadata"].get("tags", [])]
    assert tags.count("segtut:models/unet.py") >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_figures_are_pictures(path):
    # A figure that reached the notebook only as "<Figure size ...>" text shows readers nothing.
    for cell in cells(path):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            text = "".join(data.get("text/plain", ""))
            if text.startswith("<Figure size"):
                assert "image/png" in data or "image/svg+xml" in data, (
                    f"{path.name}: a figure was stored as text only: {text}")
