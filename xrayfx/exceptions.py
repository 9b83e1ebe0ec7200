"""Every error xrayfx raises on purpose.

Each message says what was expected, what was got, and the fix. The CLI maps
``XrayfxError.exit_code`` to the process exit status: 2 for bad arguments or
input the user must change, 1 for failures of a run.
"""

from __future__ import annotations

from pathlib import Path


class XrayfxError(Exception):
    """Base class of all errors xrayfx raises deliberately."""

    exit_code = 1


class UsageError(XrayfxError):
    """A command-line value or API argument is not acceptable (exit code 2)."""

    exit_code = 2


class UnknownBackboneError(UsageError):
    """A backbone name that the registry does not hold."""


class DataError(UsageError):
    """A data folder, manifest or split file is missing or malformed."""


class TrainingLabelsError(UsageError, ValueError):
    """Training labels a classifier cannot learn from (one class only); a ValueError, as scikit-learn expects."""


class ImageDecodeError(XrayfxError):
    """One image could not be decoded; a pipeline skips it and lists the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class WeightsError(XrayfxError):
    """Weights could not be found, downloaded, read or mapped."""


class UnsafePickleError(WeightsError):
    """A pickle names a global outside the allow-list; nothing was executed."""


class ExportError(XrayfxError):
    """Keras to ONNX export failed."""


class ParityError(ExportError):
    """The exported ONNX model disagrees with the Keras model."""


class RuntimeSetupError(XrayfxError):
    """The inference runtime is missing, misinstalled or cannot give the asked-for device."""


class IntegrityError(XrayfxError):
    """A file on disk does not match the hash recorded for it."""


class CacheError(XrayfxError):
    """The embedding cache cannot be used as asked."""


class CacheLockedError(CacheError):
    """Another process holds the lock of a cache group."""


class LeakageError(XrayfxError):
    """A patient or an identical image is on both sides of a split."""


class BalanceError(XrayfxError):
    """A class sampler cannot run on the training data it was given."""


class RunError(XrayfxError):
    """A training run folder is missing, incomplete or inconsistent."""


class SkippedInputsError(XrayfxError):
    """--strict: some inputs were skipped (everything else was kept)."""


class UnsafeModelError(IntegrityError):
    """A saved model holds code or types outside the allow-list; it was not loaded."""


class ClusterError(XrayfxError):
    """A Dask cluster cannot be reached, cannot see the cache, or lost a worker mid-run."""


class BackboneRefusedError(UsageError):
    """An ONNX file offered to ``xrayfx models add`` that xrayfx cannot run safely; it was not registered."""


class CacheRepairWarning(UserWarning):
    """Damaged cache chunks were found and invalidated; their rows are recomputed."""


class ImageQualityWarning(UserWarning):
    """Images decode but look wrong (e.g. 12-bit data in a 16-bit PNG without sBIT: near-black)."""
