"""The ``jukebox-flax`` command line (also ``python -m jukebox_flax``).

Each subcommand parses its arguments here and calls one library function. ``convert`` and ``export``
are imported only when they run, which keeps the converter out of the library's import graph. A user mistake
(a ``JukeboxError``, any ``OSError``, a damaged zip / JSON / text file) prints one line on stderr and
exits with status 2; anything else is a bug: one line and the path of its saved traceback, status 1
(``--debug`` prints the traceback instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
import zipfile
from collections.abc import Sequence

from . import __version__
from .embed import run_embed
from .errors import ConfigError, JukeboxError
from .info import describe
from .precision import PRECISIONS
from .sampling.command import run_continue, run_sample, run_upsample
from .train_command import add_train_parsers
from .vqvae.api import decode_file, encode_file


def _cmd_convert(args: argparse.Namespace) -> None:
    from jukebox_flax_convert.cli import run_convert  # the converter stays out of the library's imports

    run_convert(args)


def _cmd_export(args: argparse.Namespace) -> None:
    from jukebox_flax_convert.cli import run_export

    run_export(args)


def _cmd_info(args: argparse.Namespace) -> None:
    print(describe(args.dir))


def _cmd_encode(args: argparse.Namespace) -> None:
    encode_file(args.model, args.audio, args.out)


def _cmd_decode(args: argparse.Namespace) -> None:
    decode_file(args.model, args.codes, args.out)


def _cmd_sample(args: argparse.Namespace) -> None:
    run_sample(args)


def _cmd_continue(args: argparse.Namespace) -> None:
    run_continue(args)


def _cmd_upsample(args: argparse.Namespace) -> None:
    run_upsample(args)


def _add_sampling_flags(p: argparse.ArgumentParser, levels_help: str) -> None:
    """The flags that say how levels are sampled, shared by sample / continue / upsample."""
    p.add_argument("--temperature", type=float, nargs="+", default=None, help=f"one value, or one per {levels_help}")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=0.0)
    p.add_argument(
        "--hop-fraction",
        type=float,
        nargs="+",
        default=None,
        metavar="F",
        help="window advance per level as a fraction of its context, level 0 (the finest) first "
        "(the original's hop_fraction; default the model's, 0.5 0.5 0.125 for the released ones)",
    )
    p.add_argument(
        "--max-batch", type=int, default=None, metavar="N", help="rows per prior call (default: what memory holds)"
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        metavar="N",
        help="prime tokens per transformer call (default: the original's, 16 for the 5B top priors, else 32)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="float16: the released models' mode (fp16 transformer kernels, fp32 norms, softmax and logits); "
        "auto: float16 on GPUs, bfloat16 on TPUs, float32 on CPUs",
    )
    p.add_argument("--dry-run", action="store_true", help="print the memory plan of the levels to sample and stop")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")


_TOTAL_HELP = (
    "the song length the labels (timing signal, lyric pacing) assume, the original's "
    "total_sample_length_in_seconds; default 240 s, or its min_duration for a model whose longest "
    "training song (max_duration) is not beyond 240 s; never less than --seconds"
)
_LABEL_SOURCE = " (default: SRC's)"


def _add_sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="sample a song")
    p.add_argument("--model", default=None, help="a whole-model directory (default: the bundled demo model)")
    p.add_argument("--artist", default="unknown")
    p.add_argument("--genre", default="unknown", help="NAME[,NAME...]")
    p.add_argument("--lyrics", default="", help="TEXT, or @FILE to read it from a file")
    p.add_argument(
        "--metas",
        default=None,
        help="JSON list or JSON lines of {artist, genre, lyrics}, one per row, "
        "cycled over --batch (the original's metas; replaces --artist/--genre/--lyrics)",
    )
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--total-seconds", type=float, default=None, help=_TOTAL_HELP)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--levels", type=int, default=None, help="how many levels to sample, from the top (default all)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="0..2**63-1")
    p.add_argument(
        "--prime", default=None, metavar="A[,B...]", help="audio file(s) to continue, one per row, cycled over --batch"
    )
    p.add_argument("--prompt-seconds", type=float, default=None, help="use only the first S seconds of --prime")
    _add_sampling_flags(p, "level from the top")
    p.set_defaults(func=_cmd_sample)


def _add_derived_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="a run directory, a codes .npz, or the original sample.py's data.pth.tar")
    p.add_argument("--rows", default=None, metavar="I[,J...]", help="rows of SRC to use (default all)")
    p.add_argument(
        "--model",
        default=None,
        help="a whole-model directory (default: the model SRC was sampled with; needed for a data.pth.tar)",
    )
    p.add_argument("--out", required=True, help="output directory (a new run)")
    p.add_argument("--artist", default=None, help="override every row's artist" + _LABEL_SOURCE)
    p.add_argument("--genre", default=None, help="override every row's genre" + _LABEL_SOURCE)
    p.add_argument("--lyrics", default=None, help="override every row's lyrics: TEXT or @FILE" + _LABEL_SOURCE)
    p.add_argument("--metas", default=None, help="JSON list or JSON lines of {artist, genre, lyrics}, one per row")
    p.add_argument("--seed", type=int, default=None, help="0..2**63-1 (default: SRC's seed, else 0)")


def _add_continue_parser(sub) -> None:
    p = sub.add_parser("continue", help="extend the chosen rows of a run to a longer song (co-composition)")
    _add_derived_common(p)
    p.add_argument("--seconds", type=float, required=True, help="the new length, at every level SRC holds")
    p.add_argument("--batch", type=int, default=None, help="new rows: the chosen rows repeated (default one each)")
    p.add_argument("--prompt-seconds", type=float, default=None, help="keep only the first S seconds of SRC")
    p.add_argument(
        "--total-seconds", type=float, default=None, help="the song length the labels assume (default: SRC's)"
    )
    _add_sampling_flags(p, "level continued, from the top")
    p.set_defaults(func=_cmd_continue)


def _add_upsample_parser(sub) -> None:
    p = sub.add_parser("upsample", help="sample the levels below the top from a run's top-level codes")
    _add_derived_common(p)
    p.add_argument("--batch", type=int, default=None, help="new rows: the chosen rows repeated (default one each)")
    _add_sampling_flags(p, "level below the top, from the top")
    p.set_defaults(func=_cmd_upsample)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or N,N,..., got {text!r}") from None


def _cmd_embed(args: argparse.Namespace) -> None:
    run_embed(args)


def _cmd_download(args: argparse.Namespace) -> None:
    from .download import download_model

    out = download_model(args.model, args.dir, mirror=args.mirror, convert_to=args.convert)
    print(f"wrote {out}")


def _cmd_plan(args: argparse.Namespace) -> None:
    import json

    from .checkpoint import load_config
    from .config import preset
    from .memory import device_memory_bytes, format_plan, parse_size, plan_levels
    from .precision import resolve_precision

    config = load_config(args.model) if args.model else preset(args.preset)
    device = parse_size(args.device_memory) if args.device_memory else device_memory_bytes()
    dtype, released = resolve_precision(args.precision)
    plans = plan_levels(config, args.seconds, args.batch, dtype, released, device, xla=args.xla)
    if args.json:
        print(
            json.dumps({"levels": [p.as_dict() for p in plans], "device_memory": device, "precision": args.precision})
        )
    else:
        print(format_plan(plans, device, args.batch))


def _add_model_parsers(sub: argparse._SubParsersAction) -> None:
    """``download`` and ``plan``: getting the released weights and sizing a machine for them."""
    p = sub.add_parser("download", help="download the released weights and id lists (resumable)")
    p.add_argument("model", choices=("1b_lyrics", "5b", "5b_lyrics"))
    p.add_argument("dir", help="folder for the official files (DIR/*.pth.tar, DIR/ids/)")
    p.add_argument("--convert", metavar="OUT", default=None, help="then convert them into the model directory OUT")
    p.add_argument("--mirror", metavar="URL", default=None, help="a mirror with the same relative paths")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("plan", help="device memory per level for sampling, from shapes alone (no weights)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", default=None, help="a model directory (only its config is read)")
    src.add_argument("--preset", default=None, help="a released configuration (1b_lyrics, 5b, 5b_lyrics, ...)")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--batch", type=int, default=None, help="rows to sample (default: as many as fit)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument(
        "--device-memory", default=None, metavar="SIZE", help="per device, e.g. 16GiB (default: this device's)"
    )
    p.add_argument("--xla", action="store_true", help="also compile each level's window and report XLA's count")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_cmd_plan)


def _cmd_encode_dataset(args: argparse.Namespace) -> None:
    from .codes_dataset import encode_dataset

    encode_dataset(
        args.dir,
        args.out,
        args.model,
        metadata=args.metadata,
        songs_per_shard=args.songs_per_shard,
        progress=not args.no_progress,
    )


def _cmd_assemble(args: argparse.Namespace) -> None:
    from .assemble import assemble

    given = [getattr(args, f"prior_level_{level}") for level in range(3)]
    priors = given[: given.index(None)] if None in given else given
    if len(priors) != sum(p is not None for p in given):
        raise ConfigError("give the priors from level 0 up (--prior-level-0, --prior-level-1, ...)")
    path = assemble(args.out, args.vqvae, priors, hop_fraction=args.hop_fraction, overwrite=args.overwrite)
    print(f"wrote {path}")


def _add_parts_parsers(sub: argparse._SubParsersAction) -> None:
    """``encode-dataset`` and ``assemble``: a dataset's codes for training, a whole model from parts."""
    p = sub.add_parser("encode-dataset", help="write the VQ-VAE codes of every song of a dataset (resumable)")
    p.add_argument("dir", help="the dataset folder (metadata.csv / metadata.jsonl, or just audio files)")
    p.add_argument("out", help="the codes folder to write (index.json, shards/); `train prior --codes OUT`")
    p.add_argument("--model", required=True, help="a VQ-VAE or whole-model directory")
    p.add_argument("--metadata", default=None, help="the metadata file (default: DIR's)")
    p.add_argument("--songs-per-shard", type=int, default=8, metavar="N", help="songs per shard file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_encode_dataset)

    p = sub.add_parser("assemble", help="a whole model from a VQ-VAE and one prior per level (checked)")
    p.add_argument("--vqvae", required=True, help="a VQ-VAE or whole-model directory (e.g. a run's RUN/model)")
    for level in range(3):
        p.add_argument(
            f"--prior-level-{level}",
            default=None,
            metavar="DIR",
            help=f"the level-{level} prior: its own directory or a whole model (one per VQ-VAE level)",
        )
    p.add_argument("out", help="the whole-model directory to write")
    p.add_argument(
        "--hop-fraction",
        type=float,
        nargs="+",
        default=None,
        metavar="F",
        help="sampling window hop per level, level 0 first (default 0.5 0.5 0.125, the released values)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is a model directory jukebox-flax wrote")
    p.set_defaults(func=_cmd_assemble)


def _cmd_align(args: argparse.Namespace) -> None:
    from .alignment import run_align

    print(f"wrote {run_align(args)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jukebox-flax", description="OpenAI Jukebox in JAX/Flax")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="convert PyTorch weights (official or Hugging Face) to a model directory")
    p.add_argument("src", help="an official *.pth.tar, a directory of them, or a Hugging Face checkpoint directory")
    p.add_argument("dst", help="the model directory to write")
    hp = p.add_mutually_exclusive_group()
    hp.add_argument("--hps", help="JSON file of original hyperparameters")
    hp.add_argument("--preset", help="released configuration name (e.g. 1b_lyrics, vqvae, prior_5b)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument("--ids", help="directory of the original artist/genre id lists")
    vocab.add_argument("--vocab", help="a Hugging Face vocab.json")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow arbitrary pickled objects in official checkpoints (only for files you trust)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace DST if it is a model directory jukebox-flax wrote")
    p.add_argument("--allow-nonfinite", action="store_true", help="keep NaN / Inf weights (refused by default)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("export", help="write an official-format state dict (*.pth.tar) from a model directory")
    p.add_argument("dir")
    p.add_argument("out")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is an earlier export")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("info", help="describe a model directory")
    p.add_argument("dir")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("encode", help="encode audio into VQ-VAE codes (.npz)")
    p.add_argument("--model", required=True, help="a VQ-VAE or whole-model directory")
    p.add_argument("audio")
    p.add_argument("out")
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("decode", help="decode VQ-VAE codes (.npz) into a WAV file")
    p.add_argument("--model", required=True, help="a VQ-VAE or whole-model directory")
    p.add_argument("codes")
    p.add_argument("out")
    p.set_defaults(func=_cmd_decode)

    _add_sample_parser(sub)
    _add_continue_parser(sub)
    _add_upsample_parser(sub)

    p = sub.add_parser("embed", help="one feature vector per audio file from a prior's activations (MIR)")
    p.add_argument("--model", required=True, help="a whole-model directory")
    p.add_argument(
        "--layer",
        type=_int_list,
        required=True,
        metavar="N[,N...]",
        help="layer(s) N: the residual stream after the first N layers (MIR recipe: 36 of 72)",
    )
    p.add_argument("--pool", choices=("mean", "max"), default="mean", help="over time and windows")
    p.add_argument("--out", required=True, help="the .npz to write")
    p.add_argument("--level", type=int, default=None, help="which prior (default the top level)")
    p.add_argument("--batch", type=int, default=1, help="windows per prior call")
    p.add_argument("--artist", default="unknown")
    p.add_argument("--genre", default="unknown", help="NAME[,NAME...]")
    p.add_argument("--lyrics", default="", help="TEXT, or @FILE (lyrics priors; default none)")
    p.add_argument("--per-window", action="store_true", help="also save one vector per window")
    p.add_argument("--normalize", action="store_true", help="scale each file to peak 1 first (as jukemirlib)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32", help="the prior's (see sample --help)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("audio", nargs="+", help="audio files (anything libsndfile reads)")
    p.set_defaults(func=_cmd_embed)
    _add_model_parsers(sub)

    p = sub.add_parser("align", help="lyric alignment of a run's top-level codes (alignment.npz)")
    p.add_argument("src", help="a run directory, a codes.npz or the original's data.pth.tar")
    p.add_argument("--model", default=None, help="a whole-model directory (default: the one SRC used)")
    p.add_argument("--layer", type=int, default=None, help="attention layer (default: the model's alignment_layer)")
    p.add_argument("--head", type=int, default=None, help="attention head (default: the model's alignment_head)")
    p.add_argument("--hop-fraction", type=float, nargs="+", default=None, help="one per level, level 0 first")
    p.add_argument("--out", default=None, help="directory for alignment.npz (default: the run SRC)")
    p.set_defaults(func=_cmd_align)
    add_train_parsers(sub)
    _add_parts_parsers(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _os_error_line(e: OSError) -> str:
    """'FILE: cause' (errno's text: 'No space left on device', 'Read-only file system', ...)."""
    cause = e.strerror or _one_line(str(e)) or type(e).__name__
    files = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{files}: {cause}" if files else cause


# Raised by the standard library for a damaged or mistaken file a user gave; the cause is theirs.
_FILE_ERRORS = (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, EOFError)


def _report_bug(command: str, error: BaseException, debug: bool) -> None:
    """An unexpected error: one line and where the traceback went (``--debug`` prints it instead)."""
    text = "".join(traceback.format_exception(error))
    if debug:
        print(text, end="", file=sys.stderr)
        return
    where = "not saved"
    try:
        fd, name = tempfile.mkstemp(prefix="jukebox-flax-", suffix=".traceback.txt")  # O_EXCL, private
        with os.fdopen(fd, "w") as f:
            f.write(text)
        where = name
    except OSError:
        pass
    print(
        f"jukebox-flax {command}: internal error: {type(error).__name__}: {_one_line(str(error))[:300]} "
        f"(traceback: {where}; --debug shows it)",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except JukeboxError as e:
        print(f"jukebox-flax {args.command}: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # a missing or unreadable file, a full or read-only disk, ...
        print(f"jukebox-flax {args.command}: error: {_os_error_line(e)}", file=sys.stderr)
        return 2
    except _FILE_ERRORS as e:
        print(f"jukebox-flax {args.command}: error: a damaged input file: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jukebox-flax {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        _report_bug(args.command, e, args.debug)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
