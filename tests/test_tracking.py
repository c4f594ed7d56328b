"""segtut.tracking against a real MLflow SQLite store: what is logged is what is read back."""

import inspect
import json
from importlib import metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

mlflow = pytest.importorskip("mlflow")

from segtut.losses import build_loss  # noqa: E402 - after the skip
from segtut.models import build_model  # noqa: E402
from segtut.tracking import (Tracker, default_tracking_uri, find_run, param_value,  # noqa: E402
                             runs_frame)
from segtut.train import evaluate, fit  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = Path(__file__).parents[1] / "src"
CLASSES = ["Sky", "Sign/Symbol", "Road"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module: creating its tables takes seconds, reusing it nothing."""
    folder = tmp_path_factory.mktemp("runs")
    return folder, default_tracking_uri(folder)


@pytest.fixture(autouse=True)
def no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def toy_loader(count=4, size=(16, 16)):
    generator = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (count, *size), generator=generator)
    images = torch.randn(count, 3, *size, generator=generator)
    images[:, 0] += masks.float()  # the red channel tells the class: learnable
    return DataLoader(TensorDataset(images, masks), batch_size=2)


def test_default_store_is_an_absolute_sqlite_file_next_to_its_artifacts(store):
    folder, uri = store
    assert uri == f"sqlite:///{folder.resolve() / 'mlflow.db'}"
    assert uri.startswith("sqlite:////")  # sqlite:/// + an absolute path
    assert param_value((180, 240)) == "180x240" and param_value(3e-3) == "0.003"


def test_params_metrics_per_class_iou_and_artifacts_round_trip(store, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder, uri = store
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights")
    result = {"iou": [0.5, float("nan"), 0.25], "mean_iou": 0.375, "pixel_accuracy": 0.9,
              "mean_dice": 0.6, "confusion": [[5, 0, 1], [0, 0, 0], [2, 0, 3]]}
    figure = plt.figure()
    with Tracker("round-trip", output_dir=folder, run_name="first", tags={"chapter": 3}) as tracker:
        tracker.log_params({"model": "unet", "image_size": (180, 240), "lr": 3e-3,
                            "settings": {"loss": "ce"}})
        tracker.log_epoch({"epoch": 1, "train_loss": 2.0, "val_mean_iou": 0.1, "note": "text",
                           "improved": True})
        tracker.log_epoch({"epoch": 2, "train_loss": 1.5, "val_mean_iou": 0.3})
        tracker.log_result("test", result, CLASSES)
        tracker.log_figure(figure, "curves")
        tracker.log_artifact(checkpoint)
        run_id = tracker.run_id
    plt.close(figure)
    assert tracker.run_id is None  # ended

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((folder.resolve() / "mlartifacts").as_uri())
    params = run.data.params
    assert params["model"] == "unet" and params["image_size"] == "180x240"
    assert params["lr"] == "0.003" and params["settings.loss"] == "ce"
    assert params["version.torch"] == metadata.version("torch")
    assert params["version.mlflow"] == mlflow.__version__
    assert run.data.tags["chapter"] == "3" and run.data.tags["mlflow.runName"] == "first"

    curve = client.get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in sorted(curve, key=lambda m: m.step)] == [(1, 2.0), (2, 1.5)]
    metrics = run.data.metrics
    assert "note" not in metrics and "improved" not in metrics and "epoch" not in metrics
    assert metrics["test_mean_iou"] == 0.375 and metrics["test_pixel_accuracy"] == 0.9
    assert metrics["test_mean_dice"] == 0.6
    assert metrics["test_iou_Sky"] == 0.5 and metrics["test_iou_Road"] == 0.25
    assert metrics["test_iou_Sign/Symbol"] != metrics["test_iou_Sign/Symbol"]  # NaN kept

    names = {item.path for item in client.list_artifacts(run_id)}
    assert names == {"curves.png", "model.pt", "test_confusion.json"}
    confusion = json.loads(Path(client.download_artifacts(run_id, "test_confusion.json",
                                                          str(tmp_path))).read_text())
    assert confusion == {"class_names": CLASSES, "matrix": result["confusion"]}

    frame = runs_frame("round-trip", output_dir=folder)
    assert list(frame["run_id"]) == [run_id]
    assert frame.loc[0, "metrics.test_iou_Sky"] == 0.5 and frame.loc[0, "params.model"] == "unet"
    # The same store read through mlflow.search_runs (its global URI set for this call only).
    mlflow.set_tracking_uri(uri)
    try:
        searched = mlflow.search_runs(experiment_names=["round-trip"])
    finally:
        mlflow.set_tracking_uri(None)
    assert list(searched["run_id"]) == [run_id]
    assert searched.loc[0, "metrics.test_mean_iou"] == 0.375


def test_log_result_needs_one_name_per_class(store):
    folder, _ = store
    with pytest.raises(ValueError, match="2 class names for 3 IoU values"):
        with Tracker("bad-names", output_dir=folder) as tracker:
            tracker.log_result("val", {"iou": [0.1, 0.2, 0.3], "mean_iou": 0.2}, ["a", "b"])
    client = mlflow.MlflowClient(default_tracking_uri(folder))
    run, = client.search_runs([client.get_experiment_by_name("bad-names").experiment_id])
    assert run.info.status == "FAILED"  # the exception ended the run as failed


def test_log_epoch_as_fits_on_epoch_end(store):
    folder, uri = store
    torch.manual_seed(0)
    model = build_model("unet", num_classes=3, base_channels=4, depth=1)
    loader = toy_loader()
    options = dict(loss_fn=build_loss("ce", ignore_index=None),
                   optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), epochs=2,
                   device=torch.device("cpu"), seed=0, num_classes=3, ignore_index=None,
                   progress=False, log=None)
    with Tracker("fit", output_dir=folder) as tracker:
        if "on_epoch_end" in inspect.signature(fit).parameters:
            history = fit(model, loader, loader, on_epoch_end=tracker.log_epoch, **options)
        else:  # before segtut.train.fit has on_epoch_end: the same rows, logged afterwards
            history = fit(model, loader, loader, **options)
            for row in history:
                tracker.log_epoch(row)
        result = evaluate(model, loader, torch.device("cpu"), num_classes=3, ignore_index=None,
                          progress=False, warn=False)
        tracker.log_result("val", result, CLASSES)
        run_id = tracker.run_id
    client = mlflow.MlflowClient(tracking_uri=uri)
    for key in ("train_loss", "val_mean_iou", "lr"):
        logged = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        curve = [(m.step, m.value) for m in logged][:2]
        assert curve == [(1, pytest.approx(history[0][key])), (2, pytest.approx(history[1][key]))]
    # The final score is logged at the last epoch's step, after its curve point: it is the run's.
    final = client.get_metric_history(run_id, "val_iou_Road")
    assert [m.step for m in final] == [2]
    assert client.get_run(run_id).data.metrics["val_mean_iou"] == pytest.approx(result["mean_iou"])


def test_find_run_finds_the_finished_run_with_these_params_only(store):
    folder, _ = store
    params = {"model": "unet", "lr": 1e-3, "crop_size": (128, 160)}
    assert find_run("grid", params, output_dir=folder) is None  # no experiment yet
    with Tracker("grid", output_dir=folder) as tracker:
        tracker.log_params(params)
        done = tracker.run_id
    with Tracker("grid", output_dir=folder) as tracker:
        tracker.log_params({**params, "lr": 3e-3})
    unfinished = Tracker("grid", output_dir=folder)
    unfinished.log_params({**params, "model": "fcn8s"})  # started, never ended: RUNNING

    assert find_run("grid", params, output_dir=folder) == done
    assert find_run("grid", {"model": "unet"}, output_dir=folder) is not None
    assert find_run("grid", {**params, "lr": 1e-2}, output_dir=folder) is None
    assert find_run("grid", {**params, "model": "fcn8s"}, output_dir=folder) is None
    assert find_run("grid", {**params, "seed": 0}, output_dir=folder) is None  # not logged
    unfinished.end()
    assert find_run("grid", {**params, "model": "fcn8s"}, output_dir=folder) is not None
    frame = runs_frame("grid", output_dir=folder)
    assert sorted(frame["params.lr"]) == ["0.001", "0.001", "0.003"]
    assert runs_frame("no-such-experiment", output_dir=folder).empty


def test_tracking_uri_environment_variable_wins_over_output_dir(store, tmp_path, monkeypatch):
    folder, uri = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    elsewhere = tmp_path / "elsewhere"
    with Tracker("from-env", output_dir=elsewhere) as tracker:
        tracker.log_params({"model": "unet"})
    assert tracker.tracking_uri == uri
    assert not (elsewhere / "mlflow.db").exists()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert find_run("from-env", {"model": "unet"}, output_dir=folder) is not None
    assert find_run("from-env", {"model": "unet"}, tracking_uri=uri) is not None


def test_disabled_tracker_does_nothing_and_never_imports_mlflow(tmp_path):
    code = f"""
import sys
from segtut.tracking import Tracker, find_run
assert "mlflow" not in sys.modules, "import segtut.tracking imported mlflow"
with Tracker("off", output_dir={str(tmp_path / 'off')!r}, enabled=False) as tracker:
    tracker.log_params({{"a": 1}})
    tracker.log_epoch({{"epoch": 1, "train_loss": 0.5}})
    tracker.log_result("val", {{"iou": [0.1], "mean_iou": 0.1}}, ["x"])
    tracker.log_figure(None, "f")
    tracker.log_artifact("missing-file")
assert tracker.run_id is None
assert "mlflow" not in sys.modules, "a disabled Tracker imported mlflow"
print("ok")
"""
    environment = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environment, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
    assert not (tmp_path / "off").exists()


def test_missing_mlflow_is_an_import_error_saying_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # "import mlflow" now raises ImportError
    with pytest.raises(ImportError, match="pip install mlflow"):
        Tracker("x")
    Tracker("x", enabled=False).log_params({"a": 1})  # disabled: fine without MLflow
