"""Atomic writes: a file or folder appears whole under its name, or not at all.

Everything is first written to a temporary sibling (same folder, so the same file system) named
``.<name>.mechdiff-<tag>-<pid>-<token>``, flushed to disk (``fsync``), then renamed into place:

- a file with ``rename(2)``, which replaces an existing file atomically;
- a folder that does not exist yet with ``rename(2)``;
- a folder that exists with ``renameat2(RENAME_EXCHANGE)`` (Linux >= 3.15, through ctypes): the
  new and the old folder swap names in one step, then the old one (now under the temporary name)
  is deleted. Where the exchange is not available, a rename dance: old -> ``.<name>.mechdiff-old-…``,
  new -> name, delete old. A process killed inside the dance leaves the old folder under the
  ``old`` name and no folder under the real name; :func:`recover` (which every later save and
  output folder of that name runs first) puts it back, so the dance can always be undone.

Temporaries of a killed writer (``tmp``, ``work``) are deleted by :func:`recover` once their pid
is no longer running (process ids are assumed local: not for folders shared by several hosts).

A full disk (``ENOSPC``, ``EDQUOT``) is reported as :class:`DiskFullError` naming the path that was
being written, after the temporary was removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from mechdiff.errors import OptionError
from mechdiff.results.errors import DiskFullError, OutputError

log = logging.getLogger(__name__)

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_TOO_LARGE = frozenset({errno.EFBIG})  # a file-size limit: the file system's or ``ulimit -f``
_LEFTOVER = re.compile(r"\.mechdiff-(?P<tag>tmp|old|work)-(?P<pid>\d+)-[0-9a-f]{8}")
_MAX_NAME = 200  # bytes; leaves room for the temporary's prefix and suffix within NAME_MAX (255)

#: Use ``renameat2(RENAME_EXCHANGE)`` when replacing a folder (tests turn it off for the dance).
USE_EXCHANGE = True


def as_path(path: object, what: str = "path") -> Path:
    """``path`` as an absolute :class:`Path` whose name can carry a temporary sibling.

    Raises:
        OptionError: not a ``str``/``os.PathLike``, empty, the file system root, or a name too long.
    """
    if not isinstance(path, str | os.PathLike) or isinstance(path, bytes):
        raise OptionError(f"{what} must be a str or a pathlib.Path, got {type(path).__name__}")
    if str(path) == "":
        raise OptionError(f"{what} must not be empty")
    out = Path(os.path.abspath(path))
    if out.parent == out or not out.name:
        raise OptionError(f"{what} must not be the file system root, got {path!s}")
    if len(os.fsencode(out.name)) > _MAX_NAME:
        raise OptionError(f"{what}'s last component is longer than {_MAX_NAME} bytes: {out.name}")
    return out


def sibling(path: Path, tag: str, suffix: str = "") -> Path:
    """A fresh temporary name next to ``path``: ``.<name>.mechdiff-<tag>-<pid>-<token><suffix>``."""
    return path.with_name(f".{path.name}.mechdiff-{tag}-{os.getpid()}-{secrets.token_hex(4)}"
                          f"{suffix}")


def leftovers(path: Path) -> list[tuple[Path, str, int]]:
    """Temporaries next to ``path`` left by writers of ``path``: (entry, tag, pid)."""
    prefix = f".{path.name}"
    try:
        names = os.listdir(path.parent)
    except OSError:
        return []
    found = []
    for name in names:
        if not name.startswith(prefix + ".mechdiff-"):
            continue
        m = _LEFTOVER.match(name, len(prefix))
        if m is not None:
            found.append((path.parent / name, m["tag"], int(m["pid"])))
    return found


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(path: Path, *, everything: bool = False) -> list[Path]:
    """Finish or undo what interrupted writers of ``path`` left beside it; returns what it handled.

    A folder moved aside by an interrupted rename dance (``old``) is moved back when nothing is at
    ``path`` (the new content never arrived) and deleted otherwise (it did); temporaries
    (``tmp``, ``work``) are deleted. Only entries of processes no longer running are touched,
    unless ``everything`` (the caller holds the folder's lock, so no writer is alive).
    """
    handled = []
    for entry, tag, pid in sorted(leftovers(path), key=lambda t: t[1] != "old"):
        if not everything and pid_alive(pid):
            continue
        if tag == "old" and not os.path.lexists(path):
            os.rename(entry, path)
            log.warning("restored %s from %s (an earlier replacement was interrupted)", path, entry)
        else:
            remove(entry)
        handled.append(entry)
    return handled


def remove(path: Path) -> None:
    """Delete a file or a folder tree; a missing ``path`` is fine; failures are logged."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("could not remove the temporary %s: %s", path, e)


def write_durable(path: Path, data: bytes) -> None:
    """Create ``path`` (which must not exist), write ``data`` and flush it to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """Flush a file or folder to disk (folders: their entries); unsupported file systems skip."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def install_dir(staged: Path, target: Path) -> None:
    """Rename the complete folder ``staged`` to ``target``, replacing ``target`` atomically."""
    if not os.path.lexists(target):
        try:
            os.rename(staged, target)
            fsync_path(target.parent)
            return
        except OSError as e:  # appeared meanwhile
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    if USE_EXCHANGE and _exchange(staged, target):
        fsync_path(target.parent)
        remove(staged)  # now the old content
        return
    backup = sibling(target, "old")
    os.rename(target, backup)
    try:
        os.rename(staged, target)
    except BaseException:
        os.rename(backup, target)
        raise
    fsync_path(target.parent)
    remove(backup)


def _chain(e: BaseException | None) -> Iterator[BaseException]:
    """``e``, what caused it, and the exception it was raised while handling, and so on (a
    writer that fails while cleaning up after a full disk, e.g. matplotlib's PDF stream
    raising a zlib error, keeps the ``OSError`` only as ``__context__``)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ if e.__cause__ is not None else (
            None if e.__suppress_context__ else e.__context__)


def _write_errno(e: BaseException) -> int | None:
    """The errno of a full disk (``ENOSPC``/``EDQUOT``) or a file-size limit (``EFBIG``) in
    ``e``'s chain, else None."""
    for x in _chain(e):
        if isinstance(x, DiskFullError):
            return errno.ENOSPC
        if isinstance(x, OSError) and x.errno in _FULL | _TOO_LARGE:
            return x.errno
    return None


def _shown(path: Path) -> Path:
    """``path`` as the user knows it (its final place, not a run's temporary folder)."""
    from mechdiff.results.folder import shown_path  # (folder imports this module)

    return shown_path(path)


def disk_full(path: Path, what: str = "nothing was written there") -> DiskFullError:
    """The one-line error of a full disk while writing ``path``."""
    return DiskFullError(
        f"no space left on the device while writing {_shown(path)}: {what}; free some space or "
        "write somewhere else", path=path,
    )


def too_large(path: Path, what: str = "nothing was written there") -> OutputError:
    """The one-line error of a file-size limit hit while writing ``path``."""
    return OutputError(
        f"the file is larger than allowed while writing {_shown(path)} (the file system's "
        f"largest file, or the process's file-size limit: ulimit -f): {what}; raise the limit "
        "or write somewhere else", path=path,
    )


def limit_error(e: BaseException, path: Path, what: str = "nothing was written there"
                ) -> OutputError | None:
    """The one-line error of a full disk or a file-size limit in ``e``'s chain while writing
    ``path`` (:func:`disk_full`, :func:`too_large`); None for any other failure."""
    code = _write_errno(e)
    if code in _FULL:
        return disk_full(path, what)
    if code in _TOO_LARGE:
        return too_large(path, what)
    return None


def write_error(e: OSError, path: Path) -> OutputError:
    """A typed error for an ``OSError`` raised while writing ``path``."""
    limit = limit_error(e, path)
    if limit is not None:
        return limit
    culprit = e.filename if e.filename else path
    return OutputError(f"cannot write {_shown(path)}: {e.strerror or e} ({_shown(culprit)})",
                       path=path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a file atomically: yields a temporary path to write; renamed onto ``path`` on success.

    The temporary is in the same folder and keeps ``path``'s suffix (so writers that pick a format
    from the suffix, like matplotlib's ``savefig``, work). If the block raises (or is
    interrupted), the temporary is removed and ``path`` keeps its earlier content. Missing parent
    folders are created.

    Example:
        ``with atomic_file(out / "figures" / "gap.pdf") as tmp: fig.savefig(tmp)``

    Raises:
        OptionError: ``path`` is not a usable path.
        OutputError: ``path`` is a folder, cannot be written, or the block wrote nothing.
        DiskFullError: the disk filled up (the temporary was removed).
    """
    target = as_path(path)
    if os.path.isdir(target):
        raise OutputError(f"{target} is a folder, not a file: choose another path", path=target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        for entry, _, pid in leftovers(target):
            if not pid_alive(pid):
                remove(entry)
    except OSError as e:
        raise write_error(e, target) from e
    tmp = sibling(target, "tmp", target.suffix)
    try:
        yield tmp
    except BaseException as e:
        remove(tmp)
        limit = limit_error(e, target, f"{target.name} was left as it was")
        if limit is not None:
            raise limit from e
        raise
    if not os.path.isfile(tmp):
        remove(tmp)
        raise OutputError(f"nothing was written to {target} (the block did not create the "
                          f"temporary file {tmp.name})", path=target)
    try:
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent)
    except BaseException as e:
        remove(tmp)
        if isinstance(e, OSError):
            raise write_error(e, target) from e
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`); returns the path."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise OptionError(f"data must be bytes, got {type(data).__name__}")
    with atomic_file(path) as tmp:
        write_durable(tmp, bytes(data))
    return as_path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_file`); returns the path.

    Raises:
        OptionError: ``text`` is not a str, or ``encoding`` is unknown or cannot encode it.
        OutputError, DiskFullError: as :func:`atomic_file`.
    """
    if not isinstance(text, str):
        raise OptionError(f"text must be a str, got {type(text).__name__}")
    try:
        data = text.encode(encoding)
    except (LookupError, UnicodeEncodeError) as e:
        raise OptionError(f"cannot encode the text for {path} as {encoding!r}: {e}") from e
    return atomic_write_bytes(path, data)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_UNSUPPORTED = frozenset({errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names of ``a`` and ``b`` atomically; False where the system cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), str(b))


_LIBC: list[object] = []


def _renameat2() -> object | None:
    if not _LIBC:
        fn = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = getattr(libc, "renameat2", None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                               ctypes.c_uint]
                fn.restype = ctypes.c_int
        except OSError:
            fn = None
        _LIBC.append(fn)
    return _LIBC[0]
