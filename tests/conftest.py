"""Shared pytest configuration for the segtut tests."""

import os
from pathlib import Path

import pytest


def pytest_configure(config):
    # The browser test builds the book and opens it in headless Chromium (tests/test_website.py).
    # Deselect it with: pytest -m "not website"
    config.addinivalue_line(
        "markers", "website: builds the book and checks the rendered site in headless Chromium")


def pytest_sessionstart(session):
    # Notebooks run under nbval in the fast smoke profile, without progress bars; the kernels
    # inherit these. Set SEGTUT_PROFILE yourself to run them another way.
    import os

    os.environ.setdefault("SEGTUT_PROFILE", "smoke")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
