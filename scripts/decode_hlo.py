"""What one decode step of a released prior writes to memory, read off XLA's compiled token loop.

    python scripts/decode_hlo.py                                  # 5b_lyrics top, float16, batch 1
    python scripts/decode_hlo.py --preset 5b --level 0 --precision bfloat16 --rows 16
    python scripts/decode_hlo.py --scanned                        # the scanned (stored) layout
    python scripts/decode_hlo.py --tiny                           # the same on a tiny preset (seconds)

A decode step at batch 1 should read every weight once and write almost nothing: the new token's
activations, one KV entry per layer, the logits. Whatever else the step writes is traffic the
accelerator pays for on top of the weights: copies of weights or caches, dtype conversions of
whole weight matrices, slices of stacked params. This compiles the library's own token loop
(``memory.lower_window``: ``WindowSampler.sample`` on abstract params, no weights needed) for the
local backend (CPU here; the HLO passes that matter for this, buffer assignment and fusion, work
the same way on GPU), walks the body of the token loop (nested loops times their trip counts) and
sums the bytes each instruction writes (an in-place dynamic-update-slice writes its update only; of
a conditional, the cheapest branch: the decoder's one conditional fills the cross-attention cache
at position 0, once per window).
Printed: param bytes, bytes written per step, and the largest writers with their shapes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
BYTES.update({"s8": 1, "u8": 1, "pred": 1})
FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all", "partition-id", "replica-id"}
_SHAPE = re.compile(r"\b(f64|s64|u64|f32|s32|u32|bf16|f16|s16|u16|s8|u8|pred)\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


def shape_bytes(text: str) -> int:
    """Bytes of every array in an HLO shape (a tuple sums its elements)."""
    return sum(BYTES[d] * int(np.prod([int(x) for x in dims.split(",") if x])) for d, dims in _SHAPE.findall(text))


@dataclass
class Instr:
    name: str
    shape: str
    opcode: str
    rest: str

    @property
    def calls(self) -> list[str]:
        """The computations a call or conditional runs."""
        names = re.findall(r"\b(?:to_apply|true_computation|false_computation)=%?([\w.\-]+)", self.rest)
        branches = re.search(r"branch_computations=\{([^}]*)\}", self.rest)
        if branches:
            names += [b.strip().lstrip("%") for b in branches.group(1).split(",")]
        return names

    def attr(self, key: str) -> str | None:
        m = re.search(rf"\b{key}=%?([\w.\-]+)", self.rest)
        return m.group(1) if m else None


@dataclass
class Module:
    computations: dict[str, list[Instr]] = field(default_factory=dict)
    entry: str = ""

    @classmethod
    def parse(cls, text: str) -> Module:
        mod, current = cls(), None
        for line in text.splitlines():
            if current is None:
                m = _HEADER.match(line)
                if m and not line.startswith(" "):
                    current = m.group(1)
                    mod.computations[current] = []
                    if line.startswith("ENTRY"):
                        mod.entry = current
                continue
            if line.strip() == "}":
                current = None
                continue
            m = _INSTR.match(line)
            if m:
                mod.computations[current].append(Instr(*m.groups()))
        return mod

    def root(self, computation: str) -> Instr:
        return self.computations[computation][-1]


def trip_count(instr: Instr) -> int:
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', instr.rest)
    return int(m.group(1)) if m else 1


def written(mod: Module, instr: Instr, shapes: dict[str, str]) -> int:
    """Bytes an instruction writes; an in-place dynamic-update-slice (alone or at a fusion's root)
    writes only its update."""
    op = instr.opcode
    if op == "fusion":
        callee = instr.attr("calls")
        root = mod.root(callee) if callee else None
        if root is not None and root.opcode == "dynamic-update-slice":
            inner = {i.name: i.shape for i in mod.computations[callee]}
            update = re.findall(r"%?([\w.\-]+)", root.rest)[1]
            return shape_bytes(inner.get(update, ""))
    if op == "dynamic-update-slice":
        update = re.findall(r"%?([\w.\-]+)", instr.rest)[1]
        return shape_bytes(shapes.get(update, ""))
    return shape_bytes(instr.shape)


def walk(mod: Module, computation: str, times: int, out: dict[str, list]) -> None:
    """Add every writing instruction of ``computation`` (run ``times`` times) to ``out``."""
    instrs = mod.computations[computation]
    shapes = {i.name: i.shape for i in instrs}
    for instr in instrs:
        if instr.opcode in FREE:
            continue
        if instr.opcode == "while":
            body = instr.attr("body")
            assert body is not None
            walk(mod, body, times * trip_count(instr), out)
            continue
        if instr.opcode == "call":
            walk(mod, instr.calls[0], times, out)
            continue
        if instr.opcode == "conditional":
            # the branch a step takes: the cheapest (the decoder's only conditional fills the
            # cross-attention cache at position 0, once per window)
            branches = []
            for callee in instr.calls:
                sub: dict[str, list] = defaultdict(list)
                walk(mod, callee, times, sub)
                branches.append(sub)
            cheapest = min(branches, key=lambda b: sum(w for items in b.values() for w, *_ in items))
            for kind, items in cheapest.items():
                out[kind].extend(items)
            continue
        kind = instr.opcode
        if kind == "fusion":
            kind = f"fusion:{mod.root(instr.attr('calls') or '').opcode}"
        out[kind].append((written(mod, instr, shapes) * times, times, instr.shape.split("{")[0], instr.name))


def token_loop(mod: Module) -> str:
    """The body of the sampler's token loop: the largest while of the entry computation."""
    loops = [i for i in mod.computations[mod.entry] if i.opcode == "while"]
    if not loops:
        raise SystemExit("no while loop in the compiled sample program")
    best = max(loops, key=lambda i: len(mod.computations[i.attr("body") or ""]))
    return best.attr("body") or ""


def audit(config, rows: int, precision: str, scan_layers: bool, chunk: int, dump: str | None = None) -> dict:
    from jukebox_flax.memory import lower_window
    from jukebox_flax.precision import resolve_precision
    from jukebox_flax.prior.prior import abstract_prior_params

    dtype, released = resolve_precision(precision, "gpu")
    _, sample = lower_window(config, rows, dtype, released, chunk, scan_layers=scan_layers)
    text = sample.compile().as_text()
    if dump:
        Path(dump).write_text(text)
    mod = Module.parse(text)
    out: dict[str, list] = defaultdict(list)
    walk(mod, token_loop(mod), 1, out)
    leaves = jax.tree_util.tree_leaves_with_path(abstract_prior_params(config))
    param_bytes = 0
    for keypath, leaf in leaves:
        from jukebox_flax.prior.prior import released_dtype
        from jukebox_flax.tree import path_names

        d = released_dtype(path_names(keypath), leaf.dtype, dtype) if released else dtype
        param_bytes += int(np.prod(leaf.shape)) * jnp.dtype(d).itemsize
    rows_out = sorted((w, t, shape, kind, name) for kind, items in out.items() for w, t, shape, name in items)[::-1]
    by_kind = {k: sum(w for w, *_ in v) for k, v in out.items()}
    return {
        "param_bytes": param_bytes,
        "written_per_step": sum(by_kind.values()),
        "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "writes": rows_out,  # (bytes per step, times per step, shape, kind, name), largest first
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="5b_lyrics")
    ap.add_argument("--level", type=int, default=2)
    ap.add_argument("--precision", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--scanned", action="store_true", help="the scanned (stored) layout instead of the sampling one")
    ap.add_argument("--tiny", action="store_true", help="a tiny version of the preset (bench_gpu.tiny_config)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dump", metavar="FILE", help="also write the compiled HLO text there")
    args = ap.parse_args(argv)

    from jukebox_flax.config import preset

    config = preset(args.preset).priors[args.level]
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_gpu import tiny_config

        config = tiny_config(config)
    result = audit(config, args.rows, args.precision, args.scanned, args.chunk, args.dump)
    if args.json:
        print(json.dumps({**result, "writes": result["writes"][:12]}))
        return
    mb = 2**20
    layout = "scanned" if args.scanned else "unrolled"
    where = f"{args.rows} row(s), {layout} layers, {jax.default_backend()}"
    print(f"{args.preset} level {args.level}, {args.precision}, {where}")
    per_step = result["written_per_step"] / mb
    print(f"params {result['param_bytes'] / mb:,.1f} MiB; written per decode step {per_step:,.2f} MiB")
    for kind, nbytes in result["by_kind"].items():
        print(f"  {kind:32s} {nbytes / mb:12,.2f} MiB")
    print("largest writers (MiB per step, times per step, shape):")
    for w, t, shape, kind, name in result["writes"][:12]:
        print(f"  {w / mb:12,.2f}  x{t:<4d} {shape:28s} {kind} {name}")


if __name__ == "__main__":
    main()
