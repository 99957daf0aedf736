"""Signals: SIGTERM stops a command the way Ctrl-C does; a commit is not cut in half by either,
and an interrupt that Python swallowed still stops the command.

Defined in :mod:`mechdiff._signals` (which imports nothing heavy, so the command line can take
over the signals before it imports torch) and re-exported here for :mod:`mechdiff.results`.
"""

from mechdiff._signals import (
    deferred_signals,
    last_interrupt,
    raise_if_interrupted,
    terminate_as_interrupt,
)

__all__ = ["deferred_signals", "last_interrupt", "raise_if_interrupted", "terminate_as_interrupt"]
