"""SIGTERM and SIGHUP as interrupts for the duration of a command; handlers restored after."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator

import pytest

from mechdiff._signals import _raise, deferred_signals, raise_if_interrupted
from mechdiff.results import Terminated, terminate_as_interrupt


@pytest.fixture
def default_handlers() -> Iterator[None]:
    """SIGTERM and SIGHUP at their default (terminate) for the test, whatever pytest had."""
    old = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, h in old.items():
        signal.signal(s, signal.SIG_DFL if h is None else h)


def test_sigterm_raises_terminated_inside_and_is_restored_after(default_handlers: None) -> None:
    with pytest.raises(Terminated) as info, terminate_as_interrupt():
        assert signal.getsignal(signal.SIGTERM) is _raise  # else the test would die
        signal.raise_signal(signal.SIGTERM)
    assert isinstance(info.value, KeyboardInterrupt)
    assert (info.value.exit_code, str(info.value)) == (143, "terminated by SIGTERM")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_ignored_signal_stays_ignored(default_handlers: None) -> None:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    with terminate_as_interrupt():
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is _raise
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_deferred_signals_arrive_after_the_block() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), deferred_signals():
        signal.raise_signal(signal.SIGINT)
        done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _InterruptedOnDrop:
    """Ctrl-C arriving while Python runs a ``__del__``: Python prints "Exception ignored" and
    drops the KeyboardInterrupt (as it does in a weakref callback, which happened mid-run)."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


def test_an_interrupt_dropped_by_python_is_raised_again_silently(capsys) -> None:
    reached = []
    with pytest.raises(KeyboardInterrupt), terminate_as_interrupt():
        _InterruptedOnDrop()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pass  # busy, as a computation is: the interrupt is raised again here
        reached.append("the end of the block")
    assert reached == []
    assert "ignored" not in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_interrupt_raised_before_the_timer_is_not_raised_twice() -> None:
    with pytest.raises(KeyboardInterrupt), terminate_as_interrupt():
        _InterruptedOnDrop()
        raise_if_interrupted()  # as a commit right after the drop: raised here, at once
    deadline = time.monotonic() + 0.3
    try:
        while time.monotonic() < deadline:
            pass  # the timer fires here and must raise nothing (the interrupt was raised)
    except KeyboardInterrupt:
        pytest.fail("the dropped interrupt was raised a second time, after the block")


def test_without_the_block_python_drops_it(monkeypatch) -> None:
    """The failure the test above guards against, as plain Python shows it."""
    dropped: list = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)
    _InterruptedOnDrop()  # no KeyboardInterrupt comes out of this line
    assert [type(u.exc_value) for u in dropped] == [KeyboardInterrupt]


def test_an_interrupt_that_code_swallowed_still_stops_the_commit(tmp_path) -> None:
    from mechdiff.results import OutputFolder, RunSpec

    out = tmp_path / "out"
    spec = RunSpec(command="toy", inputs={}, options={})
    with pytest.raises(KeyboardInterrupt), terminate_as_interrupt(), OutputFolder(out, run=spec) as work:
        (work / "summary.md").write_text("half a run\n")
        try:  # a library that catches Ctrl-C and carries on
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "work" in p.name]
    with terminate_as_interrupt(), OutputFolder(out, run=spec) as work:  # forgotten after
        (work / "summary.md").write_text("a whole run\n")
    assert (out / "summary.md").read_text() == "a whole run\n"
