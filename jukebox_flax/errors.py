"""Every error a user can cause (bad input, bad files, unknown names), in one hierarchy.

The command line prints these as one line on stderr and exits non-zero; anything else is a bug
and keeps its traceback. Each class also derives from the builtin that ``except`` clauses written
before this hierarchy expect (``ValueError``; ``KeyError`` for a state dict that does not match).
The modules that raise them re-export their names (``jukebox_flax.labels.LabelError`` is this
module's ``LabelError``).
"""

__all__ = [
    "JukeboxError",
    "ConfigError",
    "CheckpointError",
    "AudioError",
    "DataError",
    "LabelError",
    "TrainingError",
    "ShardingError",
    "SamplingError",
    "EmbedError",
    "VQVAEInputError",
    "PriorInputError",
    "PriorCallError",
    "ConvertError",
    "StateDictError",
    "PriorKeyError",
    "VQVAEKeyError",
    "DownloadError",
    "RunLockError",
]


class JukeboxError(Exception):
    """An error caused by the user's input rather than by a bug."""


class ConfigError(JukeboxError, ValueError):
    """An invalid or inconsistent configuration."""


class CheckpointError(JukeboxError, ValueError):
    """A missing, corrupt or mismatched model directory."""


class AudioError(JukeboxError, ValueError):
    """An audio file that cannot be read or written (missing, empty, corrupt, not audio)."""


class DataError(JukeboxError, ValueError):
    """A missing or malformed dataset folder or metadata file."""


class LabelError(JukeboxError, ValueError):
    """Bad label input: an unknown artist or genre, ids or timing outside the prior's range, bad
    offsets, an unreadable vocabulary. Raised by ``Labeller`` and by the prior's label check alike."""


class TrainingError(JukeboxError, ValueError):
    """Inconsistent training settings (shapes, sizes, model directories)."""


class ShardingError(JukeboxError, ValueError):
    """A mesh that does not fit the devices, or a batch the mesh cannot split."""


class SamplingError(JukeboxError, ValueError):
    """Invalid sampling input: filter settings, lengths, labels, codes or a run directory."""


class EmbedError(JukeboxError, ValueError):
    """Bad arguments to ``embed`` (layer, pool, batch, model) or no file could be embedded."""


class VQVAEInputError(JukeboxError, ValueError):
    """Audio or codes with the wrong shape, length or level."""


class PriorInputError(JukeboxError, ValueError):
    """A prior called with inputs its config does not take: tokens, labels y, upper codes or
    conditioning of the wrong shape or range, or without the inputs it needs."""


# The prior's public API and its modules used two names for the same mistake.
PriorCallError = PriorInputError


class ConvertError(JukeboxError, ValueError):
    """A source checkpoint that cannot be converted (unreadable, incomplete, another model...)."""


class StateDictError(JukeboxError, KeyError, ValueError):
    """A state dict or params tree that does not match the config (missing, unexpected or
    mis-shaped keys)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


# The key mappings of convert/ named their mismatch errors per component.
PriorKeyError = StateDictError
VQVAEKeyError = StateDictError


class DownloadError(JukeboxError, OSError):
    """A file that cannot be downloaded (not found, refused, timed out, truncated)."""


class RunLockError(JukeboxError, OSError):
    """A run directory that another process is writing."""
