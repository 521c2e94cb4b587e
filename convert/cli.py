"""``jukebox-flax convert`` and ``jukebox-flax export`` (arguments parsed by jukebox_flax/cli.py)."""

from __future__ import annotations

import argparse
import time

from jukebox_flax.info import describe

from .convert import convert
from .export import export


def run_convert(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    out = convert(
        args.src,
        args.dst,
        hps=args.hps,
        preset=args.preset,
        dtype=args.dtype,
        ids=args.ids,
        vocab=args.vocab,
        trust_pickle=args.trust_pickle,
        overwrite=args.overwrite,
        allow_nonfinite=getattr(args, "allow_nonfinite", False),
    )
    print(describe(out))
    print(f"converted {args.src} -> {out} in {time.perf_counter() - start:.1f} s")


def run_export(args: argparse.Namespace) -> None:
    out = export(args.dir, args.out, overwrite=getattr(args, "overwrite", False))
    print(f"exported {args.dir} -> {out}")
