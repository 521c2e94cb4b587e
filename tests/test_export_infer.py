"""Exported checkpoints load in the original ecosystem: jukebox-infer 0.1.2 (the original's
make_vqvae / make_prior with a strict load_state_dict) builds the bundled demo model from the
exported hps alone, and its logits match ours."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
try:
    from jukebox_infer.hparams import Hyperparams
    from jukebox_infer.make_models import make_prior, make_vqvae
except Exception as e:  # an optional test dependency (pip install jukebox-infer==0.1.2 librosa)
    pytest.skip(f"jukebox-infer is not installed: {e}", allow_module_level=True)

from jukebox_flax.prior.api import load_prior  # noqa: E402
from jukebox_flax.sampling.command import default_model  # noqa: E402
from jukebox_flax_convert.export import export  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export(default_model(), tmp_path_factory.mktemp("exported"))


def _hps(path, **extra) -> Hyperparams:
    hps = Hyperparams(torch.load(path, map_location="cpu", weights_only=True)["hps"])
    hps.update(extra)
    return hps


@pytest.mark.parametrize("level", [2, 1, 0])
def test_jukebox_infer_loads_the_export_and_agrees(exported, level, monkeypatch):
    monkeypatch.setattr(torch.cuda, "LongTensor", torch.LongTensor)  # its label check asserts CUDA tensors
    vq_file = str(exported / "vqvae.pth.tar")
    vqvae = make_vqvae(_hps(vq_file, restore_vqvae=vq_file), device="cpu", auto_download=False)
    prior_file = str(exported / f"prior_level_{level}.pth.tar")
    theirs = make_prior(_hps(prior_file, restore_prior=prior_file), vqvae, device="cpu", auto_download=False)
    ours = load_prior(default_model(), level)
    c = ours.config
    rng = np.random.default_rng(level)
    z = rng.integers(0, c.bins, (2, c.n_ctx))
    y = np.zeros((2, c.y_length), np.int64)
    y[:, 0] = int(12.0 * c.sr)  # total length inside the demo's duration range
    y[:, 2] = c.sample_length
    y[:, 3] = [1, 2]
    y[:, 4] = [1, 3]
    upper = rng.integers(0, c.bins, (2, c.n_ctx // c.cond_downsample)) if c.is_upsampler else None
    want = np.asarray(
        ours.logits(z.astype(np.int32), y=y.astype(np.int32), upper=None if upper is None else upper.astype(np.int32))
    )
    with torch.no_grad():
        z_conds = [torch.from_numpy(upper)] if upper is not None else []
        _, metrics = theirs.z_forward(torch.from_numpy(z), z_conds, torch.from_numpy(y), get_preds=True)
    got = metrics["preds"].float().numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())
