"""The base class of every error a user can cause (bad input, bad files, unknown names).

The command line prints these as one line on stderr and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class JukeboxError(Exception):
    """An error caused by the user's input rather than by a bug."""
