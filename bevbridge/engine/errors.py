"""The engine's user-facing errors: each is one line that says what to do; the CLI prints it without a traceback."""

from __future__ import annotations

__all__ = ["EngineError", "TrainingDiverged", "BuildError"]


class EngineError(RuntimeError):
    """A problem the user can act on (bad resume target, existing run, too small a dataset, ...)."""

    code = 1  # the CLI's exit status


class TrainingDiverged(EngineError):
    """Too many consecutive steps with a non-finite loss or gradient."""


class BuildError(EngineError):
    """The config names something that cannot be built (yet). Exit status 3 = not built yet, 2 = bad config."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code
