"""HTML sections of mechdiff's own result types, for the report (:mod:`mechdiff.report.html`).

Registered with :func:`mechdiff.report.sections.register` when imported (the report imports this
module). Each renderer takes a saved result and the page, and returns its section's HTML:
figures (drawn by :mod:`mechdiff.viz` from the result alone, inlined as SVG), ranked tables with
95% intervals over prompts (exact patching and its attribution estimate side by side), readings
with their numbers and thresholds, circuitsvis views where saved views go with the result, and
the result's provenance.
"""

from __future__ import annotations

import html
import math
from typing import Any

from mechdiff.compare import Agreement, FinetuneComparison, Interaction, PromptedBaseComparison
from mechdiff.compare.finetunes import BANDS as FINETUNE_BANDS
from mechdiff.gap import GapResult
from mechdiff.patching import PatchResult
from mechdiff.pipeline.circuits import CircuitAnalysis
from mechdiff.pipeline.pair import PairAnalysis
from mechdiff.report import fmt, text
from mechdiff.report.sections import register
from mechdiff.views import PairViews
from mechdiff.views.tokens import readable, shown
from mechdiff.viz import _style as st
from mechdiff.viz._gap import plot_gap
from mechdiff.viz._pair import pair_figure_set, prompted_profiles
from mechdiff.viz._patching import plot_patch
from mechdiff.viz.views import position_grid_html, views_html

_esc = html.escape
METHOD_LABELS = {"exact": "exact", "attribution": "attribution"}


# ---------------------------------------------------------------- pieces


def _score_cell(value: float, low: float, high: float, limit: float) -> str:
    """A score, its interval, and a pale background on the diverging scale."""
    if not math.isfinite(value):
        return "\u2013"
    cmap = st.diverging_cmap(st.DIVERGING)
    r, g, b, _ = cmap(0.5 + 0.35 * max(-1.0, min(1.0, value / limit)))
    pale = st.hex_colour((0.5 + 0.5 * r, 0.5 + 0.5 * g, 0.5 + 0.5 * b, 1.0))
    ci = fmt.interval(low, high)
    return (f'<span style="background:{pale};padding:0 3px">{fmt.score(value)}</span>'
            + (f' <span class="ci">{ci}</span>' if ci else ""))


def ranked_table(a: PairAnalysis, top: int | None) -> str:
    """Components ranked by the ranking method, every method's score and interval per direction
    (exact and attribution side by side)."""
    methods = [m for m in ("exact", "attribution") if a.results(m)]
    rows = a.ranking()[:top]
    limit = max((abs(v[0]) for row in rows for v in row.scores.values()
                 if math.isfinite(v[0])), default=1.0) or 1.0
    first = "".join(f'<th colspan="{len(methods)}">{_esc(fmt.HEADINGS.get(d, d))}</th>'
                    for d in a.directions)
    second = "".join(f"<th>{METHOD_LABELS[m]}</th>" for _ in a.directions for m in methods)
    body = []
    for i, row in enumerate(rows, 1):
        cells = "".join(
            f"<td>{_score_cell(*row.scores.get((m, d), (math.nan,) * 3), limit)}</td>"
            for d in a.directions for m in methods)
        body.append(f"<tr><td>{i}</td><td><code>{_esc(row.component)}</code></td>{cells}</tr>")
    return (f'<table class="ranked"><thead><tr><th></th><th></th>{first}</tr><tr><th>rank</th>'
            f"<th>component</th>{second}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f'<p class="note">Ranked by {a.ranked_by} scores: the fraction of the behaviour gap '
            "closed by patching one component alone, with its 95% bootstrap interval over "
            "prompts. FT\u2192base (sufficiency): the fine-tuned component put into the base; "
            "base\u2192FT (necessity): the base component put back into the fine-tuned model."
            + (" Attribution is the gradient estimate of the exact patch." if len(methods) == 2
               else "") + "</p>")


def gap_numbers(g: GapResult) -> str:
    """The gap in words and numbers, and the next tokens that moved most."""
    p = g.provenance
    lo, hi = g.gap_interval()
    rose = ", ".join(f"<code>{_esc(shown(readable(t)))}</code> {d:+.3f}"
                     for t, d in zip(g.rose_tokens[:5], g.rose_delta.tolist(), strict=False))
    fell = ", ".join(f"<code>{_esc(shown(readable(t)))}</code> {d:+.3f}"
                     for t, d in zip(g.fell_tokens[:5], g.fell_delta.tolist(), strict=False))
    return (f"<p>Task <code>{_esc(p.task)}</code>, {p.n_prompts} prompts, metric "
            f"<code>{_esc(p.metric)}</code>: base {float(g.base_metric.mean()):.3f} \u2192 "
            f"fine-tuned {float(g.finetuned_metric.mean()):.3f}, <b>gap {g.gap:+.3f} "
            f"[{lo:+.2f}, {hi:+.2f}]</b>; KL(FT \u2016 base) at the last token "
            f"{float(g.kl_final.mean()):.3f}, over all tokens {float(g.kl_mean.mean()):.3f} "
            "nats.</p>"
            + (f'<p class="note">Next-token probability (last token, mean over prompts) rose '
               f"most for {rose}; fell most for {fell}.</p>" if rose or fell else ""))


def figure_caption(name: str) -> str:
    """What a figure of :func:`~mechdiff.viz._pair.pair_figure_set` shows, from its name."""
    if name == "ranked":
        return ("The strongest components: exact patching (dark) and its attribution estimate "
                "(orange) in each direction; error bars: 95% intervals over prompts; dotted line: "
                "the whole gap.")
    method = "attribution patching (gradient estimate)" if name.startswith(
        "attribution_") else "exact patching"
    kind, _, rest = name.removeprefix("attribution_").partition("_")
    what = {"heads": "each attention head (after its own W_O)", "attn": "each attention layer",
            "mlp": "each MLP", "resid": "the residual stream entering each block"}.get(kind, kind)
    grid = ("one colour scale centred at 0 (red: closes the gap, blue: widens it); a dot marks a "
            "cell whose 95% interval over prompts includes 0; grey: not scored" if kind == "heads" else
            "bars: 95% intervals over prompts as error bars, the dotted line is the whole gap; "
            "layer \u00d7 position grids: a dot marks a cell whose interval includes 0")
    sides = {"": "sufficiency (FT\u2192base) left, necessity (base\u2192FT) right",
             "ft_to_base": "sufficiency (FT\u2192base)",
             "base_to_ft": "necessity (base\u2192FT)"}.get(rest, rest)
    return (f"{method[0].upper()}{method[1:]}: fraction of the gap closed by patching {what} "
            f"alone; {sides}; {grid}.")


def overview_rows(page: Any) -> list[list[str]]:
    rows = []
    for a in page.results_of(PairAnalysis):
        g, p = a.gap, a.gap.provenance
        lo, hi = g.gap_interval()
        ranking = a.ranking()
        best = ""
        if ranking:
            row = ranking[0]
            d = max((d for (m, d) in row.scores if m == a.ranked_by),
                    key=lambda d: abs(row.score(a.ranked_by, d)), default=None)
            if d is not None:
                best = (f"<code>{_esc(row.component)}</code> "
                        f"{fmt.score_ci(*row.scores[(a.ranked_by, d)])} "
                        f"({_esc(fmt.HEADINGS.get(d, d))})")
        series = "\u2013"
        if a.interaction is not None:
            x = a.interaction
            series = (f"{fmt.rho_ci(x.index, x.index_low, x.index_high)}: "
                      f"{_esc(x.reading().words.split(':')[0])}")
        anchor = f"#{page.anchor_for(a)}" if page.anchor_for(a) else ""
        name = _esc(a.label) + (f"<br><span class=\"note\">{_esc(a.mechanism)}</span>"
                                if a.mechanism else "")
        rows.append([f'<a href="{anchor}">{name}</a>' if anchor else name,
                     f"<code>{_esc(p.task)}</code> ({p.n_prompts})",
                     f"{_esc(p.metric)}: {float(g.base_metric.mean()):.3f} \u2192 "
                     f"{float(g.finetuned_metric.mean()):.3f}",
                     f"<b>{g.gap:+.3f}</b> [{lo:+.2f}, {hi:+.2f}]",
                     f"{float(g.kl_final.mean()):.3f}", best, series])
    return rows


# ---------------------------------------------------------------- sections


def pair_html(a: PairAnalysis, page: Any) -> str:
    """A pair: gap, ranked table, agreement and series index, figures, views, provenance."""
    out = [f"<p>{_esc(a.description)}</p>" if a.description else "", gap_numbers(a.gap)]
    figures = list(pair_figure_set(a, top=page.top + 2))
    gap_fig = next(fig for name, fig in figures if name == "gap")
    out.append(page.figure(gap_fig, "Left: each prompt's metric on the base (x) and the "
                           "fine-tuned model (y). Right: the next tokens whose probability "
                           "moved most."))
    out.append("<h3>Components ranked</h3>" + ranked_table(a, page.top))
    notes = text.agreement_lines(a)
    if notes:
        out.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>")
    if a.interaction is not None:
        out.append(interaction_html(a.interaction, page, provenance=False))
    out.append("<h3>Figures</h3><div class=\"figures\">" + "".join(
        page.figure(fig, _esc(figure_caption(name))) for name, fig in figures
        if name != "gap") + "</div>")
    views = page.views_for(a)
    if views is not None:
        per_pos = [r for r in [*a.exact.values(), *a.estimates.values()] if "pos" in r.dims]
        for r in per_pos:
            out.append(f"<h3>Per-position patching over the prompts' tokens: {_esc(r.sites)} "
                       f"{_esc(r.method)} {_esc(r.direction)}</h3>"
                       + position_grid_html(r, views, page.views))
        out.append("<h3>Where the two models disagree, token by token</h3>"
                   + views_html(views, page.views))
    else:
        out.append('<p class="note">No saved views go with this pair (attention patterns and '
                   "per-token divergence need the models once: "
                   "<code>mechdiff.views.pair_views</code>).</p>")
    out.append(page.provenance(a))
    return "\n".join(out)


def circuits_html(a: CircuitAnalysis, page: Any) -> str:
    """A pair's circuits: the comparison and its verdict, then the edges carrying the gap."""
    from mechdiff.circuits.sections import comparison_html

    out = [comparison_html(a.comparison, page)]
    x = a.cross
    if x is not None:
        lo, hi = x.exact_interval()
        rows = [[str(i), f"<code>{_esc(r.label)}</code>",
                 _score_cell(float(x.exact[r.index]), float(lo[r.index]), float(hi[r.index]),
                             1.0),
                 fmt.score(float(x.estimate[r.index]))]
                for i, r in enumerate(x.top(page.top, by=x.ranked_by), 1)]
        out.append(
            f"<h3>Edges carrying the gap ({_esc(x.direction)})</h3>"
            f"<p>Each edge patched alone, the fine-tuned model's upstream output into the base "
            f"model's run: the fraction of the gap it closes, exactly for the {len(x.exact_edges)}"
            f" edges of largest estimated share ({_esc(x.method)}), with 95% intervals over "
            f"prompts. Every edge at once closes {x.all_edges:.3f} of the gap.</p>"
            + page.table(["rank", "edge", "exact [95% interval]", "estimate"], rows, "ranked")
            + page.provenance(x))
    return "\n".join(out)


def patch_html(r: PatchResult, page: Any) -> str:
    """One patching result alone: its figure, its top sites with intervals, its grid over the
    prompts' tokens when saved views of the same prompts exist."""
    out = [f"<p><code>{_esc(r.sites)}</code> patched {_esc(r.direction)} "
           f"({_esc(r.role or r.method)}), positions {_esc(r.positions)}, method "
           f"<code>{_esc(r.method)}</code>; donor {float(r.donor.mean()):.3f}, receiver "
           f"{float(r.receiver.mean()):.3f}, gap {r.gap:+.3f}.</p>",
           page.figure(plot_patch(r))]
    top = r.top(page.top)
    limit = max((abs(s.score) for s in top if math.isfinite(s.score)), default=1.0) or 1.0
    out.append(page.table(
        ["rank", "site", "fraction of gap [95% CI]", "metric change"],
        [[str(i), f"<code>{_esc(s.label)}</code>", _score_cell(s.score, s.low, s.high, limit),
          f"{s.effect:+.4f}"] for i, s in enumerate(top, 1)], "ranked"))
    views = page.views_for(r)
    if views is not None and "pos" in r.dims:
        out.append("<h3>Over the prompts' own tokens</h3>" + position_grid_html(r, views,
                                                                             page.views))
    out.append(page.provenance(r))
    return "\n".join(out)


def gap_html(g: GapResult, page: Any) -> str:
    return "\n".join([gap_numbers(g), page.figure(plot_gap(g)), page.provenance(g)])


def interaction_html(x: Interaction, page: Any, *, provenance: bool = True) -> str:
    """The series index as a reading with its totals."""
    what = (f"series index ({'+'.join(x.sites)}): necessity total {x.necessity:.2f} "
            f"{fmt.interval(x.necessity_low, x.necessity_high)} \u2212 sufficiency total "
            f"{x.sufficiency:.2f} {fmt.interval(x.sufficiency_low, x.sufficiency_high)}")
    return page.reading(x.reading(), what, (x.threshold,)) + (page.provenance(x) if provenance
                                                              else "")


def agreement_html(x: Agreement, page: Any) -> str:
    return (f"<p>{_esc(text.agreement_text(x))}; top {x.top_k} shared: {x.top_shared}/"
            f"{x.top_k}.</p>" + page.provenance(x))


def finetunes_html(c: FinetuneComparison, page: Any) -> str:
    """Two fine-tunes of one behaviour: the reading, each comparison's numbers, the gaps."""
    r = c.reading()
    where = f" in layers {fmt.span(c.layers)}" if c.layers else ""
    out = [page.reading(r, f"mean Spearman rho of {c.method} scores{where}", c.thresholds),
           "<p>Gaps: " + ", ".join(f"{_esc(k)} {v:+.3f}" for k, v in c.gaps.items()) + ".</p>"]
    rows = [[_esc(fmt.KIND_NAMES.get(x.sites, x.sites)), _esc(fmt.HEADINGS.get(x.direction,
                                                                               x.direction)),
             fmt.rho_ci(x.rho, x.rho_low, x.rho_high),
             fmt.rho_ci(x.rho_layers, x.rho_layers_low, x.rho_layers_high),
             f"{x.top_shared}/{x.top_k}"] for x in c.agreements.values()]
    out.append(page.table(["sites", "direction", "rho, all sites [95% CI]",
                           f"rho, layers {fmt.span(c.layers)}", "top shared"], rows))
    bands = "; ".join(f"\u2265 {b.at_least:+.1f}: {b.words}" for b in FINETUNE_BANDS
                      if math.isfinite(b.at_least))
    out.append(f'<p class="note">Readings: {_esc(bands)}; below: '
               f"{_esc(FINETUNE_BANDS[-1].words)}.</p>")
    first = next(iter(c.agreements.values()), None)
    out.append(page.provenance(first if first is not None else c))
    return "\n".join(out)


def prompted_html(c: PromptedBaseComparison, page: Any) -> str:
    """The prompted base as a third model: metrics, both profiles, correlations, reading."""
    r = c.reading()
    span = fmt.span(c.changed_layers)
    where = f"within the layers the fine-tune changed ({span})" if c.restricted else "all layers"
    out = [page.reading(r, f"mean Pearson r of the per-layer profiles, {where}", c.thresholds)]
    m = c.metrics
    out.append(page.table(["", "base", "prompted base", "fine-tuned"],
                          [["mean metric", *(f"{m[k]:+.3f}" for k in ("base", "prompted base",
                                                                      "fine-tuned"))]]))
    out.append(page.figure(prompted_profiles(c), "Per-layer fraction of each model's gap closed "
                           "by patching one layer; bands: 95% intervals over prompts."))
    rows = [[_esc(fmt.KIND_NAMES.get(k, k)), fmt.rho_ci(v["all"], v["all_low"], v["all_high"]),
             fmt.rho_ci(v["changed"], v["changed_low"], v["changed_high"]) if "changed" in v
             else "\u2013"] for k, v in c.correlation.items()]
    out.append(page.table(["sites", "r, all layers [95% CI]", f"r, layers {span}"], rows))
    out.append(f"<pre>{_esc(text.prompted_text(c))}</pre>")
    out.append(page.provenance(next(iter(c.finetuned.values()))))
    return "\n".join(out)


def views_section_html(v: PairViews, page: Any) -> str:
    per_pos = [r for r in page.results_of(PatchResult) if "pos" in r.dims
               and r.provenance.prompts_hash == v.provenance.prompts_hash]
    grids = "".join(position_grid_html(r, v, page.views) for r in per_pos)
    return views_html(v, page.views) + grids + page.provenance(v)


register(PairAnalysis, html=pair_html)
register(CircuitAnalysis, html=circuits_html)
register(PatchResult, html=patch_html)
register(GapResult, html=gap_html)
register(Interaction, html=interaction_html)
register(Agreement, html=agreement_html)
register(FinetuneComparison, html=finetunes_html)
register(PromptedBaseComparison, html=prompted_html)
register(PairViews, html=views_section_html)
