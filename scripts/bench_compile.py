"""Compile time of the decode step (one token, C=1) of every released prior's Autoregressive.

Parameters and cache are abstract (``jax.eval_shape``): nothing is allocated, so this runs on any
machine. Also prints the parameter counts of the transformers and the KV-cache bytes per sample.

    python scripts/bench_compile.py [--batch 1] [--dtype float16] [--chunk 1] [--presets ...]
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jukebox_flax.config import preset
from jukebox_flax.prior.autoregressive import Autoregressive, TransformerConfig

PRESETS = ("upsampler_level_0", "upsampler_level_1", "prior_1b_lyrics", "prior_5b", "prior_5b_lyrics")


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def bench(name: str, batch: int, dtype, chunk: int) -> dict:
    cfg = preset(name)
    model = Autoregressive(TransformerConfig.from_prior(cfg, dtype=dtype))
    sds = jax.ShapeDtypeStruct
    w, n = cfg.width, cfg.total_ctx
    x_cond = sds((batch, n, w), jnp.float32)
    y_cond = sds((batch, 1, w), jnp.float32)
    enc = sds((batch, cfg.n_tokens, w), dtype) if cfg.lyrics == "separate" else None
    t0 = time.perf_counter()
    params = nn.meta.unbox(
        jax.eval_shape(model.init, jax.random.PRNGKey(0), sds((batch, n), jnp.int32), x_cond, y_cond, enc)
    )
    cache = jax.eval_shape(lambda: model.init_cache(batch, dtype))
    t1 = time.perf_counter()

    def step(p, inputs, start, cache, x_cond, y_cond, enc):
        return model.apply(p, inputs, start, cache, x_cond, y_cond, enc, method=Autoregressive.decode)

    lowered = jax.jit(step, donate_argnums=3).lower(
        params, sds((batch, chunk), jnp.int32), sds((), jnp.int32), cache, x_cond, y_cond, enc
    )
    t2 = time.perf_counter()
    lowered.compile()
    t3 = time.perf_counter()
    return {
        "preset": name,
        "transformer_params": _count(params["params"]["transformer"]),
        "cache_bytes_per_sample": model.cache_bytes(1, dtype),
        "init_shapes_s": round(t1 - t0, 2),
        "lower_s": round(t2 - t1, 2),
        "compile_s": round(t3 - t2, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--chunk", type=int, default=1)
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    args = ap.parse_args()
    print(f"backend {jax.default_backend()}, batch {args.batch}, dtype {args.dtype}, chunk {args.chunk}")
    for name in args.presets:
        r = bench(name, args.batch, jnp.dtype(args.dtype), args.chunk)
        print(
            f"{r['preset']:18s} transformer {r['transformer_params']:>13,d} params  "
            f"cache {r['cache_bytes_per_sample'] / 1e9:.3f} GB/sample  "
            f"lower {r['lower_s']:6.2f} s  compile {r['compile_s']:6.2f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
