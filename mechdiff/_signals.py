"""Signals: SIGTERM stops a command the way Ctrl-C does; a commit is not cut in half by either,
and an interrupt that Python swallowed still stops the command.

Python turns SIGINT (Ctrl-C) into :class:`KeyboardInterrupt`, so ``finally`` blocks and context
managers clean up. SIGTERM (what ``kill``, job schedulers and container runtimes send) and SIGHUP
(the terminal closed) kill the process outright by default, leaving temporaries behind.
:func:`terminate_as_interrupt` makes them raise :class:`~mechdiff.errors.Terminated`, a
``KeyboardInterrupt``, for the duration of a command. :func:`deferred_signals` holds SIGINT and
SIGTERM back for the few milliseconds in which finished output is renamed into place, and delivers
them after, so an interrupt lands before the commit (nothing changes) or after it (all changed).

An interrupt raised while Python runs a weakref callback or a ``__del__`` method is printed as
"Exception ignored" and dropped, and the command would carry on and commit. Within
:func:`terminate_as_interrupt` every interrupt is recorded: a dropped one is raised again at once
(``_thread.interrupt_main``), and :func:`raise_if_interrupted` (called before every commit) raises
it if it was dropped again.

This module imports nothing heavy (no torch), so that the command line can take over the signals
before it imports torch; :mod:`mechdiff.results.signals` re-exports it.
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from mechdiff.errors import Terminated

_TERMINATING = (signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []  # signals that arrived within terminate_as_interrupt, in order
_REDELIVER_S = 0.01  # after this long, a dropped interrupt is raised again
_owed: set[int] = set()  # dropped interrupts not raised again yet


def _raise(signum: int, frame: FrameType | None) -> None:
    """The handler of every signal :func:`terminate_as_interrupt` takes over."""
    _received.append(signum)
    _owed.clear()
    raise interrupt_for(signum)


def _redeliver(signum: int) -> None:
    """Raise a dropped interrupt again in the main thread, unless one was raised since."""
    if signum in _owed:
        _thread.interrupt_main(signum)


def _restorable(handler: object) -> object:
    """A handler that ``signal.signal`` accepts back (None: set outside Python, i.e. default)."""
    return signal.SIG_DFL if handler is None else handler


def last_interrupt() -> int | None:
    """The signal that last arrived within :func:`terminate_as_interrupt`, or None."""
    return _received[-1] if _received else None


def interrupt_for(signum: int) -> KeyboardInterrupt:
    """The exception a signal raises within :func:`terminate_as_interrupt`."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def describe(e: KeyboardInterrupt) -> tuple[str, int]:
    """How a command reports an interrupt: ``("interrupted", 130)`` for Ctrl-C,
    ``("terminated", 128 + n)`` for signal ``n``."""
    return ("terminated", e.exit_code) if isinstance(e, Terminated) else ("interrupted", 130)


def raise_if_interrupted() -> None:
    """Raise the interrupt that arrived within :func:`terminate_as_interrupt` if Python dropped it.

    A no-op outside the block and when nothing arrived. :class:`~mechdiff.results.OutputFolder`
    calls it before it commits, so an interrupted command never replaces its output.
    """
    if _received:
        _owed.clear()
        raise interrupt_for(_received[-1])


def _redeliver_dropped(previous: Any) -> Any:
    """An ``unraisablehook`` that raises a dropped interrupt again in the main thread, silently
    (it is reported once, where it ends the command); other unraisable errors go to ``previous``.

    The interrupt is raised again from a timer thread a moment later: raised from the hook
    itself, it would be dropped again (an exception in a hook is ignored too).
    """

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if not (isinstance(exc, KeyboardInterrupt) and _received):
            previous(unraisable)
            return
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        _owed.add(signum)
        timer = threading.Timer(_REDELIVER_S, _redeliver, args=(signum,))
        timer.daemon = True
        timer.start()

    return hook


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (a ``KeyboardInterrupt``),
    SIGINT raises ``KeyboardInterrupt``, and each is recorded so that a dropped one still stops
    the command (see the module docstring).

    Only signals whose handler is the default are taken over: a signal the process ignores
    (``nohup`` ignores SIGHUP) or handles itself is left alone. The previous handlers are
    restored on exit. Outside the main thread (where Python cannot set handlers) it does nothing.

    Example:
        ``with terminate_as_interrupt(), OutputFolder(out, run=spec) as work: ...``
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    unraisable = sys.unraisablehook
    start = len(_received)  # a nested block forgets only what arrived within it
    try:
        for signum in _TERMINATING:
            if signal.getsignal(signum) in (signal.SIG_DFL, None):
                previous[signum] = _restorable(signal.signal(signum, _raise))
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, _raise)
        sys.unraisablehook = _redeliver_dropped(unraisable)
        yield
    finally:
        sys.unraisablehook = unraisable
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        del _received[start:]
        _owed.clear()  # nothing is raised again after the block


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
