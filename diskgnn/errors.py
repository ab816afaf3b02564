"""The project's exception types.

Every error a user can cause subclasses :class:`DiskGNNError` and, where it
fits, the matching builtin, so callers can catch either. Messages name the
file or value, what was expected, and what to do.
"""
from __future__ import annotations


class DiskGNNError(Exception):
    """Base class of every error diskgnn raises on purpose."""


class ConfigError(DiskGNNError, ValueError):
    """A configuration value or command-line option is invalid."""


class InputFormatError(DiskGNNError, ValueError):
    """An input file exists but its content is not what the format requires."""


class InputNotFoundError(DiskGNNError, FileNotFoundError):
    """An input file or directory named by the user does not exist."""


class ManifestError(DiskGNNError, ValueError):
    """A manifest is missing, unreadable, of another kind or of another version."""


class ManifestNotFoundError(ManifestError, FileNotFoundError):
    """A directory has no manifest.json, so it is not a complete diskgnn output."""


class IntegrityError(DiskGNNError, ValueError):
    """Data on disk does not match what its manifest promises (size, checksum, invariant)."""


class OutputExistsError(DiskGNNError, FileExistsError):
    """The output directory already holds something else; pass --overwrite to replace it."""


class DiskFullError(DiskGNNError, OSError):
    """The output filesystem ran out of space."""


class MemoryBudgetError(DiskGNNError, MemoryError):
    """A requested cache or buffer does not fit into the memory that is available."""


class MismatchError(DiskGNNError, ValueError):
    """Two inputs that must belong together were made from different data or configs."""


class PipelineError(DiskGNNError, RuntimeError):
    """A training pipeline stage failed; the message names the stage."""


class TrainingDivergedError(DiskGNNError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the epoch and batch."""


class CheckpointError(DiskGNNError, ValueError):
    """A checkpoint is missing, corrupt, or belongs to another run."""


class DistributedError(DiskGNNError, RuntimeError):
    """A distributed run failed (a rank died or timed out)."""
