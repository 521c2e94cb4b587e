"""Writing files and directories so that a crash leaves the old version or the complete new one.

``atomic_write(path)`` writes a temporary file in the destination's folder, flushes it to disk and
renames it over ``path``; ``atomic_dir(path)`` does the same for a directory built in place of a
temporary sibling. Temporary names are created exclusively (``O_EXCL``), so a symlink planted at
a would-be temporary name is never followed; the rename replaces a symlink at ``path`` itself, not
its target. New files and directories get the permissions the umask allows, as ``open`` would
give them (``tempfile`` alone would leave them private to the owner).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_dir"]

PathLike = str | os.PathLike


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for every thread, for a moment)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not every system can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """An open file (``mode`` 'wb' or 'w') that replaces ``path`` only once the block finishes.

    The parent folder is created if missing. On an exception the temporary file is removed and
    ``path`` keeps its old content (or stays absent).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    _make_folder(path.parent)
    if path.is_dir() and not path.is_symlink():  # os.replace would name the temporary file
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding or ("utf-8" if mode == "w" else None)) as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and (not e.filename or e.filename == tmp):
            raise _named(e, path) from None  # the temporary name means nothing to the user
        raise
    _fsync_dir(path.parent)


def _make_folder(folder: Path) -> None:
    """Create ``folder`` and its parents; a file in the way is ENOTDIR naming that file (``mkdir``
    would report EEXIST for the folder itself, which reads as if the folder already existed)."""
    for above in (folder, *folder.parents):
        if above.exists():
            if not above.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(above))
            break
    folder.mkdir(parents=True, exist_ok=True)


def _named(error: OSError, path: Path) -> OSError:
    """The same error naming ``path``: a failed write to an open file (ENOSPC, EIO) names no file."""
    return type(error)(error.errno, error.strerror or str(error), str(path))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """A new empty directory to fill; it replaces ``path`` (whatever is there) once the block finishes.

    The old ``path`` is first renamed aside, so between the two renames only the complete new
    directory or the old one exists under either name. On an exception the temporary directory is
    removed and ``path`` is left as it was.
    """
    path = Path(path).absolute()
    _make_folder(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        old = None
        if path.is_symlink() or path.exists():
            old = path.with_name(f".{path.name}.{secrets.token_hex(8)}.old")
            os.rename(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
            raise
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and (not e.filename or str(e.filename).startswith(str(tmp))):
            raise _named(e, path) from None  # the temporary name means nothing to the user
        raise
    _fsync_dir(path.parent)
    if old is not None:
        _remove(old)
