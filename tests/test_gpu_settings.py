"""Every notebook with its ``gpu`` settings, cut to one training step, on the CPU.

No GPU has run the ``gpu`` profile that a Colab or Kaggle reader gets by default, so these tests
run each notebook the way that reader does (full resolution and crops, DataLoader workers, AMP
where the device allows it, the large models and their optimisers) with the counts cut
(:func:`segtut.profiles.one_step_settings`: one epoch of one batch, two evaluation images, one
timing repeat). Shape, configuration and data errors of the ``gpu`` profile fail here, not in a
reader's notebook. Three economies keep them affordable on the 2-core CI machine (MAX_BATCH,
MAX_WIDTH, MAX_MODELS): batches of 2 instead of 8 or 16, the from-scratch U-Net and FCN at
width 16 instead of 32 or 64 (channel counts, not spatial shapes), and chapter 15 comparing 2
of its 13 models. The full check, with every batch size, width and model, is ``python scripts/run_notebooks.py --profile gpu
--one-step``. The tests read the real data sets from ``$SEGTUT_DATA_DIR`` (skipped when a
notebook's data set is missing) and run each notebook in a scratch copy of the notebooks folder,
so nothing is written into the repository.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re
from pathlib import Path

import pytest

from segtut.profiles import ONE_STEP_IMAGES, is_count_knob, one_step_settings

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))

#: The knobs a one-step run keeps: they choose shapes, models and configuration, which are
#: what these tests are for. A new knob must be added here or counted by ``is_count_knob``.
SHAPE_KNOBS = {
    "image_size", "crop_size", "batch_size", "num_workers", "amp", "channels_last", "compile",
    "base_channels", "decoder_channels", "head_channels", "encoder", "backbone", "arch", "model",
    "models", "pretrained", "dropout", "loss", "lr", "lr_paper", "lr_large", "scratch_lr",
    "weight_decay", "optimizer", "select_best", "aux_weight", "aspp_rates", "output_stride",
    "zoo_encoders", "speed_size", "speed_sizes", "speed_threads", "speed_batches", "cost_backbones",
    "cost_sizes", "probe_size", "tile", "model_dir", "target", "fractions", "store",
    "one_seed_models", "one_seed", "cost_only_models", "show_images", "worst", "ddp_crop",
    "ddp_batch", "standin",
}

#: The CI machine's economies (2 CPU cores): every chapter's gpu settings with full-size batches,
#: the width-64 U-Net and chapter 15's 13 models take well over 45 minutes (chapter 15 alone:
#: 14); two notebooks at a time, with batches of 2 only 14 to 15 minutes, with all three
#: economies 8.3 minutes (in .ci/run). The full check is
#: `python scripts/run_notebooks.py --profile gpu --one-step` (seconds per chapter on a GPU).
MAX_BATCH, MAX_WIDTH, MAX_MODELS = 2, 16, 2

#: The data set folder each notebook needs under the data directory (default: camvid).
DATA_SETS = {"13_cityscapes_and_other_datasets": "cityscapes_pairs",
             "14_your_own_data": "weizmann_horse"}


def settings_of(path: Path) -> dict:
    """A notebook's ``SETTINGS`` dict, from its cell tagged ``parameters``."""
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(path, as_version=4)
    namespace: dict = {}
    exec(notebook.cells[load_runner().parameters_index(notebook)].source, {"os": os}, namespace)
    return namespace["SETTINGS"]


def test_one_step_settings_cut_counts_and_keep_shapes():
    gpu = dict(image_size=(360, 480), crop_size=(288, 384), batch_size=8, num_workers=4,
               amp=True, epochs=150, baseline_epochs=150, frozen_epochs=0, train_images=None,
               eval_images=None, time_budget_s=600, timing_warmup=3, timing_repeats=10,
               lr_find_iterations=100, steps=20, seeds=(0, 1, 2), ddp_images=32, ddp_batch=4,
               standin=dict(image_size=(360, 480), epochs=10, images=None),
               other=dict(images=None, batch_size=4))
    cut = one_step_settings(gpu)
    assert cut == dict(image_size=(360, 480), crop_size=(288, 384), batch_size=8, num_workers=4,
                       amp=True, epochs=1, baseline_epochs=1, frozen_epochs=0, train_images=8,
                       eval_images=ONE_STEP_IMAGES, time_budget_s=None, timing_warmup=0,
                       timing_repeats=1, lr_find_iterations=12, steps=1, seeds=(0,),
                       ddp_images=8, ddp_batch=4,
                       standin=dict(image_size=(360, 480), epochs=1, images=8),
                       other=dict(images=4, batch_size=4))
    assert gpu["epochs"] == 150 and gpu["standin"]["epochs"] == 10  # the input is not changed


def test_the_economies_cap_batches_and_models():
    gpu = dict(batch_size=16, train_images=None, speed_batches=(1, 8), ddp_batch=4,
               ddp_images=32, models=("unet", "fcn8s", "pspnet"), base_channels=64,
               standin=dict(images=None, batch_size=8, base_channels=8))
    assert one_step_settings(gpu, max_batch=2, max_width=16, max_models=2) == dict(
        batch_size=2, train_images=4, speed_batches=(1, 2), ddp_batch=2, ddp_images=4,
        models=("unet", "fcn8s"), base_channels=16,
        standin=dict(images=2, batch_size=2, base_channels=8))
    # train_images=4, not 2: the two-process experiment takes its 4 images from the train set
    assert one_step_settings(gpu)["models"] == gpu["models"]
    assert one_step_settings(gpu)["base_channels"] == 64
    with pytest.raises(ValueError, match="BatchNorm"):
        one_step_settings(gpu, max_batch=1)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_gpu_knob_is_a_count_or_a_shape(path):
    """A new knob must be classified: cut by a one-step run, or kept (SHAPE_KNOBS)."""
    settings = settings_of(path)
    unknown = sorted(key for key in settings["gpu"]
                     if not is_count_knob(key) and key not in SHAPE_KNOBS)
    assert not unknown, (f"{path.name}: gpu knobs {unknown} are neither counts "
                         "(segtut.profiles.is_count_knob) nor in SHAPE_KNOBS")
    cut = one_step_settings(settings["gpu"])
    def shapes(knobs):  # nested dicts (a stand-in's settings) are cut in turn
        return {k: v for k, v in knobs.items() if k in SHAPE_KNOBS and not isinstance(v, dict)}

    assert shapes(cut) == shapes(settings["gpu"])


@functools.cache
def load_runner():
    """scripts/run_notebooks.py as a module (its --one-step mode is what these tests run)."""
    spec = importlib.util.spec_from_file_location("run_notebooks",
                                                  REPO / "scripts" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_step_cell_follows_the_parameters_cell():
    nbformat = pytest.importorskip("nbformat")
    runner = load_runner()
    path = REPO / "notebooks" / "15_model_comparison.ipynb"
    notebook = runner.one_step_notebook(nbformat.read(path, as_version=4), "gpu")
    index = runner.parameters_index(notebook)
    added = notebook.cells[index + 1].source
    assert 'PROFILE = "gpu"' in added and "one_step_settings(SETTINGS[PROFILE])" in added
    assert "comparison.RECIPES[PROFILE]" in added  # chapter 15 trains through segtut.comparison
    path = REPO / "notebooks" / "03_unet_from_scratch.ipynb"
    notebook = runner.one_step_notebook(nbformat.read(path, as_version=4), "gpu")
    assert "comparison" not in notebook.cells[runner.parameters_index(notebook) + 1].source


def data_dir() -> Path:
    return Path(os.environ.get("SEGTUT_DATA_DIR") or REPO.parent / "shared" / "data")


def missing_data(path: Path) -> str | None:
    """Why ``path`` cannot run here (its data set is not in the data directory), or None."""
    needed = DATA_SETS.get(path.stem, "camvid")
    if (data_dir() / needed).is_dir():
        return None
    return f"{needed}/ is not in {data_dir()}: set SEGTUT_DATA_DIR to the folder that holds it"


def run_one_step(path: Path, folder: Path) -> str | None:
    """Run one notebook's one-step gpu settings in ``folder`` (a worker process); the error
    text, or None when every cell ran."""
    os.environ.update(SEGTUT_DATA_DIR=str(data_dir()), SEGTUT_OFFLINE="1", HF_HUB_OFFLINE="1",
                      TQDM_DISABLE="1", MPLBACKEND="Agg",
                      # two notebooks share the 2 cores: one thread each (the kernel inherits it)
                      OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // WORKERS)))
    try:
        # A scratch notebooks folder: the chapter's ../results and checkpoints/ land in folder.
        load_runner().run(path, "gpu", timeout=600, one_step_dir=folder / "notebooks",
                          max_batch=MAX_BATCH, max_width=MAX_WIDTH, max_models=MAX_MODELS)
    except Exception as error:  # noqa: BLE001 - reported by the notebook's own test
        text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(error).__name__}: {error}")  # no colours
        return text[-6000:]
    return None


#: Notebooks run two at a time (a quarter less wall time than one after the other on 2 cores:
#: kernel start-up, data loading, plots and exports overlap the other's arithmetic), the
#: longest first (as measured in .ci/run with the economies).
WORKERS = 2
LONGEST_FIRST = ("04_unet_fastai", "10_fc_densenet", "07_deeplabv3", "16_scaling_up")


@pytest.fixture(scope="module")
def one_step_results(request, tmp_path_factory) -> dict:
    """The error (or None) of each selected notebook's one-step gpu run, run in parallel."""
    pytest.importorskip("nbclient")
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    selected = [item.callspec.params["path"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_notebook_runs_with_gpu_settings"]
    runnable = [p for p in selected if missing_data(p) is None]
    runnable.sort(key=lambda p: LONGEST_FIRST.index(p.stem) if p.stem in LONGEST_FIRST
                  else len(LONGEST_FIRST))
    folders = [tmp_path_factory.mktemp(p.stem) for p in runnable]
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork")) as pool:
        errors = list(pool.map(run_one_step, runnable, folders))
    return {p.stem: error for p, error in zip(runnable, errors)}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_gpu_settings(path, request):
    if missing_data(path):
        pytest.skip(missing_data(path))
    error = request.getfixturevalue("one_step_results")[path.stem]
    assert error is None, f"{path.name} failed with its one-step gpu settings:\n{error}"
