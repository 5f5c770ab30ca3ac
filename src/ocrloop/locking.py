"""An inter-process lock on a file: two ocrloop processes never modify the same thing at once."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ocrloop.errors import OcrloopError


class LockBusy(OcrloopError):
    """Another process holds the lock."""


@contextmanager
def file_lock(path: Path, *, timeout: float = 30.0, what: str = "this resource") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the duration of the block.

    The kernel releases the lock when the holder dies, so a killed process never leaves a stale lock.
    Waits up to ``timeout`` seconds (0: do not wait), then raises ``LockBusy``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockBusy(f"{what} is in use by another ocrloop process (lock {path})") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)
