"""Result types: frozen dataclasses holding tensors, axis labels and provenance.

Every analysis returns one result type, a frozen dataclass deriving from :class:`SavableResult`.
Each is saved to a folder (``tensors.safetensors`` + ``result.json``, nested results in
subfolders; see :mod:`mechdiff.results.store`) and loaded back without any model, so figures can
be rebuilt from disk. A result is checked when it is made and again when it is loaded: its
tensors against their jaxtyping annotations (dtype, rank, and named dimensions that must agree
across fields: ``patched: "*site_dims batch"`` and ``receiver: " batch"`` share ``batch``), then
the class's own :meth:`SavableResult.validate` (e.g. ``scores`` against ``dims``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from jaxtyping import jaxtyped

from mechdiff.errors import ResultError
from mechdiff.results import registry
from mechdiff.results.codec import tensor_hint, type_hints
from mechdiff.results.provenance import Provenance

__all__ = ["Provenance", "SavableResult"]

_R = TypeVar("_R", bound="SavableResult")


class SavableResult:
    """Base of result types: frozen dataclasses saved as tensors + JSON and loaded back checked.

    Subclass it as a frozen dataclass. Fields holding tensors go to ``tensors.safetensors``;
    fields holding a result, or a ``dict`` (string keys) or ``tuple`` of results, go to
    subfolders (so a composite analysis, or a comparison of two results, saves as one); every
    other field (str, int, float, bool, None, tuples, lists, dicts, Literals, enums, paths,
    plain dataclasses such as :class:`Provenance`) goes to ``result.json``, decoded on load by
    its annotation. The class registers under its name (or ``name=`` in the class statement),
    which is recorded in the file, so :func:`mechdiff.results.load_result` can load any result.

    Example:
        ``@dataclass(frozen=True)
        class Ranking(SavableResult):
            scores: Float[Tensor, " site"]
            labels: tuple[str, ...]
            provenance: Provenance
            def validate(self) -> None:
                if len(self.labels) != len(self.scores): raise ResultError("...")``

    A subclass that defines its own ``__post_init__`` must call ``super().__post_init__()``.
    """

    result_name: ClassVar[str] = "SavableResult"

    def __init_subclass__(cls, *, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.result_name = cls.__name__ if name is None else name
        registry.register(cls, cls.result_name)

    def __post_init__(self) -> None:
        check(self)

    def validate(self) -> None:
        """Check that the values fit each other; raise :class:`ResultError` saying what does not.

        Called when a result is made and when it is loaded. The base checks nothing beyond the
        tensor annotations (checked before this); override to check tensor shapes against the
        result's metadata (axis names, labels, counts).
        """

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save to folder ``path`` atomically; returns the folder (absolute).

        The result is written into a temporary sibling, flushed to disk and renamed into place,
        replacing an earlier result there in one step: an interrupted save leaves the earlier
        folder (or none) and never a mix. Missing parent folders are created.

        Raises:
            OptionError: ``path`` is not a usable path.
            OutputError: ``path`` is a file, or a folder that is not a saved result (it is not
                replaced), or cannot be written.
            DiskFullError: the disk filled up; nothing was written.
            ResultError: a field holds a value that cannot be saved.
        """
        from mechdiff.results.store import save_result

        return save_result(self, path)

    @classmethod
    def load(cls: type[_R], path: str | os.PathLike[str], *, check_hash: bool = True) -> _R:
        """Load the result saved in folder ``path``, checked (see :func:`load_result`).

        Called on a subclass, the folder must hold that type (or a subclass of it); called on
        :class:`SavableResult`, any registered result type. Fields this version does not know
        (written by a newer mechdiff) are tolerated: ignored with a :class:`ResultWarning` and
        listed in :attr:`load_notes`; a newer result *format* is refused.

        Raises:
            ResultError: the folder does not hold a valid result of this type (the message names
                the file and what is wrong).
            OptionError: a bad argument.
        """
        from mechdiff.results.store import load_result

        return load_result(path, expected=cls, check_hash=check_hash)  # type: ignore[return-value]

    @property
    def load_notes(self) -> tuple[str, ...]:
        """What loading noted but tolerated (e.g. fields unknown to this version); () if made."""
        return getattr(self, "_mechdiff_load_notes", ())


def check(result: SavableResult) -> None:
    """Check ``result``'s tensors against their annotations, then its own :meth:`validate`.

    Raises:
        ResultError: what does not fit, naming the fields.
    """
    if dataclasses.is_dataclass(result):
        problem = _tensor_problem(result)
        if problem is not None:
            raise ResultError(f"{type(result).__name__}: {problem}")
    result.validate()


def _tensor_problem(result: Any) -> str | None:
    """Why ``result``'s tensor fields do not fit their jaxtyping annotations, or None."""
    hints = type_hints(type(result))
    pairs = []
    for f in dataclasses.fields(result):
        hint = tensor_hint(hints.get(f.name))
        value = getattr(result, f.name)
        if hint is None or value is None:
            continue
        if not isinstance(value, torch.Tensor):
            return f"field {f.name!r} must be a tensor, got {type(value).__name__}"
        dtypes = getattr(hint, "dtypes", None)
        dtype = str(value.dtype).removeprefix("torch.")
        if isinstance(dtypes, tuple | list) and dtype not in dtypes:
            return f"field {f.name!r} has dtype {dtype}, but {hint.__name__} allows {list(dtypes)}"
        pairs.append((f.name, hint, value))
    if not pairs:
        return None
    for name, hint, value in pairs:
        if not _fit([(hint, value)]):
            return (f"field {name!r} has shape {tuple(value.shape)}, which does not fit its "
                    f"annotation {_dims(hint)!r}")
    if not _fit([(hint, value) for _, hint, value in pairs]):
        shapes = ", ".join(f"{n} {tuple(v.shape)} as {_dims(h)!r}" for n, h, v in pairs)
        return f"tensor shapes disagree on a shared dimension: {shapes}"
    return None


@jaxtyped(typechecker=None)
def _fit(pairs: list[Any]) -> bool:
    """Whether every (annotation, tensor) fits, with named dimensions bound across all of them."""
    return all(isinstance(value, hint) for hint, value in pairs)


def _dims(hint: Any) -> str:
    return getattr(hint, "dim_str", "") or "any shape"
