"""Markdown rendering of results: the sections of ``summary.md``."""

from __future__ import annotations

import math

from mechdiff.compare import FinetuneComparison, PromptedBaseComparison
from mechdiff.pipeline.pair import PairAnalysis
from mechdiff.report import fmt, text


def pair_section(a: PairAnalysis, k: int | None = None) -> str:
    """A pair's ranked components as a Markdown section."""
    methods = [m for m in ("exact", "attribution") if a.results(m)]
    p = a.gap.provenance
    known = f": {a.mechanism}" if a.mechanism else ""
    lo, hi = a.gap.gap_interval()
    lines = [f"## {a.label}{known}", ""]
    if a.description:
        lines += [a.description, ""]
    both = ("*exact* patches it, *attribution* is the gradient estimate of that patch. "
            if len(methods) == 2 else "")
    lines.append(
        f"Task `{p.task}`, {p.n_prompts} prompts, metric `{p.metric}`: base "
        f"{float(a.gap.base_metric.mean()):.3f}, fine-tuned "
        f"{float(a.gap.finetuned_metric.mean()):.3f}, gap {a.gap.gap:+.3f} "
        f"[{lo:+.2f}, {hi:+.2f}]. Scores are the fraction of the gap closed by patching one "
        f"component, with a 95% bootstrap interval over prompts; {both}Ranked by "
        f"{a.ranked_by} scores."
    )
    heads = " | ".join(f"{m} {fmt.MD_DIRECTIONS[d]} ({fmt.role(d)})"
                       for d in a.directions for m in methods)
    lines += ["", f"| rank | component | {heads} |",
              "|---:|---|" + "---:|" * (len(methods) * len(a.directions))]
    for i, row in enumerate(a.ranking()[:k], 1):
        vals = " | ".join(fmt.score_ci(*row.scores.get((m, d), (math.nan,) * 3))
                          for d in a.directions for m in methods)
        lines.append(f"| {i} | {row.component} | {vals} |")
    notes = text.agreement_lines(a)
    if a.interaction is not None:
        notes.append(text.interaction_line(a.interaction))
    if notes:
        lines += [""] + [f"- {line}" for line in notes]
    return "\n".join(lines) + "\n"


def finetunes_section(c: FinetuneComparison) -> str:
    return f"## {c.label} vs {c.reference}\n\n```\n{text.finetunes_text(c)}\n```\n"


def prompted_section(c: PromptedBaseComparison) -> str:
    return f"## The prompted base as the third model\n\n```\n{text.prompted_text(c)}\n```\n"
