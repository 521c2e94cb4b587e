"""One writer per run directory: an advisory lock that a second process is refused.

    with run_lock(out):      # raises RunLockError at once if another process holds it
        ...                  # write the run

The lock is ``flock`` on ``RUN/.lock``: the kernel drops it when the holder exits, killed or not,
so a crashed run never leaves a stale lock behind (``--resume`` just takes it again). Where
``fcntl`` does not exist (Windows) the lock is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import RunLockError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "run_lock"]

LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: Any) -> Iterator[Path]:
    """Hold the lock of ``run_dir`` (created if missing) for the ``with`` block; yields the
    directory. Raises RunLockError naming it when another process holds the lock."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunLockError(
                    f"{run_dir} is being written by another process (wait for it or pick another --out)"
                ) from None
        yield run_dir
    finally:
        os.close(fd)  # closing the descriptor releases the lock
