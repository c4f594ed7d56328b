"""pytest set-up shared by the unit tests (tests/) and the notebooks (notebooks/, via nbval).

It lives at the repository root so that it applies however pytest is started: ``pytest``,
``pytest tests`` or ``pytest notebooks/03_unet_from_scratch.ipynb`` alike.
"""

import os


def pytest_configure(config):
    # The browser test builds the book and opens it in headless Chromium (tests/test_website.py).
    # Deselect it with: pytest -m "not website"
    config.addinivalue_line(
        "markers", "website: builds the book and checks the rendered site in headless Chromium")
    # Deselect with: pytest -m "not slow" (e.g. torch.compile's C++ code generation, ~30 s).
    config.addinivalue_line("markers", "slow: a test that takes more than ~20 s on a small CPU")
    # Notebooks run under nbval in the fast smoke profile, without progress bars, never trying
    # to download; their kernels inherit these. Set SEGTUT_PROFILE yourself to run them another way.
    os.environ.setdefault("SEGTUT_PROFILE", "smoke")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
