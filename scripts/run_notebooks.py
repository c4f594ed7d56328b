"""Re-execute chapters in a chosen profile and save their outputs in place.

    python scripts/run_notebooks.py --profile cpu notebooks/03_unet_from_scratch.ipynb
    python scripts/run_notebooks.py --profile cpu            # every notebook, in order
    python scripts/run_notebooks.py --profile gpu --one-step # does every chapter START on a GPU?

This is how the book's stored outputs are made: the run card printed at the top of each chapter
records the profile, device and versions. Progress bars are switched off (TQDM_DISABLE) so the
stored outputs hold the per-epoch log lines rather than widget state.

``--one-step`` runs the profile's settings with every count cut to about one training step
(:func:`segtut.profiles.one_step_settings`: same resolution, batch size, workers, AMP and
models; one epoch of one batch, two evaluation images, one timing repeat) in a scratch copy of
the notebooks folder, and never touches the stored outputs: a minute-scale check before hours on
a rented GPU. The tests run every chapter this way with the ``gpu`` settings on the CPU
(tests/test_gpu_settings.py) with three economies, batches of 2, U-Net and FCN widths of
at most 16 and 2 models in chapter 15 (``--max-batch 2 --max-width 16 --max-models 2``): the
full check takes well over 45 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]

ONE_STEP_CELL = '''\
# Added by scripts/run_notebooks.py --one-step: the {profile} settings, every count cut to one step.
from segtut.profiles import one_step_settings
PROFILE = "{profile}"
SETTINGS[PROFILE] = one_step_settings(SETTINGS[PROFILE]{options})
print("one-step run of the {profile} settings:", SETTINGS[PROFILE])
'''

# Chapter 15 trains through segtut.comparison, whose recipes hold its counts.
ONE_STEP_COMPARISON = '''\
from segtut import comparison
comparison.RECIPES[PROFILE] = one_step_settings(comparison.RECIPES[PROFILE]{options})
'''


def parameters_index(notebook) -> int:
    """The index of the notebook's cell tagged ``parameters`` (its SETTINGS dict)."""
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return index
    raise ValueError("the notebook has no code cell tagged 'parameters'")


def one_step_notebook(notebook, profile: str, *, max_batch: int | None = None,
                      max_width: int | None = None, max_models: int | None = None):
    """``notebook`` with a cell after its parameters cell that cuts ``profile``'s counts (and
    batches and model lists: see :func:`segtut.profiles.one_step_settings`)."""
    options = "".join(f", {name}={value}" for name, value in
                      (("max_batch", max_batch), ("max_width", max_width),
                       ("max_models", max_models)) if value is not None)
    source = ONE_STEP_CELL.format(profile=profile, options=options)
    code = "".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    if "segtut.comparison" in code or "import comparison" in code:
        source += ONE_STEP_COMPARISON.format(options=options)
    notebook.cells.insert(parameters_index(notebook) + 1, nbformat.v4.new_code_cell(source))
    return notebook


def run(path: Path, profile: str, timeout: int | None, *, one_step_dir: Path | None = None,
        max_batch: int | None = None, max_width: int | None = None,
        max_models: int | None = None) -> float:
    """Execute ``path`` in ``profile``; returns seconds.

    Without ``one_step_dir`` the outputs are saved in place (even on failure, to see the error);
    with it, a one-step copy runs in ``one_step_dir`` (so ``../results`` lands next to it) and
    the executed copy is written there (``max_batch``, ``max_width``, ``max_models``: the
    one-step run's further cuts).
    """
    notebook = nbformat.read(path, as_version=4)
    os.environ["SEGTUT_PROFILE"] = profile
    os.environ.setdefault("TQDM_DISABLE", "1")
    folder, saved = path.parent, path
    if one_step_dir is not None:
        notebook = one_step_notebook(notebook, profile, max_batch=max_batch,
                                     max_width=max_width, max_models=max_models)
        folder = Path(one_step_dir)
        folder.mkdir(parents=True, exist_ok=True)
        saved = folder / path.name
    start = time.perf_counter()
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(folder)}})
    try:
        client.execute()
    finally:
        nbformat.write(notebook, saved)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: every notebooks/*.ipynb)")
    parser.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: none)")
    parser.add_argument("--one-step", action="store_true",
                        help="cut every count to one training step and run in a scratch copy; "
                             "the stored outputs are not touched")
    parser.add_argument("--out", type=Path, default=None,
                        help="with --one-step: where the executed copies go (default: a new "
                             "temporary folder)")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="with --one-step: cap batch sizes (e.g. 2 on a small CPU)")
    parser.add_argument("--max-width", type=int, default=None,
                        help="with --one-step: cap base_channels (e.g. 16 on a small CPU)")
    parser.add_argument("--max-models", type=int, default=None,
                        help="with --one-step: keep the first N models of a comparison")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    one_step_dir = None
    if args.one_step:
        one_step_dir = (args.out or Path(tempfile.mkdtemp(prefix="segtut_one_step_"))) / "notebooks"
    elif (args.out, args.max_batch, args.max_width, args.max_models) != (None,) * 4:
        parser.error("--out, --max-batch, --max-width and --max-models only go with --one-step "
                     "(other runs use the profile's settings and save their outputs in place)")
    for path in paths:
        what = "a one-step run of" if args.one_step else "profile"
        print(f"running {path} with {what} {args.profile} ...", flush=True)
        seconds = run(path.resolve(), args.profile, args.timeout, one_step_dir=one_step_dir,
                      max_batch=args.max_batch, max_width=args.max_width,
                      max_models=args.max_models)
        where = f"executed copy in {one_step_dir}" if args.one_step else "outputs saved in place"
        print(f"  done in {seconds / 60:.1f} min; {where}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
