"""Saving and loading results: one folder per result, written atomically, hashed, checked on load.

A saved result is a folder::

    result.json           type, format, plain fields, tensor list, nested results, content hash
    tensors.safetensors   the tensor fields
    <field>/              a nested result (its own result.json + tensors.safetensors)
    <field>/<key>/        the results of a dict field (key as folder name where it is a plain
                          name, else ``_<index>``; the key itself is in result.json)
    <field>/<i>/          the results of a tuple field

``result.json`` (format 1)::

    {"mechdiff_result": 1, "type": "PatchResult", "mechdiff_version": "0.1.0",
     "fields":  {"sites": "heads", "dims": ["layer", "head"], "provenance": {...}, ...},
     "tensors": {"scores": {"dtype": "float32", "shape": [3, 4]}, ...},
     "results": {"gap": {"folder": "gap", "type": "GapResult", "hash": "<its content hash>"},
                 "patches": {"dict": {"ft->base": {"folder": "patches/_0", ...}}},
                 "runs": {"tuple": [{"folder": "runs/0", ...}, ...]}},
     "hash": {"algorithm": "sha256", "tensors": "<sha256 of tensors.safetensors>",
              "content": "<content hash, see mechdiff.results.codec>"}}

A parent records each child's content hash, so the parent's hash covers the whole tree and a
child folder swapped for another result is caught.

Loading checks, in order, and reports each failure as a :class:`ResultError` naming the file:
both files present; ``result.json`` is a JSON object of a known format (a newer format is
refused: upgrade mechdiff); the recorded type is registered and is the one asked for; the
content hash (tensors file and JSON values); the tensors file parses and holds every listed tensor
with the listed dtype and shape; every required field is present; each JSON value fits its
field's annotation; nested results (recursively, and against the hashes their parent recorded);
tensors against their annotations and the class's :meth:`~SavableResult.validate`.

**Unknown fields are tolerated, with a note**: fields of the result (or keys of its provenance or
another nested dataclass) that this mechdiff does not know (a newer version wrote them) are
ignored, a :class:`ResultWarning` names them and the file, and they are recorded in the loaded
result's ``load_notes``. They are not written back when the result is saved again. Changes
that older versions must not read past bump the format number, which older versions refuse.
Results saved before content hashes existed (``"__type__"`` files) load only with
``check_hash=False``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import typing
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from mechdiff.errors import OptionError, ResultError
from mechdiff.results import registry
from mechdiff.results.atomic import (
    as_path,
    install_dir,
    leftovers,
    recover,
    remove,
    sibling,
    write_durable,
    write_error,
)
from mechdiff.results.base import SavableResult, check
from mechdiff.results.codec import (
    FieldError,
    content_hash,
    decode,
    encode,
    tensor_hint,
    type_hints,
)
from mechdiff.results.errors import DiskFullError, OutputError, ResultWarning

RESULT_JSON = "result.json"
TENSORS = "tensors.safetensors"
FORMAT = 1
_PLAIN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]{0,63}")


def save_result(result: SavableResult, path: str | os.PathLike[str]) -> Path:
    """Save ``result`` to folder ``path`` atomically (see :meth:`SavableResult.save`)."""
    if not isinstance(result, SavableResult) or not dataclasses.is_dataclass(result):
        raise OptionError(f"only dataclass results deriving from SavableResult can be saved, "
                          f"got {type(result).__name__}")
    target = as_path(path)
    if os.path.islink(target):
        target = Path(os.path.realpath(target))
    if os.path.lexists(target) and not os.path.isdir(target):
        raise OutputError(f"{target} exists and is a file; a result is saved as a folder: "
                          "choose another path", path=target)
    if os.path.isdir(target) and not is_result_folder(target):
        shown = ", ".join(sorted(os.listdir(target))[:5])
        raise OutputError(f"{target} exists and is not a saved result (it holds {shown}); "
                          "mechdiff replaces only saved results: choose another folder or empty "
                          "it", path=target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        recover(target)
        staged = sibling(target, "tmp")
        os.mkdir(staged)
    except OSError as e:
        raise write_error(e, target) from e
    try:
        _write_tree(result, staged)
        install_dir(staged, target)
    except BaseException as e:
        remove(staged)
        if isinstance(e, OSError):
            raise write_error(e, target) from e
        if isinstance(e, FieldError):
            raise ResultError(f"cannot save {type(result).__name__} to {target}: {e}") from e
        raise
    return target


def is_result_folder(path: Path) -> bool:
    """Whether folder ``path`` is empty or holds a saved result (which a save may replace)."""
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return not names or RESULT_JSON in names or TENSORS in names


def load_result(
    path: str | os.PathLike[str],
    *,
    expected: type[SavableResult] | None = None,
    check_hash: bool = True,
) -> SavableResult:
    """Load whatever result folder ``path`` holds, by its recorded type, and check it.

    Args:
        path: the result's folder.
        expected: a result type the folder must hold (or a subclass of); None for any.
        check_hash: check the content hash (default). ``False`` loads a result saved before
            content hashes existed, or one known to have been edited on purpose; every other
            check still runs.

    Returns:
        The result. Notes on what was tolerated (unknown fields) are in its ``load_notes`` and
        were issued as :class:`ResultWarning`.

    Raises:
        ResultError: the folder does not hold a valid result (of type ``expected``); the message
            names the file and what is wrong.
        OptionError: a bad argument.
    """
    if not isinstance(check_hash, bool):
        raise OptionError(f"check_hash must be True or False, got {check_hash!r}")
    if expected is not None and not (isinstance(expected, type)
                                     and issubclass(expected, SavableResult)):
        raise OptionError(f"expected must be a SavableResult subclass, got {expected!r}")
    folder = as_path(path)
    notes: list[str] = []
    result = _load_tree(folder, expected, check_hash, notes, None)
    for note in notes:
        warnings.warn(note, ResultWarning, stacklevel=3)
    if notes:
        try:
            object.__setattr__(result, "_mechdiff_load_notes", tuple(notes))
        except (AttributeError, TypeError):  # a slotted class: the warnings remain
            pass
    return result


def _write_tree(result: SavableResult, folder: Path) -> str:
    """Write ``result`` into the new, empty ``folder``; returns its content hash."""
    record: dict[str, Any] = {"mechdiff_result": FORMAT, "type": type(result).result_name,
                              "mechdiff_version": _version(), "fields": {}, "tensors": {},
                              "results": {}}
    tensors: dict[str, torch.Tensor] = {}
    for f in dataclasses.fields(result):  # type: ignore[arg-type]
        if not f.init:
            continue
        value = getattr(result, f.name)
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous().clone()
            tensors[f.name] = t
            record["tensors"][f.name] = {"dtype": _dtype(t), "shape": list(t.shape)}
        elif _holds_results(value, f.name):
            record["results"][f.name] = _write_children(value, folder, f.name)
        else:
            record["fields"][f.name] = encode(value, f"field {f.name!r}")
    data = safetensors.torch.save(tensors)
    digest = hashlib.sha256(data).hexdigest()
    content = content_hash(digest, record)
    record["hash"] = {"algorithm": "sha256", "tensors": digest, "content": content}
    write_durable(folder / TENSORS, data)
    try:
        text = json.dumps(record, indent=2, ensure_ascii=False, allow_nan=True).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates in a string: escape them
        text = json.dumps(record, indent=2, allow_nan=True).encode("ascii")
    write_durable(folder / RESULT_JSON, text)
    return content


def _holds_results(value: Any, name: str) -> bool:
    """Whether a field's value is a result, or a non-empty dict / tuple of results only."""
    if isinstance(value, SavableResult):
        return True
    items = list(value.values()) if isinstance(value, dict) else (
        list(value) if isinstance(value, tuple | list) else [])
    flags = [isinstance(v, SavableResult) for v in items]
    if any(flags) and not all(flags):
        raise FieldError(f"field {name!r} mixes results with other values; a container field "
                         "holds either results only or plain values only")
    if any(flags) and isinstance(value, list):
        raise FieldError(f"field {name!r} is a list of results; use a tuple")
    return any(flags)


def _write_children(value: Any, folder: Path, name: str) -> dict[str, Any]:
    def child(result: SavableResult, rel: str) -> dict[str, Any]:
        sub = folder / rel
        sub.mkdir(parents=True)
        return {"folder": rel, "type": type(result).result_name,
                "hash": _write_tree(result, sub)}

    if isinstance(value, SavableResult):
        return child(value, name)
    if isinstance(value, tuple):
        return {"tuple": [child(v, f"{name}/{i}") for i, v in enumerate(value)]}
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise FieldError(f"field {name!r} has a key {bad[0]!r} that is not a string")
    return {"dict": {k: child(v, f"{name}/{k if _PLAIN_KEY.fullmatch(k) else f'_{i}'}")
                     for i, (k, v) in enumerate(value.items())}}


def _load_tree(
    folder: Path,
    expected: type[SavableResult] | None,
    check_hash: bool,
    notes: list[str],
    parent_hash: str | None,
) -> SavableResult:
    meta_file, tensor_file = folder / RESULT_JSON, folder / TENSORS
    _require_files(folder, meta_file, tensor_file)
    meta = _read_json(meta_file)
    legacy = "__type__" in meta and "mechdiff_result" not in meta
    fmt = 0 if legacy else meta.get("mechdiff_result")
    if not isinstance(fmt, int) or isinstance(fmt, bool):
        raise ResultError(f"{meta_file} is not a mechdiff result file (no \"mechdiff_result\" "
                          "format number)")
    if fmt > FORMAT:
        raise ResultError(f"{meta_file} was written by a newer mechdiff (result format {fmt}; "
                          f"this version reads up to {FORMAT}): upgrade mechdiff to load it")
    type_name = meta.get("__type__" if legacy else "type")
    cls = registry.lookup(type_name) if isinstance(type_name, str) else None
    if cls is None:
        known = ", ".join(sorted(registry.registered()))
        raise ResultError(f"{meta_file} holds a result of type {type_name!r}, which this "
                          f"mechdiff does not know (known: {known}); import the module that "
                          "defines it first")
    if expected is not None and expected is not SavableResult and not issubclass(cls, expected):
        raise ResultError(f"{folder} holds a {type_name}, not a {expected.__name__}: load it "
                          f"with {type_name}.load or mechdiff.results.load_result")
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ResultError(f"{meta_file}: result type {type_name!r} is not a dataclass")
    with open(tensor_file, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
        fh.seek(0)
        data = fh.read()
    if legacy:
        if check_hash:
            raise ResultError(f"{meta_file} was saved by an older mechdiff without a content "
                              "hash, so it cannot be checked: load it with check_hash=False "
                              "(its values are then taken as they are) or re-run the analysis")
        meta = {"fields": {k: v for k, v in meta.items() if k != "__type__"}, "tensors": None,
                "results": {}}
    elif check_hash:
        _check_hash(meta, meta_file, tensor_file, digest, parent_hash)
    sections = {s: meta.get(s) for s in ("fields", "tensors", "results")}
    for s, v in sections.items():
        if not isinstance(v, dict) and not (s == "tensors" and legacy):
            raise ResultError(f"{meta_file}: \"{s}\" must be a JSON object, got {v!r}")
    tensors = _read_tensors(data, tensor_file, sections["tensors"])
    return _build(cls, folder, meta_file, sections, tensors, check_hash, notes)


def _build(cls: type, folder: Path, meta_file: Path, sections: dict[str, Any],
           tensors: dict[str, torch.Tensor], check_hash: bool, notes: list[str]) -> Any:
    hints = type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    unknown = []
    for name, value in sections["fields"].items():
        if name not in fields:
            unknown.append(name)
            continue
        try:
            kwargs[name] = decode(value, hints.get(name, Any), f"field {name!r}", notes)
        except FieldError as e:
            raise ResultError(f"{meta_file}: {e}") from None
    for name, tensor in tensors.items():
        if name not in fields:
            unknown.append(name)
        elif hints and tensor_hint(hints.get(name)) is None:
            raise ResultError(f"{meta_file}: field {name!r} is stored as a tensor, but "
                              f"{cls.__name__} does not declare it as one")
        else:
            kwargs[name] = tensor
    for name, ref in sections["results"].items():
        if name not in fields:
            unknown.append(name)
            continue
        kwargs[name] = _load_children(ref, folder, meta_file, name, check_hash, notes,
                                      _result_type(hints.get(name)))
    if unknown:
        notes.append(f"{meta_file}: fields this mechdiff does not know were ignored: "
                     f"{', '.join(map(repr, sorted(unknown)))} (written by a newer mechdiff?)")
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ResultError(f"{meta_file}: required field(s) {', '.join(map(repr, missing))} "
                          f"of {cls.__name__} missing; the file is incomplete or from an "
                          "incompatible mechdiff version")
    try:
        result = cls(**kwargs)
        check(result)  # also where a subclass's __post_init__ forgot to
    except ResultError as e:
        raise ResultError(f"{folder}: {e}") from e
    except Exception as e:  # noqa: BLE001 - the class's own checks; never a raw exception
        raise ResultError(f"{folder}: the saved values do not make a valid {cls.__name__}: "
                          f"{e}") from e
    return result


def _load_children(ref: Any, folder: Path, meta_file: Path, name: str, check_hash: bool,
                   notes: list[str], expected: type[SavableResult] | None) -> Any:
    def child(r: Any) -> SavableResult:
        if not (isinstance(r, dict) and isinstance(r.get("folder"), str)
                and isinstance(r.get("hash"), str)):
            raise ResultError(f"{meta_file}: the nested result of field {name!r} is recorded "
                              f"as {r!r}, not as {{folder, type, hash}}")
        rel = Path(r["folder"])
        if rel.is_absolute() or ".." in rel.parts:
            raise ResultError(f"{meta_file}: nested result folder {r['folder']!r} lies outside "
                              "the result")
        return _load_tree(folder / rel, expected, check_hash, notes,
                          r["hash"] if check_hash else None)

    if isinstance(ref, dict) and "dict" in ref and isinstance(ref["dict"], dict):
        return {k: child(r) for k, r in ref["dict"].items()}
    if isinstance(ref, dict) and "tuple" in ref and isinstance(ref["tuple"], list):
        return tuple(child(r) for r in ref["tuple"])
    return child(ref)


def _result_type(hint: Any) -> type[SavableResult] | None:
    """The result type a field's annotation asks for (``R``, ``R | None``, ``dict[str, R]``,
    ``tuple[R, ...]``), or None where it names none (any registered type is then accepted)."""
    if isinstance(hint, type) and issubclass(hint, SavableResult):
        return hint
    args = [a for a in typing.get_args(hint) if a is not Ellipsis and a is not type(None)]
    found = {t for t in map(_result_type, args) if t is not None}
    return found.pop() if len(found) == 1 else None


def _require_files(folder: Path, meta_file: Path, tensor_file: Path) -> None:
    if not os.path.isdir(folder):
        if os.path.lexists(folder):
            raise ResultError(f"{folder} is a file, not a saved result (a folder)")
        hint = ""
        if any(tag == "old" for _, tag, _ in leftovers(folder)):
            hint = ("; an interrupted save moved the earlier result aside beside it, and the "
                    "next save to this path (or an output folder run) puts it back")
        raise ResultError(f"{folder} does not exist{hint}")
    missing = [p.name for p in (meta_file, tensor_file) if not p.is_file()]
    if missing:
        raise ResultError(f"{folder} is not a saved mechdiff result: {' and '.join(missing)} "
                          f"missing (expected {RESULT_JSON} and {TENSORS})")


def _read_json(meta_file: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_file.read_bytes().decode("utf-8"))
    except OSError as e:
        raise ResultError(f"cannot read {meta_file}: {e.strerror or e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultError(f"{meta_file} is not valid JSON ({e}); the file is damaged or "
                          "truncated: re-run the analysis that wrote it") from None
    if not isinstance(meta, dict):
        raise ResultError(f"{meta_file} must hold a JSON object, got {type(meta).__name__}")
    return meta


def _check_hash(meta: dict[str, Any], meta_file: Path, tensor_file: Path, digest: str,
                parent_hash: str | None) -> None:
    h = meta.get("hash")
    if not (isinstance(h, dict) and isinstance(h.get("tensors"), str)
            and isinstance(h.get("content"), str)):
        raise ResultError(f"{meta_file} has no content hash, so its integrity cannot be "
                          "checked: re-run the analysis, or load it with check_hash=False")
    if h.get("algorithm", "sha256") != "sha256":
        raise ResultError(f"{meta_file}: unknown hash algorithm {h.get('algorithm')!r}")
    if h["tensors"] != digest:
        raise ResultError(f"{tensor_file} does not match the hash recorded in {meta_file}: it "
                          "was truncated, changed or replaced after saving")
    record = {k: v for k, v in meta.items() if k != "hash"}
    if content_hash(digest, record) != h["content"]:
        raise ResultError(f"{meta_file} does not match its content hash: its values were "
                          "changed after saving")
    if parent_hash is not None and h["content"] != parent_hash:
        raise ResultError(f"{meta_file.parent} is not the result that was saved with the result "
                          "containing it (its content hash differs from the one recorded there)")


def _read_tensors(data: bytes, tensor_file: Path,
                  declared: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    try:
        tensors = safetensors.torch.load(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise ResultError(f"{tensor_file} cannot be read as safetensors ({e}); the file is "
                          "damaged or truncated") from None
    if declared is None:  # legacy: whatever the file holds
        return tensors
    for name, spec in declared.items():
        if name not in tensors:
            raise ResultError(f"{tensor_file} lacks tensor {name!r} listed in {RESULT_JSON}")
        t = tensors[name]
        want = (spec.get("dtype"), spec.get("shape")) if isinstance(spec, dict) else (None, None)
        if (_dtype(t), list(t.shape)) != want:
            raise ResultError(f"{tensor_file}: tensor {name!r} is {_dtype(t)} "
                              f"{list(t.shape)}, but {RESULT_JSON} lists {want[0]} {want[1]}")
    extra = sorted(set(tensors) - set(declared))
    if extra:
        raise ResultError(f"{tensor_file} holds tensors not listed in {RESULT_JSON}: {extra}")
    return {name: tensors[name] for name in declared}


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _version() -> str:
    try:
        return version("mechdiff")
    except PackageNotFoundError:
        return "unknown"


__all__ = ["DiskFullError", "is_result_folder", "load_result", "save_result"]
