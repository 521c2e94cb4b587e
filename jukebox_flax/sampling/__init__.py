"""Sampling: the window token loop (``sampler``: ``WindowSampler.prefill`` / ``sample``), logit filters
(``filter``), windows of a level
(``windows``), whole songs across levels with resumable runs (``song``) and the ``sample`` command
(``command``).

    tokens = sample_prior(prior, key, n, y=y, upper=upper, prime=prime, temperature=0.99, top_k=0, top_p=0.0)
    zs = sample_song(priors, zs, levels=[0, 1, 2], sample_length=..., labels=..., settings=..., key=key,
                     hop_fraction=(0.5, 0.5, 0.125))
"""

from .errors import SamplingError
from .filter import filter_logits, sample_token
from .sampler import (
    DecodeModel,
    SamplingParams,
    SamplingState,
    WindowSampler,
    sample_prior,
    sample_window,
    score_tokens,
)
from .song import LevelLabels, LevelSettings, RunDir, sample_level, sample_song
from .windows import Window, get_starts, level_windows, partial_window, upper_codes

__all__ = [
    "SamplingError",
    "filter_logits",
    "sample_token",
    "DecodeModel",
    "SamplingParams",
    "SamplingState",
    "WindowSampler",
    "sample_prior",
    "sample_window",
    "score_tokens",
    "LevelLabels",
    "LevelSettings",
    "RunDir",
    "sample_level",
    "sample_song",
    "Window",
    "get_starts",
    "level_windows",
    "partial_window",
    "upper_codes",
]
