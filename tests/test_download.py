"""Downloads of the released files from a loopback HTTP server started here (127.0.0.1 only; no
test touches the internet): resume after a dropped connection, a truncated body, errors, the
mirror layout, and `download --convert` into a model directory."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import threading
from pathlib import Path

import pytest

from jukebox_flax.download import IDS_URL, MODEL_URL, fetch, release_files
from jukebox_flax.errors import DownloadError, JukeboxError


class Server(http.server.ThreadingHTTPServer):
    """Files by URL path; ``drop[path]`` bytes are sent before the connection is cut (once per
    entry), ``truncate`` paths always stop half way, ``ignore_range`` answers 200 to a Range."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.files: dict[str, bytes] = {}
        self.drop: dict[str, int] = {}
        self.truncate: set[str] = set()
        self.ignore_range = False
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: Server

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        s = self.server
        s.requests.append((self.path, self.headers.get("Range")))
        data = s.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not s.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in s.drop:
            self.wfile.write(body[: s.drop.pop(self.path)])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-file
            return
        if self.path in s.truncate:
            body = body[: len(body) // 2]
        self.wfile.write(body)


@pytest.fixture
def server():
    s = Server()
    thread = threading.Thread(target=s.serve_forever, daemon=True)
    thread.start()
    yield s
    s.shutdown()
    s.server_close()


PAYLOAD = hashlib.sha256(b"jukebox").digest() * 40_000  # 1.28 MB: more than one read chunk
NO_WAIT = dict(progress=False, sleep=lambda s: None, timeout=10)


def test_release_files_and_mirror_layout():
    files = {f.path: f.url for f in release_files("5b_lyrics")}
    assert files["vqvae.pth.tar"] == MODEL_URL + "5b/vqvae.pth.tar"
    assert files["prior_level_1.pth.tar"] == MODEL_URL + "5b/prior_level_1.pth.tar"
    assert files["prior_level_2.pth.tar"] == MODEL_URL + "5b_lyrics/prior_level_2.pth.tar"
    assert files["ids/v2_artist_ids.txt"] == IDS_URL + "v2_artist_ids.txt"
    assert MODEL_URL == "https://openaipublic.azureedge.net/jukebox/models/"
    one = {f.path: f.url for f in release_files("1b_lyrics", mirror="http://m/x/")}
    assert one["prior_level_2.pth.tar"] == "http://m/x/1b_lyrics/prior_level_2.pth.tar"
    assert one["prior_level_0.pth.tar"] == "http://m/x/5b/prior_level_0.pth.tar"
    assert set(one) >= {"ids/v3_artist_ids.txt", "ids/v3_genre_ids.txt"} and one["ids/v3_genre_ids.txt"] == (
        "http://m/x/ids/v3_genre_ids.txt"
    )
    with pytest.raises(DownloadError, match="unknown model"):
        release_files("7b")


def test_dropped_connection_then_a_rerun_resumes(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.drop["/f.bin"] = 300_000
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError) as e:
        fetch(server.url + "/f.bin", dest, retries=0, **NO_WAIT)
    assert "rerun to resume" in str(e.value) and "\n" not in str(e.value)
    part = tmp_path / "f.bin.part"
    assert not dest.exists() and part.read_bytes() == PAYLOAD[:300_000]
    assert fetch(server.url + "/f.bin", dest, retries=0, **NO_WAIT) == dest
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1] == ("/f.bin", "bytes=300000-")  # only the missing bytes were asked for


def test_retries_recover_within_one_run_with_backoff(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.drop["/f.bin"] = 1000
    waits: list[float] = []
    fetch(server.url + "/f.bin", tmp_path / "f.bin", retries=3, backoff=0.5, progress=False, sleep=waits.append)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD and waits == [0.5]


def test_truncated_body_is_refused_and_the_partial_kept(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.truncate.add("/f.bin")
    server.ignore_range = True  # every answer is the whole file, cut in half
    waits: list[float] = []
    with pytest.raises(DownloadError, match="truncated") as e:
        fetch(server.url + "/f.bin", tmp_path / "f.bin", retries=2, backoff=1, progress=False, sleep=waits.append)
    assert "after 3 tries" in str(e.value)
    assert waits == [1, 2]
    assert not (tmp_path / "f.bin").exists()
    assert (tmp_path / "f.bin.part").read_bytes() == PAYLOAD[: len(PAYLOAD) // 2]
    server.truncate.clear()
    server.ignore_range = False
    fetch(server.url + "/f.bin", tmp_path / "f.bin", retries=0, **NO_WAIT)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert server.requests[-1][1] == f"bytes={len(PAYLOAD) // 2}-"


def test_a_server_ignoring_range_restarts_the_file(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(b"x" * 5000)  # not even a prefix: a 200 replaces it all
    server.ignore_range = True
    fetch(server.url + "/f.bin", tmp_path / "f.bin", retries=0, **NO_WAIT)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_a_complete_part_is_renamed_after_416(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)  # killed after the last byte, before the rename
    fetch(server.url + "/f.bin", tmp_path / "f.bin", retries=0, **NO_WAIT)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD and server.requests[-1][1] == f"bytes={len(PAYLOAD)}-"


def test_404_is_one_line_without_retries(server, tmp_path):
    waits: list[float] = []
    with pytest.raises(DownloadError) as e:
        fetch(server.url + "/nope.bin", tmp_path / "nope.bin", retries=4, progress=False, sleep=waits.append)
    assert str(e.value) == f"cannot download {server.url}/nope.bin: HTTP 404 Not Found"
    assert waits == [] and len(server.requests) == 1
    assert isinstance(e.value, JukeboxError) and isinstance(e.value, OSError)
    assert not (tmp_path / "nope.bin").exists() and not (tmp_path / "nope.bin.part").exists()


def test_refused_connection_is_one_line(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=r"connection refused \(after 2 tries\)"):
        fetch(f"http://127.0.0.1:{port}/f", tmp_path / "f", retries=1, **NO_WAIT)


def test_a_symlink_at_the_part_name_is_not_followed(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, tmp_path / "f.bin.part")
    with pytest.raises(DownloadError, match="symbolic link"):
        fetch(server.url + "/f.bin", tmp_path / "f.bin", retries=0, **NO_WAIT)
    assert victim.read_bytes() == b"keep"


def test_an_existing_file_is_not_fetched_again(server, tmp_path):
    (tmp_path / "f.bin").write_bytes(b"done")
    fetch(server.url + "/f.bin", tmp_path / "f.bin", retries=0, **NO_WAIT)
    assert server.requests == [] and (tmp_path / "f.bin").read_bytes() == b"done"


@pytest.fixture(scope="module")
def official_demo(tmp_path_factory):
    """The bundled demo model as official files (export) and v2 id lists made from its vocab."""
    pytest.importorskip("torch")
    from jukebox_flax.sampling.command import default_model
    from jukebox_flax_convert.export import export

    out = tmp_path_factory.mktemp("official") / "files"
    export(default_model(), out)
    vocab = json.loads((default_model() / "vocab.json").read_text())
    ids = {
        "ids/v2_artist_ids.txt": "".join(f"{n};{i}\n" for n, i in vocab["artists"].items()),
        "ids/v2_genre_ids.txt": "".join(f"{n};{i}\n" for n, i in vocab["genres"].items()),
    }
    return {p.name: p.read_bytes() for p in out.glob("*.pth.tar")}, {k: v.encode() for k, v in ids.items()}, vocab


@pytest.mark.slow
def test_cli_download_from_a_mirror_and_convert(server, official_demo, tmp_path, capsys):
    from jukebox_flax.checkpoint import load_config, load_vocab
    from jukebox_flax.cli import main
    from jukebox_flax.config import JukeboxConfig

    files, ids, vocab = official_demo
    server.files.update({f"/5b/{n}": data for n, data in files.items()})
    server.files.update({f"/{k}": v for k, v in ids.items()})
    server.drop["/5b/prior_level_2.pth.tar"] = 4096  # one dropped connection, recovered by a retry
    weights, model = tmp_path / "weights", tmp_path / "model"
    assert main(["download", "5b", str(weights), "--mirror", server.url + "/", "--convert", str(model)]) == 0
    assert {p.name: p.read_bytes() for p in weights.glob("*.pth.tar")} == files
    assert sorted(p.name for p in (weights / "ids").iterdir()) == ["v2_artist_ids.txt", "v2_genre_ids.txt"]
    assert not list(weights.rglob("*.part"))
    assert isinstance(load_config(model), JukeboxConfig)
    assert load_vocab(model / "prior_level_2")["artists"] == vocab["artists"]
    server.files.pop("/ids/v2_genre_ids.txt")
    (weights / "ids" / "v2_genre_ids.txt").unlink()
    assert main(["download", "5b", str(weights), "--mirror", server.url]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("v2_genre_ids.txt: HTTP 404 Not Found") and err.count("\n") == 1
    assert Path(weights / "ids" / "v2_artist_ids.txt").is_file()
