"""The dry-run memory plan of a training step: against the live bytes of a real step, and the CLI."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from test_train_precision import TINY, tokens

from jukebox_flax import cli, training
from jukebox_flax.train_plan import plan_prior_step, prior_tokens_task, tree_bytes


def live_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays())


@pytest.mark.slow  # two compilations of a prior step
def test_plan_matches_the_live_state_of_a_real_step():
    optim = training.OptimConfig()
    plan = plan_prior_step(TINY, optim, 2)
    task = prior_tokens_task(TINY, optim)
    base = live_bytes()
    state = task.init(jax.random.PRNGKey(0), None)
    batch = (tokens(2), None, None)
    state, metrics = task.step(state, batch, jax.random.PRNGKey(1))
    jax.block_until_ready(state)
    held = live_bytes() - base  # the state after a step, its metrics and the batch
    assert tree_bytes(state) == plan.state_bytes == plan.params_bytes + plan.moments_bytes
    assert plan.params_bytes == plan.n_params * 4 and plan.moments_bytes >= 2 * plan.params_bytes
    # the step's arguments are the state, the batch and (at most) the key
    assert plan.state_bytes + plan.batch_bytes <= plan.argument_bytes <= plan.state_bytes + plan.batch_bytes + 8
    assert plan.alias_bytes == plan.state_bytes  # the whole state is donated
    metric_bytes = tree_bytes(metrics)
    assert held == pytest.approx(plan.state_bytes + plan.batch_bytes + metric_bytes, abs=64)
    assert plan.peak_bytes >= held and plan.temp_bytes > plan.grads_bytes  # the gradients are temporaries


def test_dry_run_json_needs_no_data_or_weights(tmp_path, capsys):
    config = tmp_path / "prior.json"
    config.write_text(json.dumps(TINY.to_dict()))
    argv = ["train", "prior", "--dry-run", "--json", "--out", str(tmp_path / "run"), "--config", str(config)]
    assert cli.main(argv + ["--batch", "2", "--remat", "block", "--precision", "bfloat16"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["peak_bytes"] > plan["state_bytes"] > 0 and plan["remat"] == "block"
    total = plan["argument_bytes"] + plan["output_bytes"] + plan["temp_bytes"]
    assert plan["peak_bytes"] == total - plan["alias_bytes"]
    assert plan["n_params"] * 4 == plan["params_bytes"] and plan["compute_copy_bytes"] > 0
    assert not (tmp_path / "run").exists()  # nothing written
    assert np.isclose(plan["moments_bytes"], 2 * plan["params_bytes"], rtol=0.01)
