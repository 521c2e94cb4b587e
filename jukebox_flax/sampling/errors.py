"""Errors a user can cause when asking for samples (bad settings, bad lengths, bad saved runs)."""

from ..errors import SamplingError

__all__ = ["SamplingError"]
