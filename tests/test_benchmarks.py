"""Smoke test of the training benchmarks: each runs with ``--quick`` and prints its table.

The scripts run as a reader runs them (``python benchmarks/<script>.py``), in subprocesses
started together, with ``SEGTUT_DATA_DIR`` an empty folder and ``SEGTUT_OFFLINE=1``: the smoke
profile then writes SYNTHETIC scenes (:func:`segtut.synthetic.write_synthetic_camvid`) under the
test's ``tmp_path`` (``TMPDIR``). Only the output's structure is checked, never a timing.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"

# script -> (extra arguments, the table's header row, rows that must appear, by first cells)
SCRIPTS = {
    "cpu_training_speed.py": (
        # Every kind of row (a memory format, a thread count, both worker counts, both caches,
        # evaluation) on the smallest model; compile alone takes a minute, so it is left out.
        ["--models", "unet",
         "--techniques", "eager,channels_last,threads_1,loader_w0_cache,loader_w2_nocache,"
                         "evaluate"],
        "| model | technique | images/s | s/step | s/epoch (4 steps) | speed-up vs eager | notes |",
        ["| unet | eager |", "| unet | channels_last |", "| unet | threads_1 |",
         "| unet | loader_w0_cache |", "| unet | loader_w2_nocache |"]),
    "training_loop.py": (
        [],
        "| loop | s/epoch (4 steps) | images/s | ratio vs bare | overhead ms/step | notes |",
        ["| bare |", "| segtut_fit |", "| fastai |", "| fastai_torch_adamw |"]),
    "input_pipeline.py": (
        [],
        "| cache | num_workers | pipeline images/s | model images/s | ratio pipeline/model | "
        "meaning | first batch s (untimed) | batches timed |",
        ["| off | 0 |", "| off | 2 |", "| on | 0 |", "| on | 2 |"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """script -> (completed process, markdown file), all three run at once (seconds each)."""
    tmp = tmp_path_factory.mktemp("benchmarks")
    (tmp / "data").mkdir()  # holds no camvid/: the smoke profile falls back to SYNTHETIC scenes
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SEGTUT_DATA_DIR": str(tmp / "data"),
           "SEGTUT_OFFLINE": "1", "TMPDIR": str(tmp), "TQDM_DISABLE": "1"}
    started = {}
    for script, (arguments, _, _) in SCRIPTS.items():
        markdown = tmp / f"{Path(script).stem}.md"
        command = [sys.executable, str(BENCHMARKS / script), "--quick", "--markdown",
                   str(markdown), *arguments]
        started[script] = (subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True), markdown)
    results = {}
    for script, (process, markdown) in started.items():
        stdout, stderr = process.communicate(timeout=120)
        results[script] = (subprocess.CompletedProcess(process.args, process.returncode, stdout,
                                                       stderr), markdown)
    return results


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_quick_run_prints_machine_settings_and_table(runs, script):
    result, markdown = runs[script]
    assert result.returncode == 0, f"{script} failed:\n{result.stderr[-3000:]}"
    _, header, rows = SCRIPTS[script]
    lines = result.stdout.splitlines()
    for prefix in ("machine: ", "versions: ", "settings: ", "data: "):
        assert any(line.startswith(prefix) for line in lines), (prefix, result.stdout)
    assert "torch threads by default" in result.stdout
    assert "quick=True" in result.stdout
    # The data line says the scenes are SYNTHETIC: numbers from them must never pass for CamVid.
    assert "SYNTHETIC" in next(line for line in lines if line.startswith("data: "))
    assert header in lines, result.stdout
    for row in rows:
        matching = [line for line in lines if line.startswith(row)]
        assert len(matching) == 1, (row, result.stdout)
        assert matching[0].count("|") == header.count("|"), matching[0]
    assert "FAILED" not in result.stdout
    # --markdown writes the same output to the file.
    written = markdown.read_text().splitlines()
    assert header in written and lines[:len(written)] == written


def test_baseline_ratios_are_one(runs):
    """Each ratio is against a baseline measured in the same run: the baseline's own is 1."""
    speed = runs["cpu_training_speed.py"][0].stdout
    assert "| unet | eager |" in speed and "| 1.00x |" in speed.split("| unet | eager |")[1]
    loop = runs["training_loop.py"][0].stdout
    assert loop.split("| bare |")[1].split("|")[2].strip() == "1.000"
    evaluation = [line for line in speed.splitlines() if line.startswith("| unet | ")
                  and line.count("|") == 6]
    assert len(evaluation) == 1, speed  # the evaluation table's row for the model


@pytest.fixture
def benchmark_modules(monkeypatch):
    """The benchmark scripts' modules, importable as the scripts import them."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import cpu_training_speed
    import report
    import workload

    return cpu_training_speed, report, workload


def test_unknown_choices_list_the_valid_ones(benchmark_modules):
    cpu_training_speed, report, workload = benchmark_modules
    with pytest.raises(SystemExit, match="resnet.*Valid choices: unet, smp_unet"):
        workload.parse_models("unet,resnet")
    with pytest.raises(SystemExit, match="turbo.*Valid choices: eager, channels_last"):
        cpu_training_speed.parse_techniques("eager,turbo", quick=False)
    # The baseline is always measured (every ratio is against it); --quick leaves compile out.
    assert cpu_training_speed.parse_techniques("compile", quick=True) == ["eager", "compile"]
    assert "compile" not in cpu_training_speed.parse_techniques(None, quick=True)
    assert "compile" in cpu_training_speed.parse_techniques(None, quick=False)
    with pytest.raises(ValueError, match="2 cells but the table has 3 columns"):
        report.markdown_table(["a", "b", "c"], [[1, 2]])
    # A "|" inside a cell (an error message) must not add a column.
    assert report.markdown_table(["a"], [["x | y"]])[-1] == "| x / y |"
