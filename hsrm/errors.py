"""The errors hsrm raises for a user's mistake or environment, as opposed to its own bugs.

The CLI prints a :class:`UserError` as one line (``hsrm VERB: error: ...``); anything else keeps its
traceback.
"""

from __future__ import annotations

import importlib
import importlib.util


class UserError(Exception):
    """Something the user can fix: bad data or options, a refused output, a missing extra."""


class InputError(UserError, ValueError):
    """A bad value the user gave: an option, a data row, a file's content, a refused output."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the command needs does not exist."""


class DamagedFileError(InputError):
    """A file exists but cannot be read as what it should be (empty, truncated, another format)."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency that a feature the user asked for needs is not installed."""


def require_extra(module: str, extra: str, feature: str):
    """Import ``module`` for ``feature``, or say in one line which extra of hsrm installs it.

    >>> require_extra("json", "none", "a test").__name__
    'json'
    """
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(
            f"{feature} needs {module}, which is not installed: pip install 'hsrm[{extra}]' (or pip install {module})"
        )
    return importlib.import_module(module)


class NonFiniteLossError(UserError, RuntimeError):
    """Training stopped: too many consecutive optimizer steps had a non-finite loss or gradient."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived: a checkpoint was written at the step boundary and training stopped."""

    def __init__(self, step: int, checkpoint: str | None):
        self.step, self.checkpoint = step, checkpoint
        super().__init__(
            f"training interrupted at step {step}; resume with --resume_from_checkpoint true (checkpoint: {checkpoint})"
        )
