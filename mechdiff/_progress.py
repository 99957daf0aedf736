"""Progress reporting that stays readable in a log.

On a terminal, long loops show tqdm bars (inner bars vanish when they finish). When standard
error is not a terminal (a log file, CI, a pipe), tqdm's carriage returns and cursor movements
would write escape garbage into the log, so progress is reported as plain lines instead: one line
when a loop finishes, and one every :data:`LOG_EVERY_S` seconds while it runs.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

LOG_EVERY_S = 30.0
"""Seconds between progress lines in a log (not a terminal)."""

T = TypeVar("T")


def _interactive() -> bool:
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _write(stream: Any, line: str) -> None:
    stream.write(line + "\n")
    stream.flush()


class _LineProgress:
    """The subset of tqdm's interface mechdiff uses, writing plain lines to standard error."""

    def __init__(self, total: int | None, desc: str) -> None:
        self.total, self.desc, self.n = total, desc, 0
        self.postfix = ""
        self.start = self.last = time.perf_counter()

    def _line(self, final: bool) -> str:
        elapsed = time.perf_counter() - self.start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        extra = f" ({self.postfix})" if self.postfix else ""
        return f"{self.desc}: {done} {'done in' if final else 'after'} {elapsed:.0f} s{extra}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= LOG_EVERY_S:
            self.last = now
            _write(sys.stderr, self._line(False))

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def close(self) -> None:
        if self.n:
            _write(sys.stderr, self._line(True))


class _Silent:
    n = 0

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def make_bar(*, total: int | None, desc: str, enabled: bool, leave: bool = False) -> Any:
    """A progress bar: tqdm on a terminal, plain lines in a log, nothing when not ``enabled``."""
    if not enabled:
        return _Silent()
    if _interactive():
        return tqdm(total=total, desc=desc, leave=leave, dynamic_ncols=True)
    return _LineProgress(total, desc)


@contextlib.contextmanager
def progress_bar(*, total: int | None, desc: str, enabled: bool, leave: bool = False
                 ) -> Iterator[Any]:
    """:func:`make_bar` as a context manager that always closes the bar."""
    bar = make_bar(total=total, desc=desc, enabled=enabled, leave=leave)
    try:
        yield bar
    finally:
        bar.close()


def progress_iter(items: Iterable[T], *, desc: str, enabled: bool, total: int | None = None,
                  leave: bool = True) -> Iterator[T]:
    """Iterate over ``items`` with a progress bar (see :func:`make_bar`)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(total=total, desc=desc, enabled=enabled, leave=leave) as bar:
        for item in items:
            yield item
            bar.update(1)


def report(message: str) -> None:
    """Print a line above any running terminal bar (plain print in a log)."""
    if _interactive():
        tqdm.write(message)
    else:
        _write(sys.stdout, message)
