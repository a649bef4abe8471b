"""Preemption: turn SIGTERM / SIGINT into "finish this step, checkpoint, exit with status 75".

While :func:`jlstm.train.fit` runs with a ``checkpoint_path``, a :class:`SignalGuard`
records the first SIGTERM or SIGINT instead of dying. ``fit`` finishes the step in flight,
writes an atomic checkpoint (params, optimizer state, carried state, step, data position,
PRNG key, history) and raises :class:`Preempted`. ``Preempted`` is a ``SystemExit`` with
code :data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``: "try again"), so an uncaught one ends
a script with that status, and a rerun of the same command with ``resume=True`` continues
bit-identically. A second signal while the first is being handled is not deferred: SIGINT
then raises ``KeyboardInterrupt`` and SIGTERM the default termination.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["PREEMPTED_EXIT_CODE", "Preempted", "SignalGuard"]

PREEMPTED_EXIT_CODE = 75
"""The exit status of a preempted run (``os.EX_TEMPFAIL``)."""

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(SystemExit):
    """Training stopped on SIGTERM/SIGINT after checkpointing; rerun with ``resume=True``.

    Attributes:
      code: :data:`PREEMPTED_EXIT_CODE` (the process exit status if uncaught).
      step: the optimizer steps completed and saved.
      path: the checkpoint written.
      signum: the signal received.
    """

    def __init__(self, step: int, path: str, signum: int) -> None:
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step, self.path, self.signum = step, path, signum

    def __str__(self) -> str:
        return (f"preempted by {signal.Signals(self.signum).name} after step {self.step}; checkpoint "
                f"{self.path}; rerun with resume=True to continue (exit status {PREEMPTED_EXIT_CODE})")


class SignalGuard:
    """A context manager that defers SIGTERM and SIGINT until :attr:`signum` is polled.

    Outside the main thread (where Python cannot install handlers) or when ``enabled`` is
    False it does nothing and :attr:`signum` stays ``None``.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # a second signal: stop waiting
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.raise_signal(signum)
            return
        self.signum = signum

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> SignalGuard:
        if self.enabled:
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()
