"""Exceptions raised while reading, converting or resolving checkpoints.

They all derive from ``CheckpointError`` so a caller can catch one type; the message always names the file and
says what to do, because these errors reach users who only set ``MODEL.WEIGHTS``.
"""

__all__ = [
    "CheckpointError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "CheckpointMismatchError",
    "WrongVariantError",
    "WeightsNotAvailableError",
    "ChecksumMismatchError",
]


class CheckpointError(RuntimeError):
    """Base class of every glip_d2 checkpoint error."""


class CorruptCheckpointError(CheckpointError):
    """The file is not a readable checkpoint (truncated download, wrong file, disk error)."""


class UnsafeCheckpointError(CheckpointError):
    """The file's pickle references objects whose unpickling could execute code; it was not loaded."""


class CheckpointMismatchError(CheckpointError):
    """Checkpoint keys or shapes do not correspond to the model (listed in both directions)."""


class WrongVariantError(CheckpointMismatchError):
    """The checkpoint is a different GLIP architecture than the model it is loaded into."""


class WeightsNotAvailableError(CheckpointError):
    """A model-zoo file is neither cached nor downloadable (offline); the message says where to put it."""


class ChecksumMismatchError(CheckpointError):
    """A model-zoo file's size or sha256 differs from the published value."""
