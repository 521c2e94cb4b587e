"""Errors a user can cause when asking for samples (bad settings, bad lengths, bad saved runs)."""

from ..errors import JukeboxError


class SamplingError(JukeboxError, ValueError):
    """Invalid sampling input: filter settings, lengths, labels, codes or a run directory."""
