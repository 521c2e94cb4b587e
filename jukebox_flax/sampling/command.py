"""``jukebox-flax sample`` / ``continue`` / ``upsample``: check every input, then sample level by level into ``--out``.

Everything a user can get wrong (model directory, artist, genre, lyrics characters, lengths, filter
settings, prime files, a source run or a run directory that does not match) is checked before any
model is loaded or compiled, and reported as one ``JukeboxError`` line.

``--out`` receives ``run.json`` (the arguments, the per-row ``metas``, ``total_length`` and
``hop_fraction`` that rebuild the labels, and for a derived run its ``parent``), ``codes/level_{l}.npy``
(the codes the run starts from, then saved after every window), ``level_{l}/item_{b}.wav`` per level
and sample, and at the end ``codes.npz`` (``level_{l}`` arrays, readable by ``jukebox-flax decode``).
``--resume`` continues a killed run from its saved codes; as windows use keys derived from (seed,
level, window start), the result is the uninterrupted one. The three modes are the original
``sample.py``'s: ``sample`` is its ancestral / primed mode, ``continue`` and ``upsample`` its modes of
the same names (from one of our runs, a codes ``.npz`` or its own ``data.pth.tar``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ..alignment import write_run_alignment
from ..atomic import atomic_write
from ..audio import load_audio, save_wav
from ..checkpoint import load_config
from ..config import JukeboxConfig
from ..errors import JukeboxError
from ..memory import device_memory_bytes, format_plan, original_defaults, plan_levels
from ..precision import load_prior_at, resolve_precision
from ..report import write_report
from ..runlock import run_lock
from ..vqvae.api import load_vqvae
from .errors import SamplingError
from .filter import check_filter_args
from .song import LevelLabels, LevelSettings, RunDir, sample_song, seed_key
from .sources import DEFAULT_TOTAL_SECONDS, default_total_length, level_labels, load_source, read_metas

__all__ = [
    "SamplePlan",
    "plan_sample",
    "plan_continue",
    "plan_upsample",
    "run_plan",
    "run_sample",
    "run_continue",
    "run_upsample",
    "default_model",
    "DEFAULT_TEMPERATURE",
    "MAX_SEED",
]

DEFAULT_TEMPERATURE = 0.99  # the original sample.py's value for every level
MAX_SEED = 2**63 - 1


@dataclass
class SamplePlan:
    """A validated ``sample`` / ``continue`` / ``upsample`` request (no model loaded yet)."""

    model: Path
    config: JukeboxConfig
    levels: list[int]  # levels to sample, e.g. [0, 1, 2]
    batch: int
    sample_length: int  # audio samples to produce (a multiple of the top hop)
    settings: dict[int, LevelSettings]
    labels: dict[int, LevelLabels | None]
    seed: int
    out: Path
    resume: bool
    record: dict[str, Any]  # what run.json holds
    prime: np.ndarray | None = None  # float32 [B, T_prompt] per row (a multiple of the top hop)
    zs: list[np.ndarray] | None = None  # int32 [B, T_l] codes the run starts from (continue, upsample)
    hop_fraction: tuple[float, ...] = ()
    notes: list[str] = field(default_factory=list)


def _read_lyrics(text: str) -> str:
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SamplingError(f"cannot read lyrics file {path}: {e}") from None
    return text


def _temperatures(values: list[float] | None, n_levels: int) -> list[float]:
    """One temperature per sampled level, top first."""
    values = [DEFAULT_TEMPERATURE] if not values else list(values)
    if len(values) == 1:
        values = values * n_levels
    if len(values) != n_levels:
        raise SamplingError(f"give one --temperature or one per sampled level ({n_levels}), got {len(values)}")
    for t in values:
        if not (t > 0 and math.isfinite(t)):
            raise SamplingError(f"temperatures must be positive, got {t}")
    return values


def default_model() -> Path:
    """The bundled demo model (``jukebox_flax/assets/demo_model``): a tiny model trained on the
    synthetic dataset of ``scripts/make_synthetic_dataset.py``, used when ``--model`` is omitted."""
    path = Path(__file__).resolve().parents[1] / "assets" / "demo_model"
    if not (path / "config.json").is_file():
        raise SamplingError(f"the bundled demo model is missing ({path}); pass --model DIR")
    return path


def _whole_model(model: Path) -> JukeboxConfig:
    config = load_config(model)
    if not isinstance(config, JukeboxConfig):
        raise SamplingError(f"{model} holds a single {type(config).__name__}; sampling needs a whole model")
    return config


def _check_seed(seed: int) -> int:
    if not 0 <= int(seed) <= MAX_SEED:
        raise SamplingError(f"--seed must be an integer in 0..2**63-1, got {seed}")
    return int(seed)


def _hop_fraction(values: list[float] | None, default: tuple[float, ...], config: JukeboxConfig) -> tuple[float, ...]:
    """One hop fraction per level, level 0 first (the original ``hps.hop_fraction``)."""
    if values is None:
        return tuple(float(v) for v in default)
    n = len(config.priors)
    if len(values) != n:
        raise SamplingError(f"--hop-fraction needs one value per level ({n}, level 0 first), got {len(values)}")
    for level, f in enumerate(values):
        if not (0 < f <= 1) or int(f * config.priors[level].n_ctx) < 1:
            raise SamplingError(f"--hop-fraction {f} for level {level} must be in (0, 1] and advance >= 1 token")
    return tuple(float(v) for v in values)


def _settings(args: argparse.Namespace, levels: list[int], config: JukeboxConfig) -> dict[int, LevelSettings]:
    """Per level: ``--chunk-size`` or the original sample.py's chunk for that prior (16 for the
    5B top priors, 32 for the others)."""
    check_filter_args(args.top_k, args.top_p)
    temps = _temperatures(args.temperature, len(levels))
    if args.max_batch is not None and args.max_batch < 1:
        raise SamplingError(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise SamplingError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    # temps are top first; levels may not reach the top (upsample)
    top_first = sorted(levels, reverse=True)
    return {
        level: LevelSettings(
            temperature=temps[top_first.index(level)],
            top_k=args.top_k,
            top_p=args.top_p,
            chunk_size=int(args.chunk_size or original_defaults(config.priors[level])[1]),
            max_batch_size=args.max_batch,
        )
        for level in levels
    }


def _sample_length(seconds: float, config: JukeboxConfig, what: str = "--seconds") -> int:
    top_hop = config.priors[-1].hop_length
    sr = config.vqvae.sr
    if not (seconds > 0 and math.isfinite(seconds)):
        raise SamplingError(f"{what} must be positive, got {seconds}")
    n = int(seconds * sr) // top_hop * top_hop
    if n == 0:
        raise SamplingError(f"{what} {seconds} is shorter than one top-level token ({top_hop / sr:.4f} s)")
    return n


def _total_length(
    total_seconds: float | None, inherited: int | None, config: JukeboxConfig, sample_length: int, notes: list[str]
) -> int:
    """The song length (samples) the labels assume: ``--total-seconds``, else the source run's,
    else the original's default (``sources.default_total_length``); checked against the model."""
    top = config.priors[-1]
    sr = config.vqvae.sr
    if total_seconds is not None:
        if not (total_seconds > 0 and math.isfinite(total_seconds)):
            raise SamplingError(f"--total-seconds must be positive, got {total_seconds}")
        total = int(total_seconds * sr)
        if total < sample_length:
            raise SamplingError(
                f"--total-seconds {total_seconds:g} is shorter than the {sample_length / sr:.2f} s sampled"
            )
    elif inherited is not None:
        total = int(inherited)
        if total < sample_length:
            notes.append(
                f"the source's labels assume a {total / sr:.2f} s song: this run's assume {sample_length / sr:.2f} s"
            )
            total = sample_length
    else:
        total = default_total_length(config, sample_length)
        if top.has_timing and sample_length < total < DEFAULT_TOTAL_SECONDS * sr:
            what = "timing signal and lyrics assume" if top.lyrics != "none" else "timing signal assumes"
            notes.append(
                f"the model was trained on songs of at least {top.min_duration:g} s: the {what} a {total / sr:g} s song"
            )
    if top.has_timing:
        lo, hi = math.ceil((top.min_duration or 0.0) * sr), (top.max_duration or 0.0) * sr
        if not lo <= total < hi:
            raise SamplingError(
                f"the song length {total / sr:g} s (--total-seconds) is outside what this model was trained on "
                f"({top.min_duration:g} s to {top.max_duration:g} s)"
            )
    return total


def _cycle(rows: list[dict], batch: int) -> list[dict]:
    """``rows`` repeated over ``batch`` (the original's ``while len(metas) < n: metas.extend(metas)``)."""
    return [dict(rows[i % len(rows)]) for i in range(batch)]


def _user_metas(args: argparse.Namespace, batch: int, base: list[dict] | None) -> list[dict]:
    """Per-row metas: ``--metas`` rows, else ``base`` (a source run's) with any of ``--artist``,
    ``--genre``, ``--lyrics`` given replacing that field in every row."""
    if getattr(args, "metas", None):
        return _cycle(read_metas(args.metas), batch)
    given = {
        key: (_read_lyrics(value) if key == "lyrics" else value)
        for key, value in (("artist", args.artist), ("genre", args.genre), ("lyrics", args.lyrics))
        if value is not None
    }
    rows = base or [{"artist": "unknown", "genre": "unknown", "lyrics": ""}]
    return [dict(row, **given) for row in _cycle(rows, batch)]


def _labels(
    config: JukeboxConfig, model: Path, metas: list[dict], total: int, levels: list[int], notes: list[str]
) -> dict[int, LevelLabels | None]:
    if any(str(m.get("lyrics", "")).strip() for m in metas) and all(
        config.priors[level].lyrics == "none" for level in levels
    ):
        notes.append("no level sampled here is conditioned on lyrics: --lyrics is ignored")
    labels = {level: level_labels(config, model, metas, total, level) for level in levels}
    top = config.priors[-1]
    if top.has_timing:
        sr = config.vqvae.sr
        lo, hi = (top.min_duration or 0.0) * sr, (top.max_duration or 0.0) * sr
        for meta in metas:
            t = meta.get("total_length")
            if t is not None and not lo <= t < hi:
                raise SamplingError(f"a row's total_length {t} samples is outside what this model was trained on")
    return labels


def _check_upsampling_length(config: JukeboxConfig, levels: list[int], sample_length: int) -> None:
    sr = config.vqvae.sr
    for level in levels:
        prior = config.priors[level]
        if prior.is_upsampler and sample_length < prior.sample_length:
            raise SamplingError(
                f"upsampling level {level} needs at least {prior.sample_length / sr:.2f} s of audio (one window); "
                f"ask for more --seconds or fewer --levels"
            )


def _load_prime(args: argparse.Namespace, config: JukeboxConfig, batch: int, sample_length: int) -> np.ndarray | None:
    """Prompt audio per row, float32 [B, T] (the original ``load_prompts``: files cycled over the
    batch, the first ``--prompt-seconds`` of each, cut down to a multiple of the top level's hop)."""
    prompt_seconds = args.prompt_seconds
    if args.prime is None:
        if prompt_seconds is not None:
            raise SamplingError("--prompt-seconds needs --prime (the audio to take it from)")
        return None
    sr = config.vqvae.sr
    top_hop = config.priors[-1].hop_length
    duration = None
    if prompt_seconds is not None:
        duration = _sample_length(prompt_seconds, config, "--prompt-seconds")
        if duration >= sample_length:
            raise SamplingError(
                f"the prompt ({duration / sr:.2f} s) is not shorter than the song asked for "
                f"({sample_length / sr:.2f} s)"
            )
    files = [f for f in args.prime.split(",") if f.strip()]
    if not files:
        raise SamplingError("--prime needs at least one audio file")
    audios = {f: load_audio(f, sr=sr, duration=None if duration is None else duration / sr) for f in files}
    n = min(a.shape[0] for a in audios.values()) // top_hop * top_hop
    if duration is not None:
        n = min(n, duration)
    if n == 0:
        raise SamplingError(f"the prime {files[0]} is shorter than one top-level token")
    if n >= sample_length:
        raise SamplingError(
            f"the prime ({n / sr:.2f} s) is not shorter than the song asked for ({sample_length / sr:.2f} s)"
        )
    return np.stack([audios[files[i % len(files)]][:n] for i in range(batch)]).astype(np.float32)


def _open_run(out: Path, record: dict, resume: bool, config: JukeboxConfig, sample_length: int) -> None:
    """Refuse to overwrite a run that sampled something; on ``--resume`` check its arguments and
    every saved codes array against this request (before any model is loaded)."""
    if out.exists() and not out.is_dir():
        raise SamplingError(f"--out {out} is a file, not a run directory")
    run = RunDir(out)
    if resume:
        saved = run.read_args()
        diff = sorted(k for k in set(saved) | set(record) if saved.get(k) != record.get(k))
        if diff:
            raise SamplingError(f"cannot resume {out}: it was started with other arguments ({', '.join(diff)})")
        totals = [sample_length // hop for hop in config.vqvae.hop_lengths]
        run.load_codes(int(record["batch"]), len(config.priors), totals=totals, bins=config.vqvae.l_bins)
    elif run.exists() and run.has_progress():
        raise SamplingError(f"{out} already holds a sampling run: pass --resume to continue it, or another --out")


def _common_record(plan_args: dict, args: argparse.Namespace, settings: dict[int, LevelSettings]) -> dict:
    temps = [settings[level].temperature for level in sorted(settings, reverse=True)]
    return dict(
        plan_args,
        temperature=temps,
        top_k=int(args.top_k),
        top_p=float(args.top_p),
        seed=int(args.seed),
        max_batch=args.max_batch,
        chunk_size=args.chunk_size,
        precision=getattr(args, "precision", "auto"),
    )


def plan_sample(args: argparse.Namespace) -> SamplePlan:
    """Check the arguments of ``jukebox-flax sample`` against the model; load nothing heavy."""

    model = Path(args.model) if args.model is not None else default_model()
    config = _whole_model(model)
    n_all = len(config.priors)
    n_levels = n_all if args.levels is None else int(args.levels)
    if not 1 <= n_levels <= n_all:
        raise SamplingError(f"--levels must be between 1 and {n_all}, got {n_levels}")
    levels = list(range(n_all - n_levels, n_all))
    if args.batch < 1:
        raise SamplingError(f"--batch must be >= 1, got {args.batch}")
    _check_seed(args.seed)
    settings = _settings(args, levels, config)
    hop_fraction = _hop_fraction(args.hop_fraction, config.hop_fraction, config)

    top = config.priors[-1]
    sample_length = _sample_length(args.seconds, config)
    if top.has_timing and args.seconds >= (top.max_duration or 0.0):
        raise SamplingError(f"--seconds {args.seconds} is beyond this model's longest song ({top.max_duration:g} s)")
    notes: list[str] = []
    total_length = _total_length(args.total_seconds, None, config, sample_length, notes)
    _check_upsampling_length(config, levels, sample_length)
    metas = _user_metas(args, args.batch, None)
    labels = _labels(config, model, metas, total_length, levels, notes)
    prime = _load_prime(args, config, args.batch, sample_length)
    initial = [0] * n_all if prime is None else [prime.shape[1] // hop for hop in config.vqvae.hop_lengths]
    record = _common_record(
        dict(
            mode="sample",
            model=str(model.resolve()),
            artist=args.artist,
            genre=args.genre,
            lyrics=_read_lyrics(args.lyrics or ""),
            metas=metas,
            seconds=float(args.seconds),
            total_length=total_length,
            hop_fraction=list(hop_fraction),
            levels=n_levels,
            batch=int(args.batch),
            prime=None if args.prime is None else [str(Path(f).resolve()) for f in args.prime.split(",") if f.strip()],
            prompt_seconds=args.prompt_seconds,
            initial_tokens=initial,
        ),
        args,
        settings,
    )
    out = Path(args.out)
    _open_run(out, record, args.resume, config, sample_length)
    return SamplePlan(
        model=model,
        config=config,
        levels=levels,
        batch=int(args.batch),
        sample_length=sample_length,
        settings=settings,
        labels=labels,
        seed=int(args.seed),
        out=out,
        resume=bool(args.resume),
        record=record,
        prime=prime,
        hop_fraction=hop_fraction,
        notes=notes,
    )


def _parse_rows(text: str | None, n: int, src: Any) -> list[int]:
    if text is None:
        return list(range(n))
    try:
        rows = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SamplingError(f"--rows must be I or I,J,..., got {text!r}") from None
    if not rows:
        raise SamplingError("--rows names no row")
    bad = [r for r in rows if not 0 <= r < n]
    if bad:
        raise SamplingError(f"--rows {bad[0]} is out of range: {src} holds rows 0..{n - 1}")
    return rows


def _plan_derived(args: argparse.Namespace, mode: str) -> SamplePlan:
    """``continue`` / ``upsample``: the chosen rows of a source run, its labels unless overridden."""
    source = load_source(args.src, args.model)
    config, model = source.config, source.model
    n_all = len(config.priors)
    rows = _parse_rows(args.rows, source.batch, args.src)
    batch = len(rows) if args.batch is None else int(args.batch)
    if batch < 1:
        raise SamplingError(f"--batch must be >= 1, got {batch}")
    chosen = [rows[i % len(rows)] for i in range(batch)]
    picked = source.select(chosen)
    zs = picked.zs
    top_hop = config.priors[-1].hop_length
    sr = config.vqvae.sr
    held = source.top_tokens * top_hop
    if held == 0:
        raise SamplingError(f"{args.src} holds no top-level codes to {mode}")
    seed = _check_seed(args.seed if args.seed is not None else source.record.get("seed", 0))
    args.seed = seed
    notes: list[str] = []
    if mode == "continue":
        sample_length = _sample_length(args.seconds, config)
        if args.prompt_seconds is not None:
            keep = _sample_length(args.prompt_seconds, config, "--prompt-seconds")
            if keep > held:
                raise SamplingError(
                    f"--prompt-seconds {args.prompt_seconds:g} is longer than the {held / sr:.2f} s {args.src} holds"
                )
            zs = [z[:, : keep // hop] for z, hop in zip(zs, config.vqvae.hop_lengths)]
            held = keep
        if sample_length < held:
            raise SamplingError(
                f"--seconds {args.seconds:g} is shorter than the {held / sr:.2f} s {args.src} already holds"
            )
        top = config.priors[-1]
        if top.has_timing and sample_length >= (top.max_duration or 0.0) * sr:
            raise SamplingError(
                f"--seconds {args.seconds} is beyond this model's longest song ({top.max_duration:g} s)"
            )
        levels = [level for level in source.sampled_levels]
        total_seconds = args.total_seconds
    else:
        sample_length = held
        levels = list(range(n_all - 1))
        if not levels:
            raise SamplingError(f"{model} has a single level: there is nothing to upsample")
        total_seconds = None
    _check_upsampling_length(config, levels, sample_length)
    settings = _settings(args, levels, config)
    hop_fraction = _hop_fraction(args.hop_fraction, source.hop_fraction, config)
    total_length = _total_length(total_seconds, source.total_length, config, sample_length, notes)
    metas = _user_metas(args, batch, picked.metas)
    labels = _labels(config, model, metas, total_length, levels, notes)
    record = _common_record(
        dict(
            mode=mode,
            model=str(Path(model).resolve()),
            parent=dict(path=str(Path(args.src).resolve()), rows=chosen),
            metas=metas,
            seconds=sample_length / sr,
            total_length=total_length,
            hop_fraction=list(hop_fraction),
            levels=levels,
            batch=batch,
            prompt_seconds=getattr(args, "prompt_seconds", None),
            initial_tokens=[int(z.shape[1]) for z in zs],
        ),
        args,
        settings,
    )
    out = Path(args.out)
    _open_run(out, record, args.resume, config, sample_length)
    return SamplePlan(
        model=Path(model),
        config=config,
        levels=levels,
        batch=batch,
        sample_length=sample_length,
        settings=settings,
        labels=labels,
        seed=seed,
        out=out,
        resume=bool(args.resume),
        record=record,
        zs=[np.asarray(z, np.int32) for z in zs],
        hop_fraction=hop_fraction,
        notes=notes,
    )


def plan_continue(args: argparse.Namespace) -> SamplePlan:
    """Check ``jukebox-flax continue SRC --seconds T ...``: extend the chosen rows of SRC to T seconds
    at every level SRC holds codes for (``--batch N`` repeats the chosen rows over N new rows)."""
    return _plan_derived(args, "continue")


def plan_upsample(args: argparse.Namespace) -> SamplePlan:
    """Check ``jukebox-flax upsample SRC ...``: sample every level below the top from SRC's top codes."""
    return _plan_derived(args, "upsample")


class _OneLevel(Mapping):
    """The priors of a run, loaded on first use and one at a time: loading a level releases the
    previous level's params and compiled programs first, so device memory peaks at the largest
    level, not at their sum (the original moves one prior at a time to the GPU)."""

    def __init__(self, model: Path, levels: Sequence[int], precision: str):
        self.model, self.levels, self.precision = model, list(levels), precision
        self.level: int | None = None
        self.prior: Any = None

    def __getitem__(self, level: int) -> Any:
        if level not in self.levels:
            raise KeyError(level)
        if level != self.level:
            self.release()
            # unrolled layers for sampling: no decode step slices a layer out of a scanned stack
            self.prior = load_prior_at(self.model, self.precision, level=level, scan_layers=False)
            self.level = level
        return self.prior

    def release(self) -> None:
        self.level, self.prior = None, None
        jax.clear_caches()  # the compiled window programs of the released level

    def __iter__(self) -> Iterator[int]:
        return iter(self.levels)

    def __len__(self) -> int:
        return len(self.levels)


def _with_vqvae(model: Path, use: Callable[[Any], Any]) -> Any:
    """``use(vqvae)`` on the host, with the VQ-VAE on the device only for that call."""
    return jax.device_get(use(load_vqvae(model)))


def dry_run(plan: SamplePlan) -> str:
    """The memory plan of ``plan`` (``jukebox-flax plan``'s table for the levels it samples)."""
    dtype, released = resolve_precision(plan.record.get("precision", "auto"))
    seconds = plan.sample_length / plan.config.vqvae.sr
    chunk = plan.record.get("chunk_size")  # None: the original's per level
    max_batch = plan.settings[plan.levels[0]].max_batch_size if plan.levels else None
    device = device_memory_bytes()
    priors = [plan.config.priors[level] for level in plan.levels]
    levels = plan_levels(priors, seconds, plan.batch, dtype, released, device, max_batch, chunk)
    return format_plan(levels, device, plan.batch)


def run_plan(plan: SamplePlan) -> Path:
    """Load the models one at a time, sample every level of ``plan`` into ``plan.out``, write the
    outputs (codes, WAVs, ``alignment.npz`` for a top prior with lyrics, ``index.html``)."""
    for note in plan.notes:
        print(f"note: {note}")
    with run_lock(plan.out):
        return _run_locked(plan)


def _run_locked(plan: SamplePlan) -> Path:
    run = RunDir(plan.out)
    config = plan.config
    n_all = len(config.priors)
    hops = config.vqvae.hop_lengths
    totals = [plan.sample_length // hop for hop in hops]
    hop_fraction = plan.hop_fraction or config.hop_fraction
    if plan.zs is not None:
        zs = [np.asarray(z, np.int32) for z in plan.zs]
    elif plan.prime is not None:
        prime = plan.prime[:, :, None]
        zs = [np.asarray(z, np.int32) for z in _with_vqvae(plan.model, lambda vq: vq.encode(prime))]
    else:
        zs = [np.zeros((plan.batch, 0), np.int32) for _ in range(n_all)]
    if plan.resume:
        saved = run.load_codes(plan.batch, n_all, totals=totals, bins=config.vqvae.l_bins)
        zs = [s if s.shape[1] >= z.shape[1] else z for s, z in zip(saved, zs)]
    else:
        run.start(plan.record)
        for level, z in enumerate(zs):
            if z.shape[1]:
                run.save_codes(level, z)
    priors = _OneLevel(plan.model, plan.levels, plan.record.get("precision", "auto"))

    def save_level(level: int, zs: list, audio: Any) -> None:
        for b, item in enumerate(np.asarray(audio)):
            save_wav(run.wav_file(level, b), item, config.vqvae.sr)
        if level == n_all - 1:
            try:
                write_run_alignment(plan.out, priors[level], zs[level], plan.labels.get(level), hop_fraction)
            except JukeboxError as e:  # a side product: the codes and audio matter more
                print(f"note: no alignment.npz ({e}); `jukebox-flax align --layer L --head H` writes one")
        write_report(plan.out)

    try:
        zs = sample_song(
            priors,
            zs,
            plan.levels,
            plan.sample_length,
            plan.labels,
            plan.settings,
            seed_key(plan.seed),
            hop_fraction,
            decode=lambda z, level: _with_vqvae(plan.model, lambda vq: vq.decode(z, start_level=level)),
            on_window=lambda level, window, zs: run.save_codes(level, zs[level]),
            on_level=save_level,
            progress=True,
        )
    finally:
        priors.release()
    codes: dict[str, Any] = {f"level_{level}": z for level, z in enumerate(zs) if z.shape[1]}
    with atomic_write(plan.out / "codes.npz") as f:
        np.savez(f, **codes, sr=np.int32(config.vqvae.sr), hop_lengths=np.asarray(hops, np.int32))
    print(f"wrote {plan.out}")
    return plan.out


def _run_or_plan(plan: SamplePlan, args: argparse.Namespace) -> Path:
    if getattr(args, "dry_run", False):
        print(dry_run(plan))
        return plan.out
    return run_plan(plan)


def run_sample(args: argparse.Namespace) -> Path:
    """The ``sample`` subcommand: validate, load the models, sample every level, write the outputs."""
    return _run_or_plan(plan_sample(args), args)


def run_continue(args: argparse.Namespace) -> Path:
    """The ``continue`` subcommand."""
    return _run_or_plan(plan_continue(args), args)


def run_upsample(args: argparse.Namespace) -> Path:
    """The ``upsample`` subcommand."""
    return _run_or_plan(plan_upsample(args), args)
