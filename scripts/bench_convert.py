"""Benchmark `jukebox-flax convert` on a synthetic checkpoint with the exact released shapes.

    python scripts/bench_convert.py [--model prior_1b_lyrics] [--dtype float32] [--workdir DIR]

1. A child process writes ``{'hps': ..., 'model': state_dict}`` with every key, shape and dtype of
   the released file (tests/fixtures/openai/released_state_dict_keys.json), filled with N(0, 0.02)
   noise so it does not compress; the tied ``prior.x_out.weight`` shares the embedding's storage.
2. A second child imports everything, resets its peak-RSS counter (``/proc/self/clear_refs``),
   converts, and reports wall time and peak resident memory (VmHWM) above that baseline.
3. Both files are deleted unless --keep.

The goal (issue 5): peak memory above the baseline < half the checkpoint's size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "tests" / "fixtures" / "openai" / "released_state_dict_keys.json"
PRESET_OF = {
    "prior_1b_lyrics": "prior_1b_lyrics",
    "prior_5b": "prior_5b",
    "prior_5b_lyrics": "prior_5b_lyrics",
    "upsampler_level_0": "upsampler_level_0",
    "upsampler_level_1": "upsampler_level_1",
    "vqvae": "vqvae",
}


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def generate(model: str, out: Path) -> None:
    import torch

    from jukebox_flax.config import preset
    from jukebox_flax_convert.export import hps_from_config

    entries = json.loads(SHAPES.read_text())[model]["keys"]
    sd = {}
    for key, shape, dtype in entries:
        sd[key] = torch.empty(shape, dtype=getattr(torch, dtype)).normal_(
            0.0, 0.02
        )  # incompressible, like real weights
    config = preset(PRESET_OF[model])
    if "prior.x_out.weight" in sd and not getattr(config, "merged_decoder", True):
        sd["prior.x_out.weight"] = sd["prior.x_emb.weight"]  # tied, as in the released file
    torch.save({"hps": hps_from_config(config), "model": sd}, out)


def standin_mapping(sd, config) -> dict:
    """A trivial key mapping (nested dict of the state dict's own views): the pipeline's cost alone."""
    params: dict = {}
    for key, value in sd.items():
        if key == "prior.x_out.weight" and not getattr(config, "merged_decoder", True):
            continue  # tied to prior.x_emb.weight
        *path, leaf = key.split(".")
        node = params
        for name in path:
            node = node.setdefault(name, {})
        node[leaf] = value
    return params


def measure(src: Path, dst: Path, dtype: str, standin: bool) -> dict:
    import jax  # noqa: F401  (imported before the baseline, as the CLI would)
    import orbax.checkpoint  # noqa: F401
    import torch  # noqa: F401

    from jukebox_flax_convert import convert

    mappings = {"vqvae": standin_mapping, "prior": standin_mapping} if standin else None
    baseline_kb = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    convert(src, dst, dtype=dtype, mappings=mappings)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "baseline_mb": baseline_kb / 1024, "peak_mb": _status_kb("VmHWM") / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="prior_1b_lyrics", choices=sorted(PRESET_OF))
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--workdir", default=None, help="where to put the synthetic checkpoint (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint and the output")
    parser.add_argument("--standin", action="store_true", help="use a trivial key mapping (pipeline cost only)")
    parser.add_argument("--_child", choices=("generate", "measure"), help=argparse.SUPPRESS)
    parser.add_argument("--_src", help=argparse.SUPPRESS)
    parser.add_argument("--_dst", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child == "generate":
        generate(args.model, Path(args._src))
        return
    if args._child == "measure":
        print(json.dumps(measure(Path(args._src), Path(args._dst), args.dtype, args.standin)))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert_"))
    work.mkdir(parents=True, exist_ok=True)
    src, dst = work / f"{args.model}.pth.tar", work / f"{args.model}_flax"
    me = [
        sys.executable,
        __file__,
        "--model",
        args.model,
        "--dtype",
        args.dtype,
        "--_src",
        str(src),
        "--_dst",
        str(dst),
    ]
    if args.standin:
        me.append("--standin")
    try:
        start = time.perf_counter()
        subprocess.run(me + ["--_child", "generate"], check=True)
        size_mb = src.stat().st_size / 2**20
        print(f"synthetic {args.model}: {size_mb:,.0f} MiB written in {time.perf_counter() - start:.1f} s")
        out = subprocess.run(me + ["--_child", "measure"], check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        extra = result["peak_mb"] - result["baseline_mb"]
        out_mb = sum(f.stat().st_size for f in dst.rglob("*") if f.is_file()) / 2**20
        print(
            f"convert ({args.dtype}{', stand-in mapping' if args.standin else ''}): {result['seconds']:.1f} s, "
            f"output {out_mb:,.0f} MiB"
        )
        print(
            f"peak RSS {result['peak_mb']:,.0f} MiB = baseline {result['baseline_mb']:,.0f} MiB + {extra:,.0f} MiB "
            f"({extra / size_mb:.1%} of the checkpoint; goal < 50%)"
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
