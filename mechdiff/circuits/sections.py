"""Report sections of the circuit results (:mod:`mechdiff.report.sections`): text, Markdown and
HTML of a :class:`~mechdiff.circuits.CircuitComparison`, and short sections of the single-model
results (edge scores, faithfulness curves, cross-model edge scores, circuits, verdicts).

Imported by the report the first time it meets one of these types. Compute only: the HTML
renderer imports :mod:`mechdiff.viz` when it runs, never at import time.

The comparison's HTML section leads with the verdict (label, the share of prompt resamples giving
it, the reasons, each number with its 95% interval and the thresholds it is compared with, the
sensitivity notes), then the two figures (:func:`~mechdiff.viz.plot_faithfulness`,
:func:`~mechdiff.viz.plot_circuit_graph`), the shared / new / dropped nodes and the edges whose
``|score|`` grew and shrank most. Every text taken from a result is escaped.
"""

from __future__ import annotations

import html
import math
from typing import Any

from mechdiff.circuits.attribution import EdgeScores
from mechdiff.circuits.circuit import Circuit
from mechdiff.circuits.compare import SIZE_RULES, CircuitComparison
from mechdiff.circuits.cross import CrossEdgeScores
from mechdiff.circuits.faithfulness import Faithfulness, FaithfulnessCurve
from mechdiff.circuits.verdict import (
    _USES,
    FIXED,
    NUMBERS,
    Verdict,
    fixed,
    share,
    signed,
    split_text,
)
from mechdiff.report.sections import register

_esc = html.escape
ORDER = 15
"""Circuit comparisons come after pairs (10) and before fine-tune comparisons (20)."""
DETAIL_ORDER = 16
"""Single-model circuit results, right after the comparisons."""

FIRM_SHARE = 90.0
"""A verdict drawn as firm (not tentative) needs no sensitivity note and this share (%) of the
prompt resamples agreeing with it."""

NUMBER_WORDS: dict[str, str] = {
    "base_in_ft": "base circuit inside the fine-tuned model (normalized faithfulness)",
    "ft_in_base": "fine-tuned circuit inside the base model (normalized faithfulness)",
    "score_rank": "Spearman rank correlation of every edge's score in the two models",
    "carried": "share of the behaviour gap carried by the base circuit's edges (cross-model "
               "edge patching)",
    "new_mass": "share of the fine-tuned circuit's |score| on edges outside the base circuit",
    "edge_iou": "edge IoU of the two circuits",
    "node_iou": "node IoU of the two circuits",
}
"""What each number of a :class:`Verdict` measures, in words."""


def _name(model: str) -> str:
    return model.rsplit("/", 1)[-1] if model.startswith(("/", ".", "~")) else model


def title(c: CircuitComparison) -> str:
    p = c.provenance
    return f"Circuits: {_name(p.base)} \u2192 {_name(p.finetuned)} on {p.task}"


def _num(value: float, sign: bool = True) -> str:
    if not math.isfinite(value):
        return "n/a"
    return fixed(value, sign=sign)


def _interval(lo: float, hi: float) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "\u2013"
    return f"[{signed(lo)}, {signed(hi)}]"


# ---------------------------------------------------------------- text and Markdown


def comparison_text(c: CircuitComparison, top: int | None = None) -> str:
    return c.summary()


def comparison_markdown(c: CircuitComparison, top: int | None = None) -> str:
    v = c.verdict
    own = v.frequency.get(v.label, 0)
    # an "undetermined" that overrides the rules' label (too few prompts, an unsettled split)
    # is given by no resample: say what the resamples gave instead of "in 0%"
    how = (f"in {share(own)} of {v.n_boot} prompt resamples" if own > 0 else
           f"{v.n_boot} prompt resamples: {split_text(v.frequency)}")
    return (f"## {title(c)}\n\n**Verdict: {v.label}** ({how})\n\n"
            f"```\n{c.summary()}\n```\n")


def _block_markdown(heading: str, body: str) -> str:
    return f"## {heading}\n\n```\n{body}\n```\n"


# ---------------------------------------------------------------- HTML


def verdict_html(v: Verdict) -> str:
    """The verdict as the page's reading box: label, reasons, numbers with intervals and the
    thresholds each is compared with, notes."""
    freq = v.frequency.get(v.label, 0)
    firm = "firm" if not v.notes and 100 * freq >= FIRM_SHARE else "tentative"
    reasons = "".join(f"<li>{_esc(r)}</li>" for r in v.reasons)
    rows = []
    for key in NUMBERS:
        if key not in v.numbers:
            continue
        lo, hi = v.intervals.get(key, (math.nan, math.nan))
        span = "circuits held fixed" if key in FIXED else _interval(lo, hi)
        cuts = ", ".join(f"{_esc(name)} {v.thresholds[name]:g}" for name in _USES.get(key, ())
                         if name in v.thresholds) or "\u2013 (reported)"
        if v.extra.get("left_out") == key:
            cuts = "left out: no scale (see the notes)"
        rows.append(f"<tr><td><code>{_esc(key)}</code></td><td>{_esc(NUMBER_WORDS.get(key, ''))}"
                    f"</td><td class=\"num\"><b>{_num(v.numbers[key])}</b></td>"
                    f"<td class=\"num\">{span}</td><td>{cuts}</td></tr>")
    table = ('<table class="verdict"><thead><tr><th>number</th><th>what it measures</th>'
             "<th>value</th><th>95% interval</th><th>compared with</th></tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>")
    notes = "".join(f'<div class="note">Note: {_esc(n)}</div>' for n in v.notes)
    others = ", ".join(f"{_esc(k)} {share(f)}" for k, f in v.frequency.items()
                       if k != v.label and f > 0)
    how = (f"in {share(freq)} of {v.n_boot} resamples of the prompts (seed {v.seed})"
           + (f"; otherwise {others}" if others else "") if freq > 0 else
           f"{v.n_boot} resamples of the prompts (seed {v.seed}) gave {others}")
    return (f'<div class="reading {firm} verdict"><div class="words">Verdict: {_esc(v.label)}'
            f'</div><div class="numbers">{how}'
            + f"</div><ul>{reasons}</ul>{notes}</div>{table}"
            '<p class="note">Thresholds: ' + ", ".join(
                f"{_esc(k)} {val:g}" for k, val in v.thresholds.items()) + ".</p>")


def _labels(names: tuple[str, ...]) -> str:
    return ", ".join(f"<code>{_esc(n)}</code>" for n in names) or "\u2013"


def _size_rule(c: CircuitComparison) -> str:
    extra = c.verdict.extra
    if extra.get("size_rule") == SIZE_RULES["edges"]:
        return "a fixed number of edges (edges=)"
    if extra.get("size_rule") == SIZE_RULES["given"]:
        return "given by the caller (base_circuit=, ft_circuit=)"
    return f"the smallest MIB fraction of edges faithful within |1 - f| <= {extra.get('close', '?')}"


def comparison_html(c: CircuitComparison, page: Any) -> str:
    """The verdict, both figures, the nodes and the edges that changed most, the provenance."""
    from mechdiff.viz import plot_circuit_graph, plot_faithfulness

    p, g = c.provenance, c.graph
    bc = c.base_curve
    out = [verdict_html(c.verdict)]
    out.append(
        f"<p>Task <code>{_esc(p.task)}</code>, {p.n_prompts} prompts, metric "
        f"<code>{_esc(p.metric)}</code>; edge scores <code>{_esc(bc.method)}</code>, "
        f"{_esc(bc.ablation)} ablation, {_esc(bc.rule)} circuits on a graph of {g.n_edges} "
        f"edges. Each model's circuit: {_esc(_size_rule(c))}: base {100 * c.base_size:.3g}% ({c.base_circuit.n_edges} edges), fine-tuned "
        f"{100 * c.ft_size:.3g}% ({c.ft_circuit.n_edges} edges). Cross-faithfulness: base "
        f"circuit in the fine-tuned model <b>{_num(c.base_in_ft.value)}</b>, fine-tuned circuit "
        f"in the base <b>{_num(c.ft_in_base.value)}</b>.</p>")
    out.append('<div class="figures">' + page.figure(
        plot_faithfulness(c),
        "Normalized faithfulness of each model's own circuits against their size (MIB "
        "fractions), 95% bootstrap intervals over prompts; open markers: each model's chosen "
        "circuit run inside the other model (the verdict's intervals); grey band: faithful "
        "within the size rule's tolerance.")
        + page.figure(
        plot_circuit_graph(c),
        "Both circuits, input at the bottom and logits on top: black edges are in both, "
        "vermillion only in the fine-tuned circuit, dashed blue only in the base circuit; "
        "width \u221d |score| (the fine-tuned model's, the base model's for dropped edges).")
        + "</div>")
    out.append("<h3>Nodes</h3>" + page.table(
        ["", "count", "nodes"],
        [["shared (both circuits)", str(len(c.shared_nodes)), _labels(c.shared_nodes)],
         ["new (fine-tuned only)", str(len(c.new_nodes)), _labels(c.new_nodes)],
         ["dropped (base only)", str(len(c.dropped_nodes)), _labels(c.dropped_nodes)]])
        + f'<p class="note">Edges: {c.n_shared_edges} shared, {c.n_new_edges} new, '
          f"{c.n_dropped_edges} dropped.</p>")
    rows = []
    for kind, edges in (("|score| grew", c.strengthened), ("|score| shrank", c.weakened),
                        ("sign flipped", c.flipped)):
        for edge, b, f in edges[: page.top]:
            rows.append([kind, f"<code>{_esc(edge)}</code>", _num(b), _num(f),
                         _num(abs(f) - abs(b))])
    out.append("<h3>Edges whose |score| changed most</h3>" + page.table(
        ["", "edge", "base score", "fine-tuned score", "\u0394|score|"], rows, "ranked")
        + '<p class="note">Scores estimate M(edge ablated) \u2212 M(clean) of the mean metric '
          "(EAP-IG's sign: an edge that supports the behaviour scores negative). Grew / shrank: "
          "the same sign in both models; sign flipped: the edge supports the behaviour in one "
          "model and opposes it in the other.</p>")
    out.append(f"<details><summary>Summary as text</summary><pre>{_esc(c.summary())}</pre>"
               "</details>")
    out.append(page.provenance(c))
    return "\n".join(out)


def _pre_html(body: str) -> Any:
    """An HTML renderer: the result's text in a ``<pre>``, and its provenance."""
    def render(result: Any, page: Any) -> str:
        return f"<pre>{_esc(_BODIES[body](result, page.top))}</pre>" + page.provenance(result)

    return render


_BODIES = {
    "scores": lambda s, top: s.table(top or 10),
    "curve": lambda c, top: c.table(),
    "cross": lambda x, top: x.table(top or 10),
    "circuit": lambda c, top: c.table(top or 10),
    "faith": lambda f, top: f.summary(),
    "verdict": lambda v, top: v.text(),
}


def _register() -> None:
    register(CircuitComparison, order=ORDER, title=title, text=comparison_text,
             markdown=comparison_markdown, html=comparison_html)
    simple = (
        (EdgeScores, "scores", lambda s: f"Edge attribution: {_name(s.provenance.base)} on "
                                         f"{s.provenance.task}"),
        (FaithfulnessCurve, "curve", lambda c: f"Faithfulness curve: {_name(c.provenance.base)}"
                                               f" on {c.provenance.task}"),
        (CrossEdgeScores, "cross", lambda x: f"Edges across models: {_name(x.provenance.base)} "
                                             f"vs {_name(x.provenance.finetuned)} on "
                                             f"{x.provenance.task}"),
        (Circuit, "circuit", lambda c: f"Circuit ({c.rule}, {c.n_edges} edges)"),
        (Faithfulness, "faith", lambda f: f"Faithfulness: {_name(f.provenance.base)} on "
                                          f"{f.provenance.task}"),
        (Verdict, "verdict", lambda v: f"Verdict: {v.label}"),
    )
    for kind, body, name in simple:
        register(kind, order=DETAIL_ORDER, title=name,
                 text=lambda r, top, body=body: _BODIES[body](r, top),
                 markdown=lambda r, top, body=body, name=name: _block_markdown(
                     name(r), _BODIES[body](r, top)),
                 html=_pre_html(body))
    register(Verdict, html=lambda v, page: verdict_html(v))


_register()
