"""The two errors of segtut's data layer, in a module of their own.

:mod:`segtut.data` (reading files) and :mod:`segtut.download` (finding and fetching CamVid) both
raise them, and :mod:`segtut.data` looks CamVid up through :mod:`segtut.download`; keeping the
errors here lets both import them without importing each other at module level (no import
cycle). Import them from :mod:`segtut.data`, which re-exports both.

This module imports only the standard library.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data file is missing, unreadable or breaks the data contract.

    The message names the file or folder and says what to do.
    """


class CamVidNotFound(DataError):
    """CamVid is not in the data directory and was not downloaded (offline, ``download=False``
    or a failed download).

    The ``smoke`` profile catches exactly this error to fall back to SYNTHETIC scenes
    (:func:`segtut.profiles.camvid_for_profile`); every other :class:`DataError` (an incomplete
    folder, a data directory that is a file, a CamVid folder passed as the data directory) stops
    every profile, because falling back would hide a mistake the reader must fix.
    """


class DataWarning(UserWarning):
    """A data file was read, but only after a conversion the reader should know about (a 16-bit
    or float image scaled to 8 bits). The message names the file and the conversion."""
