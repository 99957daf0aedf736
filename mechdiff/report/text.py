"""Plain-text rendering of results: the ranked tables and readings ``mechdiff`` prints.

Every score is shown with its 95% bootstrap interval over prompts, and every reading says when its
interval straddles one of its thresholds.
"""

from __future__ import annotations

import math

from mechdiff.compare import Agreement, FinetuneComparison, Interaction, PromptedBaseComparison
from mechdiff.gap import GapResult
from mechdiff.pipeline.pair import PairAnalysis
from mechdiff.report import fmt

CELL = 21
"""Width of one score-and-interval cell."""


def gap_line(gap: GapResult) -> str:
    """Task, both models' metric, the gap with its interval, and the KL at the read position."""
    p = gap.provenance
    lo, hi = gap.gap_interval()
    return (f"task {p.task} ({p.n_prompts} prompts), {p.metric}: base "
            f"{float(gap.base_metric.mean()):.3f} -> fine-tuned "
            f"{float(gap.finetuned_metric.mean()):.3f} (gap {gap.gap:+.3f} [{lo:+.2f}, {hi:+.2f}]);"
            f" KL(FT||base) at the final position {float(gap.kl_final.mean()):.3f}")


def heading(label: str, mechanism: str | None, gap: GapResult) -> str:
    known = f": {mechanism}" if mechanism else ""
    return f"{label}{known}\n  {gap_line(gap)}"


def pair_table(a: PairAnalysis, k: int | None = None) -> str:
    """The pair's components ranked, each method's score and interval per direction."""
    methods = [m for m in ("exact", "attribution") if a.results(m)]
    short = {"exact": "exact", "attribution": "attrib."}
    width = CELL * len(methods)
    top = "".join(f"  {fmt.HEADINGS[d]:^{width}}" for d in a.directions)
    sub = "".join("  " + "".join(f"{short[m]:>{CELL}}" for m in methods) for _ in a.directions)
    lines = [heading(a.label, a.mechanism, a.gap), f"  {'':>4}  {'':<12}{top}",
             f"  {'rank':>4}  {'component':<12}{sub}"]
    for i, row in enumerate(a.ranking()[:k], 1):
        cells = "".join(
            "  " + "".join(f"{fmt.score_ci(*row.scores.get((m, d), (math.nan,) * 3)):>{CELL}}"
                           for m in methods)
            for d in a.directions)
        lines.append(f"  {i:>4}  {row.component:<12}{cells}")
    lines += [f"  {line}" for line in agreement_lines(a)]
    if a.interaction is not None:
        lines.append(f"  {interaction_line(a.interaction)}")
    what = ("exact = the patch itself, attrib. = its gradient estimate; " if len(methods) == 2
            else "")
    lines.append(f"  (ranked by {a.ranked_by} scores: fraction of the gap closed by patching one "
                 f"component, [95% interval over prompts]; {what}FT->base = sufficiency, "
                 "base->FT = necessity)")
    return "\n".join(lines)


def interaction_line(x: Interaction) -> str:
    """The series index: necessity total minus sufficiency total, with intervals, and its
    reading."""
    r = x.reading()
    line = (f"series index (exact, {'+'.join(x.sites)}): necessity total {x.necessity:.2f} "
            f"{fmt.interval(x.necessity_low, x.necessity_high)} - sufficiency total "
            f"{x.sufficiency:.2f} {fmt.interval(x.sufficiency_low, x.sufficiency_high)} = "
            f"{fmt.rho_ci(x.index, x.index_low, x.index_high)} (thresholds "
            f"{x.redundant_threshold:+.1f}, {x.threshold:+.1f}): "
            f"{r.words}")
    return line + (f"; {r.note()}" if not r.firm else "")


def agreement_text(x: Agreement) -> str:
    """``FT->base +0.99 [+0.97, +1.00] (layers 15-29: +1.00 [...])``."""
    text = f"{fmt.HEADINGS.get(x.direction, x.direction).split()[0]} " + fmt.rho_ci(
        x.rho, x.rho_low, x.rho_high)
    if x.layers and math.isfinite(x.rho_layers):
        text += (f" (layers {fmt.span(x.layers)}: "
                 f"{fmt.rho_ci(x.rho_layers, x.rho_layers_low, x.rho_layers_high)})")
    return text


def agreement_lines(a: PairAnalysis) -> list[str]:
    """One line per site kind: Spearman's rho of attribution against exact, per direction."""
    out = []
    for kind in dict.fromkeys(x.sites for x in a.agreements.values()):
        parts = [agreement_text(x) for x in a.agreements.values() if x.sites == kind]
        out.append(f"Spearman rho, attribution vs exact, {fmt.KIND_NAMES.get(kind, kind)}: "
                   + "; ".join(parts))
    return out


def finetunes_text(c: FinetuneComparison) -> str:
    """Two fine-tunes of one behaviour: gaps, per-kind agreement, and the reading."""
    lines = [f"{c.label} vs {c.reference}: the same behaviour from two fine-tunes",
             "  gap " + ", ".join(f"{k} {v:+.3f}" for k, v in c.gaps.items())]
    for x in c.agreements.values():
        lines.append(f"  {fmt.KIND_NAMES.get(x.sites, x.sites)} {agreement_text(x)}; top "
                     f"{x.top_k} shared {x.top_shared}/{x.top_k}")
    r = c.reading()
    where = f" in layers {fmt.span(c.layers)}" if c.layers else ""
    line = (f"  reading: by {c.method} scores, the two fine-tunes use {r.words}{where} "
            f"(mean rho {fmt.rho_ci(r.value, r.low, r.high)})")
    lines.append(line + (f"; {r.note()}." if not r.firm else "."))
    return "\n".join(lines)


def _profile_peak(results: dict) -> tuple[str, str]:
    """Layers where a per-layer profile is at least half its peak (any kind), and the peak."""
    import torch

    strength = torch.stack([r.scores.abs() for r in results.values()]).amax(0)
    peak = float(strength.max())
    if peak == 0:
        return "(none)", "none"
    layers = [i for i, v in enumerate(strength.tolist()) if v >= 0.5 * peak]
    kind, result = max(results.items(), key=lambda kv: float(kv[1].scores.abs().max()))
    layer = int(result.scores.abs().argmax())
    site = result.labels()[layer]
    return fmt.span(layers), f"{site} {fmt.score(float(result.scores[layer]))}"


def prompted_text(c: PromptedBaseComparison) -> str:
    """The prompted base as the third model: metrics, where each acts, correlations, reading."""
    m = c.metrics
    base, prompted, ft = m["base"], m["prompted base"], m["fine-tuned"]
    first = next(iter(c.prompted.values()))
    n_layers, n_prompts = int(first.scores.shape[0]), first.provenance.n_prompts
    share = (ft - base) / (prompted - base) if prompted != base else math.nan
    lines = [
        "The prompted base as the third model (same questions; "
        f"{first.provenance.metric}, {n_prompts} prompts):",
        f"  base {base:+.3f}   prompted base {prompted:+.3f}   fine-tuned {ft:+.3f}   "
        f"(the fine-tune reproduces {share:.0%} of the system prompt's effect, without it)",
    ]
    ft_span, ft_peak = _profile_peak(c.finetuned)
    pr_span, pr_peak = _profile_peak(c.prompted)
    lines.append(f"  the fine-tune acts most in layers {ft_span} (peak {ft_peak}, FT->base); the "
                 f"system prompt acts most in layers {pr_span} of the base (peak {pr_peak}, "
                 "prompted->unprompted)")
    span = fmt.span(c.changed_layers)
    for kind, r in c.correlation.items():
        extra = (f"; over the layers the fine-tune changed ({span}): r = "
                 f"{fmt.rho_ci(r['changed'], r['changed_low'], r['changed_high'])}"
                 if "changed" in r else "")
        lines.append(f"  per-layer correlation, {fmt.KIND_NAMES.get(kind, kind)}: r = "
                     f"{fmt.rho_ci(r['all'], r['all_low'], r['all_high'])} over all "
                     f"{n_layers} layers{extra}")
    reading = c.reading()
    if not math.isfinite(reading.value):
        lines.append(f"  reading: {reading.words}.")
        return "\n".join(lines)
    where = f"within the layers it changed ({span})" if c.restricted else "across layers"
    text = (f"  reading: {where}, {reading.words} (mean r = "
            f"{fmt.rho_ci(reading.value, reading.low, reading.high)})")
    text += f"; {reading.note()}." if not reading.firm else "."
    if c.restricted:
        text += (f" Layers outside {span} were not trained, so the fine-tune's profile there is "
                 "zero by construction.")
    lines.append(text)
    return "\n".join(lines)
