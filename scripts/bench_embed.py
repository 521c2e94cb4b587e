"""Representation extraction speed and memory: seconds of audio embedded per second of compute.

    python scripts/bench_embed.py [--width 1024 --depth 24 --layer 12] [--batch 1] [--json FILE]
    python scripts/bench_embed.py --preset prior_5b --layer 36 --memory-only   # no weights needed

The prior is the released 5b top prior's shape (n_ctx 8192 tokens = 23.8 s of audio per window,
blocks 128, block / transpose-block / previous-block layers, 8 heads, timing + artist/genre labels)
with its width and depth replaced (default 1024 x 24, a mid-size prior of ~77M params), drawn at
random (seed 0): speed does not depend on the weights. The VQ-VAE is the released configuration,
also random.

Timed (after compilation, best of ``--repeats``):
* ``vqvae``: encoding one window of audio (1,048,576 samples) to codes;
* ``prior_stop``: ``JukeboxPrior.features`` for ``--layer`` with stop_early (what ``embed`` runs);
* ``prior_full``: the same layer without stop_early (all layers run), for comparison;
* the throughput = window seconds x batch / (vqvae + prior_stop time), audio s per compute s.
Memory: the XLA buffer assignment of the compiled features program (arguments = params + inputs,
temporaries, outputs) and the process's peak RSS. ``--memory-only`` compiles against abstract
params (``jax.ShapeDtypeStruct``) so a released-size prior's needs can be read without its weights
or a device that holds them.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from jukebox_flax.config import preset
from jukebox_flax.prior.api import abstract_prior_params, init_prior_params
from jukebox_flax.prior.prior import JukeboxPrior
from jukebox_flax.vqvae.api import VQVAE, init_vqvae_params

GIB = 1 << 30


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return min(times)


def _memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    return {k: getattr(m, f"{k}_size_in_bytes") / GIB for k in ("argument", "temp", "output")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="prior_5b", help="prior whose shape to start from")
    ap.add_argument("--width", type=int, default=1024, help="0 keeps the preset's")
    ap.add_argument("--depth", type=int, default=24, help="0 keeps the preset's")
    ap.add_argument("--layer", type=int, default=None, help="default depth // 2")
    ap.add_argument("--batch", type=int, default=1, help="windows per call")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="params and activations")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    cfg = preset(args.preset)
    cfg = cfg.replace(width=args.width or cfg.width, depth=args.depth or cfg.depth)
    layer = args.layer or cfg.depth // 2
    dtype = jnp.dtype(args.dtype)
    module = JukeboxPrior(cfg, dtype=dtype)
    b = args.batch
    tokens = jnp.zeros((b, cfg.n_ctx), jnp.int32)
    total = int(cfg.max_duration * cfg.sr) // 2
    y = jnp.asarray(np.tile([[total, 0, cfg.sample_length, 0, 0] + [-1] * (cfg.y_length - 5)], (b, 1)), jnp.int32)

    def feats(p, t, y, stop_early):
        return module.apply(
            {"params": p}, t, y, None, layers=(layer,), stop_early=stop_early, method=JukeboxPrior.features
        )[layer]

    params_abs = abstract_prior_params(cfg, dtype)
    n_params = int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params_abs)))
    window_s = cfg.sample_length / cfg.sr
    out = dict(
        preset=args.preset,
        width=cfg.width,
        depth=cfg.depth,
        heads=cfg.heads,
        n_ctx=cfg.n_ctx,
        layer=layer,
        batch=b,
        dtype=args.dtype,
        params=n_params,
        window_seconds=window_s,
        device=str(jax.devices()[0].device_kind),
        backend=jax.default_backend(),
    )
    print(
        f"prior {args.preset} {cfg.width}x{cfg.depth} ({n_params / 1e6:.1f}M params), layer {layer}, "
        f"batch {b}, {args.dtype}, window {cfg.n_ctx} tokens = {window_s:.2f} s, on {out['device']}"
    )

    t = time.perf_counter()
    stop_c = jax.jit(feats, static_argnums=3).lower(params_abs, tokens, y, True).compile()
    out["compile_prior_stop_s"] = time.perf_counter() - t
    out["memory_prior_stop_gib"] = _memory(stop_c)
    print(f"compile {out['compile_prior_stop_s']:.1f} s; memory (GiB) {out['memory_prior_stop_gib']}")
    if not args.memory_only:
        params = jax.jit(lambda k: init_prior_params(cfg, k, dtype))(jax.random.key(0))
        full_c = jax.jit(feats, static_argnums=3).lower(params_abs, tokens, y, False).compile()
        out["memory_prior_full_gib"] = _memory(full_c)
        out["prior_stop_s"] = _best(lambda: stop_c(params, tokens, y), args.repeats)
        out["prior_full_s"] = _best(lambda: full_c(params, tokens, y), args.repeats)

        vq_cfg = preset("vqvae")
        vq_params = init_vqvae_params(vq_cfg, jax.random.PRNGKey(1))  # not jitted: that compile is slow
        vq = VQVAE(vq_cfg, jax.tree_util.tree_map(lambda a: a.astype(dtype), vq_params))
        audio = np.random.default_rng(0).uniform(-0.5, 0.5, (b, cfg.sample_length, 1)).astype(np.float32)
        jax.block_until_ready(vq.encode(audio))  # compile
        out["vqvae_s"] = _best(lambda: vq.encode(audio), args.repeats)
        per_call = out["vqvae_s"] + out["prior_stop_s"]
        out["audio_s_per_compute_s"] = window_s * b / per_call
        out["audio_s_per_compute_s_full_depth"] = window_s * b / (out["vqvae_s"] + out["prior_full_s"])
        out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
        print(
            f"vqvae {out['vqvae_s']:.2f} s, prior to layer {layer} {out['prior_stop_s']:.2f} s "
            f"(all {cfg.depth} layers {out['prior_full_s']:.2f} s) per {b} window(s)"
        )
        print(
            f"=> {out['audio_s_per_compute_s']:.2f} s of audio per second "
            f"({out['audio_s_per_compute_s_full_depth']:.2f} without stop_early); peak RSS "
            f"{out['peak_rss_gib']:.2f} GiB"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
