"""One self-contained HTML report of a results folder: :func:`write_report`.

The page gathers every result mechdiff saved under a folder (a demo's, ``mechdiff patch``'s, or
any folder of saved results): an overview of each pair's behaviour gap, then a section per result
rendered by its type's registered HTML renderer (:mod:`mechdiff.report.sections`; mechdiff's own
types in :mod:`mechdiff.viz.html_sections`): figures drawn from the saved results and inlined as
SVG, ranked tables (exact patching and its attribution estimate side by side, with 95% intervals
over prompts), readings with their numbers, circuitsvis views, and the provenance of every result
(models, task, prompts hash, versions). A result type with no renderer gets a generic section
(provenance and fields); a folder that does not load is listed with the reason. Nothing fails the
page but a folder with no results at all.

**Offline**: the page loads nothing. Figures are inline SVG; the circuitsvis views are drawn from
one inlined copy of circuitsvis' bundle (:class:`mechdiff.viz.views.ViewSet`). The file is written
atomically (:func:`mechdiff.results.atomic_write_text`).
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mechdiff.errors import OptionError, check_count
from mechdiff.report import sections
from mechdiff.results import Provenance, SavableResult, atomic_write_text, load_result
from mechdiff.results.folder import shown_path
from mechdiff.viz._save import figure_svg
from mechdiff.viz.views import ViewSet

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
"""The report's default file name inside the results folder."""
RESULT_JSON = "result.json"
MAX_DEPTH = 6
"""How deep below the results folder results are looked for."""


@dataclass
class Entry:
    """One result folder found under the results folder.

    Attributes:
        folder: where it is (relative to the results folder).
        result: the loaded result, or None when it did not load.
        meta: its ``result.json`` (type, version, hash), or ``{}`` when unreadable.
        error: why it did not load (None when it did).
        notes: what loading tolerated (unknown fields of a newer mechdiff).
    """

    folder: Path
    result: SavableResult | None
    meta: dict[str, Any]
    error: str | None = None
    notes: tuple[str, ...] = ()


@dataclass
class Page:
    """What section renderers draw into: figures, views, anchors, provenance blocks.

    Attributes:
        root: the results folder.
        top: rows of ranked tables.
        entries: every result found, in page order.
        views: the page's circuitsvis views (one inlined bundle for all).
    """

    root: Path
    top: int
    entries: list[Entry]
    views: ViewSet = field(default_factory=ViewSet)
    inside: set[int] = field(default_factory=set)
    anchors: dict[int, tuple[str, str]] = field(default_factory=dict)
    _figures: int = 0
    _anchors: set[str] = field(default_factory=set)

    # ---------------------------------------------------------------- building blocks

    def figure(self, fig: Figure, caption: str = "") -> str:
        """``fig`` inlined as SVG (closed afterwards), with an optional caption."""
        self._figures += 1
        svg = figure_svg(fig, prefix=f"fig{self._figures}")
        cap = f"<figcaption>{caption}</figcaption>" if caption else ""
        return f'<figure class="plot">{svg}{cap}</figure>'

    def anchor(self, text: str) -> str:
        """A unique id for a section headed ``text``."""
        base = "".join(c if c.isalnum() or c in "_-" else "-" for c in text.lower())
        base = base.strip("-") or "section"
        name, i = base, 1
        while name in self._anchors:
            i += 1
            name = f"{base}-{i}"
        self._anchors.add(name)
        return name

    @staticmethod
    def esc(text: object) -> str:
        return html.escape(str(text))

    @staticmethod
    def table(head: Iterable[str], rows: Iterable[Iterable[str]], cls: str = "") -> str:
        """A table; cells are HTML (escape text yourself)."""
        top = "".join(f"<th>{h}</th>" for h in head)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
        return f'<table class="{cls}"><thead><tr>{top}</tr></thead><tbody>{body}</tbody></table>'

    def reading(self, reading: Any, what: str, thresholds: Iterable[float] = ()) -> str:
        """A reading (:class:`mechdiff.compare.Reading`) as a box: words, value, interval,
        thresholds, and whether the interval straddles one."""
        import math

        value = (f"{reading.value:+.2f}" if math.isfinite(reading.value) else "n/a")
        if math.isfinite(reading.low) and math.isfinite(reading.high):
            value += f" [{reading.low:+.2f}, {reading.high:+.2f}]"
        cuts = ", ".join(f"{t:+.2f}" for t in thresholds)
        note = (f'<div class="note">{self.esc(reading.note())}.</div>' if not reading.firm
                else "")
        firm = "firm" if reading.firm else "tentative"
        return (f'<div class="reading {firm}"><div class="words">{self.esc(reading.words)}'
                f'</div><div class="numbers">{self.esc(what)} = {value}'
                + (f" \u00b7 thresholds {cuts}" if cuts else "") + f"</div>{note}</div>")

    def provenance(self, result: Any) -> str:
        """Where ``result`` came from: models, task, prompts hash, versions, its folder."""
        entry = self.entry_of(result)
        prov = sections.provenance_of(result) if result is not None else None
        return provenance_block(prov, entry)

    # ---------------------------------------------------------------- other results

    def anchor_for(self, result: Any) -> str:
        """The id of ``result``'s section on the page (``""`` when it has none)."""
        return self.anchors.get(id(result), ("", ""))[0]

    def entry_of(self, result: Any) -> Entry | None:
        return next((e for e in self.entries if e.result is result), None)

    def results_of(self, kind: type) -> list[SavableResult]:
        return [e.result for e in self.entries if isinstance(e.result, kind)]

    def views_for(self, result: Any) -> Any | None:
        """The saved :class:`~mechdiff.views.PairViews` that go with ``result``, marked as shown
        inside it: views of the same prompts (prompts hash) with the same label, else of the same
        prompts and models; None when there are none."""
        from mechdiff.views import PairViews

        prov = sections.provenance_of(result)
        if prov is None:
            return None
        label = getattr(result, "label", None)
        same = [v for v in self.results_of(PairViews)
                if v.provenance.prompts_hash == prov.prompts_hash]
        best = ([v for v in same if label is not None and v.label == label]
                or [v for v in same if _same_models(v.provenance, prov)])
        if not best:
            return None
        self.inside.add(id(best[0]))
        return best[0]


def _same_models(a: Provenance, b: Provenance) -> bool:
    return (a.base, a.finetuned) == (b.base, b.finetuned)


def provenance_block(prov: Provenance | None, entry: Entry | None) -> str:
    """A collapsed table of a result's provenance and folder."""
    rows = []
    if prov is not None:
        skipped = (f" (skipped: {', '.join(prov.processing_skipped)})"
                   if prov.processing_skipped else "")
        rows += [("base model", prov.base), ("fine-tuned model", prov.finetuned or "(none)"),
                 ("weight processing", prov.processing + skipped), ("task", prov.task),
                 ("prompts", f"{prov.n_prompts} (hash {prov.prompts_hash})"),
                 ("metric", prov.metric)]
        if prov.seed is not None:
            rows.append(("seed", str(prov.seed)))
        rows += [("versions", ", ".join(f"{k} {v}" for k, v in prov.versions.items())),
                 ("created", f"{prov.created} on {prov.host}")]
    else:
        rows.append(("provenance", "(this result records none)"))
    if entry is not None:
        rows.append(("folder", str(entry.folder) + "/"))
        meta = entry.meta
        if meta.get("type"):
            rows.append(("type", f"{meta.get('type')} (saved by mechdiff "
                                 f"{meta.get('mechdiff_version', '?')})"))
        digest = (meta.get("hash") or {}).get("content") if isinstance(meta.get("hash"),
                                                                         dict) else None
        if digest:
            rows.append(("content hash", f"sha256 {digest[:16]}\u2026"))
        rows += [("load note", n) for n in entry.notes]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return (f'<details class="provenance"><summary>Provenance</summary><table>{body}</table>'
            "</details>")


# ---------------------------------------------------------------- finding results


def find_results(root: Path) -> list[Entry]:
    """Every saved result under ``root`` (not those nested inside another result), loaded."""
    out: list[Entry] = []
    for folder in _result_folders(root, 0):
        meta = _read_meta(folder / RESULT_JSON)
        rel = folder.relative_to(root) if folder != root else Path(".")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = load_result(folder)
            except Exception as e:  # any folder that does not load is listed, never fatal
                out.append(Entry(rel, None, meta, error=f"{type(e).__name__}: {e}"))
                continue
        notes = tuple(str(w.message) for w in caught)
        out.append(Entry(rel, result, meta, notes=notes))
    return out


def _result_folders(folder: Path, depth: int) -> Iterable[Path]:
    if (folder / RESULT_JSON).is_file():
        yield folder
        return
    if depth >= MAX_DEPTH:
        return
    try:
        children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return
    for child in children:
        yield from _result_folders(child, depth + 1)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_json(path: Path) -> dict[str, Any]:
    return _read_meta(path) if path.is_file() else {}


def _ordered(entries: list[Entry], summary: dict[str, Any]) -> list[Entry]:
    """Registered order (pairs, comparisons, ...), pairs as ``summary.json`` lists them, then by
    folder; folders that did not load last."""
    pairs = list((summary.get("pairs") or {}).keys()) if isinstance(summary.get("pairs"),
                                                                      dict) else []

    def key(e: Entry) -> tuple[int, int, str]:
        if e.result is None:
            return (sections.GENERIC_ORDER + 1, 0, str(e.folder))
        label = getattr(e.result, "label", None)
        rank = pairs.index(label) if label in pairs else len(pairs)
        return (sections.order_of(e.result), rank, str(e.folder))

    return sorted(entries, key=key)


# ---------------------------------------------------------------- the page


def write_report(
    results_dir: str | os.PathLike[str],
    out_html: str | os.PathLike[str] | None = None,
    *,
    title: str | None = None,
    top: int = 10,
) -> Path:
    """Write one self-contained HTML report of every result saved under ``results_dir``.

    Args:
        results_dir: a folder mechdiff wrote (``mechdiff demo``, ``mechdiff patch``), or any
            folder holding saved results (searched up to :data:`MAX_DEPTH` levels down).
        out_html: the file to write; default ``results_dir/report.html``.
        title: the page title; default the run's title (``summary.json``) or the folder's name.
        top: rows of ranked tables.

    Returns:
        The written file (absolute).

    Raises:
        OptionError: ``results_dir`` is not a folder or holds no saved result, ``top`` is not a
            positive integer, or ``out_html`` is a folder.
        OutputError: the file cannot be written (nothing is left half-written).
    """
    check_count("top", top, minimum=1)
    root = Path(results_dir).resolve()
    if not root.is_dir():
        raise OptionError(f"{results_dir} is not a folder; give a folder mechdiff wrote results "
                          "to (e.g. the --out of mechdiff demo or mechdiff patch)")
    out = Path(out_html).resolve() if out_html is not None else root / REPORT_NAME
    if out.is_dir():
        raise OptionError(f"{out} is a folder; give the report's file name (e.g. report.html)")
    entries = find_results(root)
    if not entries:
        raise OptionError(f"no saved mechdiff results under {root}; give the folder a mechdiff "
                          "command wrote (it holds folders with result.json)")
    summary = _read_json(root / "summary.json")
    page = Page(root=root, top=top, entries=_ordered(entries, summary))
    text = render_page(page, summary, _read_json(root / "mechdiff_run.json"), title)
    return atomic_write_text(out, text)


def render_page(page: Page, summary: dict[str, Any], run: dict[str, Any],
                title: str | None) -> str:
    """The whole page's HTML."""
    import mechdiff.viz.html_sections  # noqa: F401  (registers HTML of mechdiff's own types)

    heading = title or summary.get("title") or f"mechdiff report: {shown_path(page.root).name}"
    for e in page.entries:
        name = (sections.title_of(e.result) if e.result is not None
                else f"{e.meta.get('type') or 'unreadable'} ({e.folder})")
        page.anchors[id(e.result) if e.result is not None else id(e)] = (page.anchor(name), name)
    body: list[str] = []
    toc: list[tuple[str, str]] = []
    overview = overview_html(page)
    if overview:
        toc.append(("overview", "Overview"))
        body.append(f'<section id="overview"><h2>Overview</h2>{overview}</section>')
    for e in page.entries:  # in page order: pairs come before the views they show
        if e.result is not None and id(e.result) in page.inside:
            continue
        anchor, name, content = render_entry(page, e)
        toc.append((anchor, name))
        body.append(content)
    intro = summary.get("intro", "")
    nav = "".join(f'<li><a href="#{a}">{html.escape(n)}</a></li>' for a, n in toc)
    return TEMPLATE.format(
        title=html.escape(heading), intro=f"<p>{inline_code(intro)}</p>" if intro else "",
        meta=meta_html(page, run), nav=nav, body="\n".join(body), style=STYLE,
        scripts=page.views.scripts(),
    )


def inline_code(text: str) -> str:
    """Escaped HTML of one line of Markdown-ish text, its `code` spans as ``<code>``."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def render_entry(page: Page, entry: Entry) -> tuple[str, str, str]:
    """One result's section: its registered HTML, else the generic section. A renderer that
    fails gives the generic section and the error, never a failed page."""
    if entry.result is None:
        anchor, name = page.anchors.get(id(entry)) or (page.anchor("unreadable"), "unreadable")
        return anchor, name, (
            f'<section id="{anchor}" class="result failed"><h2>{html.escape(name)}</h2>'
            f'<p class="error">This folder did not load: {html.escape(entry.error or "")}</p>'
            + raw_fields_html(entry) + provenance_block(_raw_provenance(entry.meta), entry)
            + "</section>")
    result = entry.result
    anchor, name = page.anchors.get(id(result)) or (page.anchor("result"), "result")
    section = sections.section_for(result)
    content = ""
    if section is not None and section.html is not None:
        try:
            content = section.html(result, page)
        except Exception as e:  # a broken renderer: show what we can
            log.warning("the HTML section of %s failed: %s", entry.folder, e)
            why = html.escape(f"{type(e).__name__}: {e}")
            content = (f'<p class="error">This section could not be drawn ({why}); its fields '
                       "follow.</p>" + generic_html(page, result))
    else:
        content = generic_html(page, result)
    return anchor, name, (f'<section id="{anchor}" class="result"><h2>{html.escape(name)}</h2>'
                          f"{content}</section>")


def generic_html(page: Page, result: Any) -> str:
    """A result no renderer knows: its fields (tensors by shape and range, nested results by
    type) and its provenance."""
    rows = [(html.escape(n), html.escape(v)) for n, v in sections.describe_fields(result)]
    return (f'<p class="note">{html.escape(type(result).__name__)}: no report section is '
            "registered for this result type; its fields:</p>"
            + Page.table(["field", "value"], rows, "fields") + page.provenance(result))


def raw_fields_html(entry: Entry) -> str:
    fields = entry.meta.get("fields")
    if not isinstance(fields, dict) or not fields:
        return ""
    rows = [(html.escape(str(k)), html.escape(sections.describe(v)))
            for k, v in fields.items() if k != "provenance"]
    tensors = entry.meta.get("tensors")
    if isinstance(tensors, dict):
        rows += [(html.escape(str(k)), html.escape(f"tensor {v.get('dtype')} {v.get('shape')}"))
                 for k, v in tensors.items() if isinstance(v, dict)]
    return Page.table(["field (as saved)", "value"], rows, "fields")


def _raw_provenance(meta: dict[str, Any]) -> Provenance | None:
    fields = meta.get("fields")
    prov = fields.get("provenance") if isinstance(fields, dict) else None
    if not isinstance(prov, dict):
        return None
    known = {f.name for f in dataclasses.fields(Provenance)}
    try:
        return Provenance(**{k: (tuple(v) if k == "processing_skipped" else v)
                             for k, v in prov.items() if k in known})
    except TypeError:
        return None


def overview_html(page: Page) -> str:
    """One row per pair: the behaviour gap with its interval, KL, the strongest component and
    the series-index reading."""
    from mechdiff.viz.html_sections import overview_rows

    rows = overview_rows(page)
    if not rows:
        return ""
    return ('<p class="note">The behaviour gap of each fine-tune against its base (mean over '
            "prompts of fine-tuned minus base metric, 95% bootstrap interval over prompts) and "
            "where it comes from.</p>"
            + Page.table(["pair", "task", "metric: base \u2192 fine-tuned", "gap [95% CI]",
                          "KL(FT \u2016 base), last token", "strongest component",
                          "series index"], rows, "overview"))


def meta_html(page: Page, run: dict[str, Any]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        mine = version("mechdiff")
    except PackageNotFoundError:
        mine = "unknown"
    shown = html.escape(str(shown_path(page.root)))  # not a run's temporary folder
    parts = [f"Results folder <code>{shown}</code>"]
    if run.get("command"):
        opts = ", ".join(f"{k}={v}" for k, v in (run.get("options") or {}).items()
                         if v is not None)
        parts.append(f"written by <code>mechdiff {html.escape(str(run['command']))}</code>"
                     + (f" ({html.escape(opts)})" if opts else "")
                     + (f", finished {html.escape(str(run.get('finished')))}"
                        if run.get("finished") else ""))
    n_ok = sum(e.result is not None for e in page.entries)
    n_bad = len(page.entries) - n_ok
    parts.append(f"{n_ok} result{'s' if n_ok != 1 else ''}"
                 + (f", {n_bad} not loaded" if n_bad else ""))
    now = datetime.now(UTC).isoformat(timespec="seconds")
    parts.append(f"page written {now} by mechdiff {html.escape(mine)}; rebuild it with "
                 f"<code>mechdiff report {shown}</code>")
    return "<p class=\"meta\">" + " \u00b7 ".join(parts) + "</p>"


STYLE = """
:root { --fg: #1a1a1a; --muted: #5a5a5a; --line: #d9d9d9; --bg-soft: #f6f6f4; }
body { font: 15px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
  color: var(--fg); margin: 0 auto; max-width: 1240px; padding: 0 24px 64px; }
h1 { font-size: 26px; margin: 28px 0 4px; } h2 { font-size: 21px; margin: 0 0 10px; }
h3 { font-size: 16px; margin: 22px 0 8px; }
section.result, section#overview { border-top: 2px solid var(--fg); padding-top: 14px;
  margin-top: 34px; }
.meta, .note { color: var(--muted); font-size: 13px; } .error { color: #b2182b; }
nav ol { columns: 2; font-size: 14px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0 14px; }
th, td { padding: 3px 8px; border-bottom: 1px solid var(--line); text-align: left;
  vertical-align: top; }
td.num, table.ranked td, table.overview td { font-variant-numeric: tabular-nums; }
table.ranked td:nth-child(n+3) { text-align: right; white-space: nowrap; }
table.ranked th { text-align: center; } .ci { color: var(--muted); font-size: 11.5px; }
figure.plot { margin: 10px 0; display: inline-block; vertical-align: top; max-width: 100%; }
figure.plot svg { max-width: 100%; height: auto; }
figure.plot figcaption { color: var(--muted); font-size: 12.5px; max-width: 640px; }
.figures { display: flex; flex-wrap: wrap; gap: 12px 22px; align-items: flex-start; }
.reading { border-left: 4px solid #1a1a1a; background: var(--bg-soft); padding: 8px 12px;
  margin: 10px 0; } .reading.tentative { border-left-color: #E69F00; }
.reading .words { font-weight: 600; } .reading .numbers { font-size: 13px; }
details.provenance { margin: 10px 0; font-size: 13px; }
details.provenance th { color: var(--muted); font-weight: normal; white-space: nowrap; }
details.prompt { border: 1px solid var(--line); border-radius: 4px; padding: 6px 10px;
  margin: 10px 0; } details.prompt > summary { cursor: pointer; font-size: 14px; }
.prompt-text { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px;
  color: var(--muted); }
.token-row { margin: 8px 0 12px; } .head-row { margin: 14px 0 6px; }
.head-label { font-weight: 600; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
.triple { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 14px; }
.triple figure { margin: 0; } .triple figcaption { text-align: center; font-size: 12.5px;
  color: var(--muted); } .cv-view { min-height: 24px; }
.cv-pattern { padding: 0 15px; box-sizing: border-box; overflow: hidden; }
.cv-pattern canvas { max-width: 100% !important; height: auto !important; }
.triple figure { min-width: 0; overflow: hidden; }
pre { white-space: pre-wrap; font-size: 12.5px; background: var(--bg-soft); padding: 8px; }
.grid-wrap { overflow-x: auto; } table.grid td { width: 16px; height: 14px; padding: 0;
  border: 1px solid #fff; } table.grid th { font-weight: normal; font-size: 11px; padding: 0 3px;
  font-family: ui-monospace, "DejaVu Sans Mono", monospace; white-space: nowrap; }
table.grid tr:first-child th { writing-mode: vertical-rl; transform: rotate(180deg); }
code { font-size: 12.5px; background: var(--bg-soft); padding: 0 3px; }
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="mechdiff">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header><h1>{title}</h1>{intro}{meta}</header>
<nav><ol>{nav}</ol></nav>
{body}
{scripts}
</body>
</html>
"""
