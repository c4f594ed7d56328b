"""Re-execute chapters in a chosen profile and save their outputs in place.

    python scripts/run_notebooks.py --profile cpu notebooks/03_unet_from_scratch.ipynb
    python scripts/run_notebooks.py --profile cpu            # every notebook, in order

This is how the book's stored outputs are made: the run card printed at the top of each chapter
records the profile, device and versions. Progress bars are switched off (TQDM_DISABLE) so the
stored outputs hold the per-epoch log lines rather than widget state.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def run(path: Path, profile: str, timeout: int | None) -> float:
    notebook = nbformat.read(path, as_version=4)
    os.environ["SEGTUT_PROFILE"] = profile
    os.environ.setdefault("TQDM_DISABLE", "1")
    start = time.perf_counter()
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    finally:
        nbformat.write(notebook, path)  # keep what ran, even on failure, to see the error
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="notebooks to run (default: every notebooks/*.ipynb)")
    parser.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: none)")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    for path in paths:
        print(f"running {path} with profile {args.profile} ...", flush=True)
        seconds = run(path.resolve(), args.profile, args.timeout)
        print(f"  done in {seconds / 60:.1f} min; outputs saved in place", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
