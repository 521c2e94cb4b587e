"""The released Jukebox weights and id lists: resumable HTTP downloads into a folder.

    download_model("5b_lyrics", "weights/")            # -> weights/ (official *.pth.tar + ids/)
    download_model("1b_lyrics", "weights/", convert_to="models/1b_lyrics")  # then a model directory

Local layout (what ``convert DIR --ids DIR/ids`` reads)::

    DIR/vqvae.pth.tar  DIR/prior_level_0.pth.tar  DIR/prior_level_1.pth.tar  DIR/prior_level_2.pth.tar
    DIR/ids/{v2,v3}_artist_ids.txt  DIR/ids/{v2,v3}_genre_ids.txt

Remote layout: the original's model URL prefix (``5b/vqvae.pth.tar``, ``5b/prior_level_{0,1}.pth.tar``,
``{model}/prior_level_2.pth.tar``); the id lists come from the original repository. A ``mirror``
replaces both prefixes and holds the same relative paths: ``MIRROR/5b/vqvae.pth.tar``,
``MIRROR/5b_lyrics/prior_level_2.pth.tar``, ``MIRROR/ids/v2_artist_ids.txt``.

Each file is written to ``FILE.part`` (resumed with an HTTP Range request after a dropped connection,
from this run's retries or a later run), its size checked against the server's, and renamed to
``FILE`` only when complete; a ``FILE`` already there counts as downloaded.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .errors import DownloadError

__all__ = ["MODELS", "MODEL_URL", "IDS_URL", "RemoteFile", "release_files", "fetch", "download_model"]

MODEL_URL = "https://openaipublic.azureedge.net/jukebox/models/"
# The id lists as of the original repository's last commit.
IDS_URL = "https://raw.githubusercontent.com/openai/jukebox/08efbbc1d4ed1a3cef96e08a931944c8b4d63bb3/jukebox/data/ids/"
MODELS = ("1b_lyrics", "5b", "5b_lyrics")
_LABEL_VERSION = {"1b_lyrics": "v3", "5b": "v2", "5b_lyrics": "v2"}
_CHUNK = 1 << 20
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: its URL and its path relative to the download folder."""

    url: str
    path: str


def release_files(model: str, mirror: str | None = None) -> list[RemoteFile]:
    """The files of released model set ``model`` (the shared VQ-VAE and upsamplers, its top prior,
    its artist/genre id lists), from the public URLs or from ``mirror``."""
    if model not in MODELS:
        raise DownloadError(f"unknown model {model!r} (expected one of {', '.join(MODELS)})")
    base = MODEL_URL if mirror is None else mirror.rstrip("/") + "/"
    ids = IDS_URL if mirror is None else base + "ids/"
    files = [
        RemoteFile(base + "5b/vqvae.pth.tar", "vqvae.pth.tar"),
        RemoteFile(base + "5b/prior_level_0.pth.tar", "prior_level_0.pth.tar"),
        RemoteFile(base + "5b/prior_level_1.pth.tar", "prior_level_1.pth.tar"),
        RemoteFile(base + f"{model}/prior_level_2.pth.tar", "prior_level_2.pth.tar"),
    ]
    version = _LABEL_VERSION[model]
    files += [
        RemoteFile(ids + f"{version}_{kind}_ids.txt", f"ids/{version}_{kind}_ids.txt") for kind in ("artist", "genre")
    ]
    return files


class _Retry(Exception):
    """A failure worth another try (dropped connection, timeout, truncated body, 5xx)."""


def _open_part(part: Path) -> int:
    """The partial file opened for appending, never through a symlink planted at its name."""
    try:
        return os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DownloadError(f"{part} is a symbolic link: remove it and retry") from None
        raise DownloadError(f"cannot write {part}: {e.strerror or e}") from None


def _total_from_content_range(value: str | None) -> tuple[int, int | None] | None:
    match = _CONTENT_RANGE.match(value or "")
    if not match:
        return None
    start, _, total = match.groups()
    return int(start), None if total == "*" else int(total)


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, BaseException) else e
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return "unknown host"
    if isinstance(e, (ConnectionError, http.client.HTTPException)):
        return "connection dropped"
    return str(getattr(e, "strerror", None) or e)


def _attempt(url: str, fd: int, timeout: float, progress: bool, name: str) -> None:
    """One request: append the missing bytes to ``fd``; returns when the file is complete."""
    offset = os.fstat(fd).st_size
    request = urllib.request.Request(url, headers={"User-Agent": "jukebox-flax"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left after `offset`: complete, or a stale larger part
            match = re.search(r"/(\d+)\s*$", e.headers.get("Content-Range") or "")
            if match and int(match.group(1)) == offset:
                return
            os.ftruncate(fd, 0)
            raise _Retry("the partial file does not match the server's") from None
        if e.code >= 500 or e.code in (408, 429):
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    with response:
        length = response.headers.get("Content-Length")
        if response.status == 206:
            parsed = _total_from_content_range(response.headers.get("Content-Range"))
            if parsed is None or parsed[0] != offset:
                os.ftruncate(fd, 0)
                raise _Retry("the server answered another range")
            total = parsed[1]
        else:  # 200: the server ignored the Range header and sends the whole file
            if offset:
                os.ftruncate(fd, 0)
                offset = 0
            total = int(length) if length is not None else None
        with tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=name,
            disable=not progress,
            leave=False,
        ) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Retry(_reason(e)) from None
                if not chunk:
                    break
                os.write(fd, chunk)
                bar.update(len(chunk))
    size = os.fstat(fd).st_size
    # read() returns b"" when the connection closes early: only the size tells a truncated body.
    if total is not None and size != total:
        raise _Retry(f"truncated: {size} of {total} bytes")


def fetch(
    url: str,
    dest: Any,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``; up to ``retries`` more tries after the
    first, waiting ``backoff * 2**n`` seconds, at most a minute). Returns ``dest``. Raises
    DownloadError with one line (the URL and why) when it gives up; the partial file stays for a
    later run to resume."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    fd = _open_part(part)
    try:
        for attempt in range(retries + 1):
            try:
                _attempt(url, fd, timeout, progress, dest.name)
                break
            except DownloadError:  # final (404, ...): no retry
                raise
            except _Retry as e:
                why = str(e)
            except urllib.error.URLError as e:
                why = _reason(e)
            except (OSError, http.client.HTTPException) as e:
                why = _reason(e)
            if attempt == retries:
                tries = f" (after {retries + 1} tries)" if retries else ""
                raise DownloadError(f"cannot download {url}: {why}{tries}; rerun to resume")
            sleep(min(backoff * 2**attempt, 60.0))
        os.fsync(fd)
    except BaseException:
        if os.fstat(fd).st_size == 0:  # nothing to resume from
            os.unlink(part)
        raise
    finally:
        os.close(fd)
    os.replace(part, dest)
    return dest


def download_model(
    model: str,
    out_dir: Any,
    mirror: str | None = None,
    convert_to: Any = None,
    progress: bool = True,
    **fetch_kwargs: Any,
) -> Path:
    """Fetch every file of released model set ``model`` into ``out_dir`` (see the module docstring
    for the layout); with ``convert_to``, convert them (with the id lists) into that model
    directory and return it, else return ``out_dir``."""
    out_dir = Path(out_dir)
    files = release_files(model, mirror)
    for i, file in enumerate(files, 1):
        if progress:
            print(f"[{i}/{len(files)}] {file.url}", flush=True)
        fetch(file.url, out_dir / file.path, progress=progress, **fetch_kwargs)
    if convert_to is None:
        return out_dir
    from jukebox_flax_convert.convert import convert  # the converter stays out of the library's imports

    return convert(out_dir, convert_to, ids=out_dir / "ids")
