"""Experiment tracking with MLflow: every training run's settings, curves, scores and files.

A :class:`Tracker` records one run in an MLflow store::

    with Tracker("camvid-unet", output_dir="runs") as tracker:
        tracker.log_params({"model": "unet", "epochs": 22, "lr": 3e-3})
        history = fit(..., on_epoch_end=tracker.log_epoch)   # one step per epoch
        tracker.log_result("val", evaluate(...), CLASS_NAMES)  # mIoU, accuracy, IoU per class
        tracker.log_artifact("runs/unet.pt")

The store is a plain SQLite file, ``<output_dir>/mlflow.db``, with the files of the runs
(figures, checkpoints) in ``<output_dir>/mlartifacts`` next to it, so a run needs no server;
``$MLFLOW_TRACKING_URI`` (or ``tracking_uri=``) points it elsewhere. Browse the runs with
``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``, or in pandas with :func:`runs_frame`.

``enabled=False`` turns every method into a no-op, and MLflow is then never imported: this
module imports it inside the methods only, so code that can track runs does not need MLflow
installed unless it does.

The tracker uses an ``MlflowClient`` bound to its own store rather than MLflow's global
"active run" and tracking URI, so two trackers (or a tracker and the reader's own MLflow code)
never write into each other's runs.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

__all__ = ["Tracker", "find_run", "runs_frame", "default_tracking_uri", "param_value",
           "metric_key", "TRACKING_URI_ENV"]

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
#: The SQLite file and the artifact folder of the default store, inside ``output_dir``.
DATABASE_NAME, ARTIFACTS_NAME = "mlflow.db", "mlartifacts"
# MLflow stores a parameter value of at most this many characters (6000 in MLflow >= 2.x).
_MAX_PARAM_LENGTH = 6000


def _mlflow():
    """Import MLflow quietly, or explain how to get it."""
    try:
        import mlflow
    except ImportError as error:
        raise ImportError("Tracking runs needs MLflow, which is not installed: pip install mlflow "
                          "(it is in requirements.txt), or switch tracking off "
                          "(Tracker(..., enabled=False); --no-track in scripts/train.py)."
                          ) from error
    # Database migrations and store messages are INFO-level chatter, not results.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def default_tracking_uri(output_dir: str | Path = "runs") -> str:
    """The default store: ``sqlite:///<absolute output_dir>/mlflow.db`` (the folder is created).

    An absolute path, so the store is the same file whichever directory a script is run from.
    """
    folder = Path(output_dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / DATABASE_NAME}"


def _resolve_uri(tracking_uri: Optional[str], output_dir: str | Path) -> str:
    """``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else :func:`default_tracking_uri`."""
    return tracking_uri or os.environ.get(TRACKING_URI_ENV) or default_tracking_uri(output_dir)


def _artifact_location(uri: str) -> Optional[str]:
    """``file://.../mlartifacts`` next to a SQLite store's file; None for other stores (a server
    chooses its own)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):])
    if not database.is_absolute():
        database = database.resolve()
    return (database.parent / ARTIFACTS_NAME).as_uri()


def param_value(value: Any) -> str:
    """A parameter as MLflow stores it: a string (sizes ``(180, 240)`` become ``"180x240"``).

    :meth:`Tracker.log_params` and :func:`find_run` both use this, so a run logged with a
    tuple is found again with the same tuple.
    """
    if isinstance(value, (tuple, list)) and value and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
        text = "x".join(str(int(v)) for v in value)
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return text[:_MAX_PARAM_LENGTH]


def _flatten(params: dict, prefix: str = "") -> dict[str, str]:
    """``{"versions": {"torch": "2.5"}}`` -> ``{"versions.torch": "2.5"}``, values as strings."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = param_value(value)
    return flat


def metric_key(name: str) -> str:
    """A name MLflow accepts as a metric key: characters other than letters, digits, ``_ - . /``
    and spaces become ``_`` (class names such as ``"Sign/Symbol"`` stay readable)."""
    return re.sub(r"[^0-9A-Za-z_\-. /]", "_", str(name))


def _is_number(value: Any) -> bool:
    # bool is an int in Python, but True/False are flags, not measurements.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Tracker:
    """One MLflow run: parameters, per-epoch metrics, final scores and files.

    Use it as a context manager: the run starts on entry and ends FINISHED, or FAILED when an
    exception leaves the block (KILLED for Ctrl-C). Any method called before entry starts the
    run too; call :meth:`end` when not using ``with``.

    Args:
        experiment: the MLflow experiment's name (created when missing).
        run_name: the run's name in the MLflow UI (None: MLflow picks one).
        tracking_uri: the store; None: ``$MLFLOW_TRACKING_URI``, else
            ``sqlite:///<output_dir>/mlflow.db`` (:func:`default_tracking_uri`).
        output_dir: folder of the default store; its files go to ``<output_dir>/mlartifacts``.
        enabled: False makes every method a no-op that never imports MLflow.
        tags: run tags, e.g. ``{"chapter": "03"}``.

    Attributes:
        run_id: the run's id once started (None before and after, and always when disabled).
        last_step: the epoch of the last :meth:`log_epoch` call (0 before any).
        tracking_uri: the store's URI (None when disabled).

    Raises:
        ImportError: ``enabled`` and MLflow is not installed (the message says
            ``pip install mlflow``).
    """

    def __init__(self, experiment: str, *, run_name: Optional[str] = None,
                 tracking_uri: Optional[str] = None, output_dir: str | Path = "runs",
                 enabled: bool = True, tags: Optional[dict] = None):
        self.experiment = experiment
        self.run_name = run_name
        self.enabled = enabled
        self.tags = dict(tags or {})
        self.run_id: Optional[str] = None
        self.last_step = 0  # the last epoch logged: final results are logged at this step
        self.tracking_uri: Optional[str] = None
        self._client = None
        if enabled:
            mlflow = _mlflow()  # fail now, with the install hint, not at the first log call
            self.tracking_uri = _resolve_uri(tracking_uri, output_dir)
            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)

    # -- the run's life ---------------------------------------------------------------------

    def start(self) -> Optional[str]:
        """Start the run (once; later calls do nothing) and return its id (None when disabled).

        The library versions (:func:`segtut.profiles.library_versions`, MLflow's included) are
        logged as ``version.<package>`` parameters.
        """
        if not self.enabled or self.run_id is not None:
            return self.run_id
        from segtut.profiles import library_versions

        experiment_id = _experiment_id(self._client, self.experiment, self.tracking_uri,
                                       create=True)
        run = self._client.create_run(experiment_id, run_name=self.run_name,
                                      tags={key: str(value) for key, value in self.tags.items()})
        self.run_id = run.info.run_id
        self.log_params({"version": library_versions(("mlflow",))})
        return self.run_id

    def end(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` ("FINISHED", "FAILED" or "KILLED"); no-op if not started."""
        if self.enabled and self.run_id is not None:
            self._client.set_terminated(self.run_id, status=status)
            self.run_id, self.last_step = None, 0

    def __enter__(self) -> "Tracker":
        self.start()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")

    def _run(self) -> Optional[str]:
        """The run id, starting the run if needed; None when disabled."""
        return self.start() if self.enabled else None

    # -- what a run records -------------------------------------------------------------------

    def log_params(self, params: dict) -> None:
        """Log settings as parameters (strings; nested dicts as ``outer.inner`` keys).

        MLflow keeps one value per parameter: logging a key again with another value raises
        MLflow's error. Sizes like ``(180, 240)`` are stored as ``"180x240"``
        (:func:`param_value`).
        """
        if not self.enabled or not params:
            return
        from mlflow.entities import Param

        run_id = self._run()
        items = [Param(key, value) for key, value in _flatten(params).items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        """Log the numeric values of ``metrics`` (others are skipped) at ``step``."""
        if not self.enabled:
            return
        from mlflow.entities import Metric

        run_id = self._run()
        now = int(time.time() * 1000)
        items = [Metric(metric_key(key), float(value), now, int(step or 0))
                 for key, value in metrics.items() if _is_number(value)]
        for start in range(0, len(items), 1000):  # MLflow's batch limit for metrics
            self._client.log_batch(run_id, metrics=items[start:start + 1000])

    def log_epoch(self, row: dict) -> None:
        """Log one history row of :func:`segtut.train.fit` with ``row["epoch"]`` as the step.

        Usable as ``fit(..., on_epoch_end=tracker.log_epoch)``. Only numbers are logged
        (``train_loss``, ``val_mean_iou``, ``lr``, ...); ``epoch`` itself is the step.
        """
        if not self.enabled:
            return
        self.last_step = int(row["epoch"])
        self.log_metrics({key: value for key, value in row.items() if key != "epoch"},
                         step=self.last_step)

    def log_result(self, split: str, result: dict, class_names: Sequence[str],
                   step: Optional[int] = None) -> None:
        """Log the final scores of :func:`segtut.train.evaluate` on ``split``.

        Metrics ``{split}_mean_iou``, ``{split}_pixel_accuracy``, ``{split}_mean_dice`` (and
        ``{split}_mean_accuracy`` when present) and ``{split}_iou_{class}`` per class (NaN for a
        class absent from the split); the confusion matrix is stored as the artifact
        ``{split}_confusion.json`` (``{"class_names": [...], "matrix": [[...]]}``, rows are
        targets).

        Raises:
            ValueError: ``class_names`` does not give one name per IoU value.
        """
        if not self.enabled:
            return
        ious = list(result["iou"])
        if len(class_names) != len(ious):
            raise ValueError(f"log_result({split!r}): {len(class_names)} class names for "
                             f"{len(ious)} IoU values; pass one name per class (void excluded).")
        metrics = {f"{split}_{key}": result[key]
                   for key in ("mean_iou", "pixel_accuracy", "mean_dice", "mean_accuracy", "loss")
                   if key in result and _is_number(result[key])}
        for name, iou in zip(class_names, ious):
            metrics[f"{split}_iou_{name}"] = float("nan") if iou is None else float(iou)
        self.log_metrics(metrics, step=self.last_step if step is None else step)
        if "confusion" in result:
            self.log_dict({"class_names": [str(name) for name in class_names],
                           "matrix": _as_lists(result["confusion"])}, f"{split}_confusion.json")

    def log_dict(self, data: dict, name: str) -> None:
        """Store ``data`` as the JSON (or YAML, by ``name``'s suffix) artifact ``name``."""
        if self.enabled:
            self._client.log_dict(self._run(), data, name)

    def log_figure(self, figure, name: str) -> None:
        """Store a matplotlib figure as the artifact ``name`` (``.png`` appended if no suffix)."""
        if not self.enabled:
            return
        if not Path(name).suffix:
            name += ".png"
        self._client.log_figure(self._run(), figure, name)

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        """Copy a file or a whole folder (a saved model, a checkpoint) into the run's artifacts.

        Args:
            artifact_path: folder inside the artifacts (None: the top; a folder keeps its name).

        Raises:
            FileNotFoundError: ``path`` does not exist.
        """
        if not self.enabled:
            return
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"Cannot log {path} to MLflow: it does not exist. Log files "
                                    "after they are written.")
        if path.is_dir():
            where = f"{artifact_path}/{path.name}" if artifact_path else path.name
            self._client.log_artifacts(self._run(), str(path), where)
        else:
            self._client.log_artifact(self._run(), str(path), artifact_path)


def _as_lists(matrix) -> list:
    return matrix.tolist() if hasattr(matrix, "tolist") else [list(row) for row in matrix]


def _experiment_id(client, name: str, uri: str, *, create: bool) -> Optional[str]:
    """The id of the experiment ``name``, created (with artifacts next to a SQLite store) when
    ``create``; None when it does not exist and not ``create``."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise ValueError(f"The MLflow experiment {name!r} in {uri} was deleted: restore it "
                             "(mlflow experiments restore) or choose another name.")
        return experiment.experiment_id
    if not create:
        return None
    return client.create_experiment(name, artifact_location=_artifact_location(uri))


def _runs(experiment: str, tracking_uri: Optional[str], output_dir: str | Path,
          filter_string: str = "") -> Iterable:
    """Every run of ``experiment`` matching ``filter_string``, newest first (all pages)."""
    mlflow = _mlflow()
    uri = _resolve_uri(tracking_uri, output_dir)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, experiment, uri, create=False)
    if experiment_id is None:
        return
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def find_run(experiment: str, params: dict, tracking_uri: Optional[str] = None, *,
             output_dir: str | Path = "runs") -> Optional[str]:
    """The id of the newest FINISHED run of ``experiment`` whose parameters include ``params``.

    For grids that can be interrupted and started again: skip a configuration when
    ``find_run(...)`` returns an id. Values are compared as :meth:`Tracker.log_params` stores
    them (:func:`param_value`), so pass the same dict you logged; the run may have more
    parameters (library versions, ...) than ``params``.

    Args:
        tracking_uri, output_dir: the store, as for :class:`Tracker`.

    Returns:
        The run id, or None when no finished run matches (or the experiment does not exist).
    """
    wanted = _flatten(params)
    for run in _runs(experiment, tracking_uri, output_dir, "attributes.status = 'FINISHED'"):
        logged = run.data.params
        if all(logged.get(key) == value for key, value in wanted.items()):
            return run.info.run_id
    return None


def runs_frame(experiment: str, tracking_uri: Optional[str] = None, *,
               output_dir: str | Path = "runs"):
    """The runs of ``experiment`` as a pandas DataFrame, one row per run, newest first.

    The columns are those of ``mlflow.search_runs``: ``run_id``, ``experiment_id``, ``status``,
    ``artifact_uri``, ``start_time``, ``end_time``, then ``metrics.<key>`` (the last value),
    ``params.<key>`` and ``tags.<key>``. Built from the store's client rather than
    ``mlflow.search_runs``, which reads MLflow's global tracking URI.

    Returns:
        A DataFrame (empty, with no columns, when the experiment has no runs or does not exist).
    """
    import pandas as pd

    rows = []
    for run in _runs(experiment, tracking_uri, output_dir):
        info, data = run.info, run.data
        row = {"run_id": info.run_id, "experiment_id": info.experiment_id,
               "status": info.status, "artifact_uri": info.artifact_uri,
               "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
               "end_time": (pd.to_datetime(info.end_time, unit="ms", utc=True)
                            if info.end_time else pd.NaT)}
        row.update({f"metrics.{key}": value for key, value in data.metrics.items()})
        row.update({f"params.{key}": value for key, value in data.params.items()})
        row.update({f"tags.{key}": value for key, value in data.tags.items()})
        rows.append(row)
    return pd.DataFrame(rows)

