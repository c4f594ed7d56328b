"""Train every registered model with one shared recipe and several seeds; log to MLflow.

The command line of :mod:`segtut.comparison` (chapter 15 reads the store it fills)::

    python scripts/compare.py                                    # cpu recipe, all models, seeds 0 1 2
    python scripts/compare.py --models unet pspnet --seeds 0     # a part of the grid
    python scripts/compare.py --profile gpu --store results/camvid_comparison_gpu
    python scripts/compare.py --table                            # print the table, train nothing

Runs already in the store are skipped, so an interrupted grid continues where it stopped.
Timings (the cost runs) are only meaningful on a machine that does nothing else meanwhile.
Browse the store with ``mlflow ui --backend-store-uri sqlite:///results/camvid_comparison/mlflow.db``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

DEFAULT_STORE = "results/camvid_comparison"
# The landing page's generated table sits between these two lines (tests/test_results_table.py).
START, END = "<!-- COMPARISON TABLE START", "<!-- COMPARISON TABLE END -->"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store", default=DEFAULT_STORE,
                   help="folder of the MLflow store (mlflow.db + mlartifacts/)")
    p.add_argument("--profile", default="cpu", help="recipe: smoke, cpu or gpu")
    p.add_argument("--models", nargs="+", help="names of segtut.models.MODELS (default: all)")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2],
                   help="training seeds (none: only the cost runs)")
    p.add_argument("--keep-models", nargs="*", type=int, default=[0],
                   help="seeds whose trained models are stored in their runs")
    p.add_argument("--data-dir", help="the folder that holds camvid/ (default: "
                   "$SEGTUT_DATA_DIR or ~/.cache/segtut)")
    p.add_argument("--device", help="cpu, cuda, ... (default: the best available)")
    p.add_argument("--no-costs", dest="costs", action="store_false",
                   help="skip the cost measurements")
    p.add_argument("--table", action="store_true", help="print the summary table and exit")
    p.add_argument("--write-landing", metavar="FILE",
                   help="also write the markdown table into FILE between its "
                   f"'{START}' and '{END}' lines (book/intro.md)")
    return p


def write_between_markers(path: str, table: str) -> None:
    """Replace the lines between the START and END markers of ``path`` with ``table``."""
    from pathlib import Path

    text = Path(path).read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path} has no '{START}' ... '{END}' lines to write the table between; "
                         "add them where the table goes.")
    head, rest = text.split(START, 1)
    start_line, rest = rest.split("\n", 1)
    _, tail = rest.split(END, 1)
    Path(path).write_text(f"{head}{START}{start_line}\n\n{table}\n\n{END}{tail}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    from segtut.comparison import (RECIPES, load_runs, markdown_table, run_comparison,
                                   summary_table)
    from segtut.models import MODELS

    if args.profile not in RECIPES:
        parser().error(f"unknown --profile {args.profile!r}; valid: {', '.join(RECIPES)}")
    unknown = [name for name in args.models or () if name not in MODELS]
    if unknown:
        parser().error(f"unknown --models {unknown}; valid: {', '.join(MODELS)}")
    if not args.table:
        print(f"recipe ({args.profile}): {RECIPES[args.profile]}")
        run_comparison(args.store, profile=args.profile, models=args.models, seeds=args.seeds,
                       keep_models=args.keep_models, data_dir=args.data_dir, device=args.device,
                       costs=args.costs)
    table = summary_table(load_runs(args.store, profile=args.profile))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.write_landing:
        write_between_markers(args.write_landing, markdown_table(table))
        print(f"wrote the table into {args.write_landing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
