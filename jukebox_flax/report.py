"""A run's report page: ``write_report(run_dir)`` -> ``run_dir/index.html`` (the original ``save_html``).

One static page that opens from disk (no server, nothing fetched but the run's own WAV files), with
per row: the artist, genre and lyrics, an audio player and a waveform per finished level
(``level_L/item_I.wav``, linked relatively), the lyric alignment as a picture (``alignment.npz``,
when the run has one) and, while any of the row's players plays or is moved, the lyric word the
alignment puts at that moment highlighted.

The highlight follows the original page: time -> top-level token ``floor(t * sr / hop)`` -> the
lyric column with the most attention -> that column's character shifted by one (the prior's input
is shifted: column j attends to character j - 1; column 0 is the start position, no character) ->
the word holding it (a space counts to the word before it). The table token -> word is computed
here, so the page's script only looks it up.

Everything is read from what the run directory holds: ``run.json`` (``metas`` per row when present,
else the run's artist / genre / lyrics for every row; ``total_length``, ``hop_fraction`` and
``parent`` when present), ``codes/level_L.npy`` (or ``codes.npz``), the WAV files and
``alignment.npz``.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from .alignment import load_alignment
from .atomic import atomic_write
from .errors import SamplingError
from .labels import V2_ALPHABET, V3_ALPHABET, clean_lyrics

__all__ = ["REPORT_FILE", "write_report", "word_table", "alignment_png"]

REPORT_FILE = "index.html"
PathLike = str | os.PathLike
_WAVE_COLUMNS = 600  # points of a waveform picture
_PICTURE_SIZE = (1024, 256)  # the largest alignment picture: time x lyric positions


# ---------------------------------------------------------------------------------------------
# What the run holds


def _read_record(run: Path) -> dict[str, Any]:
    path = run / "run.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SamplingError(f"{run} is not a run directory (no run.json)") from None
    except (OSError, ValueError) as e:
        raise SamplingError(f"cannot read {path}: {e}") from None
    if not isinstance(record, dict):
        raise SamplingError(f"{path} does not hold a JSON object")
    return record


def _codes(run: Path) -> dict[int, np.ndarray]:
    """{level: int [B, T]} of the levels with codes (saved per window, else ``codes.npz``)."""
    out: dict[int, np.ndarray] = {}
    for path in sorted((run / "codes").glob("level_*.npy")):
        match = re.fullmatch(r"level_(\d+)\.npy", path.name)
        if match:
            out[int(match.group(1))] = np.load(path, allow_pickle=False)
    if not out and (run / "codes.npz").is_file():
        with np.load(run / "codes.npz", allow_pickle=False) as f:
            for key in f.files:
                match = re.fullmatch(r"level_(\d+)", key)
                if match:
                    out[int(match.group(1))] = f[key]
    return {level: z for level, z in out.items() if z.ndim == 2 and z.shape[1] > 0}


def _rows(record: dict[str, Any], n_rows: int) -> list[dict[str, str]]:
    """artist, genre, lyrics per row: ``metas`` (cycled, as the original) or the run's own."""
    metas = record.get("metas")
    if isinstance(metas, list) and metas and all(isinstance(m, dict) for m in metas):
        picked = [metas[i % len(metas)] for i in range(n_rows)]
    else:
        picked = [record] * n_rows
    return [{k: str(m.get(k) or "") for k in ("artist", "genre", "lyrics")} for m in picked]


def _finished_levels(run: Path, row: int) -> list[int]:
    """Levels with a WAV for ``row``, top level first."""
    levels = []
    for folder in run.glob("level_*"):
        match = re.fullmatch(r"level_(\d+)", folder.name)
        if match and (folder / f"item_{row}.wav").is_file():
            levels.append(int(match.group(1)))
    return sorted(levels, reverse=True)


# ---------------------------------------------------------------------------------------------
# Lyrics and the token -> word table


def _lyric_text(lyrics: str, columns: int) -> str:
    """The lyric characters the alignment's columns stand for: the lyrics cleaned as the model's
    labeller does (v2 or v3 alphabet, whichever gives ``columns`` characters), else as given."""
    for alphabet in (V2_ALPHABET, V3_ALPHABET):
        cleaned = clean_lyrics(lyrics, alphabet)
        if len(cleaned) == columns:
            return cleaned
    return lyrics


def _words(text: str) -> tuple[list[tuple[int, int]], np.ndarray]:
    """(word spans [start, end) in ``text``, the word of every character: -1 before the first
    word, whitespace belongs to the word before it)."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    owner = np.full(len(text), -1, np.int32)
    for w, (start, _) in enumerate(spans):
        owner[start:] = w
    return spans, owner


def word_table(alignment: np.ndarray, text: str) -> list[int]:
    """Per top-level token, the index of the word of ``text`` the alignment puts there (-1: none):
    the argmax lyric column, minus one (the input shift), mapped to its word."""
    alignment = np.asarray(alignment, np.float32)
    _, owner = _words(text)
    if alignment.ndim != 2 or alignment.shape[0] == 0:
        return []
    if alignment.shape[1] == 0 or not len(owner):
        return [-1] * alignment.shape[0]
    char = np.argmax(alignment, axis=1) - 1
    valid = (alignment.max(axis=1) > 0) & (char >= 0) & (char < len(owner))
    return [int(owner[c]) if ok else -1 for c, ok in zip(char, valid)]


# ---------------------------------------------------------------------------------------------
# Pictures


def _png(gray: np.ndarray) -> bytes:
    """A grayscale PNG of uint8 [H, W] (no image library needed)."""
    height, width = gray.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + row.tobytes() for row in np.ascontiguousarray(gray, np.uint8))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def _max_pool(a: np.ndarray, size: int, axis: int) -> np.ndarray:
    n = a.shape[axis]
    if n <= size:
        return a
    edges = (np.arange(size) * n) // size
    return np.maximum.reduceat(a, edges, axis=axis)


def alignment_png(alignment: np.ndarray) -> bytes:
    """The alignment [T, N] as a PNG: time to the right, lyric position upwards, darker = more
    attention (scaled to the array's maximum), max-pooled to at most 1024 x 256 pixels."""
    a = np.asarray(alignment, np.float32)
    a = _max_pool(_max_pool(a, _PICTURE_SIZE[0], 0), _PICTURE_SIZE[1], 1)
    peak = float(a.max()) if a.size else 0.0
    scaled = a / peak if peak > 0 else a
    gray = 255 - np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    return _png(gray.T[::-1] if gray.size else np.full((1, 1), 255, np.uint8))


def _waveform_svg(audio: np.ndarray) -> str:
    """An inline SVG of the waveform's envelope (min / max per column)."""
    x = np.asarray(audio, np.float32).reshape(len(audio), -1).mean(axis=1) if len(audio) else np.zeros(1, np.float32)
    columns = min(_WAVE_COLUMNS, len(x))
    edges = (np.arange(columns) * len(x)) // columns
    top, bottom = np.maximum.reduceat(x, edges), np.minimum.reduceat(x, edges)
    scale = max(float(np.abs(x).max()), 1e-6)
    upper = " ".join(f"{i},{50 - 48 * v / scale:.1f}" for i, v in enumerate(top))
    lower = " ".join(f"{i},{50 - 48 * v / scale:.1f}" for i, v in reversed(list(enumerate(bottom))))
    return (
        f'<svg class="wave" viewBox="0 0 {columns} 100" preserveAspectRatio="none" role="img" '
        f'aria-label="waveform"><polygon points="{upper} {lower}"/></svg>'
    )


# ---------------------------------------------------------------------------------------------
# The page

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1024px; margin: 1.5em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: .2em; }
.run { color: #666; font-size: .9em; }
section.item { border-top: 1px solid #ddd; margin-top: 1.5em; padding-top: .5em; }
section.item h2 { font-size: 1.1em; margin: .3em 0; }
.labels { color: #444; }
figure.level { margin: .4em 0; display: grid; grid-template-columns: 7em 1fr; align-items: center; column-gap: .5em; }
figure.level figcaption { font-size: .85em; color: #666; grid-row: span 2; }
audio { width: 100%; height: 36px; }
svg.wave { display: block; width: 100%; height: 32px; }
svg.wave polygon { fill: #3b6ea8; }
.alignment { position: relative; margin: .6em 0; }
.alignment img { display: block; width: 100%; height: 160px; image-rendering: pixelated; border: 1px solid #ccc; }
.alignment .playhead { position: absolute; top: 0; bottom: 1.4em; width: 2px; background: #d33; left: 0; }
.alignment figcaption { font-size: .85em; color: #666; }
.lyrics { white-space: pre-wrap; line-height: 1.6; font-size: 1.05em; }
.lyrics .word.sung { background: #ffd54a; border-radius: 3px; }
.none { color: #999; font-style: italic; }
"""

_SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById('report-data').textContent);
  document.querySelectorAll('section.item').forEach(function (section) {
    const row = data.rows[Number(section.dataset.item)];
    if (!row || !row.wordAt) return;
    const words = section.querySelectorAll('.lyrics .word');
    const head = section.querySelector('.playhead');
    let current = -1;
    function show(audio) {
      const t = Math.min(row.tokens - 1, Math.max(0, Math.floor(audio.currentTime * row.tokenRate)));
      const w = row.wordAt[t];
      if (w !== current) {
        if (current >= 0) words[current].classList.remove('sung');
        if (w >= 0) words[w].classList.add('sung');
        current = w;
        section.dataset.sung = String(w);
      }
      if (head) head.style.left = (100 * t / row.tokens) + '%';
    }
    section.querySelectorAll('audio').forEach(function (audio) {
      ['timeupdate', 'seeked', 'seeking'].forEach(function (e) {
        audio.addEventListener(e, function () { show(audio); });
      });
      audio.addEventListener('play', function () {
        (function tick() {
          show(audio);
          if (!audio.paused) requestAnimationFrame(tick);
        })();
      });
    });
  });
})();
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _lyrics_html(text: str) -> str:
    spans, _ = _words(text)
    out, last = [], 0
    for w, (start, end) in enumerate(spans):
        out.append(_esc(text[last:start]))
        out.append(f'<span class="word" data-w="{w}">{_esc(text[start:end])}</span>')
        last = end
    out.append(_esc(text[last:]))
    return "".join(out)


def _run_summary(record: dict[str, Any], run: Path) -> str:
    parts = []
    for key, name in (("seconds", "seconds"), ("total_length", "song length (samples)"), ("seed", "seed")):
        if record.get(key) is not None:
            parts.append(f"{name}: {_esc(record[key])}")
    for key in ("temperature", "hop_fraction"):
        if record.get(key) is not None:
            value = record[key]
            parts.append(
                f"{key.replace('_', ' ')}: {_esc(' '.join(map(str, value)) if isinstance(value, list) else value)}"
            )
    if record.get("model"):
        parts.append(f"model: {_esc(Path(str(record['model'])).name)}")
    parent = record.get("parent")
    if isinstance(parent, dict) and parent.get("path"):
        rows = parent.get("rows")
        shown = f" rows {', '.join(map(str, rows))}" if isinstance(rows, list) else ""
        parts.append(f"from {_esc(parent['path'])}{shown}")
    elif isinstance(parent, str):
        parts.append(f"from {_esc(parent)}")
    return " · ".join(parts)


def write_report(run_dir: PathLike) -> Path:
    """Write ``run_dir/index.html`` (atomically) from what the run directory holds; returns its path."""
    run = Path(run_dir)
    record = _read_record(run)
    codes = _codes(run)
    top = max(codes) if codes else None
    n_rows = int(record.get("batch") or 0)
    if top is not None:
        n_rows = max(n_rows, codes[top].shape[0])
    alignments = load_alignment(run) or []
    hop_lengths = None
    if (run / "codes.npz").is_file():
        with np.load(run / "codes.npz", allow_pickle=False) as f:
            if "hop_lengths" in f.files:
                hop_lengths = [int(h) for h in f["hop_lengths"]]

    sections, rows_data = [], []
    for item, meta in enumerate(_rows(record, n_rows)):
        levels = _finished_levels(run, item)
        players, sr, frames = [], None, None
        for level in levels:
            src = f"level_{level}/item_{item}.wav"
            audio, sr = soundfile.read(run / src, dtype="float32", always_2d=True)
            frames = audio.shape[0]
            role = " (top)" if level == top else ""
            players.append(
                f'<figure class="level"><figcaption>level {level}{role}</figcaption>'
                f'<audio controls preload="metadata" src="{_esc(src)}" data-level="{level}"'
                f"{' data-top' if level == top else ''}></audio>{_waveform_svg(audio)}</figure>"
            )
        lyrics = meta["lyrics"]
        row_data: dict[str, Any] = {}
        picture = ""
        if item < len(alignments) and top is not None and alignments[item].shape[0] == codes[top].shape[1]:
            a = alignments[item]
            lyrics = _lyric_text(lyrics, a.shape[1])
            used = np.flatnonzero(a.max(axis=0) > 0) if a.size else np.zeros(0, int)
            shown = a[:, : int(used[-1]) + 1] if len(used) else a  # the original crops unused columns
            png = base64.b64encode(alignment_png(shown)).decode("ascii")
            picture = (
                f'<figure class="alignment"><img alt="lyric alignment of item {item}" '
                f'src="data:image/png;base64,{png}"><div class="playhead"></div>'
                f"<figcaption>lyric alignment: time →, lyric characters 0..{shown.shape[1]} ↑ "
                f"(darker: more attention)</figcaption></figure>"
            )
            tokens = a.shape[0]
            hop = hop_lengths[top] if hop_lengths and top < len(hop_lengths) else None
            if hop is None and frames:
                hop = frames // tokens
            if sr and hop:
                row_data = {"tokens": tokens, "tokenRate": sr / hop, "wordAt": word_table(a, lyrics)}
        rows_data.append(row_data)
        lyric_html = _lyrics_html(lyrics) if lyrics.strip() else '<span class="none">(no lyrics)</span>'
        audio_html = "".join(players) or '<p class="none">no level finished yet</p>'
        sections.append(
            f'<section class="item" id="item-{item}" data-item="{item}" data-sung="-1">'
            f"<h2>item {item}</h2>"
            f'<div class="labels">artist <b>{_esc(meta["artist"] or "n/a")}</b> · '
            f"genre <b>{_esc(meta['genre'] or 'n/a')}</b></div>"
            f'{audio_html}{picture}<div class="lyrics">{lyric_html}</div></section>'
        )

    data = json.dumps({"rows": rows_data}, separators=(",", ":")).replace("</", "<\\/")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(run.resolve().name)}</title>"
        '<link rel="icon" href="data:,">'  # no favicon request
        f"<style>{_STYLE}</style></head><body>"
        f'<h1>{_esc(run.resolve().name)}</h1><div class="run">{_run_summary(record, run)}</div>'
        + "".join(sections)
        + f'<script type="application/json" id="report-data">{data}</script>'
        f"<script>{_SCRIPT}</script></body></html>\n"
    )
    path = run / REPORT_FILE
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
