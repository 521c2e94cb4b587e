"""``jukebox-flax sample``: check every input, then sample a song level by level into ``--out``.

Everything a user can get wrong (model directory, artist, genre, lyrics characters, length, filter
settings, prime file, a run directory that does not match) is checked before any model is loaded
or compiled, and reported as one ``JukeboxError`` line.

``--out`` receives ``run.json`` (the arguments), ``codes/level_{l}.npy`` (saved after every window),
``level_{l}/item_{b}.wav`` per level and sample, and at the end ``codes.npz`` (``level_{l}`` arrays,
readable by ``jukebox-flax decode``). ``--resume`` continues a killed run from its saved codes; as
windows use keys derived from (seed, level, window start), the result is the uninterrupted one.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ..audio import load_audio, save_wav
from ..checkpoint import component_dir, load_config, load_vocab
from ..config import JukeboxConfig
from ..labels import Labeller
from ..prior.api import load_prior
from ..vqvae.api import load_vqvae
from .errors import SamplingError
from .filter import check_filter_args
from .song import LevelLabels, LevelSettings, RunDir, sample_song

__all__ = ["SamplePlan", "plan_sample", "run_sample", "default_model", "DEFAULT_TEMPERATURE"]

DEFAULT_TEMPERATURE = 0.99  # the original sample.py's value for every level


@dataclass
class SamplePlan:
    """A validated ``sample`` request (no model loaded yet)."""

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
    prime: np.ndarray | None = None  # mono float32 [T_prompt] (a multiple of the top hop)
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


def plan_sample(args: argparse.Namespace) -> SamplePlan:
    """Check the arguments of ``jukebox-flax sample`` against the model; load nothing heavy."""

    model = Path(args.model) if args.model is not None else default_model()
    config = load_config(model)
    if not isinstance(config, JukeboxConfig):
        raise SamplingError(f"{model} holds a single {type(config).__name__}; sampling needs a whole model")
    n_all = len(config.priors)
    n_levels = n_all if args.levels is None else int(args.levels)
    if not 1 <= n_levels <= n_all:
        raise SamplingError(f"--levels must be between 1 and {n_all}, got {n_levels}")
    levels = list(range(n_all - n_levels, n_all))
    if args.batch < 1:
        raise SamplingError(f"--batch must be >= 1, got {args.batch}")
    check_filter_args(args.top_k, args.top_p)
    temps = _temperatures(args.temperature, n_levels)

    top = config.priors[-1]
    sr = config.vqvae.sr
    top_hop = top.hop_length
    if not (args.seconds > 0 and math.isfinite(args.seconds)):
        raise SamplingError(f"--seconds must be positive, got {args.seconds}")
    sample_length = int(args.seconds * sr) // top_hop * top_hop
    if sample_length == 0:
        raise SamplingError(f"--seconds {args.seconds} is shorter than one top-level token ({top_hop / sr:.4f} s)")
    notes = []
    total_length = sample_length  # the song length the timing signal and lyric alignment assume
    if top.has_timing:
        if args.seconds >= top.max_duration:
            raise SamplingError(
                f"--seconds {args.seconds} is beyond this model's longest song ({top.max_duration:g} s)"
            )
        min_total = math.ceil((top.min_duration or 0.0) * sr)
        if total_length < min_total:
            total_length = min_total
            what = "timing signal and lyrics assume" if top.lyrics != "none" else "timing signal assumes"
            notes.append(
                f"the model was trained on songs of at least {top.min_duration:g} s: the {what} "
                f"a {top.min_duration:g} s song"
            )
    for level in levels:
        prior = config.priors[level]
        if prior.is_upsampler and sample_length < prior.sample_length:
            raise SamplingError(
                f"upsampling level {level} needs at least {prior.sample_length / sr:.2f} s of audio (one window); "
                f"ask for more --seconds or fewer --levels"
            )

    lyrics = _read_lyrics(args.lyrics or "")
    if lyrics.strip() and all(config.priors[level].lyrics == "none" for level in levels):
        notes.append("no level sampled here is conditioned on lyrics: --lyrics is ignored")
    labels: dict[int, LevelLabels | None] = {}
    for level in levels:
        prior = config.priors[level]
        if not prior.labels:
            labels[level] = None
            continue
        sub = component_dir(model, f"prior_level_{level}")
        vocab = load_vocab(sub) or load_vocab(model)
        if vocab is None:
            raise SamplingError(
                f"{sub} has no vocab.json (artist/genre names): convert the model with --ids or --vocab"
            )
        labeller = Labeller.from_vocab_dict(vocab).for_config(prior)
        if prior.lyrics != "none":
            dropped = labeller.check_lyrics(lyrics)
            if dropped:
                shown = " ".join(repr(c) for c in dropped[:10])
                raise SamplingError(
                    f"the lyrics contain characters this model cannot write: {shown} (it knows {labeller.alphabet!r})"
                )
        label = labeller.get_label(args.artist, args.genre, lyrics if prior.lyrics != "none" else "", total_length, 0)
        labels[level] = LevelLabels(
            y=np.tile(label.y[None], (args.batch, 1)), full_tokens=[list(label.full_tokens)] * args.batch
        )

    prime = None
    if args.prime is not None:
        audio = load_audio(args.prime, sr=sr)
        n = audio.shape[0] // top_hop * top_hop
        if n == 0:
            raise SamplingError(f"the prime {args.prime} is shorter than one top-level token")
        if n >= sample_length:
            raise SamplingError(
                f"the prime ({n / sr:.2f} s) is not shorter than the song asked for ({sample_length / sr:.2f} s)"
            )
        prime = audio[:n]

    settings = {
        level: LevelSettings(temperature=temps[n_all - 1 - level], top_k=args.top_k, top_p=args.top_p)
        for level in levels
    }
    record = dict(
        model=str(model.resolve()),
        artist=args.artist,
        genre=args.genre,
        lyrics=lyrics,
        seconds=float(args.seconds),
        levels=n_levels,
        batch=int(args.batch),
        temperature=temps,
        top_k=int(args.top_k),
        top_p=float(args.top_p),
        seed=int(args.seed),
        prime=None if args.prime is None else str(Path(args.prime).resolve()),
    )
    out = Path(args.out)
    run = RunDir(out)
    if args.resume:
        saved = run.read_args()
        diff = sorted(k for k in set(saved) | set(record) if saved.get(k) != record.get(k))
        if diff:
            raise SamplingError(f"cannot resume {out}: it was started with other arguments ({', '.join(diff)})")
    elif run.exists():
        raise SamplingError(f"{out} already holds a sampling run: pass --resume to continue it, or another --out")
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
        notes=notes,
    )


def run_sample(args: argparse.Namespace) -> Path:
    """The ``sample`` subcommand: validate, load the models, sample every level, write the outputs."""
    plan = plan_sample(args)

    for note in plan.notes:
        print(f"note: {note}")
    run = RunDir(plan.out)
    if not plan.resume:
        run.start(plan.record)
    n_all = len(plan.config.priors)
    vq = load_vqvae(plan.model)
    zs = [np.zeros((plan.batch, 0), np.int32) for _ in range(n_all)]
    if plan.prime is not None:
        audio = np.tile(plan.prime[None, :, None], (plan.batch, 1, 1)).astype(np.float32)
        zs = [np.asarray(z, np.int32) for z in vq.encode(audio)]
    if plan.resume:
        saved = run.load_codes(plan.batch, n_all)
        zs = [s if s.shape[1] >= z.shape[1] else z for s, z in zip(saved, zs)]
    elif plan.prime is not None:
        for level, z in enumerate(zs):
            run.save_codes(level, z)
    # Sampling decodes through unrolled layers: the params are unstacked once here, so no decode step
    # slices a layer's weights out of a scanned stack (MaxText's scan_layers=False for inference).
    priors = {level: load_prior(plan.model, level=level, scan_layers=False) for level in plan.levels}

    def save_level(level: int, zs: list, audio: Any) -> None:
        for b, item in enumerate(np.asarray(audio)):
            save_wav(run.wav_file(level, b), item, plan.config.vqvae.sr)

    zs = sample_song(
        priors,
        zs,
        plan.levels,
        plan.sample_length,
        plan.labels,
        plan.settings,
        jax.random.key(plan.seed),
        plan.config.hop_fraction,
        decode=lambda z, level: vq.decode(z, start_level=level),
        on_window=lambda level, window, zs: run.save_codes(level, zs[level]),
        on_level=save_level,
        progress=True,
    )
    codes: dict[str, Any] = {f"level_{level}": z for level, z in enumerate(zs) if z.shape[1]}
    with open(plan.out / "codes.npz", "wb") as f:
        np.savez(
            f,
            **codes,
            sr=np.int32(plan.config.vqvae.sr),
            hop_lengths=np.asarray(plan.config.vqvae.hop_lengths, np.int32),
        )
    print(f"wrote {plan.out}")
    return plan.out
