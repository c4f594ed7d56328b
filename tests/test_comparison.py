"""segtut.comparison against a real MLflow SQLite store, filled by real (tiny) smoke-profile runs."""

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from segtut.comparison import (EXPERIMENT, MODEL_LABELS, MODEL_OPTIONS, RECIPES,  # noqa: E402
                               load_runs, markdown_table, model_folder, per_image_scores,
                               run_comparison, summary_table)
from segtut.models import MODELS  # noqa: E402
from segtut.saved_model import load_model  # noqa: E402
from segtut.tracking import default_tracking_uri  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
GRID = ("fcn8s_separable", "unet")


@pytest.fixture(autouse=True)
def no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A store with two models x two seeds (smoke recipe) and the cost run of a third."""
    store = tmp_path_factory.mktemp("comparison")
    data = tmp_path_factory.mktemp("no_data")  # no camvid/ here: the smoke profile's fallback
    lines = []
    run_comparison(store, profile="smoke", models=GRID, seeds=(0, 1), keep_models=(0,),
                   data_dir=data, log=lines.append)
    run_comparison(store, profile="smoke", models=["fcn8s"], seeds=(), data_dir=data,
                   log=lines.append)
    return store, data, lines


def test_every_registered_model_has_options_and_a_label():
    assert set(MODEL_OPTIONS) == set(MODELS) == set(MODEL_LABELS)
    for recipe in RECIPES.values():
        assert recipe["epochs"] >= 1 and "time_budget_s" not in recipe  # fixed epochs only


def test_the_grid_logs_one_run_per_model_and_seed_plus_costs(filled):
    store, _, _ = filled
    runs = load_runs(store)
    train = runs[runs["params.kind"] == "train"]
    assert sorted(zip(train["params.model"], train["params.seed"])) == sorted(
        (model, seed) for model in GRID for seed in ("0", "1"))
    assert sorted(runs[runs["params.kind"] == "cost"]["params.model"]) == sorted(GRID + ("fcn8s",))
    assert set(train["params.epochs"]) == {str(RECIPES["smoke"]["epochs"])}
    for column in ("metrics.val_mean_iou", "metrics.test_mean_iou", "metrics.train_loss",
                   "metrics.test_iou_road"):
        assert train[column].between(0, 10).all(), column
    assert (train["params.synthetic"] == "True").all()  # no CamVid in data_dir: said so


def test_a_second_call_repeats_nothing(filled):
    store, data, _ = filled
    before = len(load_runs(store))
    lines = []
    run_comparison(store, profile="smoke", models=GRID, seeds=(0, 1), data_dir=data,
                   log=lines.append)
    assert len(load_runs(store)) == before
    assert sum("already in the store" in line for line in lines) == 4


def test_summary_is_mean_and_std_over_seeds_sorted_by_test(filled):
    store, _, _ = filled
    mlflow.set_tracking_uri(default_tracking_uri(store))
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], filter_string="params.kind = 'train'")
    table = summary_table(load_runs(store)).set_index("model")
    for model in GRID:
        values = runs[runs["params.model"] == model]["metrics.test_mean_iou"].astype(float)
        assert table.loc[model, "seeds"] == 2
        assert table.loc[model, "test_miou"] == pytest.approx(values.mean())
        assert table.loc[model, "test_std"] == pytest.approx(values.std(ddof=1))
    assert table.loc["fcn8s", "seeds"] == 0 and math.isnan(table.loc["fcn8s", "test_miou"])
    assert table.loc["fcn8s", "parameters_m"] > table.loc["unet", "parameters_m"] > 0
    order = summary_table(load_runs(store))
    scored = order["test_miou"].dropna().tolist()
    assert scored == sorted(scored, reverse=True) and order["model"].iloc[-1] == "fcn8s"


def test_markdown_table_has_one_row_per_model_with_spreads(filled):
    store, _, _ = filled
    text = markdown_table(summary_table(load_runs(store)))
    lines = text.splitlines()
    assert lines[0].startswith("| Model | Seeds | val mIoU | test mIoU")
    assert len(lines) == 2 + 3
    assert all(" ± " in line for line in lines[2:4])
    assert MODEL_LABELS["fcn8s"] in lines[-1] and "not trained" in lines[-1]


def test_per_image_scores_cover_the_test_split_for_every_run(filled):
    store, _, _ = filled
    runs = load_runs(store)
    scores = per_image_scores(runs, store)
    test_images = int(runs[runs["params.kind"] == "train"]["params.test_images"].iloc[0])
    assert len(scores) == 4 * test_images
    assert scores["mean_iou"].dropna().between(0, 1).all()


def test_seed_zero_keeps_a_loadable_model_and_other_seeds_do_not(filled):
    store, _, _ = filled
    runs = load_runs(store)
    for _, run in runs[runs["params.kind"] == "train"].iterrows():
        folder = model_folder(run, store)
        assert (folder is not None) == (run["params.seed"] == "0")
        if folder is not None:
            model, card = load_model(folder)
            assert card.architecture == run["params.model"]
            cost = runs[(runs["params.kind"] == "cost")
                        & (runs["params.model"] == run["params.model"])].iloc[0]
            parameters = sum(p.numel() for p in model.parameters()) / 1e6
            assert parameters == pytest.approx(float(cost["metrics.parameters_m"]))


def test_a_copied_store_still_finds_its_files(filled, tmp_path):
    store, _, _ = filled
    copy = tmp_path / "copy"
    shutil.copytree(store, copy)
    moved = store.with_name(store.name + "_moved")
    store.rename(moved)  # the logged absolute artifact paths no longer exist
    try:
        runs = load_runs(copy)
        assert len(per_image_scores(runs, copy)) > 0
        assert any(model_folder(run, copy) for _, run in runs.iterrows())
    finally:
        moved.rename(store)


def test_unknown_models_and_profiles_name_the_valid_choices(tmp_path):
    with pytest.raises(ValueError, match="Valid choices: .*unet"):
        run_comparison(tmp_path, profile="smoke", models=["unet", "segnet"], seeds=())
    with pytest.raises(ValueError, match="Valid choices: smoke, cpu, gpu"):
        run_comparison(tmp_path, profile="laptop", seeds=())


def test_the_command_line_prints_the_table_and_refuses_bad_models(filled):
    store, _, _ = filled
    script = ROOT / "scripts" / "compare.py"
    shown = subprocess.run([sys.executable, str(script), "--store", str(store), "--profile",
                            "smoke", "--table"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert "unet" in shown.stdout and "test_miou" in shown.stdout
    bad = subprocess.run([sys.executable, str(script), "--models", "segnet", "--table"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "valid:" in bad.stderr
