"""Results: frozen result types, their provenance, and how results and outputs reach the disk.

Every analysis returns one result type, a frozen dataclass deriving from :class:`SavableResult`,
saved to a folder (``tensors.safetensors`` + ``result.json``, nested results in subfolders) and
loaded back without any model. What this package guarantees:

- **Saves are atomic and hashed** (:mod:`~mechdiff.results.store`): a result is written to a
  temporary sibling and renamed into place, so an interrupted save leaves the earlier result (or
  none), never a mix; ``result.json`` carries a SHA-256 content hash over the tensors and every
  JSON value, checked on load.
- **Loads are checked**: required fields, JSON types by annotation, tensor dtypes and shapes
  (annotations and the class's :meth:`SavableResult.validate`), the hash, the type. Every failure
  is a :class:`~mechdiff.errors.ResultError` naming the file. Unknown fields (from a newer
  mechdiff) are tolerated with a :class:`ResultWarning` and recorded in ``load_notes``.
- **Output folders are transactions** (:mod:`~mechdiff.results.folder`): a command writes into a
  temporary sibling that replaces ``--out`` only on success; another run's output is refused
  without ``--replace``; folders mechdiff did not write are never replaced; one run at a time.
- **Files written outside results** (figures, summaries): :func:`atomic_write_text`,
  :func:`atomic_file`.
"""

from mechdiff.results.atomic import atomic_file, atomic_write_bytes, atomic_write_text
from mechdiff.results.base import SavableResult
from mechdiff.results.errors import (
    DiskFullError,
    OutputConflictError,
    OutputError,
    OutputLockedError,
    ResultWarning,
    Terminated,
)
from mechdiff.results.folder import MANIFEST, OutputFolder, RunSpec
from mechdiff.results.provenance import Provenance
from mechdiff.results.signals import terminate_as_interrupt
from mechdiff.results.store import load_result

__all__ = [
    "MANIFEST",
    "DiskFullError",
    "OutputConflictError",
    "OutputError",
    "OutputFolder",
    "OutputLockedError",
    "Provenance",
    "ResultWarning",
    "RunSpec",
    "SavableResult",
    "Terminated",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_result",
    "terminate_as_interrupt",
]
