"""Per-level residency: ``sample`` keeps one prior on the device at a time and the VQ-VAE only while
it encodes or decodes, so device memory peaks at the largest level, not at the sum of the levels."""

from __future__ import annotations

import jax
import pytest

from jukebox_flax.cli import main
from jukebox_flax.sampling import command


def _live_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays())


@pytest.mark.slow
def test_sample_holds_one_level_at_a_time(tmp_path, monkeypatch):
    loads: list[tuple[str, int, int]] = []  # (what, live bytes before the load, after it)

    def spy(load, what):
        def wrapped(*args, **kwargs):
            before = _live_bytes()
            out = load(*args, **kwargs)
            loads.append((what(kwargs), before, _live_bytes()))
            return out

        return wrapped

    monkeypatch.setattr(command, "load_prior_at", spy(command.load_prior_at, lambda k: f"prior_{k['level']}"))
    monkeypatch.setattr(command, "load_vqvae", spy(command.load_vqvae, lambda k: "vqvae"))
    assert main(["sample", "--seconds", "0.5", "--levels", "2", "--out", str(tmp_path / "run")]) == 0

    assert [what for what, _, _ in loads] == ["prior_2", "vqvae", "prior_1", "vqvae"]
    size = {what: after - before for what, before, after in loads}
    (_, top_before, _), (_, decode2_before, _), (_, up_before, _), (_, decode1_before, _) = loads
    assert min(size.values()) > 0
    # nothing of the previous level (params, caches) nor the VQ-VAE is alive when a prior loads
    assert top_before < 1024 and up_before < 1024
    # while a level decodes, only that level's prior is resident beside the VQ-VAE
    assert abs(decode2_before - size["prior_2"]) < 1024 and abs(decode1_before - size["prior_1"]) < 1024
    assert _live_bytes() < 1024  # and nothing once the run is written
