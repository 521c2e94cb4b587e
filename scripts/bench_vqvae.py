"""Speed of the released VQ-VAE configuration (random weights): seconds of audio per second.

    python scripts/bench_vqvae.py [--seconds 60] [--chunk-seconds 24] [--batch 1] [--dtype float32]

Reports encode (all three levels) and decode (from level 0, the costliest, and from level 2) for the
whole signal in one pass and in receptive-field-aware windows. Compilation is excluded (one warm-up
call per shape); each timing is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from jukebox_flax.config import preset
from jukebox_flax.vqvae.api import VQVAE, init_vqvae_params


def _timed(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile (every window shape) and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--chunk-seconds", type=float, default=24.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args()

    config = preset("vqvae")
    params = init_vqvae_params(config, jax.random.PRNGKey(0))
    # a random codebook, so the codes (and the decode) are not all the same
    params["bottleneck"] = {
        name: {"k": jax.random.normal(jax.random.PRNGKey(i), block["k"].shape) * 0.1}
        for i, (name, block) in enumerate(params["bottleneck"].items())
    }
    params = jax.tree_util.tree_map(lambda a: a.astype(args.dtype), params)
    hop = config.hop_length
    n = int(args.seconds * config.sr) // hop * hop
    chunk = int(args.chunk_seconds * config.sr) // hop * hop
    audio = np.asarray(0.1 * np.random.default_rng(0).standard_normal((args.batch, n, 1)), np.float32)
    seconds = args.batch * n / config.sr

    whole = VQVAE(config, params, chunk_samples=n)
    chunked = VQVAE(config, params, chunk_samples=chunk)
    codes = whole.encode(audio)
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), dtype {args.dtype}, "
        f"{args.batch} x {n / config.sr:.1f} s, window {chunk / config.sr:.1f} s"
    )
    rows = [
        ("encode", "whole", lambda: whole.encode(audio)),
        ("encode", "chunked", lambda: chunked.encode(audio)),
        ("decode L0", "whole", lambda: whole.decode(codes, start_level=0)),
        ("decode L0", "chunked", lambda: chunked.decode(codes, start_level=0)),
        ("decode L2", "whole", lambda: whole.decode(codes[2:], start_level=2)),
        ("decode L2", "chunked", lambda: chunked.decode(codes[2:], start_level=2)),
    ]
    for what, how, fn in rows:
        try:
            t = _timed(fn, args.repeats)
            print(f"{what:10s} {how:8s} {t:8.3f} s  {seconds / t:9.1f} s of audio / s")
        except Exception as e:  # e.g. out of memory for the whole pass on long inputs
            print(f"{what:10s} {how:8s} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")


if __name__ == "__main__":
    main()
