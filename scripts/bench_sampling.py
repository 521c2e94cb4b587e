"""Sampling speed of jukebox-flax next to the Hugging Face port, on the same weights, in one process.

    python scripts/bench_sampling.py [--quick] [--json FILE] [--threads N] [--hf-tokens 256]
    python scripts/bench_sampling.py --filters      # the logit filters' cost per step only (no HF needed)

Cases: the fixture-size priors (the three priors of ``tests/fixtures/hf/tiny_1b_style``: a 1b_lyrics-
style top prior with 8 lyric tokens + 32 music tokens, and two upsamplers of 32 / 128 tokens) and a
mid-size upsampler (width 512, depth 24, 2 heads, n_ctx 2048, blocks 32, the released upsamplers'
block / transpose-block / previous-block pattern, 2048 codes, a 64-wide conditioner).

Same weights on both sides: the fixture priors are converted HF -> ours (``convert/hf_keys`` +
``prior_params_from_state_dict``); the mid-size prior is drawn with ``init_prior_params`` (seed 0) and
exported ours -> original keys -> HF keys (``prior_state_dict_from_params`` + ``original_to_hf``) and
loaded with ``load_state_dict(strict=True)``. Before any timing the two models' teacher-forced logits
must agree to 1e-4 (max |difference| / max |logit|).

What is timed, at batch 1 and 8, prime-less ancestral sampling at temperature 1:
* ours: a whole window (``sample_window``, n_ctx new tokens; conditioning and host transfers
  included); the compile time of the first call, separately; the per-token time at the start and
  at the end of the window, each as the difference of two calls (q and 1 new tokens, q = n_ctx / 4,
  at most 256)
  without a prime and with a prime of n_ctx - q tokens, so fixed costs and the prefill cancel.
* Hugging Face: ``JukeboxPrior.sample`` (its own token loop, tqdm disabled, which only helps it) for
  1 token and for the window: the whole window for the fixture priors; for the mid-size prior
  ``--hf-tokens`` tokens, and the window time is extrapolated as T(1) + (n_ctx - 1) * slope, i.e.
  assuming HF's per-token cost stays what it is over those first tokens (the JSON gives the slope
  of each half of that range; HF's caches grow with t, so it does not get cheaper later).
Each timing is the best of a few calls (short calls only), then the median over interleaved
repeats (ours, HF, ours, HF, ...) in this one process, so both sides see the same machine load.
tokens/s counts the new tokens of all batch rows.

The floor (mid-size prior): the per-token time of the step's matmuls alone (every layer kernel and
the head, fp32, chained; ``matmul_floor``), in XLA and in torch. No fp32 implementation's step is
faster on the machine, so HF's ms/step over it is the largest speed-up anyone can reach there.

The logit filters (``--filters``, also printed after a full run): ms per sampling step of
``filter.sample_token`` on one row of 2048 codes with no filter (the categorical draw), top-k 8 / 64 /
512 and top-p 0.9 (the nucleus sorts the whole vocabulary), each as one compiled loop of steps.

Threads: ``--threads`` (default 1) for torch and, when 1, for XLA too (otherwise XLA uses every
core). One thread is Hugging Face's best case on this machine: with 2 torch threads its sampling was
3-30x slower (``torch.set_flush_denormal(True)``, which is always set here, only reaches the
calling thread).

The Hugging Face port is needed only here, never by the project. It lives in the last release that
has Jukebox; install it next to the pinned torch (the constraint keeps pip from touching torch/numpy):

    pip freeze | grep -v -e '^-e' -e ' @ ' > /tmp/constraints.txt
    pip install -c /tmp/constraints.txt transformers==4.57.6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # HF's sampling loop updates a tqdm bar every token

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "hf" / "tiny_1b_style"
GOALS = {"fixture": 10.0, "mid": 3.0}  # required speed-up over HF tokens/s (issue 6)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------
# The two models of one case


def _hf_config_dict(priors_override: dict | None = None, index: int = 1, codes: int | None = None) -> dict:
    """The tiny HF config, with prior ``index`` replaced by ``priors_override`` keys (mid-size)."""
    cfg = json.loads((TINY / "config.json").read_text())
    if priors_override:
        cfg["prior_config_list"][index].update(priors_override)
    if codes:
        cfg["vqvae_config"]["nb_discrete_codes"] = codes
        for p in cfg["prior_config_list"]:
            p["music_vocab_size"] = codes
    return cfg


def _hf_prior(cfg: dict, index: int, sd: dict):
    """HF ``JukeboxPrior`` number ``index`` (top-first) with the HF-keyed weights ``sd`` loaded strictly."""
    import numpy as np
    import torch
    from transformers import JukeboxConfig as HFConfig
    from transformers import JukeboxModel
    from transformers import JukeboxPrior as HFPrior

    config = HFConfig.from_dict(cfg)
    JukeboxModel.set_shared_params(None, config)  # sampling rate, timing, genres: set by the whole model
    prior = HFPrior(config.prior_configs[index], level=index).eval()
    pre = f"priors.{index}."
    state = {k[len(pre) :]: torch.from_numpy(np.array(v)) for k, v in sd.items() if k.startswith(pre)}
    prior.load_state_dict(state, strict=True)
    return prior


class Case:
    """One prior on both sides: ours (a ``Prior``) and HF's, plus the inputs of a window."""

    def __init__(self, name: str, kind: str, ours, hf, index: int, metadata, upper_row, seed: int = 0):
        self.name, self.kind, self.ours, self.hf, self.index = name, kind, ours, hf, index
        self.metadata, self.upper_row = metadata, upper_row  # one row each (numpy int)
        self.n = ours.config.n_ctx  # music tokens of a window
        self.seed = seed

    def inputs(self, batch: int):
        import numpy as np

        y = np.repeat(self.metadata[None], batch, 0).astype(np.int32)
        upper = None if self.upper_row is None else np.repeat(self.upper_row[None], batch, 0).astype(np.int32)
        return y, upper

    # -- ours ---------------------------------------------------------------------------------------
    def ours_sample(self, batch: int, n: int, n_prime: int = 0):
        import jax
        import numpy as np

        from jukebox_flax.sampling.sampler import sample_window

        y, upper = self.inputs(batch)
        prime = None
        if n_prime:
            prime = np.random.default_rng(1).integers(0, self.ours.config.bins, (batch, n_prime)).astype(np.int32)
        out, _ = sample_window(self.ours, jax.random.key(self.seed), n, y=y, upper=upper, prime=prime, batch=batch)
        return out  # a numpy array: the device work is done

    # -- Hugging Face -----------------------------------------------------------------------------
    def hf_sample(self, batch: int, n: int):
        import torch

        y, upper = self.inputs(batch)
        conds = None if upper is None else [torch.from_numpy(upper).long()]
        torch.manual_seed(self.seed)
        with torch.no_grad():
            return self.hf.sample(
                batch,
                music_tokens=None,
                music_tokens_conds=conds,
                metadata=torch.from_numpy(y).long(),
                temp=1.0,
                sample_tokens=n,
            )

    def hf_logits(self, tokens, batch: int):
        """HF teacher-forced logits (``JukeboxPrior.forward_tokens`` crashes for priors without
        lyrics, HF quirk 7, so its steps are spelled out)."""
        import torch

        y, upper = self.inputs(batch)
        conds = None if upper is None else [torch.from_numpy(upper).long()]
        with torch.no_grad():
            audio, meta, lyrics = self.hf.get_cond(conds, torch.from_numpy(y).long())
            toks = torch.from_numpy(tokens).long()
            if self.hf.is_encoder_decoder:
                toks, audio = self.hf.prior_preprocess([lyrics, toks], [None, audio])
            _, preds = self.hf.prior(toks, audio, meta, None, get_preds=True)
        return preds.numpy()

    def check_same_model(self) -> float:
        """max |ours - HF| / max |HF| of teacher-forced logits on random codes; raises above 1e-4."""
        import numpy as np

        batch = 1
        tokens = np.random.default_rng(2).integers(0, self.ours.config.bins, (batch, self.n)).astype(np.int32)
        y, upper = self.inputs(batch)
        ours = np.asarray(self.ours.logits(tokens, y=y, upper=upper))
        ref = self.hf_logits(tokens, batch)
        if ours.shape != ref.shape:
            raise SystemExit(f"{self.name}: logits shapes differ: ours {ours.shape}, HF {ref.shape}")
        rel = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
        if not rel < 1e-4:
            raise SystemExit(f"{self.name}: ours and HF disagree (relative logit error {rel:.2e}); not timing")
        return rel


def fixture_cases() -> list[Case]:
    """The three priors of the HF tiny_1b_style fixture, HF weights converted to ours."""
    import jax
    import numpy as np

    from jukebox_flax.prior.api import Prior
    from jukebox_flax_convert.hf_config import jukebox_config_from_hf
    from jukebox_flax_convert.hf_keys import split_hf_state_dict
    from jukebox_flax_convert.prior_keys import prior_params_from_state_dict

    cfg = _hf_config_dict()
    config = jukebox_config_from_hf(cfg)
    with np.load(TINY / "state_dict.npz") as f:
        sd = {k: f[k] for k in f.files}
    with np.load(TINY / "oracle.npz") as f:
        oracle = {k: f[k] for k in f.files if k.endswith(("/metadata", "/music_tokens_cond"))}
    by_level = split_hf_state_dict(sd, cfg)
    names = {0: "fixture top (1b-style, 16 layers)", 1: "fixture middle upsampler", 2: "fixture bottom upsampler"}
    cases = []
    for index in (0, 1, 2):
        level = config.vqvae.levels - 1 - index
        c = config.priors[level]
        params = jax.device_put(prior_params_from_state_dict(by_level[f"prior_level_{level}"], c))
        upper = oracle.get(f"prior{index}/music_tokens_cond")
        cases.append(
            Case(
                names[index],
                "fixture",
                Prior(config=c, params=params),
                _hf_prior(cfg, index, sd),
                index,
                oracle[f"prior{index}/metadata"][0],
                None if upper is None else upper[0],
            )
        )
    return cases


MID = dict(
    n_ctx=2048,
    hidden_size=512,
    num_layers=24,
    n_heads=2,
    blocks=32,
    attention_pattern="raw_column_previous_row_attention",
    res_conv_width=64,
    res_conv_depth=4,
)


def mid_case() -> Case:
    """A mid-size middle-level upsampler: ours drawn with init_prior_params, exported to HF keys."""
    import jax
    import numpy as np

    from jukebox_flax.prior.api import Prior, init_prior_params
    from jukebox_flax_convert.hf_config import jukebox_config_from_hf
    from jukebox_flax_convert.hf_keys import original_to_hf
    from jukebox_flax_convert.prior_keys import prior_state_dict_from_params

    index = 1  # HF numbering (top first): the middle upsampler
    cfg = _hf_config_dict(MID, index, codes=2048)
    config = jukebox_config_from_hf(cfg)
    level = config.vqvae.levels - 1 - index
    c = config.priors[level]
    params = init_prior_params(c, jax.random.key(0))
    original = prior_state_dict_from_params(jax.tree.map(np.asarray, params), c)
    sd = {original_to_hf(f"prior_level_{level}", k): np.asarray(v) for k, v in original.items()}
    metadata = np.array([44100 * 60, 0, c.n_ctx * c.hop_length, 3, 1, 2], np.int64)
    upper = np.random.default_rng(3).integers(0, c.bins, c.n_ctx // c.cond_downsample)
    name = f"mid upsampler (w{c.width}, d{c.depth}, n_ctx {c.n_ctx})"
    return Case(name, "mid", Prior(config=c, params=params), _hf_prior(cfg, index, sd), index, metadata, upper)


# ------------------------------------------------------------------------------------------------
# Measurements


def _best(fn: Callable[[], Any], inner: int) -> float:
    """The fastest of ``inner`` calls: robust to the load spikes of a shared machine."""
    return min(_timed(fn) for _ in range(inner))


def matmul_floor(case: Case, batch: int, steps: int = 32) -> tuple[float, float]:
    """Seconds per token of the matmuls alone that a decode step cannot skip: every layer kernel of
    the transformer and the output head, fp32, ``batch`` rows, chained (one XLA loop; and in torch).
    No fp32 implementation's step beats this on the machine, so HF's step time over it bounds the
    speed-up anyone can reach."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    kernels = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(case.ours.params["prior"]["transformer"])[0]:
        if getattr(path[-1], "key", None) == "kernel":
            kernels += list(leaf) if leaf.ndim == 3 else [leaf]  # scanned runs: one kernel per repeat
    kernels.append(case.ours.params["prior"]["x_emb"]["embedding"].T)  # the tied head
    kernels = [jnp.asarray(np.array(k, np.float32)) for k in kernels]
    size = max(max(k.shape) for k in kernels)

    def chain(x, ks, pad):
        for k in ks:
            y = x[:, : k.shape[0]] @ k
            x = x + pad(y, size - y.shape[1])
        return x

    jpad = lambda y, n: jnp.pad(y, ((0, 0), (0, n)))
    run = jax.jit(lambda ks, x: jax.lax.fori_loop(0, steps, lambda i, x: chain(x, ks, jpad), x))
    x = jnp.ones((batch, size), jnp.float32)
    run(kernels, x).block_until_ready()
    xla = _best(lambda: run(kernels, x).block_until_ready(), 3) / steps
    tks = [torch.from_numpy(np.asarray(k)) for k in kernels]
    tpad = lambda y, n: torch.nn.functional.pad(y, (0, n))
    with torch.no_grad():
        xt = torch.ones(batch, size)
        th = _best(lambda: [chain(xt, tks, tpad) for _ in range(steps)], 3) / steps
    return xla, th


def filter_costs(vocab: int = 2048, batch: int = 1, steps: int = 200) -> dict[str, float]:
    """ms per step of ``sample_token`` with each filter setting (traced settings: one compile)."""
    from functools import partial

    import jax
    import jax.numpy as jnp

    from jukebox_flax.sampling.filter import sample_token

    logits = jax.random.normal(jax.random.key(0), (batch, vocab), jnp.float32)

    @jax.jit
    def run(top_k, top_p):
        def body(i, acc):
            key = jax.random.fold_in(jax.random.key(1), i)
            return acc + sample_token(key, logits + acc[:, None].astype(jnp.float32) * 1e-9, 1.0, top_k, top_p)

        return jax.lax.fori_loop(0, steps, body, jnp.zeros((batch,), jnp.int32))

    settings = {
        "none (draw only)": (0, 0.0),
        "top-k 8": (8, 0.0),
        "top-k 64": (64, 0.0),
        "top-k 512": (512, 0.0),
        "top-p 0.9": (0, 0.9),
    }
    out = {}
    for name, (k, p) in settings.items():
        step = partial(run, jnp.int32(k), jnp.float32(p))
        step().block_until_ready()
        out[name] = 1e3 * _best(lambda step=step: step().block_until_ready(), 5) / steps
    return out


def filters_markdown(costs: dict[str, float], vocab: int = 2048) -> str:
    return (
        f"Logit filters, ms per step (one row, {vocab} codes): "
        + ", ".join(f"{k} {v:.3g}" for k, v in costs.items())
        + "."
    )


def bench_case(case: Case, batch: int, reps: int, hf_tokens: int) -> dict:
    n, q = case.n, max(min(case.n // 4, 256), 2)
    first = _timed(lambda: case.ours_sample(batch, 1))  # compiles the window loop and the conditioning
    window_guess = _timed(lambda: case.ours_sample(batch, min(n, 32))) * n / min(n, 32)
    inner = int(min(20, max(1, 0.3 / window_guess)))  # repeat short calls; the differences are small
    hf_full = case.kind == "fixture"
    hf_n = n if hf_full else min(hf_tokens, n)
    ours_win, ours_one, hf_win, hf_one, hf_half, early, late = [], [], [], [], [], [], []
    for _ in range(reps):  # ours and HF interleaved, so both see the same load
        ours_win.append(_best(lambda: case.ours_sample(batch, n), inner))
        hf_win.append(_best(lambda: case.hf_sample(batch, hf_n), inner))
        hf_one.append(_best(lambda: case.hf_sample(batch, 1), inner))
        if not hf_full:
            hf_half.append(_best(lambda: case.hf_sample(batch, hf_n // 2), inner))
        e1 = _best(lambda: case.ours_sample(batch, q), inner)
        e0 = _best(lambda: case.ours_sample(batch, 1), inner)
        l1 = _best(lambda: case.ours_sample(batch, q, n - q), inner)
        l0 = _best(lambda: case.ours_sample(batch, 1, n - q), inner)
        ours_one.append(e0)
        early.append((e1 - e0) / (q - 1))
        late.append((l1 - l0) / (q - 1))
    floor = matmul_floor(case, batch) if case.kind == "mid" else (float("nan"), float("nan"))
    ours_t, t1, tn = _median(ours_win), _median(hf_one), _median(hf_win)
    hf_slope = (tn - t1) / (hf_n - 1)
    hf_t = tn if hf_full else t1 + (n - 1) * hf_slope
    ours_tps, hf_tps = batch * n / ours_t, batch * n / hf_t
    return {
        "case": case.name,
        "kind": case.kind,
        "batch": batch,
        "window_tokens": n,
        "ours_first_call_s": first,
        "ours_compile_s": max(first - _median(ours_one), 0.0),
        "ours_window_s": ours_t,
        "ours_tokens_per_s": ours_tps,
        "ours_one_token_call_s": _median(ours_one),
        "ours_ms_per_step_early": 1e3 * _median(early),
        "ours_ms_per_step_late": 1e3 * _median(late),
        "flat_ratio_late_over_early": _median(late) / _median(early),
        "hf_window_s": hf_t,
        "hf_tokens_per_s": hf_tps,
        "hf_window": "measured" if hf_full else f"extrapolated from {hf_n} tokens",
        "hf_ms_per_step": 1e3 * hf_slope,
        "hf_one_token_call_s": t1,
        "hf_ms_per_step_halves": None
        if hf_full
        else (1e3 * (_median(hf_half) - t1) / (hf_n // 2 - 1), 1e3 * (tn - _median(hf_half)) / (hf_n - hf_n // 2)),
        "floor_ms_per_step_xla": 1e3 * floor[0],
        "floor_ms_per_step_torch": 1e3 * floor[1],
        "max_speedup_fp32": hf_slope / floor[0],
        "speedup": ours_tps / hf_tps,
        "goal": GOALS[case.kind],
        "goal_met": ours_tps / hf_tps >= GOALS[case.kind],
        "reps": reps,
        "inner": inner,
    }


def markdown(rows: list[dict], checks: dict, meta: dict) -> str:
    lines = [
        f"Machine: {meta['machine']}; load average before/after: {meta['load_before']} / {meta['load_after']}; "
        f"threads: XLA {meta['xla_threads']}, torch {meta['torch_threads']} (flush denormals on); "
        f"jax {meta['jax']}, torch {meta['torch']}, transformers {meta['transformers']}; total {meta['total_s']:.0f} s.",
        "",
        "| prior | batch | window (tokens) | ours: window s | ours: tokens/s | ours: ms/step, start / end of window | "
        "ours: compile s | HF: window s | HF: tokens/s | HF: ms/step | speed-up (tokens/s) | goal | "
        "matmul floor ms/step (XLA / torch) | HF ms/step over the floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        hf_win = f"{r['hf_window_s']:.3g}" + ("" if r["hf_window"] == "measured" else f" ({r['hf_window']})")
        lines.append(
            f"| {r['case']} | {r['batch']} | {r['window_tokens']} | {r['ours_window_s']:.3g} | {r['ours_tokens_per_s']:.0f} | "
            f"{r['ours_ms_per_step_early']:.3g} / {r['ours_ms_per_step_late']:.3g} | "
            f"{r['ours_compile_s']:.1f} | {hf_win} | {r['hf_tokens_per_s']:.0f} | {r['hf_ms_per_step']:.3g} | "
            f"**{r['speedup']:.1f}x** | {r['goal']:.0f}x {'met' if r['goal_met'] else 'NOT met'} | "
            + (
                "– | – |"
                if r["kind"] != "mid"
                else f"{r['floor_ms_per_step_xla']:.3g} / {r['floor_ms_per_step_torch']:.3g} | {r['max_speedup_fp32']:.2f}x |"
            )
        )
    lines.append("")
    lines.append(
        "Teacher-forced logits, ours vs HF (max |diff| / max |logit|): "
        + ", ".join(f"{k} {v:.1e}" for k, v in checks.items())
        + "."
    )
    return "\n".join(lines)


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, mid-size at batch 1 only")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument(
        "--threads", type=int, default=1, help="threads of torch and XLA (default 1: see the module docstring)"
    )
    parser.add_argument("--hf-tokens", type=int, default=256, help="HF tokens timed on the mid-size prior")
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="interleaved repeats of the fixture cases (default 3, quick 2; the mid-size case: 2 at batch 1, else 1)",
    )
    parser.add_argument("--skip-mid", action="store_true")
    parser.add_argument("--filters", action="store_true", help="only time the logit filters (no HF needed)")
    args = parser.parse_args(argv)
    if args.threads == 1:  # before jax starts its thread pool
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()
    elif args.threads != os.cpu_count():
        print(f"note: XLA uses all {os.cpu_count()} cores; only torch gets {args.threads}", file=sys.stderr)
    t_start = time.perf_counter()
    load_before = _load()
    if args.filters:
        print(filters_markdown(filter_costs()))
        return

    import jax
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    reps = args.reps or (2 if args.quick else 3)

    rows, checks = [], {}
    for case in fixture_cases():
        checks[case.name] = case.check_same_model()
        for batch in (1, 8):
            rows.append(bench_case(case, batch, reps, args.hf_tokens))
            print(f"# {case.name} batch {batch}: {rows[-1]['speedup']:.1f}x", file=sys.stderr, flush=True)
    if not args.skip_mid:
        case = mid_case()
        checks["mid"] = case.check_same_model()
        for batch in (1,) if args.quick else (1, 8):
            rows.append(bench_case(case, batch, 1 if args.quick or batch > 1 else 2, args.hf_tokens))
            print(f"# {case.name} batch {batch}: {rows[-1]['speedup']:.1f}x", file=sys.stderr, flush=True)
        del case

    meta = {
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores ({platform.processor() or platform.platform()})",
        "load_before": load_before,
        "load_after": _load(),
        "xla_threads": 1 if args.threads == 1 else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "total_s": time.perf_counter() - t_start,
        "command": "python scripts/bench_sampling.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    filters = filter_costs()
    print(markdown(rows, checks, meta))
    print(filters_markdown(filters))
    if args.json:
        args.json.write_text(
            json.dumps({"meta": meta, "logit_checks": checks, "rows": rows, "filters_ms": filters}, indent=1)
        )


if __name__ == "__main__":
    main()
