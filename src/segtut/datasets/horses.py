"""The Weizmann Horse Database: a small real data set shaped like readers' own folders.

328 side-view photos of horses, each with a figure-ground mask (Borenstein & Ullman, ECCV 2002),
in ``<data_dir>/weizmann_horse/rgb/horseNNN.jpg`` and ``figure_ground/horseNNN.jpg``. It is
messy exactly the way home-made data is, which is why the book uses it:

* the masks are greyscale JPEGs (lossy: dozens of grey levels instead of 0 and 255), so they
  are thresholded at 128 (``MaskFolder(jpeg_masks="threshold")``);
* 327 of 328 masks have another size than their photo (same aspect ratio): they are resized
  with nearest neighbour (``resize_masks=True``);
* two photos appear twice under other names (horse006 = horse018, horse240 = horse274), so a
  random split can leak them (:func:`segtut.datasets.splits.split_without_leaks`);
* there is no official split.

:func:`horse_root` finds the folder, downloading it when missing from the public GitHub
repository ``shenshutao/image_segmentation`` at a fixed commit (only its
``weizmann_horse_db/{rgb,figure_ground}``), all or nothing like :mod:`segtut.download`.
:func:`horses_for_profile` is the profile-aware finder (SYNTHETIC horses in the smoke profile
when the real ones are missing). :func:`horse_dataset` reads the folder as a
:class:`~segtut.datasets.folders.MaskFolder` with the right options.

Environment: ``SEGTUT_HORSE_URL`` downloads from another URL (a mirror, ``file:///path.zip`` or
a plain path to a zip); ``SEGTUT_OFFLINE=1`` forbids downloading.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageDraw

from segtut import config
from segtut.config import DATA_DIR_ENV
from segtut.data import list_images
from segtut.datasets.folders import MaskFolder
from segtut.datasets.labels import IGNORE_INDEX
from segtut.download import NETWORK_TIMEOUT, _fetch, extract_folders
from segtut.errors import DataError
from segtut.profiles import PROFILES, DataFolder, synthetic_banner

__all__ = [
    "HORSE_FOLDER", "HORSE_URL", "HORSE_URL_ENV", "HORSE_COMMIT", "HORSE_CLASS_NAMES",
    "HORSE_PALETTE", "HORSE_NUM_CLASSES", "HORSE_COUNT", "HORSE_DUPLICATES",
    "HORSE_SYNTHETIC_MARKER", "HorsesNotFound", "horse_url", "horse_problems", "is_horse_folder",
    "download_horses", "horse_root", "horses_for_profile", "write_synthetic_horses",
    "horse_dataset",
]

#: The folder of the data set inside the data directory.
HORSE_FOLDER = "weizmann_horse"
HORSE_URL_ENV = "SEGTUT_HORSE_URL"
HORSE_REPO = "https://github.com/shenshutao/image_segmentation"
HORSE_COMMIT = "2653401d6ea617026895aac17059eb57e017abcb"
HORSE_URL = f"{HORSE_REPO}/archive/{HORSE_COMMIT}.zip"
#: The archive's folder holding ``rgb/`` and ``figure_ground/``.
ARCHIVE_FOLDER = "weizmann_horse_db"
#: The two sub-folders: photos, and masks of the same name.
IMAGES, MASKS = "rgb", "figure_ground"
HORSE_COUNT = 328
HORSE_CLASS_NAMES = ("background", "horse")
HORSE_NUM_CLASSES = len(HORSE_CLASS_NAMES)
#: Display colours: background a blue-grey, horse a horse-brown (black is void in every
#: segtut figure, so no class is black).
HORSE_PALETTE = ((90, 110, 140), (200, 120, 30))
#: Byte-identical photos under two names in the real data set.
HORSE_DUPLICATES = (("horse006", "horse018"), ("horse240", "horse274"))
#: A file of this name marks a folder of SYNTHETIC horses (the smoke fallback).
HORSE_SYNTHETIC_MARKER = "SYNTHETIC_NOT_WEIZMANN_HORSE.txt"


class HorsesNotFound(DataError):
    """The horses are not in the data directory and were not downloaded (offline,
    ``download=False`` or a failed download). The smoke profile catches exactly this one."""


def horse_url() -> str:
    """``$SEGTUT_HORSE_URL`` (a URL, or a path to a local zip) if set, else :data:`HORSE_URL`."""
    value = os.environ.get(HORSE_URL_ENV)
    if not value:
        return HORSE_URL
    if "://" not in value:  # a plain path: urlopen needs a file:// URL
        return Path(value).expanduser().absolute().as_uri()
    return value


def horse_problems(folder: str | Path) -> list[str]:
    """What is missing from a horse folder, one line each (empty when it is usable).

    Usable: ``rgb/`` and ``figure_ground/`` exist and hold images with the same set of names.
    (Counts are not checked: a reader's trimmed copy is fine.)
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [f"{folder} does not exist"]
    problems, stems = [], {}
    for name in (IMAGES, MASKS):
        sub = folder / name
        if not sub.is_dir():
            problems.append(f"{name}/ is missing")
            continue
        stems[name] = {p.stem for p in list_images(sub)}
        if not stems[name]:
            problems.append(f"{name}/ holds no images")
    if not problems and stems[IMAGES] != stems[MASKS]:
        lonely = sorted(stems[IMAGES] ^ stems[MASKS])
        problems.append(f"{len(lonely)} name(s) are in only one of {IMAGES}/ and {MASKS}/, "
                        f"e.g. {lonely[:3]}")
    return problems


def is_horse_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds ``rgb/`` and ``figure_ground/`` with matching images."""
    return not horse_problems(folder)


def _how_to_get(target: Path) -> str:
    return (f"To get the Weizmann Horse data, either:\n"
            f"  * set {DATA_DIR_ENV} to a folder that contains {HORSE_FOLDER}/ (with {IMAGES}/ "
            f"and {MASKS}/), or\n"
            f"  * on a machine with internet, download {HORSE_URL} and copy its "
            f"{ARCHIVE_FOLDER}/{IMAGES} and {ARCHIVE_FOLDER}/{MASKS} folders into {target}, or\n"
            f"  * set {HORSE_URL_ENV} to that zip file (a path or file:///path/to.zip).")


def download_horses(destination: str | Path, url: Optional[str] = None,
                    timeout: float = NETWORK_TIMEOUT) -> Path:
    """Download the horses into ``destination`` (the ``weizmann_horse`` folder), all or nothing.

    Like :func:`segtut.download.download_camvid`: the zip goes to a temporary folder next to
    ``destination``, only ``rgb/`` and ``figure_ground/`` are unpacked and checked, and the
    result is renamed into place in one step; on failure nothing is left behind.

    Raises:
        DataError: the download failed or the archive is not the expected one, or
            ``destination`` exists and is not a complete horse folder.
    """
    destination = Path(destination).expanduser().absolute()
    url = url or horse_url()
    if is_horse_folder(destination):
        return destination
    if destination.exists() and not (destination.is_dir() and not any(destination.iterdir())):
        raise DataError(f"{destination} exists but is not a complete horse folder "
                        f"({'; '.join(horse_problems(destination))}). Delete it and try again.")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=f".{destination.name}.download-",
                                          dir=destination.parent))
    except OSError as error:
        raise DataError(f"Cannot write into the data directory {destination.parent} "
                        f"({error.strerror or error}). Set {DATA_DIR_ENV} to a folder you can "
                        f"write to (it will hold {HORSE_FOLDER}/).") from None
    try:
        archive = temporary / "archive.zip"
        _fetch(url, archive, timeout, what="the Weizmann Horse archive")
        staging = temporary / destination.name
        extract_folders(archive, staging, folder=ARCHIVE_FOLDER, subfolders=(IMAGES, MASKS),
                        url=url, source="shenshutao/image_segmentation repository",
                        description="Unpacking the horses")
        archive.unlink()
        problems = horse_problems(staging)
        if problems:
            raise DataError(f"The archive from {url} does not hold the expected horse files: "
                            f"{'; '.join(problems)}.")
        try:
            os.replace(staging, destination)  # atomic: complete or absent
        except OSError:
            if not is_horse_folder(destination):
                raise DataError(f"Could not move the downloaded horses into {destination}: "
                                "something else is there now. Delete it and try again.") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return destination


def horse_root(data_dir: str | Path | None = None, download: bool = True) -> Path:
    """Find ``<data_dir>/weizmann_horse`` (with ``rgb/`` and ``figure_ground/``), downloading it
    when missing (unless ``download`` is False or segtut is offline).

    Args:
        data_dir: the data directory, the folder that HOLDS ``weizmann_horse/`` (None or "":
            :func:`segtut.config.data_dir`).
        download: allow a download when the data set is missing.

    Returns:
        The ``weizmann_horse`` folder.

    Raises:
        HorsesNotFound: (a DataError) missing and not downloaded (download=False, offline, or
            the download failed); says where segtut looked and how to get the data.
        DataError: the data directory is a file, or the folder is incomplete.
    """
    base = Path(data_dir).expanduser() if data_dir not in (None, "") else config.data_dir()
    target = base / HORSE_FOLDER
    if base.exists() and not base.is_dir():
        raise DataError(f"The data directory {base} is a file, not a folder. Set {DATA_DIR_ENV} "
                        f"to a folder (it will hold {HORSE_FOLDER}/), or pass one as data_dir.")
    if is_horse_folder(target):
        return target
    if base.name == HORSE_FOLDER and is_horse_folder(base):
        raise DataError(f"{base} is the horse folder itself, but segtut wants the data "
                        f"directory that holds it: pass {base.parent}.")
    if target.exists() and not target.is_dir():
        raise DataError(f"{target} is a file, not the horse folder. Delete it.\n"
                        + _how_to_get(target))
    if target.is_dir() and any(target.iterdir()):
        raise DataError(f"The horse folder {target} is incomplete: "
                        f"{'; '.join(horse_problems(target))}. Delete it and segtut will "
                        "download it again.\n" + _how_to_get(target))
    looked = f"The Weizmann Horse data was not found: segtut looked in {target}"
    if not download:
        raise HorsesNotFound(f"{looked}, and download=False.\n" + _how_to_get(target))
    reason = config.offline_reason()
    if reason is not None:
        raise HorsesNotFound(f"{looked}, and {reason}, which forbids downloading it.\n"
                             + _how_to_get(target))
    url = horse_url()
    try:
        return download_horses(target, url)
    except DataError as error:
        raise HorsesNotFound(f"{looked}, and downloading it from {url} into {target} failed: "
                             f"{error}\n" + _how_to_get(target)) from error


#: ``(H, W)`` of the SYNTHETIC photos, and of their masks (another size, the same 3:4 shape).
SYNTHETIC_PHOTO_SIZE, SYNTHETIC_MASK_SIZE = (96, 128), (72, 96)
SYNTHETIC_HORSES = 12


def write_synthetic_horses(folder: str | Path, count: int = SYNTHETIC_HORSES,
                           seed: int = 0) -> Path:
    """Write SYNTHETIC messy 'horses' in the real layout: ``folder/rgb``, ``folder/figure_ground``.

    Each photo (JPEG, :data:`SYNTHETIC_PHOTO_SIZE`) shows a brown ellipse 'horse' on grass
    under sky; its mask is a greyscale JPEG (0/255 with JPEG noise) at
    :data:`SYNTHETIC_MASK_SIZE`, another size with the same aspect ratio; the last photo is a
    byte-identical copy of the fourth under another name. The same traps as the real data, in
    seconds; the numbers trained on them mean nothing.

    Returns:
        ``folder``, holding :data:`HORSE_SYNTHETIC_MARKER`.
    """
    folder = Path(folder)
    (folder / IMAGES).mkdir(parents=True, exist_ok=True)
    (folder / MASKS).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    (height, width), (mask_h, mask_w) = SYNTHETIC_PHOTO_SIZE, SYNTHETIC_MASK_SIZE
    unique = max(count - 1, 1)
    for i in range(unique):
        cx, cy = rng.uniform(0.35, 0.65) * width, rng.uniform(0.45, 0.6) * height
        rx, ry = rng.uniform(0.2, 0.3) * width, rng.uniform(0.15, 0.22) * height
        photo = Image.new("RGB", (width, height), (135, 180, 230))  # sky
        draw = ImageDraw.Draw(photo)
        draw.rectangle([0, int(0.6 * height), width, height], fill=(70, 140, 60))  # grass
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(90, 170, 3)))
        noisy = np.asarray(photo, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            folder / IMAGES / f"horse{i + 1:03d}.jpg", quality=90)
        mask = Image.new("L", (mask_w, mask_h), 0)
        scale = mask_w / width
        ImageDraw.Draw(mask).ellipse([v * scale for v in box], fill=255)
        mask.save(folder / MASKS / f"horse{i + 1:03d}.jpg", quality=75)  # JPEG noise
    if count > 1:
        # The last photo duplicates the fourth (or the first), byte for byte, like horse018.
        source = f"horse{min(4, unique):03d}.jpg"
        shutil.copyfile(folder / IMAGES / source, folder / IMAGES / f"horse{count:03d}.jpg")
        shutil.copyfile(folder / MASKS / source, folder / MASKS / f"horse{count:03d}.jpg")
    (folder / HORSE_SYNTHETIC_MARKER).write_text(
        "SYNTHETIC ellipse 'horses' written by segtut.datasets.horses.write_synthetic_horses "
        "for the smoke profile. Not the Weizmann Horse Database.\n")
    return folder


def horses_for_profile(profile: str, data_dir: str | Path | None = None, *,
                       scratch: str | Path | None = None,
                       log: Callable[[str], None] = print) -> DataFolder:
    """The horse folder a chapter reads in this profile: the real one, or the smoke fallback.

    * ``cpu`` / ``gpu``: the real data in ``<data_dir>/weizmann_horse``, downloaded when
      missing (:func:`horse_root`); offline and missing is a DataError saying how to get it.
    * ``smoke``: the real data when it is on disk (never downloaded); otherwise SYNTHETIC
      horses (:func:`write_synthetic_horses`) in ``scratch`` (a new temporary folder by
      default), announced by a loud banner. Other data problems are errors in every profile.

    Returns:
        :class:`segtut.profiles.DataFolder` ``(root, source, synthetic)``: ``root`` is the
        ``weizmann_horse`` folder (for :func:`horse_dataset`).
    """
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {', '.join(PROFILES)} "
                         "(resolve 'auto' with segtut.profiles.resolve_profile first).")
    try:
        root = horse_root(data_dir, download=profile != "smoke")
    except HorsesNotFound:
        if profile != "smoke":
            raise
        scratch = Path(scratch) if scratch else Path(tempfile.mkdtemp(prefix="segtut_synthetic_"))
        root = write_synthetic_horses(scratch / HORSE_FOLDER)
        where = Path(data_dir).expanduser() if data_dir not in (None, "") else config.data_dir()
        synthetic_banner(log, missing=f"the Weizmann horses are not in {where / HORSE_FOLDER}, "
                         "and the smoke profile never downloads them.",
                         what="ellipse 'horses'", root=root,
                         hint=f"For the real data, set {DATA_DIR_ENV} to the folder that holds "
                         f"{HORSE_FOLDER}/.")
        photos = len(list_images(root / IMAGES))
        source = (f"SYNTHETIC horses (offline fallback, NOT the Weizmann Horse Database: "
                  f"{photos} photos {SYNTHETIC_PHOTO_SIZE[0]}x{SYNTHETIC_PHOTO_SIZE[1]}, JPEG "
                  f"masks {SYNTHETIC_MASK_SIZE[0]}x{SYNTHETIC_MASK_SIZE[1]})")
        return DataFolder(root, source, True)
    photos = len(list_images(root / IMAGES))
    return DataFolder(root, f"Weizmann horses from {root} ({photos} photos)", False)


def horse_dataset(root: str | Path, transform: Optional[Callable] = None,
                  limit: Optional[int] = None, cache: bool = False) -> MaskFolder:
    """The horse folder as a :class:`MaskFolder`: JPEG masks thresholded at 128, resized to
    their photo with nearest neighbour (both announced by a DataWarning), 2 classes.

    Args:
        root: the ``weizmann_horse`` folder (:func:`horse_root` / :func:`horses_for_profile`).

    Items: uint8 ``(3, H, W)`` photos and int64 ``(H, W)`` masks of 0 (background) / 1 (horse).
    """
    root = Path(root)
    return MaskFolder(root / IMAGES, root / MASKS, num_classes=HORSE_NUM_CLASSES,
                      ignore_index=IGNORE_INDEX, class_names=HORSE_CLASS_NAMES,
                      palette=HORSE_PALETTE, jpeg_masks="threshold", resize_masks=True,
                      transform=transform, limit=limit, cache=cache)
