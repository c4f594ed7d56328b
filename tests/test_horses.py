"""segtut.datasets.horses: finding, downloading (from a local zip) and faking the horses.

Nothing here touches the internet: downloads come from a zip the test writes, in the layout of
the GitHub archive of shenshutao/image_segmentation.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segtut.download as download
from segtut.datasets import horses
from segtut.datasets.describe import describe_dataset
from segtut.datasets.horses import (HORSE_CLASS_NAMES, HORSE_FOLDER, HORSE_PALETTE,
                                    HORSE_SYNTHETIC_MARKER, HorsesNotFound, horse_dataset,
                                    horse_root, horses_for_profile, write_synthetic_horses)
from segtut.errors import DataError, DataWarning
from segtut.profiles import SYNTHETIC_BANNER

TOP = f"image_segmentation-{horses.HORSE_COMMIT}"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No segtut settings from outside (the root conftest sets HF_HUB_OFFLINE=1), no proxies,
    and any attempt to reach the network fails the test."""
    for name in ("SEGTUT_DATA_DIR", "SEGTUT_HORSE_URL", "SEGTUT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    real = download.urlopen

    def local_only(url, *args, **kwargs):
        if not str(url).startswith("file:"):
            pytest.fail(f"tried to reach the network: {url}")
        return real(url, *args, **kwargs)

    monkeypatch.setattr(download, "urlopen", local_only)


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG")
    return buffer.getvalue()


def fake_archive(path: Path, count: int = 3) -> Path:
    """A zip shaped like the GitHub archive: weizmann_horse_db/{rgb,figure_ground,gray}."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{TOP}/README.md", "image segmentation")
        archive.writestr(f"{TOP}/weizmann_horse_db/", "")
        for i in range(1, count + 1):
            name = f"horse{i:03d}.jpg"
            photo = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
            mask = (rng.random((15, 20)) > 0.5).astype(np.uint8) * 255
            archive.writestr(f"{TOP}/weizmann_horse_db/rgb/{name}", jpeg_bytes(photo))
            archive.writestr(f"{TOP}/weizmann_horse_db/figure_ground/{name}", jpeg_bytes(mask))
            archive.writestr(f"{TOP}/weizmann_horse_db/gray/{name}", jpeg_bytes(mask))
    return path


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_constants():
    assert HORSE_FOLDER == "weizmann_horse"
    assert HORSE_CLASS_NAMES == ("background", "horse") and len(HORSE_PALETTE) == 2
    assert horses.HORSE_URL == ("https://github.com/shenshutao/image_segmentation/archive/"
                                "2653401d6ea617026895aac17059eb57e017abcb.zip")
    assert horses.horse_url() == horses.HORSE_URL


def test_smoke_fallback_writes_synthetic_horses_and_says_so(tmp_path):
    lines = []
    folder = horses_for_profile("smoke", tmp_path / "data", scratch=tmp_path / "scratch",
                                log=lines.append)
    assert folder.synthetic and "SYNTHETIC" in folder.source
    assert folder.root == tmp_path / "scratch" / HORSE_FOLDER
    banner = "\n".join(lines)
    assert SYNTHETIC_BANNER in banner and str(tmp_path / "data" / HORSE_FOLDER) in banner
    assert (folder.root / HORSE_SYNTHETIC_MARKER).exists()
    assert listing(tmp_path) == ["scratch"]  # nothing written into the data directory
    photos, masks = listing(folder.root / "rgb"), listing(folder.root / "figure_ground")
    assert photos == masks and len(photos) == 12 and photos[0] == "horse001.jpg"

    # The same traps as the real data: JPEG masks of another size, one duplicate photo.
    report = describe_dataset(folder.root / "rgb", folder.root / "figure_ground")
    assert len(report.jpeg_masks) == 12 and report.jpeg_noise_levels > 2
    assert len(report.size_mismatches) == 12
    assert all(m.same_aspect for m in report.size_mismatches)
    assert report.duplicate_files == [["horse004.jpg", "horse012.jpg"]]

    with pytest.warns(DataWarning):
        ds = horse_dataset(folder.root, limit=2)
    image, mask = ds[0]
    assert image.shape == (3, 96, 128) and mask.shape == (96, 128)
    assert set(mask.unique().tolist()) == {0, 1}
    assert ds.class_names == HORSE_CLASS_NAMES


def test_smoke_uses_real_data_when_present(tmp_path):
    write_synthetic_horses(tmp_path / HORSE_FOLDER, count=3)  # stands in for real files
    lines = []
    folder = horses_for_profile("smoke", tmp_path, log=lines.append)
    assert folder.root == tmp_path / HORSE_FOLDER and not folder.synthetic and lines == []
    assert "3 photos" in folder.source


def test_cpu_profile_missing_and_offline_is_a_data_error(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    with pytest.raises(DataError) as error:
        horses_for_profile("cpu", tmp_path / "data", log=lambda line: None)
    message = str(error.value)
    assert isinstance(error.value, HorsesNotFound)
    assert str(tmp_path / "data" / HORSE_FOLDER) in message and "SEGTUT_OFFLINE=1" in message
    assert "SEGTUT_DATA_DIR" in message and "SEGTUT_HORSE_URL" in message
    assert horses.HORSE_URL in message
    assert listing(tmp_path) == []
    with pytest.raises(HorsesNotFound, match="download=False"):
        horse_root(tmp_path, download=False)


@pytest.mark.parametrize("as_uri", [True, False])
def test_download_from_a_local_zip(monkeypatch, tmp_path, as_uri):
    archive = fake_archive(tmp_path / "image_segmentation.zip")
    monkeypatch.setenv("SEGTUT_HORSE_URL", archive.as_uri() if as_uri else str(archive))
    data = tmp_path / "data"
    root = horse_root(data)
    assert root == data / HORSE_FOLDER and listing(data) == [HORSE_FOLDER]  # no temp left
    assert listing(root) == ["figure_ground", "rgb"]  # gray/ and README not extracted
    assert listing(root / "rgb") == ["horse001.jpg", "horse002.jpg", "horse003.jpg"]
    assert listing(root / "figure_ground") == listing(root / "rgb")
    archive.unlink()
    assert horse_root(data) == root  # found on disk, nothing downloaded again
    folder = horses_for_profile("gpu", data, log=lambda line: None)
    assert folder.root == root and not folder.synthetic


def test_corrupt_download_leaves_nothing(monkeypatch, tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"<html>Sign in to the wifi</html>")
    monkeypatch.setenv("SEGTUT_HORSE_URL", bad.as_uri())
    with pytest.raises(HorsesNotFound, match="not a valid zip"):
        horse_root(tmp_path / "data")
    assert listing(tmp_path / "data") == []


def test_incomplete_folder_says_what_is_missing(tmp_path):
    (tmp_path / HORSE_FOLDER / "rgb").mkdir(parents=True)
    with pytest.raises(DataError, match="figure_ground/ is missing") as error:
        horse_root(tmp_path)
    assert not isinstance(error.value, HorsesNotFound)  # smoke must not hide this either
