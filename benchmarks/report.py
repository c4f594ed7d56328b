"""What every training benchmark prints: the machine, the versions, the settings, a markdown table.

A timing means nothing without the machine it was taken on, the thread count and the other load
on it, so each script starts its output with :func:`header_lines` and ends with one or more
tables from :func:`markdown_table`; ``--markdown FILE`` writes the same lines to a file
(:func:`emit`), ready to paste into ``benchmarks/README.md``.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from segtut.profiles import library_versions

# Read when a script imports this module, before its own work (decoding, training) adds to it.
_LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), which can be fewer than the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def header_lines(title: str, settings: dict, extra_packages: Sequence[str] = ()) -> list[str]:
    """Date, machine (CPU model, cores, torch threads, load), versions and settings, one per line.

    Args:
        title: what the script measures, first line of the output.
        settings: name -> value of every knob that changes the numbers.
        extra_packages: distributions whose versions matter besides python, torch, torchvision
            and segtut (e.g. ``("fastai",)``).
    """
    versions = library_versions(tuple(extra_packages))
    lines = [
        f"# {title}",
        "",
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"machine: {cpu_model()} ({platform.machine()}), {os.cpu_count()} cpus "
        f"({usable_cpus()} usable), {torch.get_num_threads()} torch threads by default, "
        f"load average {_LOAD_AT_START:.1f} when the script started (above 0.5 means other "
        "work shares the cpus: time on a quiet machine)",
        "versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()),
        "settings: " + ", ".join(f"{name}={value}" for name, value in settings.items()),
    ]
    return lines


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table, one string per line; cells are formatted with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"A table row has {len(row)} cells but the table has "
                             f"{len(headers)} columns ({', '.join(headers)}): {row}")
        # A "|" inside a cell (an error message) would split it into two columns.
        lines.append("| " + " | ".join(str(cell).replace("|", "/") for cell in row) + " |")
    return lines


def emit(lines: Sequence[str], markdown: Optional[str]) -> None:
    """Print ``lines`` and, when ``markdown`` is a path, write them there too."""
    text = "\n".join(lines)
    print(text, flush=True)
    if markdown:
        path = Path(markdown)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        print(f"\n(written to {path})")


def one_line(error: BaseException, limit: int = 160) -> str:
    """``TypeName: first line of the message``, shortened to ``limit`` characters, for a table."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
