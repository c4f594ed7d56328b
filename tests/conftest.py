"""Fixtures shared by the unit tests (the environment set-up is in the root conftest.py)."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def camvid_dir() -> Path:
    """The real ``camvid`` folder: ``$SEGTUT_DATA_DIR/camvid``, else ``<repo>/../shared/data``."""
    candidates = [Path(__file__).parents[1].parent / "shared" / "data"]
    if os.environ.get("SEGTUT_DATA_DIR"):
        candidates.insert(0, Path(os.environ["SEGTUT_DATA_DIR"]))
    for base in candidates:
        if (base / "camvid").is_dir():
            return base / "camvid"
    pytest.skip(f"real CamVid not found: no camvid/ folder in {[str(c) for c in candidates]}; "
                "set SEGTUT_DATA_DIR to a folder holding camvid/ to run these tests")
