"""Fixtures shared by the unit tests (the environment set-up is in the root conftest.py)."""

import os
from pathlib import Path

import pytest
import torch


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


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of small models (``pytestmark = usefixtures("one_thread")``).

    Small forward and backward passes gain nothing from more threads, and on a machine busy with
    other work the extra threads wait on each other (a 2-step fit went from 3 s to 30 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Empty weight caches, SEGTUT_OFFLINE unset, and a test failure on any download attempt.

    Returns ``tmp_path``; ``TORCH_HOME`` points at ``tmp_path / "torch-home"``.
    """
    import huggingface_hub

    from segtut import weights

    for name in weights.OFFLINE_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(weights.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def hf_download(*args, local_files_only=False, **kwargs):
        if local_files_only:
            raise FileNotFoundError("not in the (test's empty) Hugging Face cache")
        pytest.fail("tried to download from the Hugging Face Hub")

    def torch_download(*args, **kwargs):
        pytest.fail("tried to download from download.pytorch.org")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", torch_download)
    monkeypatch.setattr(weights, "unreachable", lambda host, timeout=0: f"cannot reach {host} (test)")
    return tmp_path
