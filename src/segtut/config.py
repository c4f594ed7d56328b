"""The settings every segtut module shares, each with one name and one meaning.

* **The data directory** (:func:`data_dir`): the folder that HOLDS the data sets, one sub-folder
  each (``camvid/``, ``cityscapes_pairs/``, ...). ``$SEGTUT_DATA_DIR`` when set, otherwise a
  per-user cache (``$XDG_CACHE_HOME/segtut`` or ``~/.cache/segtut``). Every loader, notebook and
  download takes this folder, never a data set's own folder, and appends the data set's name
  itself.
* **The offline switch** (:func:`offline_reason`): ``SEGTUT_OFFLINE`` (or Hugging Face's
  ``HF_HUB_OFFLINE``) set to ``1``, ``true``, ``yes`` or ``on`` (any case) means "never touch the
  network", for data and for pretrained weights alike. ``0``, ``false``, ``no``, ``off`` or empty
  mean online; any other value is an error, so a typo never silently means the opposite.
* **The weights directory**: ``$SEGTUT_WEIGHTS_DIR``, a folder of pretrained weight files to use
  before any download (see :mod:`segtut.weights`).

This module imports only the standard library.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

DATA_DIR_ENV = "SEGTUT_DATA_DIR"
OFFLINE_ENV = "SEGTUT_OFFLINE"
WEIGHTS_DIR_ENV = "SEGTUT_WEIGHTS_DIR"
#: Every variable that switches downloads off, in the order they are reported.
OFFLINE_ENV_VARS = (OFFLINE_ENV, "HF_HUB_OFFLINE")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def data_dir() -> Path:
    """The segtut data directory (the folder holding ``camvid/`` and the other data sets).

    ``$SEGTUT_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/segtut`` or ``~/.cache/segtut``.
    Nothing is created.
    """
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "segtut"


def env_flag(name: str) -> bool:
    """Read an on/off environment variable with segtut's one rule.

    Raises:
        ValueError: the value is not one of ``1/true/yes/on`` or ``0/false/no/off`` (or empty).
    """
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"${name}={os.environ[name]!r} is neither on ({'/'.join(_TRUE)}) nor off "
                     f"({'/'.join(v for v in _FALSE if v)} or empty). Set it to 1 to work offline "
                     "or unset it.")


def offline_reason() -> Optional[str]:
    """Why the network is switched off (e.g. ``"SEGTUT_OFFLINE=1 is set"``), or None if it is not."""
    for name in OFFLINE_ENV_VARS:
        if env_flag(name):
            return f"{name}={os.environ[name]} is set"
    return None


def is_offline() -> bool:
    """True when :func:`offline_reason` says the network is switched off."""
    return offline_reason() is not None
