"""Stopping a run cleanly: SIGTERM (a preempted TPU VM) or Ctrl-C asks the loop to save and return.

:class:`StopRequest` installs handlers that set a flag the loop polls between steps; a second Ctrl-C
interrupts at once (``KeyboardInterrupt``). With several processes the signal handling is JAX's: its
preemption notifier catches SIGTERM and ``reached_preemption_sync_point`` agrees on one step for all
processes, so no handler is installed.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils

__all__ = ["StopRequest"]


class StopRequest:
    """A context manager; ``requested(step)`` says whether the run should stop after ``step``."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signal_name == "SIGINT":
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def requested(self, step: int) -> bool:
        if self.signal_name is not None:
            return True
        if jax.process_count() > 1:
            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.signal_name = "preemption notice"
                    return True
            except RuntimeError:  # no preemption sync manager (e.g. not a JAX-distributed run)
                return False
        return False

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
