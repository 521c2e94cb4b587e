"""``jukebox-flax train vqvae|prior``: train or fine-tune a VQ-VAE or one prior level on a folder of audio.

    jukebox-flax train vqvae --data DATA --out RUN --config vqvae.json --steps 20000 --batch 8
    jukebox-flax train prior --data DATA --vqvae VQ_DIR --out RUN --config prior.json --steps 20000
    jukebox-flax train prior --data DATA --vqvae MODEL --out RUN --init-from MODEL --level 2   # fine-tune

Killed or interrupted, the same command resumes from the latest checkpoint in RUN (``checkpoints/``,
``metrics.csv``, ``tensorboard/``, ``loss.png``); the trained model is written to ``RUN/model``.
``--holdout FRACTION`` keeps that fraction of the songs out of training and logs the loss on a fixed
set of their crops every ``--holdout-every`` steps (``holdout_loss``). For a prior the audio is encoded on
the fly by the frozen VQ-VAE (``--vqvae``: a VQ-VAE or whole-model directory); tokens are the codes
of the prior's level, and an upsampler also sees the codes of the level above. Labels (artist,
genre, lyrics) come from the metadata file (a folder without one trains on every audio file in it,
with the ``unknown`` artist and genre and no lyrics); their vocabulary is the ``--init-from`` model's
``vocab.json``, or ``--vocab FILE``, or else built from the dataset (ids in sorted order).
``scripts/train_vqvae.py`` and ``scripts/train_prior.py`` are thin wrappers over this module.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from . import train_plan, training
from .checkpoint import load_config
from .codes_dataset import CodesDataset, check_identity
from .codes_dataset import songs_of as codes_songs
from .config import JukeboxConfig, PriorConfig, VQVAEConfig, config_from_dict, preset
from .data import AudioDataset, Song, find_metadata, holdout_split, labeller_for_songs, read_metadata, songs_in_folder
from .errors import JukeboxError, TrainingError
from .labels import Labeller
from .optim import OptimConfig
from .prior.api import load_prior
from .vqvae.api import load_vqvae

__all__ = [
    "add_train_parsers",
    "add_training_args",
    "optim_from_args",
    "config_from_args",
    "run_train_vqvae",
    "run_train_prior",
    "run_script",
]

OPTIM_DEFAULTS = OptimConfig()  # the command line's optimizer defaults are the dataclass's
REMAT_CHOICES = ("none", "attention", "block")
TRAIN_PRECISIONS = ("float32", "bfloat16", "float16")


# ------------------------------------------------------------------------------------------------
# Options


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """The options both trainers take (data, output, model, schedule, optimizer, memory, checkpoints)."""
    g = parser.add_argument_group("data and output")
    g.add_argument(
        "--data",
        help="folder of audio files: with metadata.csv or metadata.jsonl, or without (every audio file in it, "
        "artist and genre 'unknown', no lyrics)",
    )
    g.add_argument("--metadata", help="metadata file (CSV or JSONL: file, artist, genre, lyrics)")
    g.add_argument("--out", required=True, help="run folder: checkpoints/, metrics.csv, model/ (the export)")
    g.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="keep this fraction of the songs out of training and log their loss (holdout_loss)",
    )
    g.add_argument("--holdout-every", type=int, default=100, metavar="N", help="steps between held-out losses")
    g = parser.add_argument_group("model (one of)")
    g.add_argument("--config", help="a config JSON file (as in a model directory's config.json)")
    g.add_argument("--preset", help="a released configuration by name (see jukebox_flax.config.PRESETS)")
    g.add_argument("--init-from", help="fine-tune: a model directory (config and params from there)")
    g = parser.add_argument_group("training")
    g.add_argument("--steps", type=int, default=10000, help="total steps (a resumed run continues to this)")
    g.add_argument("--batch", type=int, default=4)
    g.add_argument("--accumulate", type=int, default=1, metavar="N", help="micro-batches per step (accumulated)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--lr", type=float, default=OPTIM_DEFAULTS.lr)
    g.add_argument("--warmup", type=int, default=OPTIM_DEFAULTS.warmup_steps, help="linear warm-up steps")
    g.add_argument(
        "--decay-steps",
        type=int,
        default=OPTIM_DEFAULTS.decay_steps,
        help="linear decay to 0 over this many steps after warm-up",
    )
    g.add_argument("--weight-decay", type=float, default=OPTIM_DEFAULTS.weight_decay)
    g.add_argument("--b2", type=float, default=OPTIM_DEFAULTS.b2)
    g.add_argument("--clip", type=float, default=OPTIM_DEFAULTS.clip, help="global gradient norm (0: no clipping)")
    g = parser.add_argument_group("memory and precision")
    g.add_argument(
        "--remat",
        choices=REMAT_CHOICES,
        default="none",
        help="recompute activations in the backward pass: per attention, or per whole block (the original's c_res)",
    )
    g.add_argument(
        "--precision",
        choices=TRAIN_PRECISIONS,
        default="float32",
        help="compute dtype; bfloat16 / float16 keep float32 master weights (float16 with dynamic loss scaling)",
    )
    g.add_argument(
        "--dry-run",
        action="store_true",
        help="print the device memory of one training step (from shapes alone: no data or weights) and stop",
    )
    g.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    g = parser.add_argument_group("checkpoints and logs")
    g.add_argument("--checkpoint-every", type=int, default=500)
    g.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_vqvae_args(parser: argparse.ArgumentParser) -> None:
    """The options only ``train vqvae`` takes."""
    parser.add_argument(
        "--sample-length", type=int, default=32768, help="crop length in samples (a multiple of the top hop length)"
    )
    parser.add_argument(
        "--bandwidth-examples",
        type=int,
        default=32,
        help="crops used to estimate the loss scales (the original's bandwidth)",
    )


def add_prior_args(parser: argparse.ArgumentParser) -> None:
    """The options only ``train prior`` takes."""
    parser.add_argument("--vqvae", help="the VQ-VAE (a vqvae or whole-model directory)")
    parser.add_argument("--codes", help="train from the codes of `jukebox-flax encode-dataset` (no VQ-VAE in the step)")
    parser.add_argument("--level", type=int, help="with --init-from a whole model: the prior level (default top)")
    parser.add_argument("--vocab", help="labels vocabulary (vocab.json) to use instead of the default")
    parser.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="keep a moving average of the params with this decay (the original: 0.9999) "
        "and export it instead of the last params",
    )


def add_train_parsers(sub: argparse._SubParsersAction) -> None:
    """``train vqvae`` and ``train prior`` under the ``train`` command."""
    p = sub.add_parser("train", help="train or fine-tune a VQ-VAE or one prior level (resumable)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    vq = kinds.add_parser("vqvae", help="train a VQ-VAE on a folder of audio", description=__doc__.split("\n\n")[0])
    add_training_args(vq)
    add_vqvae_args(vq)
    vq.set_defaults(func=run_train_vqvae)
    pr = kinds.add_parser("prior", help="train one prior level", description=__doc__.split("\n\n")[0])
    add_training_args(pr)
    add_prior_args(pr)
    pr.set_defaults(func=run_train_prior)


def _parser(add_kind: Callable[[argparse.ArgumentParser], None], prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_training_args(parser)
    add_kind(parser)
    return parser


def parse_vqvae_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return _parser(add_vqvae_args, "jukebox-flax train vqvae").parse_args(argv)


def parse_prior_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return _parser(add_prior_args, "jukebox-flax train prior").parse_args(argv)


def optim_from_args(args: Any) -> OptimConfig:
    """The :class:`OptimConfig` of the options of :func:`add_training_args`."""
    return OptimConfig(
        lr=args.lr,
        warmup_steps=args.warmup,
        decay_steps=args.decay_steps,
        b2=args.b2,
        weight_decay=args.weight_decay,
        clip=args.clip,
    )


def config_from_args(args: Any, kind: type) -> Any:
    """The config chosen by exactly one of --config / --preset / --init-from (None for --init-from:
    the caller reads the model directory)."""
    chosen = [name for name in ("config", "preset", "init_from") if getattr(args, name)]
    if len(chosen) != 1:
        raise TrainingError("pass exactly one of --config, --preset and --init-from")
    if args.init_from:
        return None
    if args.config:
        try:
            config = config_from_dict(json.loads(Path(args.config).read_text()))
        except FileNotFoundError:
            raise TrainingError(f"config file not found: {args.config}") from None
        except json.JSONDecodeError as e:
            raise TrainingError(f"{args.config} is not valid JSON: {e}") from None
    else:
        config = preset(args.preset)
    if not isinstance(config, kind):
        raise TrainingError(f"the chosen config is a {type(config).__name__}, this command trains a {kind.__name__}")
    return config


def _check_memory_args(args: Any, kind: str) -> None:
    """--accumulate / --remat / --precision that this trainer cannot take."""
    if args.accumulate < 1 or args.batch % args.accumulate:
        raise TrainingError(f"--batch {args.batch} does not split into --accumulate {args.accumulate} micro-batches")
    if kind == "vqvae" and args.remat != "none":
        raise TrainingError("--remat applies to the priors' transformers; the VQ-VAE keeps its activations")
    if kind == "vqvae" and args.precision == "float16":
        raise TrainingError("the VQ-VAE trains in float32 or bfloat16 (float16 needs loss scaling: priors only)")


def _plan_config(args: Any, kind: type) -> Any:
    """The config of a dry run: --config / --preset, or --init-from's config.json alone (no params)."""
    config = config_from_args(args, kind)
    if config is not None:
        return config
    stored = load_config(args.init_from)
    if isinstance(stored, JukeboxConfig):
        stored = stored.vqvae if kind is VQVAEConfig else stored.priors[-1 if args.level is None else args.level]
    if not isinstance(stored, kind):
        raise TrainingError(f"{args.init_from} holds a {type(stored).__name__}, this command trains a {kind.__name__}")
    return stored


def _print_plan(plan: Any, as_json: bool) -> None:
    print(plan.to_json() if as_json else plan.table())


def _require_data(args: Any) -> str:
    if not args.data:
        raise TrainingError("--data is required (a folder of audio files)")
    return str(args.data)


def _songs(args: Any) -> tuple[list[Song], bool]:
    """The songs of --metadata, of the data folder's metadata file, or else every audio file in the
    folder; and whether they came from a metadata file."""
    data = _require_data(args)
    metadata = args.metadata or find_metadata(data)
    if metadata is None:
        return songs_in_folder(data), False
    return read_metadata(metadata), True


HOLDOUT_CROPS = (8, 64)  # held-out crops: one per held-out song, at least / at most this many


def holdout_batch_count(songs: int, batch: int) -> int:
    """Batches of held-out crops: one crop per held-out song, at least 8 and at most 64 crops, in
    whole batches of ``batch``."""
    low, high = HOLDOUT_CROPS
    return max(1, -(-min(max(songs, low), high) // batch))


def _split(args: Any, songs: list[Song]) -> tuple[list[Song], list[Song]]:
    """--holdout: (training songs, held-out songs)."""
    if args.holdout_every < 1:
        raise TrainingError("--holdout-every must be >= 1")
    train_songs, held_out = holdout_split(songs, args.holdout, args.seed)
    if held_out:
        crops = holdout_batch_count(len(held_out), args.batch) * args.batch
        print(
            f"holding out {len(held_out)} of {len(songs)} songs: holdout_loss on {crops} of their crops "
            f"every {args.holdout_every} steps"
        )
    return train_songs, held_out


def _train_loop(
    task: training.Task, dataset: AudioDataset | CodesDataset, args: Any, holdout: AudioDataset | None = None
) -> tuple[Any, int]:
    holdout_at, holdout_batches = None, 0
    if holdout is not None:
        holdout_batches = holdout_batch_count(len(holdout), args.batch)
        holdout_at = lambda j: holdout.batch(j, args.batch, args.seed)  # noqa: E731
    return training.train(
        task,
        lambda i: dataset.batch(i, args.batch, args.seed),
        args.steps,
        args.out,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep,
        log_every=args.log_every,
        progress=not args.no_progress,
        holdout_at=holdout_at,
        holdout_batches=holdout_batches,
        evaluate_every=args.holdout_every,
    )


# ------------------------------------------------------------------------------------------------
# train vqvae


def run_train_vqvae(args: argparse.Namespace) -> None:
    """``jukebox-flax train vqvae``: see the module docstring."""
    _check_memory_args(args, "vqvae")
    if args.dry_run:
        config = _plan_config(args, VQVAEConfig)
        if args.sample_length % config.hop_length:
            raise TrainingError(f"--sample-length must be a multiple of {config.hop_length}")
        plan = train_plan.plan_vqvae_step(
            config,
            optim_from_args(args),
            args.batch,
            args.sample_length,
            precision=args.precision,
            accumulate=args.accumulate,
        )
        return _print_plan(plan, args.json)
    init_params = None
    config = config_from_args(args, VQVAEConfig)
    if config is None:  # --init-from
        init_params, config, _ = training.load_component(args.init_from, "vqvae")
    if args.sample_length % config.hop_length:
        raise TrainingError(f"--sample-length must be a multiple of {config.hop_length}")

    train_songs, held_out = _split(args, _songs(args)[0])  # a VQ-VAE needs no labels
    dataset = AudioDataset(train_songs, args.sample_length, sr=config.sr)
    holdout = AudioDataset(held_out, args.sample_length, sr=config.sr) if held_out else None
    bandwidth = training.data_bandwidth(dataset, args.bandwidth_examples, args.seed)
    print(f"{len(dataset)} songs, {dataset.lengths.sum() / config.sr:.0f} s; bandwidth {bandwidth}")
    task = training.vqvae_task(
        config,
        optim_from_args(args),
        init_params=init_params,
        bandwidth=bandwidth,
        precision=args.precision,
        accumulate=args.accumulate,
    )
    state, step = _train_loop(task, dataset, args, holdout)
    path = training.export_model(f"{args.out}/model", task.params(state), config)
    print(f"step {step}: wrote {path}")


# ------------------------------------------------------------------------------------------------
# train prior


def _labeller(args: Any, config: PriorConfig, songs: Any, vocab: dict | None) -> Labeller | None:
    if not config.labels:
        return None
    if args.vocab:
        labeller = Labeller.from_vocab(args.vocab)
    elif vocab is not None:
        labeller = Labeller.from_vocab_dict(vocab)
    else:
        labeller = labeller_for_songs(songs, version=config.labeller_version)
    labeller = labeller.for_config(config)
    if max(labeller.artists.values()) >= config.artist_bins or max(labeller.genres.values()) >= config.genre_bins:
        raise TrainingError(
            f"the vocabulary has {max(labeller.artists.values()) + 1} artist and {max(labeller.genres.values()) + 1}"
            f" genre ids; the prior takes {config.artist_bins} and {config.genre_bins} (artist_bins / genre_bins)"
        )
    return labeller


def _codes_source(args: Any, config: PriorConfig, vocab: dict | None) -> tuple[Labeller | None, CodesDataset, None]:
    """``--codes DIR``: the labeller and the dataset of an encode-dataset output (the index names
    the VQ-VAE; a ``--vqvae`` given too must be that one)."""
    if args.data:
        raise TrainingError("--codes replaces --data (the codes' index lists the songs)")
    labeller = _labeller(args, config, codes_songs(args.codes), vocab)
    dataset = CodesDataset(args.codes, config, labeller)
    if args.vqvae:
        check_identity(args.codes, load_vqvae(args.vqvae))
    return labeller, dataset, None


def run_train_prior(args: argparse.Namespace) -> None:
    """``jukebox-flax train prior``: see the module docstring."""
    _check_memory_args(args, "prior")
    if args.dry_run:
        plan = train_plan.plan_prior_step(
            _plan_config(args, PriorConfig),
            optim_from_args(args),
            args.batch,
            precision=args.precision,
            remat=args.remat,
            accumulate=args.accumulate,
        )
        return _print_plan(plan, args.json)
    init_params, vocab = None, None
    config = config_from_args(args, PriorConfig)
    if config is None:  # --init-from
        prior = load_prior(args.init_from, args.level, dtype=jnp.float32)  # a whole model: the top level unless --level
        init_params, config, vocab = prior.params, prior.config, prior.vocab
    dataset: AudioDataset | CodesDataset
    holdout: AudioDataset | None = None
    if args.codes:  # pre-encoded by encode-dataset: no VQ-VAE in the step
        if args.holdout:
            raise TrainingError("--holdout takes songs of --data; with --codes it is not available")
        labeller, dataset, vqvae = _codes_source(args, config, vocab)
    else:
        if not args.vqvae:
            raise TrainingError("--vqvae is required (the VQ-VAE that encodes the audio), or --codes")
        songs, from_metadata = _songs(args)
        if not from_metadata and config.labels:
            print(f"{args.data} has no metadata file: every song gets the artist and genre 'unknown' and no lyrics")
        labeller = _labeller(args, config, songs, vocab)
        vqvae = load_vqvae(args.vqvae)
        train_songs, held_out = _split(args, songs)
        dataset = AudioDataset(train_songs, config.sample_length, labeller, sr=config.sr)
        holdout = AudioDataset(held_out, config.sample_length, labeller, sr=config.sr) if held_out else None
    print(
        f"{len(dataset)} songs, {dataset.lengths.sum() / config.sr:.0f} s; level {config.level}, "
        f"{config.n_ctx} tokens = {config.sample_length} samples per crop"
    )
    task = training.prior_task(
        config,
        optim_from_args(args),
        vqvae,
        init_params=init_params,
        precision=args.precision,
        accumulate=args.accumulate,
        remat=args.remat,
    )
    if args.ema:
        task = training.with_param_ema(task, args.ema)
    state, step = _train_loop(task, dataset, args, holdout)
    vocab_out = labeller.vocab_dict() if labeller is not None else None
    path = training.export_model(f"{args.out}/model", task.params(state), config, vocab_out)
    print(f"step {step}: wrote {path}")


# ------------------------------------------------------------------------------------------------
# scripts/


def run_script(main: Callable[[], Any]) -> int:
    """Run a script's ``main``: a user error is one line on stderr and exit status 2."""
    try:
        main()
    except JukeboxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
