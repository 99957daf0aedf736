"""Plain result fields to JSON and back, checked against the fields' annotations; the content hash.

A result's non-tensor fields are stored in ``result.json``. JSON has no tuples, so loading decodes
every value by the field's annotation (``tuple[str, ...]`` comes back as a tuple, a nested
dataclass such as :class:`~mechdiff.results.Provenance` as that dataclass, ``float`` accepts a
JSON integer), and a value that does not fit its annotation is an error naming the field, never
a silently different object.

The content hash (recorded in ``result.json`` under ``"hash"``, checked on load):

    tensors = SHA-256 (hex) of the bytes of tensors.safetensors
    record  = the parsed result.json without its "hash" key
    canon   = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                         allow_nan=True).encode("ascii")
    content = SHA-256 (hex) of b"mechdiff-result-1\\n" + tensors.encode("ascii") + b"\\n" + canon

It covers every byte of the tensors and every JSON value, but not the JSON's formatting, so a
result whose ``result.json`` was re-indented still loads, and one whose values changed does not.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import functools
import hashlib
import json
import numbers
import types
import typing
from pathlib import PurePath
from typing import Any, Literal, Union

import torch

HASH_PREFIX = b"mechdiff-result-1\n"


class FieldError(ValueError):
    """A value does not fit its annotation (turned into a ResultError naming the file)."""


def canonical(record: dict[str, Any]) -> bytes:
    """The canonical JSON bytes of ``record`` (sorted keys, no spaces, ASCII only)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=True).encode("ascii")


def content_hash(tensors_sha256: str, record: dict[str, Any]) -> str:
    """The content hash of a result (see the module docstring); ``record`` without ``"hash"``."""
    h = hashlib.sha256(HASH_PREFIX)
    h.update(tensors_sha256.encode("ascii") + b"\n")
    h.update(canonical(record))
    return h.hexdigest()


def encode(value: Any, where: str) -> Any:
    """``value`` as JSON (tuples as lists, dataclasses as objects, paths as strings).

    Raises:
        FieldError: the value cannot be stored in JSON (a tensor inside a container, a dict with
            non-string keys, an arbitrary object), naming ``where``.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return encode(value.value, where)
    if isinstance(value, int | float):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, tuple | list):
        return [encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise FieldError(f"{where} has a key {bad[0]!r} that is not a string (JSON keys are)")
        return {k: encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name), f"{where}.{f.name}")
                for f in dataclasses.fields(value) if f.init}
    if isinstance(value, torch.Tensor):
        raise FieldError(f"{where} is a tensor inside a container; tensors are saved only as "
                         "fields of their own")
    raise FieldError(f"{where} holds a {type(value).__name__}, which result.json cannot store")


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass ``cls`` (cached)."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to no checking
        return {}


def is_tensor_hint(hint: Any) -> bool:
    """Whether ``hint`` is ``torch.Tensor`` or a jaxtyping tensor type (``Float[Tensor, "..."]``)."""
    if not isinstance(hint, type):
        return False
    return issubclass(hint, torch.Tensor) or getattr(hint, "array_type", None) is torch.Tensor


def tensor_hint(hint: Any) -> Any:
    """The tensor type inside ``hint`` (``X`` of ``X | None``), or None if it holds none."""
    if is_tensor_hint(hint):
        return hint
    if typing.get_origin(hint) in (Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if is_tensor_hint(a)]
        return found[0] if len(found) == 1 else None
    return None


def describe(hint: Any) -> str:
    """A short readable name of an annotation (``tuple[str, ...]``, ``float``, ...)."""
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return repr(hint).replace("typing.", "")


def decode(value: Any, hint: Any, where: str, notes: list[str]) -> Any:
    """Turn JSON ``value`` back into what annotation ``hint`` says the field holds.

    Args:
        value: a parsed JSON value.
        hint: the field's resolved annotation (``typing.Any`` where unknown).
        where: how to name the value in errors, e.g. ``"field 'dims'"``.
        notes: unknown keys of nested dataclasses are appended here (tolerated, reported).

    Raises:
        FieldError: the value does not fit the annotation.
    """
    if hint is Any or hint is object or isinstance(hint, typing.TypeVar):
        return _tuplify(value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is None or hint is type(None):
        if value is None:
            return None
        raise _mismatch(where, hint, value)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return decode(value, option, where, notes)
            except FieldError as e:
                errors.append(e)
        nested = [e for e in errors if not str(e).startswith(f"{where} must be")]
        raise nested[0] if len(errors) == 1 and nested else _mismatch(where, hint, value)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise FieldError(f"{where} must be one of {list(args)}, got {value!r}")
    if origin is typing.ClassVar or origin is typing.Final:
        return decode(value, args[0] if args else Any, where, notes)
    if origin is tuple:
        if not isinstance(value, list):
            raise _mismatch(where, hint, value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(v, args[0], f"{where}[{i}]", notes) for i, v in enumerate(value))
        if not args:
            return tuple(_tuplify(v) for v in value)
        if len(value) != len(args):
            raise FieldError(f"{where} must have {len(args)} items, got {len(value)}")
        return tuple(decode(v, a, f"{where}[{i}]", notes)
                     for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin in (list, collections.abc.Sequence):
        if not isinstance(value, list):
            raise _mismatch(where, hint, value)
        item = args[0] if args else Any
        out = [decode(v, item, f"{where}[{i}]", notes) for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise _mismatch(where, hint, value)
        key_t, val_t = args if len(args) == 2 else (Any, Any)
        if key_t not in (str, Any):
            raise FieldError(f"{where}: keys of type {describe(key_t)} cannot come from JSON")
        return {k: decode(v, val_t, f"{where}[{k!r}]", notes) for k, v in value.items()}
    if not isinstance(hint, type):
        return _tuplify(value)  # an annotation this decoder does not model: keep the JSON value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _mismatch(where, hint, value)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _mismatch(where, hint, value)
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _mismatch(where, hint, value)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _mismatch(where, hint, value)
    if issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise FieldError(f"{where} must be one of {[m.value for m in hint]}, got {value!r}") \
                from None
    if issubclass(hint, PurePath):
        if isinstance(value, str):
            return hint(value)
        raise _mismatch(where, hint, value)
    if is_tensor_hint(hint):
        raise FieldError(f"{where} must be a tensor (stored in tensors.safetensors), but "
                         f"result.json holds {_shown(value)} for it")
    if dataclasses.is_dataclass(hint):
        return decode_dataclass(hint, value, where, notes)
    if isinstance(value, hint):
        return value
    raise _mismatch(where, hint, value)


def decode_dataclass(cls: type, value: Any, where: str, notes: list[str]) -> Any:
    """An instance of dataclass ``cls`` from the JSON object ``value`` (unknown keys noted)."""
    if not isinstance(value, dict):
        raise _mismatch(where, cls, value)
    hints = type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        notes.append(f"{where} has keys this mechdiff does not know, ignored: "
                     f"{', '.join(map(repr, unknown))} (written by a newer mechdiff?)")
    missing = [n for n, f in fields.items() if n not in value and _required(f)]
    if missing:
        raise FieldError(f"{where} lacks required keys {missing}")
    kwargs = {n: decode(v, hints.get(n, Any), f"{where}.{n}", notes)
              for n, v in value.items() if n in fields}
    try:
        return cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - the class's own checks: reported with the field
        raise FieldError(f"{where} is not a valid {cls.__name__}: {e}") from e


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuplify(v) for k, v in value.items()}
    return value


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _mismatch(where: str, hint: Any, value: Any) -> FieldError:
    kind = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")
    return FieldError(f"{where} must be {describe(hint)}, but result.json holds {kind} "
                      f"({_shown(value)})")

