"""Every error survey-infer raises on purpose, in one place.

:class:`UserError` is the base of the errors a user can fix (bad input, incompatible model or catalog, a lock held
by another run, an unreachable cluster): the command line (:mod:`survey_infer.cli`) prints them as one line naming
the file, object, chunk or option, and exits with status 2, never with a traceback. Each subclass also derives
from the built-in exception it replaced (``ValueError`` or ``RuntimeError``), so ``except ValueError`` in callers
keeps working.

The other classes here are internal signals (a damaged block, a stale writer, a transient I/O fault): a run
handles them itself or reports them per chunk; they never reach the user as such.

This module imports nothing from the package, so every other module may import it (the base of the layer
contracts in ``pyproject.toml``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence


class UserError(Exception):
    """An error caused by the user's input or environment; printed as one clear line, exit code 2."""


# ---- user errors, by room --------------------------------------------------------------------------------------
class ReaderError(UserError, ValueError):
    """A file cannot be read as a spectrum; ``str(err)`` names the file and the reason.

    Parameters
    ----------
    path : str, os.PathLike or sequence of them
        The file (or files, for a spectrum spread over several) that could not be read.
    reason : str
        What is wrong, in words a user can act on.
    """

    def __init__(self, path: str | os.PathLike | Sequence, reason: str):
        if isinstance(path, (list, tuple)):
            name = ", ".join(str(p) for p in path)
        else:
            name = str(path)
        self.path = name
        self.reason = reason
        super().__init__(f"{name}: {reason}")


class IngestError(UserError, RuntimeError):
    """Ingest failed; the message names the file (or store) and the reason. Nothing was committed."""


class SurveyStoreError(UserError, ValueError):
    """A survey store is missing, malformed or inconsistent; the message names the store and the problem."""


class CatalogError(UserError, RuntimeError):
    """A catalog cannot be created, written or read as asked."""


class CheckpointError(UserError, ValueError):
    """A model directory is missing, incomplete or fails its hash check."""


class CalibrationError(UserError, ValueError):
    """Settings or a validation set that cannot give a calibration."""


class SelectionError(UserError, ValueError):
    """A ``--where`` expression is not valid in the selection language, or cannot be evaluated on the columns."""


class ClusterError(UserError, RuntimeError):
    """The requested cluster cannot be started (missing package, no GPU, unreachable scheduler)."""


class SlurmError(UserError):
    """A Slurm deployment problem the user can fix (missing dask-jobqueue, no sbatch, rejected job script)."""


class RunError(UserError, RuntimeError):
    """The run cannot start (bad input, incompatible model or catalog); the message says why."""


class CatalogStorageError(RunError):
    """The catalog's file system refused a write (full, over quota, read-only): one line naming the path and what
    to do (:func:`~survey_infer.pipeline.faults.storage_message`)."""


class FingerprintMismatch(UserError, RuntimeError):
    """The catalog was made with different numerics than this run would use."""


class LockHeldError(UserError, RuntimeError):
    """Another live run holds the catalog's lock (or the lock cannot be written); the message says what to do."""


# ---- internal signals ------------------------------------------------------------------------------------------
class DamagedBlockError(RuntimeError):
    """A catalog block a reprocessing job must merge into is damaged outside the job's rows."""


class StaleEpochError(RuntimeError):
    """A task of an older run (or of another owner) tried to write after a newer run took the catalog over."""
