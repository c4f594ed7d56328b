"""The results table on the landing page holds numbers that the chapters' stored outputs print.

Every row links to its chapter; its val and test mIoU (percent, one decimal) must appear in that
notebook's stored outputs, either as a percentage (``42.1``, or ``42.08`` that rounds to it) or as
a fraction (``0.4206``), and
so must its training time in minutes (``8.5``, or ``8.45`` that rounds to it) and its number of
epochs. A number typed into the table by hand, or left behind after a chapter is re-run, fails
here.
"""

import json
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INTRO = ROOT / "book" / "intro.md"
NUMBER = re.compile(r"(?<![\w.])\d+\.\d+")


def table_rows(marker: str = "<!-- RESULTS TABLE"):
    text = INTRO.read_text()
    start = text.index(marker)
    rows = []
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] in ("Model", "") or set(cells[0]) <= set("-"):
            continue
        rows.append(cells)
    return rows


def stored_text(notebook: Path) -> str:
    parts = []
    for cell in json.loads(notebook.read_text())["cells"]:
        for output in cell.get("outputs", []):
            parts.append("".join(output.get("text", "")))
            data = output.get("data", {})
            parts.append("".join(data.get("text/plain", "")))
            parts.append("".join(data.get("text/html", "")))
    return "\n".join(parts)


def printed(value: float, text: str) -> bool:
    for match in NUMBER.finditer(text):
        number = float(match.group())
        decimals = len(match.group().split(".")[1])
        if decimals == 1 and abs(number - value) < 1e-9:
            return True
        if decimals == 2 and number > 1 and float(Decimal(match.group()).quantize(
                Decimal("0.1"), rounding=ROUND_HALF_UP)) == value:
            return True  # a percentage with two decimals (38.56) that rounds to the table's 38.6
        if decimals >= 3 and number <= 1 and round(100 * number, 1) == value:
            return True
    return False


def printed_minutes(value: float, text: str) -> bool:
    """``value`` (minutes, one decimal) is printed as such, or with more decimals rounding to it."""
    for match in NUMBER.finditer(text):
        number, decimals = float(match.group()), len(match.group().split(".")[1])
        if decimals == 1 and abs(number - value) < 1e-9:
            return True
        if decimals >= 2 and abs(number - value) <= 0.05 + 1e-9:  # 8.45 rounds to 8.5 (or 8.4)
            return True
    return False


TIME = re.compile(r"([\d.]+) min \((\d+) epochs?\)")

ROWS = table_rows()
#: Chapters 13 and 14: other data sets, "–" where the data set has no such split.
OTHER_ROWS = table_rows("<!-- OTHER DATA TABLE")


def test_the_table_has_rows():
    assert len(ROWS) >= 2 and len(OTHER_ROWS) >= 3


@pytest.mark.parametrize("row", ROWS + OTHER_ROWS, ids=lambda row: row[0][:40])
def test_row_matches_the_chapters_stored_outputs(row):
    link = re.search(r"\(\.\./notebooks/([\w.]+\.ipynb)\)", row[1])
    assert link, f"the chapter cell {row[1]!r} must link to a notebook"
    notebook = ROOT / "notebooks" / link.group(1)
    assert notebook.exists(), notebook
    text = stored_text(notebook)
    for label, cell in (("val", row[-2]), ("test", row[-1])):
        if cell == "–" and row in OTHER_ROWS:
            continue  # e.g. the Cityscapes pairs have no test split
        value = float(cell)
        assert printed(value, text), (f"{row[0]}: {label} mIoU {value} is not printed in the stored "
                                      f"outputs of {notebook.name}; re-run it or fix the table")
    time = TIME.search(row[4])
    assert time, f"{row[0]}: the training time {row[4]!r} must read 'M.M min (N epochs)'"
    minutes, epochs = float(time.group(1)), int(time.group(2))
    assert printed_minutes(minutes, text), (f"{row[0]}: {minutes} min of training is not printed in "
                                            f"the stored outputs of {notebook.name}")
    assert re.search(rf"(?<![\d.]){epochs}(?![\d.])", text), (
        f"{row[0]}: {epochs} epochs is not printed in the stored outputs of {notebook.name}")


def test_printed_reads_percentages_and_fractions():
    assert printed(42.1, "val mIoU 0.4206")
    assert printed(42.1, "val mIoU %  42.1")
    assert not printed(42.1, "val mIoU 0.4249")
    assert not printed(42.1, "142.1 and 42.15")
    assert printed(38.6, "test mIoU %  38.56") and not printed(38.6, "test mIoU %  38.66")


def test_printed_minutes_rounds_but_does_not_guess():
    assert printed_minutes(8.5, "trained 22 epochs: 8.5 min of training")
    assert printed_minutes(8.5, "train min 8.45")
    assert not printed_minutes(4.2, "train min 4.39")


# -- the comparison table: generated from the MLflow store of chapter 15 ----------------------

STORE = ROOT / "results" / "camvid_comparison"
START, END = "<!-- COMPARISON TABLE START", "<!-- COMPARISON TABLE END -->"


def landing_comparison_table() -> str:
    text = INTRO.read_text()
    block = text.split(START, 1)[1].split("\n", 1)[1]
    return block.split(END, 1)[0].strip()


def stored_comparison_table() -> str:
    pytest.importorskip("mlflow")
    from segtut.comparison import load_runs, markdown_table, summary_table

    assert (STORE / "mlflow.db").exists(), f"{STORE / 'mlflow.db'} is missing: it is committed"
    return markdown_table(summary_table(load_runs(STORE, profile="cpu")))


def test_the_landing_comparison_table_is_the_one_the_store_gives():
    expected = stored_comparison_table()
    assert landing_comparison_table() == expected, (
        "book/intro.md's comparison table differs from results/camvid_comparison/mlflow.db: run "
        "python scripts/compare.py --table --write-landing book/intro.md")


def test_the_comparison_table_covers_every_registered_model():
    from segtut.models import MODELS

    from segtut.comparison import MODEL_LABELS

    table = landing_comparison_table()
    for name in MODELS:
        assert f"| {MODEL_LABELS[name]} |" in table, f"{name} has no row in the comparison table"


def test_chapter_15_prints_the_same_table_from_the_same_store():
    text = stored_text(ROOT / "notebooks" / "15_model_comparison.ipynb")
    assert stored_comparison_table() in text, (
        "chapter 15's stored outputs do not print the table of results/camvid_comparison: re-run "
        "the chapter after filling the store")
