"""``summary.json`` and ``summary.md``: the ranked tables of a run, for people and for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mechdiff.compare import FinetuneComparison, PromptedBaseComparison
from mechdiff.pipeline.pair import PairAnalysis
from mechdiff.report import markdown
from mechdiff.results.atomic import atomic_write_text


def pair_summary(a: PairAnalysis, k: int | None = None) -> dict[str, Any]:
    """A JSON-ready summary of a pair: gap (with interval), ranking, agreements."""
    p = a.gap.provenance
    lo, hi = a.gap.gap_interval()
    return {
        "label": a.label, "mechanism": a.mechanism, "description": a.description,
        "base": p.base, "finetuned": p.finetuned, "task": p.task, "n_prompts": p.n_prompts,
        "metric": p.metric, "prompts_hash": p.prompts_hash, "processing": p.processing,
        "gap": {
            "base": float(a.gap.base_metric.mean()),
            "finetuned": float(a.gap.finetuned_metric.mean()),
            "gap": a.gap.gap, "gap_low": lo, "gap_high": hi,
            "kl_final": float(a.gap.kl_final.mean()), "kl_mean": float(a.gap.kl_mean.mean()),
            "message": a.gap.message,
        },
        "changed_layers": list(a.changed_layers),
        "ranked_by": a.ranked_by,
        "ranking": [
            {"rank": i, "component": row.component, "sites": row.sites,
             **{m: {d: dict(zip(("score", "low", "high"), row.scores[(m, d)], strict=True))
                    for d in a.directions if (m, d) in row.scores} or None
                for m in ("exact", "attribution")}}
            for i, row in enumerate(a.ranking()[:k], 1)
        ],
        "series_index": None if a.interaction is None else {
            "sufficiency": a.interaction.sufficiency, "necessity": a.interaction.necessity,
            "index": a.interaction.index, "low": a.interaction.index_low,
            "high": a.interaction.index_high, "threshold": a.interaction.threshold,
            "reading": a.interaction.reading().words},
        "spearman_attribution_vs_exact": {
            f"{x.sites} {x.direction}": {"all": x.rho, "all_low": x.rho_low,
                                         "all_high": x.rho_high, "changed": x.rho_layers,
                                         "changed_low": x.rho_layers_low,
                                         "changed_high": x.rho_layers_high}
            for x in a.agreements.values()},
    }


def finetunes_summary(c: FinetuneComparison) -> dict[str, Any]:
    r = c.reading()
    return {"label": c.label, "reference": c.reference, "method": c.method, "gaps": c.gaps,
            "layers": list(c.layers),
            "agreement": {f"{x.sites} {x.direction}": {
                "all": x.rho, "all_low": x.rho_low, "all_high": x.rho_high,
                "changed": x.rho_layers, "top_shared": x.top_shared, "top_k": x.top_k}
                for x in c.agreements.values()},
            "reading": {"words": r.words, "value": r.value, "low": r.low, "high": r.high,
                        "straddles": list(r.straddles), "thresholds": list(c.thresholds)}}


def prompted_summary(c: PromptedBaseComparison) -> dict[str, Any]:
    r = c.reading()
    return {"metrics": c.metrics, "correlation": c.correlation,
            "changed_layers": list(c.changed_layers),
            "prompted": {k: x.scores.tolist() for k, x in c.prompted.items()},
            "finetuned": {k: x.scores.tolist() for k, x in c.finetuned.items()},
            "reading": {"words": r.words, "value": r.value, "low": r.low, "high": r.high,
                        "straddles": list(r.straddles), "thresholds": list(c.thresholds)}}


def write_summary(
    out: Path,
    pairs: Sequence[PairAnalysis],
    *,
    top: int,
    meta: dict[str, Any],
    sections: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.md`` (the ranked tables) into ``out``, atomically.

    ``meta`` goes into the JSON as is; ``sections`` (Markdown) follow the ranked tables.
    """
    out.mkdir(parents=True, exist_ok=True)
    data = {**meta, "pairs": {a.label: pair_summary(a, top) for a in pairs}}
    json_path, md_path = out / "summary.json", out / "summary.md"
    atomic_write_text(json_path, json.dumps(data, indent=2, default=str))
    title = meta.get("title", "mechdiff summary")
    md = [f"# {title}", "", meta.get("intro", ""), ""]
    md += [markdown.pair_section(a, top) for a in pairs]
    md += list(sections)
    atomic_write_text(md_path, "\n".join(md))
    return json_path, md_path
