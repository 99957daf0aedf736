"""The registry of result types: a saved result records its type's name; loading looks it up.

Every subclass of :class:`~mechdiff.results.SavableResult` registers itself when it is defined,
under its class name or the ``name=`` given in the class statement
(``class PairComparison(SavableResult, name="pair_comparison")``). A name stays with one class:
defining a second, different class under a registered name is a ``TypeError`` (a result saved
under that name could otherwise load as the wrong type); re-defining the same class (same module
and qualified name, as a module reload does) replaces it.
"""

from __future__ import annotations

import importlib

_REGISTRY: dict[str, type] = {}

BUILTIN_MODULES: tuple[str, ...] = (
    "mechdiff.gap", "mechdiff.patching", "mechdiff.compare", "mechdiff.circuits",
    "mechdiff.pipeline", "mechdiff.views", "mechdiff.report.sections",
)
"""The modules that define mechdiff's own result types. ``import mechdiff`` does not import them
all (the circuit and report modules are heavy); :func:`lookup` imports them when a saved type is
not yet registered, so ``mechdiff.load_result`` loads any folder mechdiff wrote."""


def register(cls: type, name: str) -> None:
    """Register result type ``cls`` under ``name``.

    Raises:
        TypeError: ``name`` is empty or already taken by a different class.
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"a result type needs a non-empty name, got {name!r} for {cls!r}")
    old = _REGISTRY.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(
            f"result type name {name!r} is already used by {old.__module__}.{old.__qualname__}; "
            f"give {cls.__module__}.{cls.__qualname__} another one (class ...(SavableResult, "
            "name='...'))"
        )
    _REGISTRY[name] = cls


def lookup(name: str) -> type | None:
    """The result type registered under ``name`` (importing :data:`BUILTIN_MODULES` first if it
    is not registered yet), or None."""
    if name not in _REGISTRY:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    return _REGISTRY.get(name)


def registered() -> dict[str, type]:
    """A copy of the registry: name -> result type."""
    return dict(_REGISTRY)
