"""Errors, the warning and the interrupt of results and output folders.

These belong with :mod:`mechdiff.errors` (the shared module of typed errors) and are meant to move
there; until then they live here and :mod:`mechdiff.results` re-exports them. Every error derives
from :class:`~mechdiff.errors.MechdiffError`, so the command line reports each as one line.

- :class:`~mechdiff.errors.ResultError` (shared): a saved result cannot be loaded: missing, damaged,
  changed after saving (content hash), of another type, or its values do not fit its metadata.
- :class:`OutputError`: an output folder or file cannot be written where asked (a file is in
  the way, the parent folder is not writable, ...). Nothing was written.
- :class:`OutputConflictError`: the output folder holds something mechdiff must not overwrite:
  another run's output (without ``--replace``) or files mechdiff did not write (ever).
- :class:`OutputLockedError`: another mechdiff run is writing into the same output folder now.
- :class:`DiskFullError`: the disk (or quota) filled up while writing; what was being written
  was removed again and the earlier content is unchanged.
- :class:`ResultWarning`: a result was loaded with a note (e.g. fields a newer mechdiff wrote).
- :class:`Terminated`: SIGTERM (or SIGHUP) arrived inside :func:`~mechdiff.results.terminate_as_interrupt`;
  a :class:`KeyboardInterrupt`, so code that cleans up after Ctrl-C cleans up after it too.
"""

from __future__ import annotations

import signal
from pathlib import Path

from mechdiff.errors import MechdiffError


class OutputError(MechdiffError):
    """An output folder or file cannot be written where asked; nothing was written.

    Attributes:
        path: the path that could not be written (None where no single path is to blame).
    """

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


class OutputConflictError(OutputError):
    """The output folder holds another run's output, or files mechdiff did not write."""


class OutputLockedError(OutputError):
    """Another mechdiff run is writing into the same output folder right now.

    Attributes:
        holder: what the other run recorded in the lock file (``pid``, ``command``, ...), or {}.
    """

    def __init__(self, message: str, *, path: Path | None = None,
                 holder: dict[str, object] | None = None) -> None:
        super().__init__(message, path=path)
        self.holder = dict(holder or {})


class DiskFullError(OutputError):
    """No space left on the device (or the quota is used up) while writing ``path``."""


class ResultWarning(UserWarning):
    """A saved result was loaded with a note, e.g. fields that this mechdiff does not know."""


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGTERM, SIGHUP) and stops like after Ctrl-C.

    Attributes:
        signum: the signal's number.
        exit_code: the conventional exit status for it, ``128 + signum`` (143 for SIGTERM).
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        try:
            name = signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        super().__init__(f"terminated by {name}")
