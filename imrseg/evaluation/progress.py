"""What an evaluation tells its caller while it runs, apart from the evaluation itself,
so a command can declare how it shows it without loading the data or the model."""
from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, ContextManager

if TYPE_CHECKING:
    from .loop import EvalResult, EvalSettings, ProgressCallback


class BenchmarkProgress:
    """What `run_benchmark` tells its caller while it runs. Here the fold's episodes
    go unreported and a warning is a Python warning; the command line's subclass
    shows each on the terminal."""

    def warn(self, message: str) -> None:
        """A reason to doubt a fold's numbers (its weights were trained for another fold)."""
        warnings.warn(message, stacklevel=3)

    def fold(self, settings: EvalSettings) -> ContextManager[ProgressCallback | None]:
        """Opened around each fold's episodes; yields what each counted episode is reported to."""
        return contextlib.nullcontext(None)

    def interrupted(self, fold: int | None, saved: int) -> None:
        """Ctrl-C during `fold`: `saved` of its episodes are kept, and the same settings continue from them."""

    def finished(self, result: EvalResult) -> None:
        """A fold's result, its report fields in `extra`, as soon as it is done."""
