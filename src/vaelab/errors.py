"""User-facing errors.

Anything a user can cause (bad path, corrupt file, bad config value) raises
``VaelabError`` with one line saying what, where, and what to do. The CLI prints
that line and exits non-zero; Python callers can catch it.
"""


class VaelabError(Exception):
    """An error caused by user input, reported as one clear line."""


class ConfigError(VaelabError, ValueError):
    """A configuration value is invalid."""


class DataError(VaelabError):
    """A data file or folder is missing, corrupt or inconsistent."""


class CheckpointError(VaelabError):
    """A run directory or checkpoint cannot be read."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint that reads, but whose tensors or optimizers do not fit the model built for it
    (a resume whose overrides reshaped the model, say)."""


class TrainingDiverged(VaelabError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(Exception):
    """Ctrl-C stopped a command; the message says what was kept and how to go on (exit code 130)."""
