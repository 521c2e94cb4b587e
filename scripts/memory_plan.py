"""Memory plan of sampling for every released prior: params + KV cache + activations per sample,
and the largest batch that fits on a 16, 40 and 80 GB device (``jukebox_flax.memory``).

    python scripts/memory_plan.py [--chunk-size 32] [--markdown]
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp

from jukebox_flax.config import preset
from jukebox_flax.memory import GB, memory_plan

PRIORS = ["prior_5b", "prior_5b_lyrics", "prior_1b_lyrics", "upsampler_level_1", "upsampler_level_0"]
PRECISIONS = [("fp32", jnp.float32, False), ("bf16", jnp.bfloat16, False), ("fp16 (released)", jnp.float16, True)]
DEVICES_GB = (16, 40, 80)


def rows(chunk_size: int = 32) -> list[dict]:
    out = []
    for name in PRIORS:
        config = preset(name)
        for label, dtype, released in PRECISIONS:
            plan = memory_plan(config, dtype, released, chunk_size)
            out.append(
                {
                    "prior": name,
                    "precision": label,
                    "params_gb": plan.params / GB,
                    "cache_gb": plan.cache_per_sample / GB,
                    "activations_gb": plan.activations_per_sample / GB,
                    **{f"batch_{d}gb": plan.max_batch(d * GB) for d in DEVICES_GB},
                }
            )
    return out


def markdown(table: list[dict]) -> str:
    lines = [
        "| prior | precision | params GB | KV cache GB/sample | activations GB/sample | "
        + " | ".join(f"max batch {d} GB" for d in DEVICES_GB)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(DEVICES_GB),
    ]
    for r in table:
        lines.append(
            f"| {r['prior']} | {r['precision']} | {r['params_gb']:.2f} | {r['cache_gb']:.3f} | "
            f"{r['activations_gb']:.3f} | " + " | ".join(str(r[f"batch_{d}gb"]) for d in DEVICES_GB) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunk-size", type=int, default=32, help="prefill positions per call")
    args = parser.parse_args()
    print(markdown(rows(args.chunk_size)))
    print(
        f"\nHeadroom 10 % of the device; chunk size {args.chunk_size}; one device (with a data axis of D "
        "devices the batch is D times larger; a model axis of M divides params and KV cache by ~M)."
    )


if __name__ == "__main__":
    main()
