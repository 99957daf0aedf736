"""SIGTERM and SIGHUP as interrupts for the duration of a command; handlers restored after."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from mechdiff.results import Terminated, terminate_as_interrupt
from mechdiff.results.signals import _raise_terminated, deferred_signals


@pytest.fixture
def default_handlers() -> Iterator[None]:
    """SIGTERM and SIGHUP at their default (terminate) for the test, whatever pytest had."""
    old = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in old.items():
        signal.signal(s, signal.SIG_DFL if h is None else h)


def test_sigterm_raises_terminated_inside_and_is_restored_after(default_handlers: None) -> None:
    with pytest.raises(Terminated) as info, terminate_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is _raise_terminated  # else the test would die
        signal.raise_signal(signal.SIGTERM)
    assert isinstance(info.value, KeyboardInterrupt)
    assert (info.value.exit_code, str(info.value)) == (143, "terminated by SIGTERM")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_ignored_signal_stays_ignored(default_handlers: None) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    with terminate_as_interrupt():
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is _raise_terminated
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_deferred_signals_arrive_after_the_block() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), deferred_signals():
        signal.raise_signal(signal.SIGINT)
        done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
