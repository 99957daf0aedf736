"""Transactional output folders: a command's output appears whole, or the old output stays.

``with OutputFolder(out, run=RunSpec(...), replace=False) as work:`` gives the command a fresh
temporary folder ``work`` beside ``out`` (``.<name>.mechdiff-work-<pid>-<token>``, same file
system). When the block ends normally, a manifest (``mechdiff_run.json``: the run's spec, its
fingerprint, every file with its size and SHA-256) is added, everything is flushed to disk, and
``work`` is renamed onto ``out`` in one step (``renameat2(RENAME_EXCHANGE)`` where there is an
``out`` already; see :mod:`mechdiff.results.atomic`). When it raises (an error, Ctrl-C, SIGTERM
under :func:`~mechdiff.results.terminate_as_interrupt`), ``work`` is deleted and ``out`` is
untouched, byte for byte. A run killed outright (SIGKILL, power loss) leaves ``work`` behind and
``out`` untouched; the next run into ``out`` deletes it.

Rules on entering (checked under the lock, before the command does any work):

- ``out`` missing or empty: written.
- ``out`` holds the output of the same run (same fingerprint: command, inputs, options):
  replaced whole by the new output, without ``replace`` (re-running a command is not a conflict).
- ``out`` holds the output of another mechdiff run: refused (:class:`OutputConflictError`
  naming what differs and ``--replace``), or replaced whole with ``replace=True``: nothing of
  the old output remains beside the new.
- ``out`` is not empty and has no ``mechdiff_run.json``: refused, even with ``replace=True`` (a
  mistyped ``--out`` must never delete someone's files).
- ``out`` is a file: refused. ``out`` being (or containing) the working directory: refused.
- another process is inside an ``OutputFolder`` for ``out``: refused at once
  (:class:`OutputLockedError` naming its pid). The lock is ``fcntl.flock`` on
  ``.<name>.mechdiff-lock`` beside ``out`` (kept between runs; local file systems).

Manifest (``mechdiff_run.json``, format 1)::

    {"mechdiff_run": 1, "status": "complete", "run_id": "<uuid4 hex>",
     "fingerprint": "<sha256 of the canonical JSON of command, inputs and options>",
     "command": "patch", "inputs": {"base": "...", "finetuned": "...", "prompts": "..."},
     "options": {"sites": ["heads"], ...}, "mechdiff_version": "0.1.0", "host": "...",
     "pid": 123, "started": "<UTC ISO>", "finished": "<UTC ISO>",
     "files": {"gap/result.json": {"bytes": 1234, "sha256": "..."}, ...}}

While the run is in progress the same manifest, with ``"status": "running"`` and no
``files``/``finished``, sits in ``work``. That is what leaves room for resumable runs (not
implemented): a future ``OutputFolder(..., resume=True)`` would, instead of deleting a leftover
``work`` folder, adopt the one whose manifest has this run's fingerprint, and the command would
skip each part whose result folder already loads (results are saved atomically with content
hashes, so a present result folder is a complete one). A run's own partial work is recognised by
the fingerprint; anyone else's output never is.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import platform
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from mechdiff.errors import OptionError
from mechdiff.results.atomic import (
    as_path,
    install_dir,
    limit_error,
    recover,
    remove,
    sibling,
    write_durable,
    write_error,
)
from mechdiff.results.codec import FieldError, canonical, encode
from mechdiff.results.errors import (
    OutputConflictError,
    OutputError,
    OutputLockedError,
)
from mechdiff.results.signals import deferred_signals, raise_if_interrupted

log = logging.getLogger(__name__)

_ACTIVE: dict[int, OutputFolder] = {}
"""The output folders this process is inside (for :func:`shown_path`)."""


def shown_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a reader should see it: under an output folder this process is writing, the
    place it will have once committed (a report written in the temporary folder must not name
    that folder, which is gone after the commit); any other path unchanged (absolute)."""
    p = Path(os.path.abspath(path))
    for folder in list(_ACTIVE.values()):
        shown = folder.final_path(p)
        if shown != p:
            return shown
    return p


MANIFEST = "mechdiff_run.json"
RUN_FORMAT = 1
REPLACE_FLAG = "--replace"


@dataclass(frozen=True)
class RunSpec:
    """What a run is: its command, its inputs and its options; two runs are the same run when
    all three are equal (:meth:`fingerprint`).

    Attributes:
        command: the command's name, e.g. ``"patch"``.
        inputs: what the run reads, by identity: model paths or ids, the prompt file and its
            content hash. Path values are stored as absolute paths.
        options: every option that changes the output (JSON values; tuples become lists).
    """

    command: str
    inputs: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.command, str) or not self.command.strip():
            raise OptionError(f"RunSpec.command must be a non-empty str, got {self.command!r}")
        object.__setattr__(self, "inputs", _inputs(self.inputs))
        object.__setattr__(self, "options", _options(self.options))

    def to_json(self) -> dict[str, Any]:
        """The spec as stored in the manifest."""
        return {"command": self.command, "inputs": dict(self.inputs),
                "options": dict(self.options)}

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`to_json`."""
        return hashlib.sha256(canonical(self.to_json())).hexdigest()


class OutputFolder:
    """A command's output folder, written as one transaction (see the module docstring).

    Args:
        out: the output folder (created with its parents if missing).
        run: what this run is; compared with the manifest of an existing ``out``.
        replace: replace the output of another run in ``out`` (the ``--replace`` flag).

    Entering returns the temporary folder to write into. After the block, :attr:`replaced`
    is the manifest of the output that was replaced (None if ``out`` was new or empty) and
    :meth:`final_path` maps paths under the temporary folder to where they now are.

    Raises (on entering, before any work):
        OptionError: bad arguments, or ``out`` is the working directory or above it.
        OutputConflictError: ``out`` holds another run's output (and not ``replace``), or
            files mechdiff did not write.
        OutputLockedError: another run is writing into ``out``.
        OutputError: ``out`` is a file, or its parent cannot be written.
        DiskFullError: the disk is full (also on leaving; the old ``out`` is then unchanged).
    """

    def __init__(self, out: str | os.PathLike[str], *, run: RunSpec, replace: bool = False) -> None:
        if not isinstance(run, RunSpec):
            raise OptionError(f"run must be a RunSpec, got {type(run).__name__}")
        if not isinstance(replace, bool):
            raise OptionError(f"replace must be True or False, got {replace!r}")
        path = as_path(out, "the output folder")
        if os.path.islink(path):
            path = Path(os.path.realpath(path))
        try:
            cwd = Path.cwd().resolve()
        except OSError:  # the working directory was deleted: nothing to protect there
            cwd = None
        if cwd is not None and (path.resolve() == cwd or path.resolve() in cwd.parents):
            raise OptionError(f"the output folder {path} is the working directory or contains "
                              "it; it would be replaced whole: choose a folder of its own")
        self.out = path
        self.run = run
        self.replace = replace
        self.work: Path | None = None
        self.replaced: dict[str, Any] | None = None
        self.committed = False
        self._lock_fd: int | None = None
        self._run_id = uuid.uuid4().hex
        self._started = ""

    @property
    def lock_path(self) -> Path:
        """The lock file beside the output folder."""
        return self.out.with_name(f".{self.out.name}.mechdiff-lock")

    def final_path(self, path: str | os.PathLike[str]) -> Path:
        """Where ``path`` (under the temporary folder) is once the run is committed."""
        p = Path(os.path.abspath(path))
        if self.work is None:
            return p
        try:
            return self.out / p.relative_to(self.work)
        except ValueError:
            return p

    def __enter__(self) -> Path:
        if self._lock_fd is not None or self.committed:
            raise OptionError("an OutputFolder can be entered once")
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._cannot_write(e) from e
        self._lock()
        try:
            recover(self.out, everything=True)
            self.replaced = self._check_existing()
            self._started = _now()
            work = sibling(self.out, "work")
            os.mkdir(work)
            self.work = work
            _ACTIVE[id(self)] = self
            write_durable(work / MANIFEST, _json(self._manifest("running")))
        except BaseException as e:
            if self.work is not None:
                remove(self.work)
                self.work = None
            _ACTIVE.pop(id(self), None)
            self._unlock()
            if isinstance(e, OSError):
                raise self._cannot_write(e) from e
            raise
        return work

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                try:
                    with deferred_signals():
                        raise_if_interrupted()  # one that Python dropped (see signals.py)
                        self._commit()
                except BaseException as e:
                    self._discard()
                    limit = self._limit(e)
                    if limit is not None:
                        raise limit from e
                    if isinstance(e, OSError):
                        raise write_error(e, self.out) from e
                    raise
                return
            self._discard()
            limit = self._limit(exc)  # also a writer's own error raised while handling ENOSPC
            if limit is not None:
                raise limit from exc
        finally:
            _ACTIVE.pop(id(self), None)
            self._unlock()

    def _commit(self) -> None:
        assert self.work is not None
        files = _listing(self.work)
        manifest = self._manifest("complete") | {"finished": _now(), "files": files}
        tmp = self.work / f".{MANIFEST}.tmp"
        write_durable(tmp, _json(manifest))
        os.replace(tmp, self.work / MANIFEST)
        install_dir(self.work, self.out)
        self.committed = True
        if self.replaced is not None:
            same = self.replaced.get("fingerprint") == self.run.fingerprint()
            log.info("%s: replaced the output of %s", self.out,
                     "an earlier run of the same command, inputs and options" if same
                     else f"another run ({self.replaced.get('command', 'unknown command')})")

    def _discard(self) -> None:
        if self.work is not None and not self.committed:
            remove(self.work)

    def _manifest(self, status: str) -> dict[str, Any]:
        from mechdiff.results.store import _version

        return {"mechdiff_run": RUN_FORMAT, "status": status, "run_id": self._run_id,
                "fingerprint": self.run.fingerprint(), **self.run.to_json(),
                "mechdiff_version": _version(), "host": platform.node(), "pid": os.getpid(),
                "started": self._started}

    def _check_existing(self) -> dict[str, Any] | None:
        out = self.out
        if not os.path.lexists(out):
            return None
        if not os.path.isdir(out):
            raise OutputError(f"{out} exists and is a file; mechdiff writes a folder there: "
                              "choose another --out", path=out)
        names = os.listdir(out)
        if not names:
            return None
        if MANIFEST not in names:
            shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
            raise OutputConflictError(
                f"{out} is not empty ({shown}) and was not written by mechdiff (it has no "
                f"{MANIFEST}); mechdiff replaces only folders it wrote, even with "
                f"{REPLACE_FLAG}, so that a mistyped --out cannot delete your files: choose a "
                "new or empty folder", path=out)
        old = _read_manifest(out / MANIFEST)
        if old is None:
            if self.replace:
                return {}
            raise OutputConflictError(
                f"{out} holds a mechdiff output whose {MANIFEST} is unreadable, so which run "
                f"wrote it is unknown; pass {REPLACE_FLAG} to replace it whole, or choose "
                "another --out", path=out)
        if old.get("fingerprint") == self.run.fingerprint() or self.replace:
            return old
        raise OutputConflictError(
            f"{out} holds the output of another run ({_difference(old, self.run)}); pass "
            f"{REPLACE_FLAG} to replace it whole, or choose another --out", path=out)

    def _lock(self) -> None:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise self._cannot_write(e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = f"pid {holder.get('pid', 'unknown')}"
            if holder.get("command"):
                who += f", command {holder['command']!r}"
            if holder.get("started"):
                who += f", started {holder['started']}"
            raise OutputLockedError(
                f"another mechdiff run ({who}) is writing to {self.out}; wait for it to finish "
                "or choose another --out", path=self.out, holder=holder) from None
        except OSError as e:
            os.close(fd)
            raise OutputError(f"cannot lock {self.out} ({e.strerror or e} on {self.lock_path})",
                              path=self.out) from e
        info = {"pid": os.getpid(), "host": platform.node(), "command": self.run.command,
                "started": _now()}
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, _json(info), 0)
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    def _cannot_write(self, e: OSError) -> OutputError:
        limit = limit_error(e, self.out)
        if limit is not None:
            return limit
        return OutputError(f"cannot write the output folder {self.out}: {e.strerror or e} "
                           f"({e.filename or self.out.parent})", path=self.out)

    def _limit(self, e: BaseException) -> OutputError | None:
        """The one-line error of a full disk or a file-size limit in ``e``'s chain, naming the
        file at its final place (the output folder if none); None for any other failure."""
        where = getattr(e, "path", None) or getattr(e, "filename", None) or self.out
        return limit_error(e, self.final_path(where),
                           f"the run was discarded and {self.out} was left as it was")


def _listing(root: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``root`` (but the manifest) with its size and SHA-256, flushed to disk."""
    files: dict[str, dict[str, Any]] = {}
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if rel == MANIFEST:
                continue
            if path.is_symlink():
                files[rel] = {"symlink": os.readlink(path)}
                continue
            with open(path, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
                os.fsync(fh.fileno())
            files[rel] = {"bytes": path.stat().st_size, "sha256": digest}
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return files


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("fingerprint"), str):
        return None
    return data


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _difference(old: dict[str, Any], run: RunSpec) -> str:
    """What differs between the run that wrote ``old`` and ``run``, in a few words."""
    if old.get("command") != run.command:
        return f"command {old.get('command')!r} there, {run.command!r} now"
    diffs = []
    for section in ("inputs", "options"):
        was = old.get(section) if isinstance(old.get(section), dict) else {}
        now = getattr(run, section)
        for key in sorted(set(was) | set(now)):
            if was.get(key) != now.get(key):
                diffs.append(f"{key}: {_short(was.get(key))} there, {_short(now.get(key))} now")
    if not diffs:
        return "written by another mechdiff version"
    more = f"; and {len(diffs) - 3} more" if len(diffs) > 3 else ""
    return "; ".join(diffs[:3]) + more


def _short(value: Any) -> str:
    """``value`` as JSON in at most about 48 characters: a long string keeps its quotes, its
    start and its end (a path's file name, a hash's last digits) around an ellipsis."""
    if isinstance(value, str) and len(value) > 44:
        return json.dumps(value[:20] + "\u2026" + value[-20:], ensure_ascii=False)
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 48 else text[:45] + "\u2026"


def _inputs(inputs: Any) -> dict[str, str]:
    if not isinstance(inputs, Mapping):
        raise OptionError(f"RunSpec.inputs must be a mapping, got {type(inputs).__name__}")
    out = {}
    for key, value in inputs.items():
        if not isinstance(key, str):
            raise OptionError(f"RunSpec.inputs keys must be str, got {key!r}")
        if isinstance(value, os.PathLike):
            value = os.path.abspath(value)
        if not isinstance(value, str):
            raise OptionError(f"RunSpec.inputs[{key!r}] must be a str (a path, model id or "
                              f"hash) or a path, got {type(value).__name__}")
        out[key] = value
    return dict(sorted(out.items()))


def _options(options: Any) -> dict[str, Any]:
    if not isinstance(options, Mapping):
        raise OptionError(f"RunSpec.options must be a mapping, got {type(options).__name__}")
    try:
        encoded = encode(dict(options), "RunSpec.options")
    except FieldError as e:
        raise OptionError(str(e)) from None
    return dict(sorted(encoded.items()))


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=2, ensure_ascii=False).encode("utf-8")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

