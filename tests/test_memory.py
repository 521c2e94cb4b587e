"""The memory plan: released figures, the batch that fits, and an upper bound of XLA's own count."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sampling_fixtures import fixture_prior

from jukebox_flax.config import preset
from jukebox_flax.memory import GB, memory_plan, pick_batch_chunk
from jukebox_flax.sampling.sampler import SamplingParams, WindowSampler, condition


def test_released_kv_cache_and_params():
    """KV cache per sample as the original README (5b_lyrics ~1 GB, 1b_lyrics ~400 MB in fp16) and
    anchors.md (0.98 GB/sample sparse-aware); 5b_lyrics weights ~11.5 GB in fp16."""
    p5 = memory_plan(preset("prior_5b_lyrics"), jnp.bfloat16)
    assert 0.95 * GB < p5.cache_per_sample < 1.0 * GB
    assert 11.0 * GB < p5.params < 11.6 * GB
    p1 = memory_plan(preset("prior_1b_lyrics"), jnp.float16, released=True)
    assert 0.3 * GB < p1.cache_per_sample < 0.4 * GB
    fp32 = memory_plan(preset("prior_1b_lyrics"))
    assert fp32.cache_per_sample == 2 * p1.cache_per_sample


def test_max_batch_and_pick():
    c = preset("prior_5b_lyrics")
    plan = memory_plan(c, jnp.bfloat16)
    assert plan.max_batch(16 * GB) == 2  # the README: 3 samples per 16 GB V100 (5b, fp16, no headroom)
    assert plan.max_batch(8 * GB) == 0
    assert plan.max_batch(16 * GB) < plan.max_batch(40 * GB) < plan.max_batch(80 * GB)
    assert pick_batch_chunk(c, 4, jnp.bfloat16, device_bytes=80 * GB) == 4  # everything fits
    assert pick_batch_chunk(c, 200, jnp.bfloat16, device_bytes=80 * GB) == plan.max_batch(80 * GB)
    assert pick_batch_chunk(c, 200, jnp.bfloat16, device_bytes=80 * GB, devices=4) % 4 == 0
    assert pick_batch_chunk(c, 5, jnp.bfloat16, device_bytes=8 * GB) == 1  # params alone too big: still try
    with pytest.raises(ValueError):
        pick_batch_chunk(c, 0)


@pytest.mark.slow  # end-to-end; .ci/run runs it after the default suite
def test_plan_bounds_the_compiled_window():
    """The plan (params + batch x per-sample) is at least what XLA allocates for a sampling window
    (arguments + outputs + temporaries of the compiled loop), and within 4x of it."""
    prior, a = fixture_prior("prior_top5b")
    batch, chunk = 8, 16
    y = jnp.asarray(np.repeat(a["inputs/y"][:1], batch, 0))
    cond = condition(prior.module, prior.params, y, None)
    tokens = jnp.zeros((batch, prior.config.total_ctx), jnp.int32)
    sampler, cache = WindowSampler(prior.module, chunk), prior.module.init_cache(batch)
    state = sampler.prefill(prior.params, cond, tokens, jnp.int32(0), cache, jax.random.key(0))
    programs = [
        WindowSampler.prefill.lower(sampler, prior.params, cond, tokens, jnp.int32(0), state.cache, jax.random.key(0)),
        WindowSampler.sample.lower(sampler, prior.params, cond, state, jnp.int32(64), SamplingParams.make()),
    ]
    xla = 0
    for m in (p.compile().memory_analysis() for p in programs):  # the window's two programs run one after the other
        xla = max(xla, m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    plan = memory_plan(prior.config, chunk_size=chunk)
    planned = plan.params + batch * plan.per_sample
    assert xla <= planned <= 4 * xla
