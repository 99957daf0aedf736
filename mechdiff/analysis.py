"""The per-pair analysis both ``mechdiff`` commands run, and its tables.

:func:`analyse_pair` measures the behaviour gap of a base and a fine-tuned model on a task, then
runs exact cross-model patching (:func:`mechdiff.cross_patch`) of every site of the requested kinds
in the requested directions; every result is saved with its ``save`` method (``tensors.safetensors``
+ ``result.json``), figures go to ``<out>/figures/`` (PDF and PNG), and the components that explain
the gap are ranked (:func:`rank_components`) and written to ``summary.json`` / ``summary.md``
(:func:`write_summary`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeAlias, runtime_checkable

from mechdiff import viz
from mechdiff.directions import DIRECTIONS, Direction
from mechdiff.errors import OptionError
from mechdiff.gap import GapResult, behaviour_gap
from mechdiff.loading import ModelPair
from mechdiff.patching import PatchResult, Positions, cross_patch
from mechdiff.sites import SiteKind
from mechdiff.tasks import Task
from mechdiff.viz._style import SITE_NAMES

MECHANISMS = {
    "reweight": "re-weights an existing behaviour",
    "new_skill": "builds a new skill",
}
"""Short statements of the zoo's known mechanisms (:attr:`mechdiff.zoo.FineTuneSpec.mechanism`)."""

ROLES = {"ft->base": "sufficiency", "base->ft": "necessity"}
_DIRECTION_ALIASES: dict[str, Direction] = {
    "ft->base": "ft->base",
    "base->ft": "base->ft",
    "ft-to-base": "ft->base",
    "base-to-ft": "base->ft",
}
_HEADINGS = {"ft->base": "FT->base (suff.)", "base->ft": "base->FT (nec.)"}

Report: TypeAlias = Callable[[str], None]



# ---------------------------------------------------------------- the per-pair analysis


@dataclass(frozen=True)
class RankedComponent:
    """One component (head, MLP, ...) and the fraction of the gap it closes in each direction.

    Attributes:
        rank: 1 for the component with the largest ``|score|`` in any direction.
        component: its label (``L2H2``, ``MLP1``, ``RESID0@5``).
        sites: the site kind it belongs to (``heads``, ``mlp``, ...).
        scores: fraction of the gap closed, by direction (``ft->base``, ``base->ft``).
        effects: raw change of the mean metric, by direction.
    """

    rank: int
    component: str
    sites: str
    scores: dict[str, float]
    effects: dict[str, float]

    @property
    def strength(self) -> float:
        """The largest ``|score|`` over directions (NaN counts as 0); what the ranking sorts by."""
        return max((abs(v) for v in self.scores.values() if math.isfinite(v)), default=0.0)


@dataclass(frozen=True)
class PairAnalysis:
    """Everything :func:`analyse_pair` computed and wrote for one model pair.

    Attributes:
        label: name of the pair in tables and folders (e.g. the fine-tune's name).
        out_dir: the folder holding the saved results and ``figures/``.
        gap: the behaviour gap.
        results: patching results keyed by folder name (``heads_ft_to_base``, ...).
        figures: written figure files (PDF and PNG).
        ranking: components ranked by the largest fraction of gap they close in any direction.
        directions: the patching directions run, in order.
        mechanism: the known mechanism of the fine-tune, where one is known (the zoo's).
        description: a longer statement of what the fine-tune did, where known.
    """

    label: str
    out_dir: Path
    gap: GapResult
    results: dict[str, PatchResult]
    figures: tuple[Path, ...]
    ranking: tuple[RankedComponent, ...]
    directions: tuple[str, ...]
    mechanism: str | None = None
    description: str | None = None

    def heading(self) -> str:
        return _heading(self.label, self.mechanism, self.gap)

    def table(self, k: int | None = None) -> str:
        """The ranked components as plain text (top ``k``; all by default)."""
        rows = self.ranking[:k]
        cols = "".join(f" {_HEADINGS[d]:>17}" for d in self.directions)
        lines = [self.heading(), f"  {'rank':>4}  {'component':<12}{cols}"]
        for row in rows:
            vals = "".join(f" {_fmt(row.scores[d]):>17}" for d in self.directions)
            lines.append(f"  {row.rank:>4}  {row.component:<12}{vals}")
        lines.append("  (fraction of the gap closed by patching that one component; "
                     "FT->base = sufficiency, base->FT = necessity)")
        return "\n".join(lines)

    def markdown(self, k: int | None = None) -> str:
        """The ranked components as a Markdown section."""
        heads = " | ".join(f"{_md_direction(d)} ({ROLES[d]})" for d in self.directions)
        lines = _md_section_head(self.label, self.mechanism, self.description, self.gap,
                                 "closed by patching one component.")
        lines += [
            "",
            f"| rank | component | {heads} |",
            "|---:|---|" + "---:|" * len(self.directions),
        ]
        for row in self.ranking[:k]:
            vals = " | ".join(_fmt(row.scores[d]) for d in self.directions)
            lines.append(f"| {row.rank} | {row.component} | {vals} |")
        return "\n".join(lines) + "\n"

    def summary(self, k: int | None = None) -> dict[str, Any]:
        """A JSON-ready summary: gap, ranking, where results and figures are."""
        p = self.gap.provenance
        return {
            "label": self.label,
            "mechanism": self.mechanism,
            "description": self.description,
            "base": p.base,
            "finetuned": p.finetuned,
            "task": p.task,
            "n_prompts": p.n_prompts,
            "metric": p.metric,
            "prompts_hash": p.prompts_hash,
            "processing": p.processing,
            "gap": {
                "base": float(self.gap.base_metric.mean()),
                "finetuned": float(self.gap.finetuned_metric.mean()),
                "gap": self.gap.gap,
                "kl_final": float(self.gap.kl_final.mean()),
                "kl_mean": float(self.gap.kl_mean.mean()),
                "message": self.gap.message,
            },
            "ranking": [
                {"rank": r.rank, "component": r.component, "sites": r.sites,
                 "scores": r.scores, "effects": r.effects}
                for r in self.ranking[:k]
            ],
            "results": {name: str(self.out_dir / name) for name in ["gap", *self.results]},
            "figures": [str(f) for f in self.figures],
        }


def analyse_pair(
    pair: ModelPair,
    task: Task,
    out_dir: str | Path,
    *,
    label: str,
    directions: Sequence[Direction] = DIRECTIONS,
    sites: Sequence[SiteKind] = ("heads", "mlp"),
    progress: bool = True,
    positions: Positions = "all",
    batch_size: int = 64,
    prompt_batch_size: int = 32,
    mechanism: str | None = None,
    description: str | None = None,
) -> PairAnalysis:
    """Behaviour gap, then exact cross-model patching of every site kind in every direction.

    Writes ``<out_dir>/gap/``, ``<out_dir>/<sites>_<ft_to_base|base_to_ft>/`` (each a saved
    result) and ``<out_dir>/figures/`` (``gap``, and one figure per site kind: both directions
    side by side on one colour scale when both were run).

    Args:
        pair: the base and fine-tuned models.
        task: prompts and metric.
        out_dir: where results and figures go (created if missing).
        label: the pair's name in titles and tables.
        directions: ``"ft->base"`` (sufficiency) and/or ``"base->ft"`` (necessity).
        sites: site kinds to patch (``heads``, ``attn``, ``mlp``, ``resid``).
        progress: show progress bars.
        positions: ``"all"`` (every position at once) or ``"each"`` (one position at a time).
        batch_size: sequences per patched forward (see :func:`mechdiff.cross_patch`).
        prompt_batch_size: prompts captured at once.
        mechanism: the fine-tune's known mechanism, if any (recorded in tables and summaries).
        description: a longer statement of the fine-tune, if any.

    Returns:
        A :class:`PairAnalysis`.

    Raises:
        ZeroGapError: the two models behave the same on the task.
        MechdiffError: any other bad input, before patching starts.
    """
    directions = tuple(dict.fromkeys(directions))
    sites = tuple(dict.fromkeys(sites))
    if not directions or not sites:
        raise OptionError("give at least one direction and one site kind")
    out = Path(out_dir)
    fig_dir = out / "figures"
    # Titles name the pair, and the task where it is not the same name.
    about = label if label == task.name else f"{label} \u00b7 task: {task.name}"
    gap = behaviour_gap(pair, task)
    gap.save(out / "gap")
    figures = viz.save_figure(viz.plot_gap(gap, title=f"Behaviour gap \u00b7 {about}"),
                              fig_dir / "gap")
    results: dict[str, PatchResult] = {}
    for kind in sites:
        pair_results = {}
        for direction in directions:
            result = cross_patch(pair, task, sites=kind, direction=direction, positions=positions,
                                 batch_size=batch_size, prompt_batch_size=prompt_batch_size,
                                 progress=progress)
            name = f"{kind}_{_slug(direction)}"
            result.save(out / name)
            results[name] = pair_results[direction] = result
        site_name = SITE_NAMES.get(kind, kind)
        if len(pair_results) == 2:
            fig = viz.plot_directions(
                pair_results["ft->base"], pair_results["base->ft"],
                title=f"{site_name} \u00b7 {about}",
            )
            figures += viz.save_figure(fig, fig_dir / kind)
        else:
            (direction, result), = pair_results.items()
            fig = viz.plot_patch(result)
            figures += viz.save_figure(fig, fig_dir / f"{kind}_{_slug(direction)}")
    return PairAnalysis(
        label=label, out_dir=out, gap=gap, results=results, figures=tuple(figures),
        ranking=rank_components(results.values(), directions), directions=directions,
        mechanism=mechanism, description=description,
    )


def rank_components(
    results: Iterable[PatchResult], directions: Sequence[str] = DIRECTIONS
) -> tuple[RankedComponent, ...]:
    """Merge patching results into one ranking of components.

    Each component gets one row with its score in every direction (NaN where a direction was not
    run); rows are sorted by the largest ``|score|`` over directions.

    Args:
        results: patching results (any site kinds, any directions).
        directions: the directions to report, in column order.
    """
    rows: dict[str, dict[str, Any]] = {}
    for result in results:
        labels = result.labels()
        scores, effects = result.scores.flatten().tolist(), result.effects.flatten().tolist()
        for lab, s, e in zip(labels, scores, effects, strict=True):
            row = rows.setdefault(lab, {"sites": result.sites, "scores": {}, "effects": {}})
            row["scores"][result.direction] = float(s)
            row["effects"][result.direction] = float(e)
    unranked = [
        RankedComponent(
            rank=0, component=lab, sites=row["sites"],
            scores={d: row["scores"].get(d, math.nan) for d in directions},
            effects={d: row["effects"].get(d, math.nan) for d in directions},
        )
        for lab, row in rows.items()
    ]
    unranked.sort(key=lambda r: r.strength, reverse=True)
    return tuple(
        RankedComponent(i, r.component, r.sites, r.scores, r.effects)
        for i, r in enumerate(unranked, 1)
    )


@runtime_checkable
class Summarised(Protocol):
    """What :func:`write_summary` needs of an analysis (:class:`PairAnalysis`, or the real demo's
    :class:`mechdiff.demos.MethodsAnalysis`)."""

    label: str

    def summary(self, k: int | None = None) -> dict[str, Any]: ...

    def markdown(self, k: int | None = None) -> str: ...


def write_summary(
    out: Path,
    analyses: Sequence[Summarised],
    *,
    top: int,
    meta: dict[str, Any],
    sections: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.md`` (the ranked tables) into ``out``.

    ``meta`` goes into the JSON as is; ``sections`` (Markdown) follow the ranked tables.
    """
    out.mkdir(parents=True, exist_ok=True)
    data = {**meta, "pairs": {a.label: a.summary() for a in analyses}}
    json_path, md_path = out / "summary.json", out / "summary.md"
    json_path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    title = meta.get("title", "mechdiff summary")
    md = [f"# {title}", "", meta.get("intro", ""), ""]
    md += [a.markdown(top) for a in analyses]
    md += list(sections)
    md_path.write_text("\n".join(md), encoding="utf-8")
    return json_path, md_path


def _md_section_head(
    label: str, mechanism: str | None, description: str | None, gap: GapResult, scores: str
) -> list[str]:
    """Markdown lines opening a pair's section: title, description, then task and gap in one
    line that ends with ``scores`` (the rest of "Scores are the fraction of the gap ...")."""
    p = gap.provenance
    known = f": {mechanism}" if mechanism else ""
    base, ft = float(gap.base_metric.mean()), float(gap.finetuned_metric.mean())
    lines = [f"## {label}{known}", ""]
    if description:
        lines += [description, ""]
    lines.append(
        f"Task `{p.task}`, {p.n_prompts} prompts, metric `{p.metric}`: base {base:.3f}, "
        f"fine-tuned {ft:.3f}, gap {gap.gap:+.3f}. Scores are the fraction of the gap " + scores
    )
    return lines


def _heading(label: str, mechanism: str | None, gap: GapResult) -> str:
    """Two lines: the pair and its mechanism; the task, both models' metric, the gap and KL."""
    p = gap.provenance
    known = f": {mechanism}" if mechanism else ""
    base, ft = float(gap.base_metric.mean()), float(gap.finetuned_metric.mean())
    return (
        f"{label}{known}\n"
        f"  task {p.task} ({p.n_prompts} prompts), {p.metric}: base {base:.3f} -> "
        f"fine-tuned {ft:.3f} (gap {gap.gap:+.3f}); KL(FT||base) at the final position "
        f"{float(gap.kl_final.mean()):.3f}"
    )


def _fmt(score: float) -> str:
    """A score with 3 decimals; ``-0.000`` is shown as ``0.000``, a missing one as ``-``."""
    if not math.isfinite(score):
        return "-"
    text = f"{score:.3f}"
    return text[1:] if text == "-0.000" else text


def _slug(direction: str) -> str:
    return direction.replace("->", "_to_")


def _md_direction(direction: str) -> str:
    return {"ft->base": "FT\u2192base", "base->ft": "base\u2192FT"}[direction]


