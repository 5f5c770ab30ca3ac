"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Every write goes to a temporary file in the destination folder, is flushed and fsynced,
then renamed over the target (``os.replace`` is atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


# mkstemp creates 0600 files; a finished file gets the mode open() would have given it (0666 less the
# umask), or keeps the mode of the file it replaces. The umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_replace(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Let ``write`` fill a temporary file beside ``path``, fsync it, and rename it over ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        try:
            mode = target.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_UMASK
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably; return the path."""
    return _atomic_replace(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented UTF-8 JSON atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def atomic_copy(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Copy a file so that ``destination`` appears complete or not at all."""

    def copy(handle: BinaryIO) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, handle)

    return _atomic_replace(destination, copy)
