"""Crash-safe file writes and the timestamps written into files, shared by every package that stores something
(data sets, models, the registry, the re-fit worker's log)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["fsync_dir", "utc_now", "write_atomic"]


def utc_now() -> str:
    """The present time as ISO 8601 UTC, to the second (``2026-01-31T12:00:00+00:00``), as files record it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk; a no-op where directories cannot be opened."""
    if not hasattr(os, "O_DIRECTORY"):  # e.g. Windows
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``target``, fsync it and rename it over ``target``.

    A crash leaves either the old file or the new one, never a half-written one (a stray ``.*.tmp`` file at
    most). The caller fsyncs the directory once all its renames are done.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
