"""Building the real zoo on two cores while its first models are already in use.

Each fine-tune trains on one thread (its weights do not depend on the core count), so a two-core
machine builds two at once: :func:`building` builds the base here, starts a second process for
the fine-tunes this one will not build, and yields a :class:`ZooBuild` whose
:meth:`~ZooBuild.get` returns a model's directory as soon as it exists, building this process's
share when first asked for. :func:`mechdiff.zoo.real.build` asks for everything at once; the real
demo analyses the first fine-tune while the second process trains the others (measured on a
2-core VM: the demo's first run took 12 min 17 s when it built the whole zoo first, 10 min 30 s
with this overlap, 8 min 56 s once the base's data was generated on both cores too).

Models are renamed into place only when complete (:func:`mechdiff.zoo.store.save_atomic`), so a
directory that exists is a finished model. If the second process stops without building a model,
:meth:`~ZooBuild.get` builds it here (and raises its typed error if that fails too). Leaving the
``with`` block by an exception (Ctrl-C included) terminates the second process and removes its
temporary directory.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from mechdiff._runtime import usable_cpus
from mechdiff.errors import OptionError
from mechdiff.zoo import store
from mechdiff.zoo.real.cache import _write_index, check, ensure, real_dir
from mechdiff.zoo.real.recipes import FINETUNED, MODELS

POLL_S = 0.5
"""How often :meth:`ZooBuild.get` looks whether the second process has finished a model."""
SIDE_BUILD = ("import sys; from mechdiff.zoo.real.cache import ensure\n"
              "for name in sys.argv[2:]: ensure([name], sys.argv[1], False)")
"""The second process: its fine-tunes in order, quietly (each model's checks are recorded in its
marker), each indexed as soon as it is built."""


class ZooBuild:
    """The real zoo while it is being built: :meth:`get` a model's directory, waiting for it."""

    def __init__(self, cache_dir: str | Path | None, here: Sequence[str], side: Sequence[str],
                 progress: bool, checked: Sequence[str] = ()) -> None:
        self.cache_dir = cache_dir
        self.root = real_dir(cache_dir)
        self.here = tuple(here)
        """Fine-tunes this process builds (when first asked for)."""
        self.side = tuple(side)
        """Fine-tunes the second process builds, in order."""
        self._proc: subprocess.Popen | None = None
        self._progress = progress
        self._checked = {name: self.root / name for name in checked}

    def start(self) -> None:
        """Start the second process on :attr:`side` (nothing if it is empty)."""
        if not self.side:
            return
        # Its own session, so Ctrl-C in a terminal reaches only this process, which terminates it
        # and removes its temporary directory (the command line turns SIGTERM and SIGHUP into the
        # same exception; were this one SIGKILLed, it would finish its models).
        self._proc = subprocess.Popen(
            [sys.executable, "-c", SIDE_BUILD, str(self.root.parent), *self.side],
            start_new_session=True)
        store.say(f"real zoo: building {', '.join(self.side)} in a second process (pid "
                  f"{self._proc.pid}); {', '.join(self.here) or 'nothing'} here", self._progress)

    def busy(self) -> bool:
        """Whether the second process is still building (then this one should use one thread)."""
        return self._proc is not None and self._proc.poll() is None

    def get(self, name: str) -> Path:
        """The directory of real-zoo model ``name`` (one of :data:`MODELS`): checked if it is
        there, waited for if the second process is building it, else built here."""
        if name not in MODELS:
            raise OptionError(f"unknown real-zoo model {name!r}; choose one of {MODELS}")
        if name in self._checked:
            return self._checked[name]
        path = self.root / name
        if name in self.side and self._proc is not None:
            if not path.exists() and self.busy():
                store.say(f"real zoo: waiting for {name} (second process)", self._progress)
            while not path.exists() and self.busy():
                time.sleep(POLL_S)
            if path.exists() and name == self.side[-1]:
                self._proc.wait()  # its last model: only a check and the index are left
            if not path.exists():
                self._proc.wait()
                self._clean()
                store.say(f"real zoo: the second process ended (exit {self._proc.poll()}) "
                          f"without {name}; building it here", self._progress)
        if path.exists():
            check(path, name)
        else:
            ensure([name], self.cache_dir, self._progress)
        self._checked[name] = path
        return path

    def wait(self) -> None:
        """Wait for the second process to end (it ends after its last model)."""
        if self._proc is not None:
            self._proc.wait()

    def stop(self) -> None:
        """Terminate the second process if it still runs and remove what it left half-written
        (also when it died on its own)."""
        if self._proc is not None:
            store.stop_process(self._proc)
            self._clean()

    def _clean(self) -> None:
        """Remove the ended second process's temporary model directories and index file."""
        pid = self._proc.pid if self._proc is not None else None
        if pid is None or self._proc.poll() is None:
            return
        for tmp in self.root.glob(f".tmp-*-{pid}-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        for tmp in self.root.glob(f".real.json.{pid}-*"):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def building(
    cache_dir: str | Path | None = None,
    *,
    order: Sequence[str] = FINETUNED,
    here: int | None = None,
    progress: bool = True,
) -> Iterator[ZooBuild]:
    """Build the real base here, then the missing fine-tunes on two cores; yield a
    :class:`ZooBuild`.

    Args:
        cache_dir: as in :func:`mechdiff.zoo.real.build`.
        order: fine-tunes (names in :data:`FINETUNED`), in the order they will be asked for.
        here: how many of the missing fine-tunes (the first in ``order``) this process builds;
            the second process builds the rest, in order. Default: all but the last (the three
            fine-tunes take 2.7-3.4 minutes each on one core). On one core, or with fewer than
            two missing, this process builds everything.
        progress: show build progress.

    Leaving the block normally waits for the second process; an exception terminates it.

    Raises:
        OptionError: an unknown or repeated fine-tune in ``order``, or ``here < 0``.
        MissingDependencyError, CheckpointError: as :func:`mechdiff.zoo.real.build`.
    """
    order = list(order)
    bad = [m for m in order if m not in FINETUNED]
    if bad or len(set(order)) != len(order):
        raise OptionError(f"order must name distinct real-zoo fine-tunes of {FINETUNED}; "
                          f"got {order}")
    if here is not None and here < 0:
        raise OptionError(f"here must be >= 0, got {here}")
    ensure(["base"], cache_dir, progress)  # checks every model already there first
    root = real_dir(cache_dir)
    present = [m for m in MODELS if (root / m).exists()]  # checked by ensure just now
    missing = [m for m in order if not (root / m).exists()]
    n_here = len(missing) - 1 if here is None else min(here, len(missing))
    if len(missing) < 2 or usable_cpus() < 2:
        n_here = len(missing)
    mine, side = missing[:n_here], missing[n_here:]
    job = ZooBuild(cache_dir, mine, side, progress, checked=present)
    try:
        job.start()
        yield job
    except BaseException:
        job.stop()
        raise
    try:
        job.wait()
    finally:
        job.stop()
    if side:  # each process indexed what it saw when it finished; index everything once more
        _write_index(root)
