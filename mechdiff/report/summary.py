"""``summary.json`` and ``summary.md``: the ranked tables of a run, for people and for scripts."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mechdiff.circuits.verdict import FIXED
from mechdiff.compare import FinetuneComparison, PromptedBaseComparison
from mechdiff.pipeline.circuits import CircuitAnalysis
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


def circuits_summary(a: CircuitAnalysis) -> dict[str, Any]:
    """A JSON-ready summary of a pair's circuits: sizes, curves' areas, overlap, the verdict with
    its numbers, intervals and thresholds, and the edges carrying the gap."""
    c, v = a.comparison, a.comparison.verdict
    summary: dict[str, Any] = {
        "label": a.label, "mechanism": a.mechanism, "n_edges": int(c.base_scores.scores.numel()),
        "method": c.base_curve.method, "ablation": c.base_curve.ablation,
        "base": _side(c.base_size, c.base_circuit.n_edges, c.base_curve),
        "finetuned": _side(c.ft_size, c.ft_circuit.n_edges, c.ft_curve),
        "nodes": {"shared": list(c.shared_nodes), "new": list(c.new_nodes),
                  "dropped": list(c.dropped_nodes)},
        "edges": {"shared": c.n_shared_edges, "new": c.n_new_edges,
                  "dropped": c.n_dropped_edges},
        "flipped_edges": [{"edge": e, "base": b, "finetuned": f} for e, b, f in c.flipped],
        "verdict": {"label": v.label, "reasons": list(v.reasons), "numbers": v.numbers,
                    # the circuits' own overlap has no interval: they are held fixed
                    "intervals": {k: list(x) for k, x in v.intervals.items() if k not in FIXED},
                    "thresholds": v.thresholds, "frequency": v.frequency,
                    "notes": list(v.notes), "n_boot": v.n_boot, "seed": v.seed,
                    "extra": dict(v.extra)},
    }
    if a.cross is not None:
        lo, hi = a.cross.exact_interval()
        summary["gap_edges"] = {
            "direction": a.cross.direction, "all_edges": a.cross.all_edges,
            "top": [{"edge": r.label, "estimate": float(a.cross.estimate[r.index]),
                     "exact": float(a.cross.exact[r.index]),  # NaN (not patched): null
                     "exact_interval": [float(lo[r.index]), float(hi[r.index])]}
                    for r in a.cross.top(10, by=a.cross.ranked_by)]}
    return summary


def _side(size: float, edges: int, curve: Any) -> dict[str, Any]:
    """One model's circuit size and its curve's areas, with their 95% intervals."""
    iv = curve.intervals()
    return {"size": size, "edges": edges, "cpr": curve.cpr, "cmd": curve.cmd,
            "cpr_interval": [float(x) for x in iv["cpr"]],
            "cmd_interval": [float(x) for x in iv["cmd"]]}


def _finite(x: float) -> float | None:
    """JSON has no NaN: a value not computed is null."""
    return x if math.isfinite(x) else None


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float (anywhere in dicts, lists, tuples) as None: JSON has
    no NaN or infinity (``json.dumps`` writes ``NaN``, which strict readers refuse)."""
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


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
    atomic_write_text(json_path, json.dumps(json_ready(data), indent=2, default=str,
                                            allow_nan=False))
    title = meta.get("title", "mechdiff summary")
    md = [f"# {title}", "", meta.get("intro", ""), ""]
    md += [markdown.pair_section(a, top) for a in pairs]
    md += list(sections)
    atomic_write_text(md_path, "\n".join(md))
    return json_path, md_path
