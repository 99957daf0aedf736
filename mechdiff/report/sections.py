"""Sections of a report, by result type: how each saved result renders as text, Markdown and HTML.

Every result type registers its renderers here (:func:`register`), so a report (``mechdiff
report``, :func:`mechdiff.report.html.write_report`) renders any results folder without knowing
the analyses in it: a new analysis adds its section by registering its type, without editing the
report's core. A type without a registration gets a generic section (its provenance and fields),
never an error.

Where registrations live:

* mechdiff's own result types: text and Markdown here (they call :mod:`.text` and
  :mod:`.markdown`, whose outputs they keep byte for byte), HTML in
  :mod:`mechdiff.viz.html_sections` (HTML sections draw figures, so they live with the drawing);
* an analysis package ``mechdiff.<family>`` may hold a module ``mechdiff.<family>.sections``
  that calls :func:`register` for its types; it is imported the first time a report meets one of
  them (it must not import matplotlib at import time: import :mod:`mechdiff.viz` inside the HTML
  renderer);
* other packages declare an entry point in the group ``mechdiff.sections`` naming a module that
  calls :func:`register`.

A text or Markdown renderer is ``fn(result, top) -> str`` (``top``: rows of ranked tables, None
for all); an HTML renderer is ``fn(result, page) -> str`` with the page of
:mod:`mechdiff.report.html` (figures, circuitsvis views, provenance, tables).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

import torch

from mechdiff.results import Provenance, SavableResult

log = logging.getLogger(__name__)

TextRenderer = Callable[[Any, int | None], str]
HtmlRenderer = Callable[[Any, Any], str]
ENTRY_POINT_GROUP = "mechdiff.sections"
"""Entry-point group of modules that register sections for other packages' result types."""
GENERIC_ORDER = 1000
"""Where results without a registered order go on a page: last."""


@dataclass(frozen=True)
class Section:
    """How one result type renders.

    Attributes:
        title: the section's heading for a result (default: the type's name and the folder).
        text: plain text (what a command prints).
        markdown: a Markdown section.
        html: an HTML section (``fn(result, page)``).
        order: where results of this type go on a page (lower first; pairs 10, comparisons 20,
            unregistered types :data:`GENERIC_ORDER`).
    """

    title: Callable[[Any], str] | None = None
    text: TextRenderer | None = None
    markdown: TextRenderer | None = None
    html: HtmlRenderer | None = None
    order: int = GENERIC_ORDER


_SECTIONS: dict[type, Section] = {}
_TRIED: set[str] = set()


def register(
    result_type: type,
    *,
    title: Callable[[Any], str] | None = None,
    text: TextRenderer | None = None,
    markdown: TextRenderer | None = None,
    html: HtmlRenderer | None = None,
    order: int | None = None,
) -> None:
    """Register how results of ``result_type`` (and its subclasses) render.

    Renderers given here replace earlier ones of the same type; those not given keep earlier
    registrations (so HTML can be registered apart from text and Markdown).

    Raises:
        TypeError: ``result_type`` is not a :class:`SavableResult` subclass, or a renderer is
            not callable.
    """
    if not (isinstance(result_type, type) and issubclass(result_type, SavableResult)):
        raise TypeError(f"sections are registered for SavableResult types, got {result_type!r}")
    given = {"title": title, "text": text, "markdown": markdown, "html": html}
    for name, fn in given.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} renderer of {result_type.__name__} must be callable, got "
                            f"{fn!r}")
    old = _SECTIONS.get(result_type, Section())
    changes = {k: v for k, v in given.items() if v is not None}
    if order is not None:
        changes["order"] = int(order)
    _SECTIONS[result_type] = dataclasses.replace(old, **changes)


def section_for(result: Any) -> Section | None:
    """The registered section of ``result``'s type (or of its nearest registered base class);
    None when nothing is registered. Looks for a registering module first (see the module
    docstring)."""
    cls = type(result)
    found = _lookup(cls)
    if found is None:
        _discover(cls)
        found = _lookup(cls)
    return found


def _lookup(cls: type) -> Section | None:
    for base in cls.__mro__:
        if base in _SECTIONS:
            return _SECTIONS[base]
    return None


def _discover(cls: type) -> None:
    """Import ``<package>.sections`` of ``cls``'s package and the entry points, once each."""
    names = []
    parts = cls.__module__.split(".")
    for i in range(len(parts) - 1, 0, -1):
        names.append(".".join(parts[:i]) + ".sections")
    for name in names:
        if name in _TRIED or name == __name__:
            continue
        _TRIED.add(name)
        try:
            if importlib.util.find_spec(name) is not None:
                importlib.import_module(name)
        except Exception as e:  # a broken plugin must not break the report
            log.warning("could not import report sections %s: %s", name, e)
    for ep in _entry_points():
        if ep.value in _TRIED:
            continue
        _TRIED.add(ep.value)
        try:
            ep.load()
        except Exception as e:
            log.warning("could not load report sections %s: %s", ep.value, e)


def _entry_points() -> list[Any]:
    try:
        return list(entry_points(group=ENTRY_POINT_GROUP))
    except Exception:  # a broken installation's metadata
        return []


def order_of(result: Any) -> int:
    section = section_for(result)
    return GENERIC_ORDER if section is None else section.order


def title_of(result: Any) -> str:
    """A result's heading: its registered title, else its type's name (and label if it has one)."""
    section = section_for(result)
    if section is not None and section.title is not None:
        return section.title(result)
    label = getattr(result, "label", None)
    name = type(result).__name__
    return f"{name}: {label}" if isinstance(label, str) and label else name


def render_text(result: Any, top: int | None = None) -> str:
    """``result`` as plain text: its registered renderer, else its provenance and fields."""
    section = section_for(result)
    if section is not None and section.text is not None:
        return section.text(result, top)
    lines = [title_of(result)]
    lines += [f"  {name}: {value}" for name, value in describe_fields(result)]
    return "\n".join(lines)


def render_markdown(result: Any, top: int | None = None) -> str:
    """``result`` as a Markdown section: its registered renderer, else provenance and fields."""
    section = section_for(result)
    if section is not None and section.markdown is not None:
        return section.markdown(result, top)
    lines = [f"## {title_of(result)}", "", "| field | value |", "|---|---|"]
    lines += [f"| {name} | {_md_cell(value)} |" for name, value in describe_fields(result)]
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------- generic description


def provenance_of(result: Any) -> Provenance | None:
    """The first :class:`Provenance` in ``result``'s fields or, failing that, in its nested
    results (breadth first); None when it holds none."""
    queue = [result]
    seen = 0
    while queue and seen < 64:
        item = queue.pop(0)
        seen += 1
        if not dataclasses.is_dataclass(item):
            continue
        for f in dataclasses.fields(item):
            value = getattr(item, f.name, None)
            if isinstance(value, Provenance):
                return value
        queue += list(nested_results(item))
    return None


def nested_results(result: Any) -> Iterator[SavableResult]:
    """The results held by ``result``'s fields (directly, or in a dict or tuple field)."""
    if not dataclasses.is_dataclass(result):
        return
    for f in dataclasses.fields(result):
        value = getattr(result, f.name, None)
        if isinstance(value, SavableResult):
            yield value
        elif isinstance(value, dict):
            yield from (v for v in value.values() if isinstance(v, SavableResult))
        elif isinstance(value, tuple | list):
            yield from (v for v in value if isinstance(v, SavableResult))


MAX_VALUE_CHARS = 160
"""Longest description of one field value in a generic section."""


def describe(value: Any) -> str:
    """A short description of a field value: numbers and text as they are (cut to
    :data:`MAX_VALUE_CHARS`), tensors by dtype, shape and range, results by type."""
    if isinstance(value, torch.Tensor):
        return describe_tensor(value)
    if isinstance(value, SavableResult):
        return f"{type(value).__name__} (nested result)"
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        if value and all(isinstance(v, SavableResult) for v in value.values()):
            kinds = sorted({type(v).__name__ for v in value.values()})
            return f"{len(value)} nested results ({', '.join(kinds)}): {', '.join(map(str, value))}"
        text = ", ".join(f"{k}: {describe(v)}" for k, v in value.items())
        return _cut("{" + text + "}")
    if isinstance(value, tuple | list):
        if value and all(isinstance(v, SavableResult) for v in value):
            return f"{len(value)} nested results ({type(value[0]).__name__}, ...)"
        return _cut(f"{len(value)} items: " + ", ".join(describe(v) for v in value[:12])
                    + (", ..." if len(value) > 12 else "") if len(value) > 3 else
                    "(" + ", ".join(describe(v) for v in value) + ")")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _cut(f"{type(value).__name__}(" + ", ".join(
            f"{f.name}={describe(getattr(value, f.name))}"
            for f in dataclasses.fields(value)) + ")")
    return _cut(str(value))


def describe_tensor(t: torch.Tensor) -> str:
    """``float32 [3, 4]: min -0.2, mean 0.1, max 0.9`` (finite values; NaNs counted)."""
    dtype = str(t.dtype).removeprefix("torch.")
    head = f"{dtype} {list(t.shape)}"
    if t.numel() == 0:
        return head + " (empty)"
    x = t.detach().float().cpu() if (t.dtype.is_floating_point or not t.dtype.is_complex) else None
    if x is None or t.dtype == torch.bool:
        return head
    finite = x[torch.isfinite(x)]
    nans = int(x.numel() - finite.numel())
    if finite.numel() == 0:
        return head + ": no finite values"
    text = (f"{head}: min {float(finite.min()):.4g}, mean {float(finite.mean()):.4g}, max "
            f"{float(finite.max()):.4g}")
    return text + (f" ({nans} non-finite)" if nans else "")


def describe_fields(result: Any) -> list[tuple[str, str]]:
    """``(field, description)`` of every field of ``result`` except its provenance."""
    if not dataclasses.is_dataclass(result):
        return [("value", _cut(repr(result)))]
    return [(f.name, describe(getattr(result, f.name, None))) for f in dataclasses.fields(result)
            if not isinstance(getattr(result, f.name, None), Provenance)]


def _cut(text: str) -> str:
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "\u2026"


# ---------------------------------------------------------------- mechdiff's own types


def _register_builtin() -> None:
    """Text and Markdown of mechdiff's own result types (the renderers of :mod:`.text` and
    :mod:`.markdown`, unchanged)."""
    from mechdiff.compare import (
        Agreement,
        FinetuneComparison,
        Interaction,
        PromptedBaseComparison,
    )
    from mechdiff.gap import GapResult
    from mechdiff.patching import PatchResult
    from mechdiff.pipeline.circuits import CircuitAnalysis
    from mechdiff.pipeline.pair import PairAnalysis
    from mechdiff.report import markdown, text
    from mechdiff.views import PairViews

    register(PairAnalysis, order=10,
             title=lambda a: f"{a.label}: {a.mechanism}" if a.mechanism else a.label,
             text=lambda a, top: text.pair_table(a, top),
             markdown=lambda a, top: markdown.pair_section(a, top))
    register(CircuitAnalysis, order=15, title=_circuits_title,
             text=lambda a, top: a.summary(), markdown=_circuits_markdown)
    register(FinetuneComparison, order=20, title=lambda c: f"{c.label} vs {c.reference}",
             text=lambda c, top: text.finetunes_text(c),
             markdown=lambda c, top: markdown.finetunes_section(c))
    register(PromptedBaseComparison, order=21,
             title=lambda c: "The prompted base as the third model",
             text=lambda c, top: text.prompted_text(c),
             markdown=lambda c, top: markdown.prompted_section(c))
    register(GapResult, order=30, title=lambda g: f"Behaviour gap: {g.provenance.task}",
             text=lambda g, top: text.gap_line(g))
    register(PatchResult, order=40, title=_patch_title, text=lambda r, top: r.table(top or 10))
    register(Interaction, order=50, title=lambda x: "Series index",
             text=lambda x, top: text.interaction_line(x))
    register(Agreement, order=51, title=lambda x: f"Agreement: {x.a_name} vs {x.b_name}, "
             f"{x.sites} {x.direction}", text=lambda x, top: text.agreement_text(x))
    register(PairViews, order=60, title=lambda v: f"Views: {v.label}", text=_views_text)


def _circuits_title(a: Any) -> str:
    return f"Circuits of {a.label}" + (f": {a.mechanism}" if a.mechanism else "")


def _circuits_markdown(a: Any, top: int | None) -> str:
    from mechdiff.circuits.sections import comparison_markdown

    out = comparison_markdown(a.comparison, top).replace("## ", f"## {a.label}: ", 1)
    if a.cross is not None:
        out += f"\nEdges carrying the gap:\n\n```\n{a.cross.table(top or 10)}\n```\n"
    return out


def _patch_title(r: Any) -> str:
    from mechdiff.patching.result import METHOD_NAMES

    return (f"{r.sites} {METHOD_NAMES.get(r.method, r.method)} {r.direction} \u00b7 "
            f"{r.provenance.task}")


def _views_text(v: Any, top: int | None) -> str:
    """Where the two models disagree most, per kept prompt (tokens of largest KL)."""
    from mechdiff.views import shown

    lines = [f"views of {v.label}: {len(v.prompt_indices)} prompts ({v.chosen_by}); heads "
             f"{', '.join(v.heads) or '(none)'}"]
    for i, index in enumerate(v.prompt_indices):
        n = int(v.lengths[i])
        kl = v.kl[i, :n]
        order = kl.nan_to_num(-1.0).argsort(descending=True)[:3].tolist()
        where = ", ".join(f"{shown(v.tokens[i][p])}@{p} {float(kl[p]):.3f}" for p in order)
        lines.append(f"  prompt {index}: largest KL(FT||base) after {where}")
    return "\n".join(lines)


_register_builtin()
