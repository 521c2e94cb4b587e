"""The speed record: per-token sampling time of the full-size prior_1b_lyrics top prior, jukebox-flax
next to the Hugging Face port (transformers 4.57.6) on the same random weights, in one process.

    python scripts/bench_record.py [--new 24] [--music-prefix 128] [--json FILE]

Weights: ``init_prior_params(prior_1b_lyrics, seed 0)`` (0.94 B params, fp32), exported to the
original keys (``prior_state_dict_from_params``) and to HF keys (``original_to_hf``) and loaded into
HF's ``JukeboxPrior`` with ``load_state_dict(strict=True)``. The HF config is its 1b_lyrics top
prior; the script checks that it maps back (``jukebox_flax_convert.hf_config.jukebox_config_from_hf``) onto our preset.

What is timed, batch 1, greedy (top_k=1, so both sides must produce the same tokens: a check that
they run the same model), after a primed prefix of the 384 lyric tokens + ``--music-prefix`` music
tokens (a song's first window starts with the lyrics alone; a short prefix favours HF, whose step
cost grows with the position, while ours does not):

* HF: ``JukeboxPrior.sample(music_tokens=prefix, sample_tokens=prefix + new)``; a forward hook on
  its output projection stamps every sampled token; per-token time = median gap between stamps.
* ours: ``sample_window`` with the same prefix, for ``new + 1`` and for 1 new tokens (compiled
  beforehand); per-token time = (T(new + 1) - T(1)) / new, so priming and fixed costs cancel.

torch uses all cores with ``torch.set_flush_denormal(True)``; XLA:CPU uses all cores by default.
Needs ``transformers==4.57.6`` (benchmark only; see ``scripts/bench_sampling.py`` for the install).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

HF_1B_TOP = dict(
    hidden_size=2048,
    num_layers=72,
    n_heads=2,
    blocks=64,
    n_ctx=6144,
    nb_relevant_lyric_tokens=384,
    attention_pattern="enc_dec_with_lyrics",
    metadata_dims=[604, 7898],
    init_scale=0.2,
    alignment_layer=63,
    alignment_head=0,
    merged_decoder=False,
    lyric_vocab_size=79,
    is_encoder_decoder=True,
    max_nb_genres=1,
    timing_dims=64,
    min_duration=17.84,
    max_duration=600.0,
    music_vocab_size=2048,
)
SHARED = dict(max_nb_genres=1, timing_dims=64, min_duration=17.84, max_duration=600.0)
GOAL = 1.5


def build(seed: int = 0):
    import jax
    from bench_sampling import _hf_config_dict, _hf_prior

    from jukebox_flax.config import preset
    from jukebox_flax.prior.api import Prior, init_prior_params
    from jukebox_flax_convert.hf_config import jukebox_config_from_hf
    from jukebox_flax_convert.hf_keys import original_to_hf
    from jukebox_flax_convert.prior_keys import prior_state_dict_from_params

    cfg = _hf_config_dict(HF_1B_TOP, index=0, codes=2048)
    cfg.update(SHARED)
    config = jukebox_config_from_hf(cfg).priors[2]
    want = preset("prior_1b_lyrics")
    fields = (
        "width",
        "depth",
        "heads",
        "n_ctx",
        "blocks",
        "attn_order",
        "n_tokens",
        "bins",
        "n_vocab",
        "merged_decoder",
        "lyrics",
        "init_scale",
        "artist_bins",
        "genre_bins",
        "t_bins",
    )
    diff = {f: (getattr(config, f), getattr(want, f)) for f in fields if getattr(config, f) != getattr(want, f)}
    if diff:
        raise SystemExit(f"HF config does not map onto prior_1b_lyrics: {diff}")
    t0 = time.perf_counter()
    params = jax.jit(lambda k: init_prior_params(config, k))(jax.random.key(seed))
    host = jax.tree.map(np.asarray, params)
    sd = {
        original_to_hf("prior_level_2", k): np.asarray(v) for k, v in prior_state_dict_from_params(host, config).items()
    }
    del host
    hf = _hf_prior(cfg, 0, sd)
    del sd
    gc.collect()
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return Prior(config=config, params=params), hf, n_params, time.perf_counter() - t0


def inputs(config, music_prefix: int, seed: int = 1):

    rng = np.random.default_rng(seed)
    lyrics = rng.integers(1, config.n_vocab, config.n_tokens)
    total = 60 * 44100
    y = np.concatenate([[total, 0, config.n_ctx * config.hop_length, 5, 3], lyrics]).astype(np.int32)[None]
    prefix = rng.integers(0, config.bins, (1, music_prefix)).astype(np.int32)
    return y, prefix


def time_ours(prior, y, prefix, new: int, reps: int) -> tuple[float, np.ndarray, float]:
    import jax

    from jukebox_flax.sampling.sampler import sample_window

    def run(n):
        t0 = time.perf_counter()
        out, _ = sample_window(prior, jax.random.key(0), n, y=y, prime=prefix, top_k=1)
        return time.perf_counter() - t0, out

    first, _ = run(1)  # compiles
    per_token, out = [], None
    for _ in range(reps):
        t_long, out = run(new + 1)
        t_short, _ = run(1)
        per_token.append((t_long - t_short) / new)
    return statistics.median(per_token), out[:, prefix.shape[1] :], first


def time_hf(hf, y, prefix, new: int) -> tuple[float, np.ndarray, float]:
    import torch

    stamps = []
    hook = hf.prior.fc_proj_out.register_forward_hook(lambda *a: stamps.append(time.perf_counter()))
    t0 = time.perf_counter()
    with torch.no_grad():
        out = hf.sample(
            1,
            music_tokens=torch.from_numpy(prefix).long(),
            metadata=torch.from_numpy(y).long(),
            temp=1.0,
            top_k=1,
            sample_tokens=prefix.shape[1] + new,
        )
    total = time.perf_counter() - t0
    hook.remove()
    gaps = np.diff(np.asarray(stamps))
    return float(np.median(gaps)), out.numpy()[:, prefix.shape[1] :], total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new", type=int, default=24, help="tokens sampled after the prefix")
    parser.add_argument("--music-prefix", type=int, default=128, help="music tokens after the 384 lyric tokens")
    parser.add_argument("--reps", type=int, default=1, help="repeats of our (long, short) pair")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import jax
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    torch.set_flush_denormal(True)
    t_start = time.perf_counter()
    prior, hf, n_params, build_s = build()
    y, prefix = inputs(prior.config, args.music_prefix)
    print(f"# built {n_params / 1e9:.3f} B params on both sides in {build_s:.0f} s", file=sys.stderr, flush=True)
    hf_tok, hf_out, hf_total = time_hf(hf, y, prefix, args.new)
    print(f"# HF: {hf_tok:.3f} s/token ({hf_total:.0f} s in all)", file=sys.stderr, flush=True)
    ours_tok, ours_out, first = time_ours(prior, y, prefix, args.new, args.reps)
    print(f"# ours: {ours_tok:.3f} s/token (first call {first:.0f} s)", file=sys.stderr, flush=True)
    same = int((hf_out[:, : args.new] == ours_out[:, : args.new]).sum())
    result = {
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores ({platform.processor() or platform.platform()})",
        "load_avg": os.getloadavg()[0],
        "jax": jax.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "params": n_params,
        "batch": 1,
        "dtype": "float32",
        "prefix": f"{prior.config.n_tokens} lyric + {args.music_prefix} music tokens",
        "new_tokens": args.new,
        "ours_s_per_token": ours_tok,
        "hf_s_per_token": hf_tok,
        "speedup": hf_tok / ours_tok,
        "goal": GOAL,
        "greedy_tokens_equal": f"{same}/{args.new}",
        "ours_first_call_s": first,
        "hf_call_s": hf_total,
        "total_s": time.perf_counter() - t_start,
    }
    print(json.dumps(result, indent=1))
    print(
        f"\n| prior_1b_lyrics top, batch 1, fp32 | ours {1e3 * ours_tok:.0f} ms/token | HF {1e3 * hf_tok:.0f} "
        f"ms/token | **{hf_tok / ours_tok:.2f}x** (goal {GOAL}x) | greedy tokens equal {same}/{args.new} |"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
