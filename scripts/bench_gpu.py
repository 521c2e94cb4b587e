"""Decode speed of the released priors against the memory roofline, next to the PyTorch code.

    python scripts/bench_gpu.py                       # on a GPU: fits in 8 minutes, prints a table last
    python scripts/bench_gpu.py --wheels /path/wheels # jukebox-infer / transformers wheels (no index there)
    python scripts/bench_gpu.py --cpu-smoke           # the same code paths, tiny presets, CPU, seconds

A decode step reads every weight of the prior once (plus the few cached keys each sparse layer
attends to), so its floor is those bytes over the device's memory bandwidth. Per row of the table:

* ours: the released preset built on the device with random weights (``random_params``: one
  jitted program that draws every leaf from its abstract shape straight in the sampling precision;
  no float32 copy, no checkpoint files), the library's ``WindowSampler`` compiled ahead of time
  (``compile s``: prefill + token loop), a prefill of half a window (caches in use), then
  ``--tokens`` tokens timed at the start of the second half and again after a prefill to the end
  of the window; ms per token, tokens/s (all rows), achieved GB/s = (bytes of the params a step
  reads + KV bytes read per step) / step time, that as a % of the device-copy bandwidth measured
  first (a jitted out-of-place copy: 2 x size / time), and the device's peak memory against
  ``jukebox-flax plan``'s prediction for that batch (``memory.plan_levels``).
* jukebox-infer 0.1.2 (the original code path, pure torch) on the same GPU and shapes, fp16 as the
  released models sample (``fp16_params`` + ``fp16=True``, its KV cache): ms per token as the
  difference of two primed samples of different lengths over the same prime, so the prime's
  prefill cancels; its own random weights.
* the Hugging Face port (transformers 4.57.6), where it imports: the same measurement with its
  ``JukeboxPrior.sample`` (float16 weights).

The GPU machine has torch but no package index: ``--wheels DIR`` puts every pure-Python wheel in
DIR on ``sys.path`` (unpacked into a temporary folder) (``pip download --no-deps jukebox-infer==0.1.2 transformers==4.57.6 -d DIR``;
transformers also needs huggingface_hub, tokenizers, safetensors, regex and pyyaml there). A side
that does not import is one row saying why. jukebox-infer's package ``__init__`` imports its audio
I/O (librosa, soundfile): the bench imports its model modules without running it.

On a GPU each (side, model, precision) group runs in its own subprocess, one after another, so
every group's peak memory is its own and an out-of-memory batch fails one row, not the run
(``--in-process`` runs them here). ``--budget-s`` (default 450) skips rows that would start after
it. ``--cpu-smoke`` runs every group in this process with tiny presets (``tiny_config``) on CPU;
``tests/test_bench_gpu.py`` runs it so the script cannot rot while no GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax

ROOT = Path(__file__).resolve().parents[1]
SMOKE_DEVICE_BYTES = 96 * 2**20  # the pretend device of --cpu-smoke: sets its "largest batch" row
GiB = 2**30


# ------------------------------------------------------------------------------------------------
# What is measured


@dataclass(frozen=True)
class Group:
    """Rows that share one model: ``side`` ours / jukebox-infer / hf, a preset's prior, a precision."""

    side: str
    preset: str
    level: int
    precision: str  # float16 (the released layout) or bfloat16
    batches: tuple[int | str, ...]  # "max": the largest batch the memory plan allows

    @property
    def model(self) -> str:
        return f"{self.preset} {'top' if self.level == 2 else f'level {self.level}'}"


GROUPS = (
    Group("ours", "5b_lyrics", 2, "float16", (1, 3, 16, "max")),
    Group("ours", "5b_lyrics", 2, "bfloat16", (1, 3, 16, "max")),
    Group("ours", "1b_lyrics", 2, "float16", (1, 16)),
    Group("ours", "5b_lyrics", 1, "float16", (1, 16)),
    Group("jukebox-infer", "5b_lyrics", 2, "float16", (1, 3)),
    Group("hf", "5b_lyrics", 2, "float16", (1, 3)),
)


@dataclass
class Row:
    side: str
    model: str
    precision: str
    batch: int | str
    compile_s: float | None = None
    ms_start: float | None = None
    ms_end: float | None = None
    tokens_per_s: float | None = None
    gb_per_s: float | None = None
    pct_copy_bw: float | None = None
    peak_gib: float | None = None
    plan_gib: float | None = None
    note: str = ""
    tokens: list | None = field(default=None, repr=False)  # smoke: the sampled tokens, for checks

    @property
    def ok(self) -> bool:
        return self.ms_start is not None


# ------------------------------------------------------------------------------------------------
# Models: the released presets, or tiny versions of them for --cpu-smoke


def tiny_config(config: Any) -> Any:
    """A few-layer, narrow version of a released prior that keeps its kind: the same attention
    types (the 5b_lyrics cross layer, the 1b_lyrics prime layer), lyrics mode, labels, head and
    conditioner, with a window of 64 tokens in 8 blocks."""
    from jukebox_flax.config import LyricEncoderConfig

    depth = {"separate": 19, "single": 16}.get(config.lyrics, 3)  # first cross / prime layer included
    changes: dict[str, Any] = dict(n_ctx=64, width=64, depth=depth, blocks=8, cond_width=16, cond_depth=2)
    if config.lyrics != "none":
        changes["n_tokens"] = 16
    if config.encoder is not None:
        changes["encoder"] = LyricEncoderConfig(width=32, depth=3, heads=2, blocks=4)
    return config.replace(**changes)


def group_config(group: Group, smoke: bool) -> Any:
    from jukebox_flax.config import preset

    config = preset(group.preset).priors[group.level]
    return tiny_config(config) if smoke else config


def _dtypes(precision: str) -> tuple[Any, bool]:
    from jukebox_flax.precision import resolve_precision

    return resolve_precision(precision)


@partial(jax.jit, static_argnames=("config", "dtype", "released", "seed"))
def random_params(config: Any, dtype: Any, released: bool, seed: int = 0) -> dict:
    """Random params of ``JukeboxPrior(config, scan_layers=False)`` (the sampling layout), made on
    the device by one program from the abstract shapes, each leaf drawn straight in its sampling
    dtype (``released``: the released fp16 layout, ``prior.released_dtype``): a leaf's float32
    draw and its cast are one fusion, so no float32 copy of the weights is ever stored. LayerNorm
    scales 1, biases 0, everything else uniform with standard deviation 0.02 (XLA's
    RngBitGenerator keys and a uniform draw: a program that compiles quickly even for 5B params)."""
    import jax.numpy as jnp

    from jukebox_flax.prior.prior import abstract_prior_params, released_dtype
    from jukebox_flax.tree import path_names

    key = jax.random.key(seed, impl="rbg")
    half_width = 0.02 * math.sqrt(3.0)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_prior_params(config, scan_layers=False))
    out = []
    for i, (path, leaf) in enumerate(leaves):
        names = path_names(path)
        dt = released_dtype(names, leaf.dtype, dtype) if released else dtype
        if names[-1] == "scale":
            out.append(jnp.ones(leaf.shape, dt))
        elif names[-1] == "bias":
            out.append(jnp.zeros(leaf.shape, dt))
        else:
            draw = jax.random.uniform(jax.random.fold_in(key, i), leaf.shape, jnp.float32, -half_width, half_width)
            out.append(draw.astype(dt))
    return jax.tree_util.tree_unflatten(treedef, out)


def labels(config: Any, batch: int) -> Any:
    """Valid label rows (int32 [batch, y_length]) or None: a song 1.5 x the shortest the prior
    knows, offset 0, distinct artist / genre per row, lyric tokens 1..n_vocab-1."""
    import numpy as np

    if not config.labels:
        return None
    y = np.full((batch, config.y_length), -1, np.int64)
    y[:, 0] = int(1.5 * (config.min_duration or 60.0) * config.sr)
    y[:, 1] = 0
    y[:, 2] = config.sample_length
    y[:, 3] = np.arange(batch) % config.artist_bins
    y[:, 4] = np.arange(batch) % config.genre_bins
    if config.lyrics != "none":
        start = 4 + config.max_bow_genre_size
        y[:, start:] = 1 + np.arange(config.n_tokens) % (config.n_vocab - 1)
    return y.astype(np.int32)


def upper_codes(config: Any, batch: int, seed: int = 3) -> Any:
    import numpy as np

    if not config.is_upsampler:
        return None
    return np.random.default_rng(seed).integers(0, config.bins, (batch, config.n_ctx // config.cond_downsample))


def prime_codes(config: Any, batch: int, n: int, seed: int = 1) -> Any:
    import numpy as np

    return np.random.default_rng(seed).integers(0, config.bins, (batch, n)).astype(np.int32)


# ------------------------------------------------------------------------------------------------
# Device figures


def copy_bandwidth(nbytes: int, reps: int = 10) -> float:
    """Bytes/s of a jitted out-of-place copy of ``nbytes`` (read + write counted: 2 x size / time)."""
    import jax
    import jax.numpy as jnp

    x = jnp.zeros((nbytes // 4,), jnp.float32)
    copy = jax.jit(lambda a: a + 1.0)
    copy(x).block_until_ready()
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        copy(x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * (nbytes // 4) * 4 / best


def peak_bytes() -> int | None:
    """The device's peak bytes in use so far (None where not reported, e.g. CPU)."""
    import jax

    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # some backends do not implement memory_stats
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def step_bytes(config: Any, params: Any, batch: int, cache_dtype: Any) -> int:
    """Bytes a one-token decode step must read: every param of the music model it multiplies by
    (not the positional table or a token embedding it only indexes) plus, per layer, the cache
    entries the layer's attention reads (block: its row; prev_block: its ring; transpose_block: a
    column; cross: the lyric keys; dense / prime: the whole cache), keys and values, all rows."""
    import jax
    import numpy as np

    from jukebox_flax.prior.transformer import TransformerConfig

    model = dict(params["prior"])
    model.pop("pos_emb", None)
    if config.merged_decoder:
        model.pop("x_emb", None)  # indexed only; the head is x_out
    total = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(model))
    spec = TransformerConfig.from_prior(config)
    item = np.dtype(cache_dtype).itemsize
    for attn_type in spec.layout:
        read = spec.n_ctx // spec.block_ctx if attn_type == "transpose_block" else spec.cache_length(attn_type)
        total += 2 * read * spec.n_state * item * batch
    return total


def plan_bytes(config: Any, batch: int, precision: str, chunk: int) -> int:
    from jukebox_flax.memory import plan_levels

    dtype, released = _dtypes(precision)
    seconds = config.n_ctx * config.hop_length / config.sr
    return plan_levels(config, seconds, batch=batch, dtype=dtype, released=released, chunk_size=chunk)[0].peak_bytes


def plan_max_batch(config: Any, precision: str, chunk: int, device_bytes: int) -> int:
    from jukebox_flax.memory import max_batch

    dtype, released = _dtypes(precision)
    return max(max_batch(config, device_bytes, dtype, released, chunk), 1)


def chunk_of(config: Any) -> int:
    from jukebox_flax.memory import original_defaults

    return original_defaults(config)[1]


# ------------------------------------------------------------------------------------------------
# Ours


class Ours:
    """One prior of ours on the device: random params, the sampler, AOT-compiled per batch."""

    def __init__(self, config: Any, precision: str, seed: int = 0):
        import jax
        import jax.numpy as jnp

        from jukebox_flax.prior.api import Prior
        from jukebox_flax.prior.prior import JukeboxPrior
        from jukebox_flax.sampling.sampler import WindowSampler

        self.config = config
        self.dtype, released = _dtypes(precision)
        module = JukeboxPrior(
            config, dtype=self.dtype, param_dtype=jnp.float32 if released else self.dtype, scan_layers=False
        )
        params = random_params(config, self.dtype, released, seed)
        jax.block_until_ready(params)
        self.prior = Prior(config=config, params=params, module=module)
        self.chunk = chunk_of(config)
        self.sampler = WindowSampler(module, self.chunk)

    def inputs(self, batch: int, n_prime: int) -> tuple:
        """(cond, tokens, filled) of a window primed with ``n_prime`` music tokens, and a cache:
        the library's own preparation (``sampler._prepare``, what ``sample_window`` runs)."""
        from jukebox_flax.sampling.sampler import _prepare

        c = self.config
        return _prepare(
            self.prior, labels(c, batch), upper_codes(c, batch), prime_codes(c, batch, n_prime), batch, None
        )

    def compile(self, batch: int) -> float:
        """Lower and compile prefill and the token loop for ``batch`` rows; returns the seconds."""
        import jax
        import numpy as np

        from jukebox_flax.sampling.sampler import SamplingParams, WindowSampler

        cond, tokens, filled, cache = self.inputs(batch, 1)
        key = jax.random.key(0)
        t0 = time.perf_counter()
        self._prefill = WindowSampler.prefill.lower(
            self.sampler, self.prior.params, cond, tokens, np.int32(filled), cache, key, np.int32(0)
        ).compile()
        state = jax.eval_shape(
            lambda *a: WindowSampler.prefill(self.sampler, *a),
            self.prior.params,
            cond,
            tokens,
            np.int32(filled),
            cache,
            key,
            np.int32(0),
        )
        self._sampling = SamplingParams.make()
        self._sample = WindowSampler.sample.lower(
            self.sampler, self.prior.params, cond, state, np.int32(0), self._sampling
        ).compile()
        return time.perf_counter() - t0

    def run(self, batch: int, key: Any, n_prime: int, warm: int, n: int) -> tuple[float, Any]:
        """Prefill ``n_prime`` music tokens, sample ``warm`` tokens (untimed), then ``n`` timed
        tokens: (seconds per token, the window's music tokens [B, n_prime + warm + n]). The same
        tokens as ``sample_window(prior, key, warm + n, prime=...)``: row keys and positions are
        what draws a token, not how the loop is split."""
        import jax
        import numpy as np

        cond, tokens, filled, cache = self.inputs(batch, n_prime)
        state = self._prefill(self.prior.params, cond, tokens, np.int32(filled), cache, key, np.int32(0))
        state = self._sample(self.prior.params, cond, state, np.int32(filled + warm), self._sampling)
        jax.block_until_ready(state.tokens)
        t0 = time.perf_counter()
        state = self._sample(self.prior.params, cond, state, np.int32(filled + warm + n), self._sampling)
        jax.block_until_ready(state.tokens)
        seconds = (time.perf_counter() - t0) / n
        lyric = self.config.prime_len
        out = np.asarray(state.tokens)[:, lyric : filled + warm + n]
        if lyric:
            out = np.maximum(out - self.config.n_vocab, 0)
        return seconds, out


def ours_rows(group: Group, smoke: bool, tokens: int, bandwidth: float, deadline: float) -> list[Row]:
    import jax

    config = group_config(group, smoke)
    ours = Ours(config, group.precision)
    chunk = ours.chunk
    device_bytes = SMOKE_DEVICE_BYTES if smoke else _device_limit()
    rows = []
    warm = 2
    half = config.n_ctx // 2
    n = min(tokens, half - warm)
    for b in group.batches:
        batch = plan_max_batch(config, group.precision, chunk, device_bytes) if b == "max" else int(b)
        if smoke and b == "max":
            batch = min(batch, 8)
        label = f"{batch} (max)" if b == "max" else batch
        row = Row("ours", group.model, group.precision, label)
        rows.append(row)
        if time.perf_counter() > deadline:
            row.note = "skipped: time budget"
            continue
        try:
            row.compile_s = ours.compile(batch)
            key = jax.random.key(17)
            start, toks = ours.run(batch, key, half, warm, n)
            end, _ = ours.run(batch, key, config.n_ctx - warm - n, warm, n)
        except Exception as e:  # out of memory at the largest batch, say: a row, not the run
            row.note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            continue
        _fill(row, batch, start, end, step_bytes(config, ours.prior.params, batch, ours.dtype), bandwidth)
        peak = peak_bytes()
        row.peak_gib = None if peak is None else peak / GiB
        row.plan_gib = plan_bytes(config, batch, group.precision, chunk) / GiB
        if smoke:
            row.tokens = toks.tolist()
    del ours
    return rows


def _fill(row: Row, batch: int, start: float, end: float, nbytes: int | None, bandwidth: float | None) -> None:
    row.ms_start, row.ms_end = 1e3 * start, 1e3 * end
    step = (start + end) / 2
    row.tokens_per_s = batch / step
    if nbytes is not None:
        row.gb_per_s = nbytes / step / 1e9
        if bandwidth:
            row.pct_copy_bw = 100 * nbytes / step / bandwidth


def _device_limit() -> int:
    from jukebox_flax.memory import device_memory_bytes

    limit = device_memory_bytes()
    if limit is None:
        raise SystemExit("this device reports no memory limit: run with --cpu-smoke on a CPU")
    return limit


# ------------------------------------------------------------------------------------------------
# The PyTorch code: jukebox-infer 0.1.2 (the original's code path) and the Hugging Face port


def add_wheels(folder: str | None) -> None:
    """Every wheel in ``folder`` importable: unpacked once into a temporary folder put on
    ``sys.path`` (jukebox-infer reads data files next to its modules, so a zip on the path is not
    enough)."""
    if not folder:
        return
    import tempfile
    import zipfile

    for whl in sorted(Path(folder).glob("*.whl")):
        target = Path(tempfile.gettempdir()) / f"bench_gpu_wheels_{os.getuid()}" / whl.stem
        if not (target / ".complete").exists():
            with zipfile.ZipFile(whl) as z:
                z.extractall(target)
            (target / ".complete").touch()
        if str(target) not in sys.path:
            sys.path.append(str(target))


def import_jukebox_infer() -> tuple:
    """(Hyperparams, make_vqvae, make_prior) of jukebox-infer, without running its package
    ``__init__`` (which imports librosa and soundfile for audio files the bench never reads; where they are
    missing, empty stand-ins take their names: only its audio file functions use them)."""
    import importlib.util
    import types

    spec = importlib.util.find_spec("jukebox_infer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("jukebox-infer is not importable (pip install jukebox-infer==0.1.2, or --wheels DIR)")
    for audio_io in ("librosa", "soundfile"):  # used only by its audio file functions
        if importlib.util.find_spec(audio_io) is None:
            sys.modules.setdefault(audio_io, types.ModuleType(audio_io))
    if "jukebox_infer" not in sys.modules:
        package = types.ModuleType("jukebox_infer")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["jukebox_infer"] = package
    from jukebox_infer.hparams import Hyperparams
    from jukebox_infer.make_models import make_prior, make_vqvae

    return Hyperparams, make_vqvae, make_prior


def _torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def infer_prior(config: Any, device: str) -> Any:
    """jukebox-infer's ``make_prior`` for ``config`` (its own random init, built on ``device``),
    fp16 kernels where the config says ``fp16_params`` (the released 5B priors)."""
    import contextlib

    import torch

    from jukebox_flax.config import VQVAEConfig
    from jukebox_flax_convert.hps import hps_from_config

    Hyperparams, make_vqvae, make_prior = import_jukebox_infer()
    vq = VQVAEConfig(width=8, depth=1, emb_width=8, l_bins=config.bins, downs_t=config.downs_t)
    vq_hps = Hyperparams(hps_from_config(vq))
    vq_hps.update(restore_vqvae="", sample_length=config.sample_length)
    prior_hps = Hyperparams(hps_from_config(config, vq))
    prior_hps.update(restore_prior="")
    torch.manual_seed(0)
    where = torch.device(device) if device != "cpu" else contextlib.nullcontext()
    with where, contextlib.redirect_stdout(sys.stderr):  # it prints as it builds
        vqvae = make_vqvae(vq_hps, device=device, auto_download=False)
        return make_prior(prior_hps, vqvae, device=device, auto_download=False)


def infer_rows(group: Group, smoke: bool, tokens: int, deadline: float) -> list[Row]:
    """ms per token of jukebox-infer's primed sampling: the difference of two primed samples of
    different lengths over the same prime (the prime's prefill cancels)."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    rows = [Row(group.side, group.model, group.precision, b) for b in group.batches]
    try:
        import torch

        device = _torch_device()
        config = group_config(group, smoke)
        prior = infer_prior(config, device)
    except Exception as e:
        for row in rows:
            row.note = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        return rows
    if device == "cpu":  # its label check asserts CUDA tensors
        torch.cuda.LongTensor = torch.LongTensor  # type: ignore[misc]
    half = config.n_ctx // 2
    n = min(tokens, half - 2)
    chunk = chunk_of(config)

    def sample(batch: int, n_prime: int, new: int) -> float:
        y = torch.from_numpy(labels(config, batch).astype("int64")).to(device)
        z = torch.from_numpy(prime_codes(config, batch, n_prime).astype("int64")).to(device)
        _sync()
        t0 = time.perf_counter()
        with torch.no_grad(), contextlib_quiet():
            prior.sample(
                batch, z=z, z_conds=[], y=y, fp16=True, temp=1.0, chunk_size=chunk, sample_tokens=n_prime + new
            )
        _sync()
        return time.perf_counter() - t0

    for row in rows:
        if time.perf_counter() > deadline:
            row.note = "skipped: time budget"
            continue
        batch = int(row.batch)
        try:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sample(batch, half, 1)  # warm-up (cuBLAS handles, allocator)
            start = (sample(batch, half, 1 + n) - sample(batch, half, 1)) / n
            end_prime = config.n_ctx - 1 - n
            end = (sample(batch, end_prime, 1 + n) - sample(batch, end_prime, 1)) / n
        except Exception as e:
            row.note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            continue
        _fill(row, batch, max(start, 1e-9), max(end, 1e-9), None, None)
        row.compile_s = None
        if device == "cuda":
            row.peak_gib = torch.cuda.max_memory_allocated() / GiB
        row.note = f"torch {torch.__version__}, fp16, own random weights"
    return rows


def contextlib_quiet() -> Any:
    import contextlib

    return contextlib.redirect_stdout(sys.stderr)


def hf_rows(group: Group, smoke: bool, tokens: int, deadline: float) -> list[Row]:
    """The Hugging Face port: skipped with the reason unless transformers 4.57.6 imports here."""
    rows = [Row(group.side, group.model, group.precision, b) for b in group.batches]
    try:
        import transformers
        from transformers import JukeboxPrior  # noqa: F401  (removed after 4.57)
    except Exception as e:
        for row in rows:
            row.note = f"skipped: transformers with Jukebox does not import: {type(e).__name__}: {str(e)[:100]}"
        return rows
    for row in rows:
        row.note = (
            f"skipped: transformers {transformers.__version__} imports, but the bench builds no HF config "
            "for the released presets yet"
        )
    return rows


# ------------------------------------------------------------------------------------------------
# Running the groups


def run_group(group: Group, smoke: bool, tokens: int, deadline: float, bandwidth: float) -> list[Row]:
    if group.side == "ours":
        return ours_rows(group, smoke, tokens, bandwidth, deadline)
    if group.side == "jukebox-infer":
        return infer_rows(group, smoke, tokens, deadline)
    return hf_rows(group, smoke, tokens, deadline)


def _worker(spec: str) -> None:
    """One group in this process (the subprocess of a GPU run): JSON rows on stdout's last line."""
    args = json.loads(spec)
    add_wheels(args.get("wheels"))
    group = Group(**{**args["group"], "batches": tuple(args["group"]["batches"])})
    bandwidth = args.get("bandwidth")
    if group.side == "ours" and bandwidth is None:
        bandwidth = copy_bandwidth(args["copy_bytes"])
    rows = run_group(group, False, args["tokens"], time.perf_counter() + args["seconds"], bandwidth or 0.0)
    print("ROWS " + json.dumps({"rows": [asdict(r) for r in rows], "bandwidth": bandwidth}))


def _subprocess_group(group: Group, args: argparse.Namespace, deadline: float, bandwidth: float | None) -> tuple:
    left = deadline - time.perf_counter()
    spec = dict(
        group=asdict(group),
        tokens=args.tokens,
        seconds=left,
        wheels=args.wheels,
        bandwidth=bandwidth,
        copy_bytes=args.copy_bytes,
    )
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", ".95")  # what the memory plan assumes
    env.setdefault("TQDM_DISABLE", "1")
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec)],
            env=env,
            capture_output=True,
            text=True,
            timeout=max(left + 60, 60),
        )
    except subprocess.TimeoutExpired:
        return [Row(group.side, group.model, group.precision, b, note="failed: timed out") for b in group.batches], None
    sys.stderr.write(done.stderr[-4000:])
    lines = [line for line in done.stdout.splitlines() if line.startswith("ROWS ")]
    if not lines:
        why = (done.stderr.strip().splitlines() or ["no output"])[-1][:160]
        return [Row(group.side, group.model, group.precision, b, note=f"failed: {why}") for b in group.batches], None
    out = json.loads(lines[-1][5:])
    return [Row(**r) for r in out["rows"]], out.get("bandwidth")


def run(args: argparse.Namespace) -> tuple[list[Row], dict]:
    import jax

    t0 = time.perf_counter()
    deadline = t0 + args.budget_s
    groups = [
        g for g in GROUPS if (not args.only or g.side in args.only) and (not args.models or g.model in args.models)
    ]
    meta: dict[str, Any] = {"mode": "cpu-smoke" if args.cpu_smoke else "device"}
    rows: list[Row] = []
    if args.cpu_smoke or args.in_process:
        meta["device"] = str(jax.devices()[0].device_kind)
        bandwidth = copy_bandwidth(args.copy_bytes)
        for group in groups:
            rows += run_group(group, args.cpu_smoke, args.tokens, deadline, bandwidth)
    else:
        bandwidth = None
        for group in groups:
            got, bw = _subprocess_group(group, args, deadline, bandwidth)
            bandwidth = bandwidth or bw
            rows += got
            print(f"# {group.side} {group.model} {group.precision}: done", file=sys.stderr, flush=True)
    meta.update(copy_gb_per_s=(bandwidth or 0) / 1e9, total_s=time.perf_counter() - t0, tokens_timed=args.tokens)
    return rows, meta


def _f(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def speedups(rows: list[Row]) -> dict[str, float]:
    """ours float16 tokens/s over each PyTorch side's at the same model and batch."""
    ours = {(r.model, r.batch): r for r in rows if r.side == "ours" and r.precision == "float16" and r.ok}
    out = {}
    for r in rows:
        mine = ours.get((r.model, r.batch))
        if r.side != "ours" and r.ok and mine is not None and r.tokens_per_s:
            out[f"{r.side} {r.model} batch {r.batch}"] = (mine.tokens_per_s or 0) / r.tokens_per_s
    return out


def table(rows: list[Row], meta: dict) -> str:
    lines = [
        f"device: {meta.get('device', '?')} ({meta['mode']}); device-copy bandwidth "
        f"{meta['copy_gb_per_s']:.1f} GB/s; {meta['tokens_timed']} tokens timed per point; total {meta['total_s']:.0f} s",
        "",
        "| side | model | precision | batch | compile s | ms/token start | ms/token end | tokens/s | GB/s | "
        "% of copy BW | peak GiB | plan GiB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.side} | {r.model} | {r.precision} | {r.batch} | {_f(r.compile_s, '.1f')} | "
            f"{_f(r.ms_start, '.3g')} | {_f(r.ms_end, '.3g')} | {_f(r.tokens_per_s, '.4g')} | "
            f"{_f(r.gb_per_s, '.4g')} | {_f(r.pct_copy_bw, '.1f')} | {_f(r.peak_gib, '.2f')} | "
            f"{_f(r.plan_gib, '.2f')} | {r.note} |"
        )
    ratios = speedups(rows)
    lines.append("")
    lines.append(
        "ours (float16) tokens/s over theirs: "
        + (", ".join(f"{k}: {v:.2f}x" for k, v in ratios.items()) if ratios else "n/a (no PyTorch side ran)")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny presets on CPU, every group in this process")
    parser.add_argument("--in-process", action="store_true", help="run every group in this process")
    parser.add_argument("--wheels", help="a folder of wheels to import the PyTorch sides from")
    parser.add_argument("--tokens", type=int, default=None, help="tokens timed per point (default 256, smoke 4)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="rows starting later are skipped")
    parser.add_argument("--only", nargs="*", choices=("ours", "jukebox-infer", "hf"), help="run only these sides")
    parser.add_argument("--models", nargs="*", help='run only these models (e.g. "5b_lyrics level 1")')
    parser.add_argument("--copy-bytes", type=int, default=None, help="copy-bandwidth buffer (default 2 GiB)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return
    add_wheels(args.wheels)
    if args.cpu_smoke:
        import jax

        jax.config.update("jax_platforms", "cpu")
    args.tokens = args.tokens or (4 if args.cpu_smoke else 256)
    args.copy_bytes = args.copy_bytes or (8 * 2**20 if args.cpu_smoke else 2 * GiB)
    rows, meta = run(args)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=1))
    print(table(rows, meta))


if __name__ == "__main__":
    main()
