"""Signals: SIGTERM stops a command the way Ctrl-C does; a commit is not cut in half by either.

Python turns SIGINT (Ctrl-C) into :class:`KeyboardInterrupt`, so ``finally`` blocks and context
managers clean up. SIGTERM (what ``kill``, job schedulers and container runtimes send) and SIGHUP
(the terminal closed) kill the process outright by default, leaving temporaries behind.
:func:`terminate_as_interrupt` makes them raise :class:`~mechdiff.results.errors.Terminated`, a
``KeyboardInterrupt``, for the duration of a command. :func:`deferred_signals` holds SIGINT and
SIGTERM back for the few milliseconds in which finished output is renamed into place, and delivers
them after, so an interrupt lands before the commit (nothing changes) or after it (all changed).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from mechdiff.results.errors import Terminated

_TERMINATING = (signal.SIGTERM, signal.SIGHUP)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


def _restorable(handler: object) -> object:
    """A handler that ``signal.signal`` accepts back (None: set outside Python, i.e. default)."""
    return signal.SIG_DFL if handler is None else handler


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (a ``KeyboardInterrupt``).

    Only signals whose handler is the default (terminate) are taken over: a signal the process
    ignores (``nohup`` ignores SIGHUP) or handles itself is left alone. The previous handlers are
    restored on exit. Outside the main thread (where Python cannot set handlers) it does nothing.

    Example:
        ``with terminate_as_interrupt(), OutputFolder(out, run=spec) as work: ...``
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    try:
        for signum in _TERMINATING:
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                previous[signum] = _restorable(signal.signal(signum, _raise_terminated))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back during the block; deliver them, in order, right after it.

    Outside the main thread it does nothing (signals are only delivered to the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = _restorable(signal.signal(signum, hold))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in received:
            signal.raise_signal(signum)
