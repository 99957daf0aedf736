"""The model store both zoos share: checked, atomically written model directories in a cache.

Each zoo keeps its models under ``<cache>/<zoo version>-<recipe hash>/<model>/``: an ordinary HF
directory plus a marker, ``zoo_model.json`` (:data:`MARKER`), recording the model's name, recipe
hash, measures and the SHA-256 of its weights (and of any data file). :func:`ensure` builds what is
missing, each model into a temporary sibling renamed into place (:func:`save_atomic`), and checks
everything already there (:func:`check_model`) before any work starts; an index file (``zoo.json``
or ``real.json``) gathers the markers (:func:`write_index`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mechdiff._progress import report as _print
from mechdiff.errors import CheckpointError

logger = logging.getLogger(__name__)

MARKER = "zoo_model.json"
"""Written into every model directory: name, recipe hash, weight hash, measures."""


def default_root() -> Path:
    """``$MECHDIFF_CACHE`` if set, else ``~/.cache/mechdiff`` (each zoo has a folder in it)."""
    env = os.environ.get("MECHDIFF_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mechdiff"


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file, read in blocks."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def say(msg: str, progress: bool) -> None:
    """A build message: printed when ``progress``, else logged."""
    if progress:
        _print(msg)
    else:
        logger.info(msg)


def check_model(
    path: Path,
    name: str,
    *,
    required: Sequence[str],
    hashed: Mapping[str, str],
    recipe: str,
    what: str,
    fix: str,
) -> dict[str, Any]:
    """The marker of a complete, undamaged model directory, else :class:`CheckpointError`.

    Args:
        path: the model directory.
        name: the model's name (must match its marker).
        required: files that must be present (the marker among them).
        hashed: file -> marker key holding that file's SHA-256.
        recipe: the recipe hash the marker must carry.
        what: how messages name the zoo (``"zoo"``, ``"real-zoo"``).
        fix: what to do about a damaged directory.
    """
    if not path.is_dir():
        raise CheckpointError(f"{what} model {name!r} at {path} is not a directory; {fix}")
    missing = [f for f in required if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"{what} model {name!r} at {path} is missing {missing}; {fix}")
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
        if (path / "config.json").is_file():
            json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{what} model {name!r} at {path} has unreadable metadata ({e}); {fix}"
        ) from e
    if not isinstance(marker, dict) or marker.get("name") != name or (
            marker.get("recipe_hash") != recipe):
        got = marker.get("name") if isinstance(marker, dict) else None
        got_recipe = marker.get("recipe_hash") if isinstance(marker, dict) else None
        raise CheckpointError(
            f"{path} holds {what} model {got!r} of recipe {got_recipe!r}, expected {name!r} of "
            f"recipe {recipe!r}; {fix}"
        )
    for file, key in hashed.items():
        if file_sha256(path / file) != marker.get(key):
            raise CheckpointError(
                f"{what} model {name!r} at {path}: {file} does not match its hash; {fix}"
            )
    return marker


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Terminate a build's helper process if it still runs and reap it (killed if it does not
    end within ``timeout`` seconds)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def save_atomic(root: Path, name: str, write: Callable[[Path], dict[str, Any]]) -> Path:
    """Build ``root/name`` atomically: ``write(tmp)`` fills a temporary sibling directory and
    returns the marker, which is written as :data:`MARKER`; then ``tmp`` is renamed into place.

    A killed build leaves at most a ``.tmp-*`` directory, never a half-written model under its
    final name.
    """
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        marker = write(tmp)
        (tmp / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():  # not a concurrent build that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_index(root: Path, filename: str, header: dict[str, Any], names: Sequence[str],
                *, drop: Sequence[str] = ()) -> None:
    """Write ``root/filename``: ``header`` plus every built model's marker (keys in ``drop``
    removed), replaced atomically."""
    models = {}
    for name in names:
        marker = root / name / MARKER
        if marker.is_file():
            data = json.loads(marker.read_text(encoding="utf-8"))
            models[name] = {k: v for k, v in data.items() if k not in drop}
    tmp = root / f".{filename}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps({**header, "models": models}, indent=2), encoding="utf-8")
    os.replace(tmp, root / filename)


def ensure(
    root: Path,
    names: Sequence[str],
    *,
    all_models: Sequence[str],
    needs: Callable[[str], Sequence[str]],
    check: Callable[[Path, str], Any],
    build: Callable[[str, Path], Path],
    index: Callable[[Path], None],
    what: str,
    progress: bool,
    before_build: Callable[[list[str]], None] | None = None,
) -> dict[str, Path]:
    """Build what is missing of ``names`` (and what they need), checking everything already
    there first; return the directories of ``names``.

    Args:
        root: this recipe's folder in the cache.
        names: the models asked for.
        all_models: every model of the zoo (all are checked if present).
        needs: a model -> the models it is built from (built first).
        check: raises :class:`CheckpointError` unless a directory is a complete model.
        build: builds one model into ``root`` and returns its directory.
        index: rewrites the zoo's index file.
        what: how messages name the zoo.
        progress: show build progress.
        before_build: called with the models about to be built (e.g. to check a dependency).
    """
    for name in all_models:  # validate everything already there before any work starts
        if (root / name).exists():
            check(root / name, name)
    needed: list[str] = []
    for name in names:
        for dep in [*needs(name), name]:
            if dep not in needed:
                needed.append(dep)
    todo = [n for n in needed if not (root / n).exists()]
    if todo:
        if before_build is not None:
            before_build(todo)
        root.mkdir(parents=True, exist_ok=True)
        say(f"building {what} models {todo} in {root}", progress)
        for name in todo:
            check(build(name, root), name)
        index(root)
    return {name: root / name for name in names}
