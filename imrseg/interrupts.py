"""Ctrl-C during a long run: the first asks the run to stop at the next safe point
(after the image or step at hand, its files written and logged), the second stops at
once. Every command that runs for long (segment, eval, train) stops this way."""
from __future__ import annotations

import signal
import threading


class StopOnInterrupt:
    """First Ctrl-C: finish the image at hand, then stop. Second: stop at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, *_):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
