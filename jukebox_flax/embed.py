"""Representation extraction (``jukebox-flax embed``): one vector per audio file from a prior's activations.

The published MIR recipe (Castellon et al. 2021, jukemirlib): encode audio with the VQ-VAE, run the
top prior teacher-forced on the codes, take the residual stream after layer 36 of 72 and average it
over time. Here, for every file:

1. read it, mix to mono and resample to the model's rate (``audio.load_audio``); optionally scale
   it to peak 1 (``normalize``, as jukemirlib does);
2. zero-pad the end to a whole number of prior windows (so files of any length share compiled
   shapes) and encode; the codes of the prior's level covering the real audio are kept
   (``ceil(samples / hop)`` tokens; the padding's tokens are never used);
3. split the codes into windows of the prior's context ``n_ctx``: windows start at 0, n_ctx, 2 n_ctx,
   ...; when the song does not end on a window boundary the LAST window is right-aligned to the
   end (it overlaps the one before, so it sees a full context) and only its new positions count
   towards the file's vector. A song shorter than one window is one window padded at the end with
   token 0: attention is causal, so the padding cannot change the real positions' activations,
   and it is never pooled (for an upsampler the upper codes are padded too, and its conditioner
   is not causal: the last few real positions feel that padding);
4. label each window as the sampler does (``labels.window_y``: offset = window start, lyric window
   re-selected); MIR users rarely know artist or genre: both default to 'unknown' and lyrics to
   empty. ``total_length`` is the file's length, raised to the model's ``min_duration`` (as
   ``sample``) and songs are cut at ``max_duration`` (the timing signal's range, with a warning);
5. run ``JukeboxPrior.features`` (stopping after the deepest requested layer), pool over time on
   the device, and combine windows: ``mean`` = mean over every counted position of the song
   (windows weighted by their counted positions), ``max`` = elementwise max.

Windows of several files share batches (``batch`` windows per prior call). A file that cannot be
read is reported (``failed``/``errors`` in the output) and skipped; the others are embedded.

Output ``.npz``: ``embeddings`` float32 [F, W] (one layer) or [F, L, W] (``layers`` lists them),
``files`` (str [F]), ``seconds`` (float32 [F], audio embedded per file), ``failed`` / ``errors``
(str), ``layers``, ``level``, ``pool``; with ``per_window``: ``window_embeddings`` [N, (L,) W] (each
window pooled over all its real positions), ``window_file`` (int32 index into ``files``),
``window_start`` (float32 seconds) and ``window_tokens`` (int32 real positions).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .atomic import atomic_write
from .audio import load_audio
from .checkpoint import component_dir, load_vocab
from .errors import EmbedError, JukeboxError
from .labels import UNKNOWN, V2_ALPHABET, V3_ALPHABET, Labeller, window_y
from .precision import load_prior_at
from .prior.prior import JukeboxPrior
from .vqvae.api import load_vqvae

__all__ = ["EmbedError", "EmbedResult", "Window", "plan_windows", "embed_files", "run_embed", "POOLS"]

PathLike = str | os.PathLike
POOLS = ("mean", "max")


@dataclass(frozen=True)
class Window:
    """Tokens ``start .. start + n_ctx`` of a song; positions ``[count_from, valid)`` count for the song."""

    start: int
    valid: int  # real (unpadded) positions in the window
    count_from: int  # positions before it were already covered by the previous window


def plan_windows(n_tokens: int, n_ctx: int) -> list[Window]:
    """Windows covering ``n_tokens`` codes: n_ctx apart, the last one right-aligned (see module doc)."""
    if n_tokens <= 0:
        raise EmbedError("no codes to embed")
    if n_tokens <= n_ctx:
        return [Window(0, n_tokens, 0)]
    out = [Window(s, n_ctx, 0) for s in range(0, n_tokens - n_ctx + 1, n_ctx)]
    covered = out[-1].start + n_ctx
    if covered < n_tokens:
        start = n_tokens - n_ctx
        out.append(Window(start, n_ctx, covered - start))
    return out


@dataclass
class EmbedResult:
    """What ``embed_files`` computed (also what the .npz holds)."""

    files: list[str]
    embeddings: np.ndarray  # [F, L, W]
    layers: tuple[int, ...]
    seconds: np.ndarray  # [F]
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    window_embeddings: np.ndarray | None = None  # [N, L, W]
    window_file: np.ndarray | None = None
    window_start: np.ndarray | None = None
    window_tokens: np.ndarray | None = None

    def arrays(self, level: int, pool: str) -> dict[str, np.ndarray]:
        squeeze = (lambda a: a[:, 0]) if len(self.layers) == 1 else (lambda a: a)
        out = dict(
            embeddings=squeeze(self.embeddings).astype(np.float32),
            files=np.array(self.files, dtype=str),
            seconds=self.seconds.astype(np.float32),
            failed=np.array(self.failed, dtype=str),
            errors=np.array(self.errors, dtype=str),
            layers=np.array(self.layers, np.int32),
            level=np.int32(level),
            pool=np.array(pool),
        )
        if self.window_embeddings is not None:
            out.update(
                window_embeddings=squeeze(self.window_embeddings).astype(np.float32),
                window_file=self.window_file,
                window_start=self.window_start,
                window_tokens=self.window_tokens,
            )
        return out


# ------------------------------------------------------------------------------------------------
# Labels


def _labeller(prior: Any, vocab: dict | None, artist: str, genre: str, lyrics: str):

    c = prior.config
    if vocab is not None:
        return Labeller.from_vocab_dict(vocab).for_config(c)
    if artist == UNKNOWN and genre == UNKNOWN and not lyrics:
        # no vocab.json: 'unknown' (id 0) needs no name table
        alphabet = V3_ALPHABET if c.labeller_version == "v3" else V2_ALPHABET
        return Labeller(version=c.labeller_version, artists={}, genres={}, alphabet=alphabet).for_config(c)
    raise EmbedError(
        "the model has no vocab.json (artist/genre names): use --artist/--genre unknown and no "
        "lyrics, or convert the model with --ids or --vocab"
    )


def _timing_limits(config: Any) -> tuple[int, int | None, int | None]:
    """(smallest and largest total_length in samples, largest token count) the timing signal allows."""
    if not config.has_timing:
        return 1, None, None
    sr = config.sr
    lo = math.ceil(config.min_duration * sr)
    max_samples = math.ceil(config.max_duration * sr) - 1
    return lo, max_samples, max(config.n_ctx, max_samples // config.hop_length)


# ------------------------------------------------------------------------------------------------
# The pipeline


class _Batcher:
    """Collects windows (tokens, y, upper, masks) and runs the jitted prior on full batches."""

    def __init__(self, prior: Any, layers: tuple[int, ...], pool: str, batch: int):

        self.prior, self.batch = prior, batch
        self.pending: list[Any] = []
        module, n_ctx = prior.module, prior.config.n_ctx

        def step(params, tokens, y, upper, count_from, valid):
            feats = module.apply(
                {"params": params},
                tokens,
                y,
                upper,
                layers=layers,
                stop_early=True,
                music_only=True,
                method=JukeboxPrior.features,
            )
            h = jnp.stack([feats[n] for n in layers], axis=1)  # [B, L, T, W]
            pos = jnp.arange(n_ctx)
            real = (pos[None] < valid[:, None])[:, None, :, None]
            new = real & (pos[None] >= count_from[:, None])[:, None, :, None]
            if pool == "mean":
                return jnp.where(real, h, 0.0).sum(2), jnp.where(new, h, 0.0).sum(2)
            return jnp.where(real, h, -jnp.inf).max(2), jnp.where(new, h, -jnp.inf).max(2)

        self._step = jax.jit(step)

    def add(self, item: tuple) -> list[tuple]:
        """item = (key, tokens [n_ctx], y or None, upper or None, Window). Returns finished results."""
        self.pending.append(item)
        return self.run() if len(self.pending) >= self.batch else []

    def run(self) -> list[tuple]:
        """Run the pending windows (padded to a full batch: one compiled shape) -> [(key, all, new)]."""
        if not self.pending:
            return []
        items, self.pending = self.pending, []
        rows = items + [items[-1]] * (self.batch - len(items))
        tokens = np.stack([r[1] for r in rows])
        y = np.stack([r[2] for r in rows]) if rows[0][2] is not None else None
        upper = np.stack([r[3] for r in rows]) if rows[0][3] is not None else None
        tokens, y, upper = self.prior.check_inputs(tokens, y, upper)
        count_from = np.array([r[4].count_from for r in rows], np.int32)
        valid = np.array([r[4].valid for r in rows], np.int32)
        all_, new = (np.asarray(a) for a in self._step(self.prior.params, tokens, y, upper, count_from, valid))
        return [(item[0], all_[i], new[i]) for i, item in enumerate(items)]


def _check_args(prior: Any, layers: Sequence[int], pool: str, batch: int) -> tuple[int, ...]:
    depth = prior.config.depth
    try:
        layers = tuple(sorted({int(n) for n in layers}))
    except (TypeError, ValueError):
        raise EmbedError(f"layers must be integers in 1..{depth}") from None
    if not layers or layers[0] < 1 or layers[-1] > depth:
        raise EmbedError(f"--layer must be between 1 and {depth} (this prior's depth), got {list(layers)}")
    if pool not in POOLS:
        raise EmbedError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if batch < 1:
        raise EmbedError(f"--batch must be >= 1, got {batch}")
    return layers


def embed_files(
    model: PathLike | None,
    paths: Sequence[PathLike],
    layers: Sequence[int],
    pool: str = "mean",
    batch: int = 1,
    artist: str = "unknown",
    genre: str = "unknown",
    lyrics: str = "",
    level: int | None = None,
    per_window: bool = False,
    normalize: bool = False,
    progress: bool = True,
    prior: Any = None,
    vqvae: Any = None,
    out: PathLike | None = None,
    precision: str = "float32",
) -> EmbedResult:
    """Embed audio files with a whole model's VQ-VAE and prior (see the module docstring).

    ``model``: a whole-model directory (``level`` picks the prior, default the top); or pass loaded
    ``prior`` / ``vqvae`` objects. ``layers``: layer counts 1..depth (36 = after layer 36). Writes
    ``out`` (.npz) when given. Unreadable files are listed in ``failed`` / ``errors``. ``precision``:
    the prior's, as ``--precision`` (``precision.resolve_precision``) when it is loaded here.
    """

    if prior is None or vqvae is None:
        if model is None:
            raise EmbedError("pass --model DIR (a whole-model directory)")

        prior = prior if prior is not None else load_prior_at(model, precision, level=level)
        vqvae = vqvae if vqvae is not None else load_vqvae(model)
    c = prior.config
    level = c.level
    layers = _check_args(prior, layers, pool, batch)
    if c.level >= vqvae.config.levels or vqvae.config.hop_lengths[c.level] != c.hop_length:
        raise EmbedError(f"the VQ-VAE does not match the level-{c.level} prior (hop {c.hop_length})")
    if not paths:
        raise EmbedError("no audio files given")

    labeller = None
    if c.labels:
        vocab = prior.vocab
        if vocab is None and model is not None:
            sub = component_dir(model, f"prior_level_{c.level}")
            vocab = load_vocab(sub) or load_vocab(model)
        labeller = _labeller(prior, vocab, artist, genre, lyrics)
    min_total, max_total, max_tokens = _timing_limits(c)
    if labeller is not None:  # a misspelt artist or genre fails now, before any audio is read
        labeller.get_label(artist, genre, lyrics if c.lyrics != "none" else "", max(min_total, c.sample_length), 0)
    sr, hop, n_ctx = vqvae.config.sr, c.hop_length, c.n_ctx
    bucket = max(c.sample_length, vqvae.config.hop_length)

    runner = _Batcher(prior, layers, pool, batch)
    n_l, width = len(layers), c.width
    acc: dict[int, dict] = {}  # per file: pooled value, positions counted, windows left
    windows_out: list[tuple] = []  # (file key, window index, start, valid, all)
    done: dict[int, tuple] = {}
    files: list[Any] = []
    failed: list[Any] = []
    errors: list[Any] = []

    def collect(results):
        for (key, w_index, window), all_, new in results:
            a = acc[key]
            counted = window.valid - window.count_from
            if pool == "mean":
                a["sum"] += new
            else:
                a["sum"] = np.maximum(a["sum"], new)
            a["n"] += counted
            a["left"] -= 1
            if per_window:
                val = all_ / window.valid if pool == "mean" else all_
                windows_out.append((key, w_index, window.start, window.valid, val))
            if a["left"] == 0:
                done[key] = (a["sum"] / a["n"]) if pool == "mean" else a["sum"]

    bar = tqdm(list(paths), desc="embed", unit="file", disable=not progress)
    for path in bar:
        try:
            audio = np.asarray(load_audio(path, sr=sr), np.float32).reshape(-1)
        except JukeboxError as e:
            failed.append(str(path))
            errors.append(str(e))
            bar.write(f"skipped {path}: {e}")
            continue
        if normalize:
            peak = float(np.abs(audio).max())
            audio = audio / peak if peak > 0 else audio
        n_samples = audio.shape[0]
        padded = np.zeros((1, -(-n_samples // bucket) * bucket, 1), np.float32)
        padded[0, :n_samples, 0] = audio
        all_codes = vqvae.encode(padded, progress=False)
        codes = np.asarray(all_codes[c.level][0], np.int32)
        upper_codes = np.asarray(all_codes[c.level + 1][0], np.int32) if c.is_upsampler else None
        n_tokens = min(-(-n_samples // hop), codes.shape[0])
        if max_tokens is not None and n_tokens > max_tokens:
            bar.write(
                f"note: {path} is longer than the model's max_duration ({c.max_duration:g} s): "
                f"embedding its first {max_tokens * hop / sr:.1f} s"
            )
            n_tokens = max_tokens
        key = len(files)
        files.append(str(path))
        plan = plan_windows(n_tokens, n_ctx)
        acc[key] = dict(
            sum=np.zeros((n_l, width), np.float32) if pool == "mean" else np.full((n_l, width), -np.inf, np.float32),
            n=0,
            left=len(plan),
            seconds=n_tokens * hop / sr,
        )
        label = None
        if labeller is not None:
            total = max(n_samples, min_total) if max_total is None else min(max(n_samples, min_total), max_total)
            label = labeller.get_label(artist, genre, lyrics if c.lyrics != "none" else "", total, 0)
        for w_index, window in enumerate(plan):
            tokens = np.zeros(n_ctx, np.int32)
            tokens[: window.valid] = codes[window.start : window.start + window.valid]
            y = None
            if label is not None:
                y = window_y(label.y, label.full_tokens, c.n_tokens, window.start, hop, c.sample_length)
            upper = None
            if upper_codes is not None:
                cd = c.cond_downsample
                upper = np.zeros(n_ctx // cd, np.int32)
                part = upper_codes[window.start // cd : (window.start + n_ctx) // cd]
                upper[: part.shape[0]] = part
            collect(runner.add(((key, w_index, window), tokens, y, upper, window)))
    collect(runner.run())
    bar.close()

    if not files:
        raise EmbedError(f"none of the {len(failed)} files could be read: {errors[0] if errors else ''}")
    result = EmbedResult(
        files=files,
        embeddings=np.stack([done[k] for k in range(len(files))]).astype(np.float32),
        layers=layers,
        seconds=np.array([acc[k]["seconds"] for k in range(len(files))], np.float32),
        failed=failed,
        errors=errors,
    )
    if per_window:
        windows_out.sort(key=lambda w: (w[0], w[1]))
        result.window_embeddings = np.stack([w[4] for w in windows_out]).astype(np.float32)
        result.window_file = np.array([w[0] for w in windows_out], np.int32)
        result.window_start = np.array([w[2] * hop / sr for w in windows_out], np.float32)
        result.window_tokens = np.array([w[3] for w in windows_out], np.int32)
    if out is not None:
        _save_npz(out, result.arrays(level, pool))
    return result


def _save_npz(path: PathLike, arrays: dict[str, Any]) -> Path:
    """Write atomically (a temporary file in the same directory, then ``os.replace``)."""
    path = Path(path)
    with atomic_write(path) as f:  # an open file keeps numpy from appending '.npz'
        np.savez(f, **arrays)
    return path


def run_embed(args: Any) -> Path:
    """The ``embed`` subcommand."""
    lyrics = args.lyrics or ""
    if lyrics.startswith("@"):
        try:
            lyrics = Path(lyrics[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise EmbedError(f"cannot read lyrics file {lyrics[1:]}: {e}") from None
    result = embed_files(
        args.model,
        args.audio,
        args.layer,
        pool=args.pool,
        batch=args.batch,
        artist=args.artist,
        genre=args.genre,
        lyrics=lyrics,
        level=args.level,
        per_window=args.per_window,
        normalize=args.normalize,
        progress=not args.quiet,
        out=args.out,
        precision=args.precision,
    )
    shape = "x".join(str(s) for s in result.arrays(0, args.pool)["embeddings"].shape)
    print(
        f"wrote {args.out}: embeddings {shape} for {len(result.files)} files"
        + (f"; skipped {len(result.failed)} unreadable" if result.failed else "")
    )
    return Path(args.out)
