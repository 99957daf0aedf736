"""The ``mechdiff`` command: ``mechdiff demo`` and ``mechdiff patch``.

Both commands run the same per-pair analysis (:func:`analyse_pair`): the behaviour gap of the base
and fine-tuned model on a task, then exact cross-model patching (:func:`mechdiff.cross_patch`) of
every site of the requested kinds in the requested directions. Every result is saved with its
``save`` method (``tensors.safetensors`` + ``result.json``) so figures and tables can be rebuilt from
disk without loading a model; figures go to ``<out>/figures/`` as PDF and PNG; the components that
explain the gap are printed as a ranked table and written to ``summary.json`` and ``summary.md``.

* ``mechdiff demo`` (``--real``, the default; :func:`run_demo_real`) builds (or reuses) the real
  model SmolLM2-135M-Instruct and its fine-tunes (:mod:`mechdiff.zoo.real`) and runs, per
  fine-tune, exact *and* attribution patching side by side (:class:`MethodsAnalysis`), the
  prompted base as a third model (:class:`PromptedBaseComparison`) and a LoRA-vs-full comparison
  (:class:`FinetuneComparison`). ``--synthetic`` (:func:`run_demo_synthetic`) analyses the
  embedded zoo (:mod:`mechdiff.zoo`), whose fine-tunes have known mechanisms, with
  :func:`analyse_pair`.
* ``mechdiff patch --base DIR --finetuned DIR --prompts FILE`` runs the same analysis on a user's
  own checkpoints.

Errors on bad input (:class:`mechdiff.errors.MechdiffError`) are printed as one line,
``mechdiff: error: <message>``, with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge
from transformers.utils import logging as hf_logging

from mechdiff import viz, zoo
from mechdiff.attribution import attribute
from mechdiff.errors import MechdiffError, OptionError
from mechdiff.gap import GapResult, behaviour_gap
from mechdiff.pair import ModelPair, _load_adapter, load_pair
from mechdiff.patching import (
    DIRECTIONS,
    Direction,
    PatchResult,
    Positions,
    activation_patch,
    cross_patch,
)
from mechdiff.sites import SITE_KINDS, SiteKind
from mechdiff.stats import pearson, spearman, top_overlap
from mechdiff.tasks import METRICS, Task
from mechdiff.viz._style import SITE_NAMES

DemoName: TypeAlias = Literal["real", "synthetic"]
DEFAULT_DEMO: DemoName = "real"
"""What ``mechdiff demo`` runs without a flag. ``real``: SmolLM2-135M-Instruct and its fine-tunes
(:mod:`mechdiff.zoo.real`); ``synthetic`` (``--synthetic``): the embedded zoo of small models."""

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
        p = self.gap.provenance
        known = f": {self.mechanism}" if self.mechanism else ""
        base, ft = float(self.gap.base_metric.mean()), float(self.gap.finetuned_metric.mean())
        heads = " | ".join(f"{_md_direction(d)} ({ROLES[d]})" for d in self.directions)
        lines = [f"## {self.label}{known}", ""]
        if self.description:
            lines += [self.description, ""]
        lines += [
            f"Task `{p.task}`, {p.n_prompts} prompts, metric `{p.metric}`: base {base:.3f}, "
            f"fine-tuned {ft:.3f}, gap {self.gap.gap:+.3f}. Scores are the fraction of the gap "
            "closed by patching one component.",
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


def write_summary(
    out: Path,
    analyses: Sequence[PairAnalysis | MethodsAnalysis],
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


# ---------------------------------------------------------------- demo


def run_demo_synthetic(
    out: str | Path,
    *,
    cache_dir: str | Path | None = None,
    n_prompts: int = 64,
    seed: int = 0,
    top: int = 10,
    device: str | None = "cpu",
    progress: bool = True,
    report: Report | None = None,
) -> list[PairAnalysis]:
    """The demo on the embedded zoo: each fine-tune against the base, mechanisms known.

    Builds the zoo if it is not cached (minutes, once), then for every fine-tune in
    :data:`mechdiff.zoo.FINETUNES` runs :func:`analyse_pair` on its zoo task (heads and MLPs,
    both directions) into ``<out>/<fine-tune>/``, and writes ``<out>/summary.json`` and
    ``<out>/summary.md``.

    Args:
        out: output folder.
        cache_dir: the zoo cache (default ``$MECHDIFF_CACHE/zoo`` or ``~/.cache/mechdiff/zoo``).
        n_prompts: prompts per task.
        seed: seed of the task prompts.
        top: rows per ranked table.
        device: where to run the models.
        progress: show progress bars.
        report: called with each fine-tune's ranked table as soon as it is ready.
    """
    if n_prompts < 1:
        raise OptionError(f"n_prompts must be at least 1, got {n_prompts}")
    out = Path(out)
    start = time.perf_counter()
    dirs = zoo.build(cache_dir, progress=progress)
    analyses = []
    bar = tqdm(list(zoo.FINETUNES.items()), desc="mechdiff demo", disable=not progress)
    try:
        for name, spec in bar:
            bar.set_postfix_str(name)
            pair = load_pair(dirs["base"], dirs[name], device=device)
            task = zoo.task(spec.task, n=n_prompts, seed=seed)
            analysis = analyse_pair(
                pair, task, out / name, label=name, progress=progress,
                mechanism=MECHANISMS.get(spec.mechanism, spec.mechanism),
                description=spec.description,
            )
            analyses.append(analysis)
            if report is not None:
                report(analysis.table(top))
    finally:
        bar.close()
    write_summary(out, analyses, top=top, meta={
        "title": "mechdiff demo: the embedded zoo",
        "intro": (
            "Each fine-tune of the zoo's base model was built with a known mechanism. The tables "
            "rank attention heads (patched after their own W_O) and MLPs by the fraction of the "
            "behaviour gap that patching each one alone closes."
        ),
        "demo": "synthetic",
        "zoo": str(dirs["base"].parent),
        "n_prompts": n_prompts,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
    })
    return analyses


# ---------------------------------------------------------------- demo on the real model


REAL_N_PROMPTS = 4
"""Default prompts per task of the real demo: keeps a run from the cache within 5 minutes on 2 CPU
cores (exact head patching costs most: 270 heads x 2 directions x 2 fine-tunes)."""
REAL_THREADS = 1
"""torch threads of the real demo (the caller's setting is restored afterwards)."""
REAL_EXACT = ("distill", "trigger")
"""Experiments of :data:`mechdiff.zoo.real.EXPERIMENTS` patched exactly as well as by attribution;
the others (``distill_lora``) get the gap and attribution patching only."""
_KIND_LABEL = {"heads": "heads", "attn": "attention layers", "mlp": "MLPs"}
_SITE_PREFIX = {"attn": "ATTN", "mlp": "MLP"}


@dataclass(frozen=True)
class MethodsAnalysis:
    """One fine-tune against the base: exact and attribution patching of the same sites.

    Attributes:
        label: the fine-tune's name.
        out_dir: the folder holding its saved results and ``figures/``.
        gap: the behaviour gap.
        exact: exact patching results by folder name (``heads_ft_to_base``, ...); may be empty.
        attribution: attribution-patching results by folder name (``attribution_heads_ft_to_base``).
        figures: written figure files.
        directions: the patching directions run, in order.
        changed_layers: layers whose weights differ between the two models (as processed).
        agreement: Spearman's rho of attribution against exact scores, by ``"<sites> <direction>"``,
            then ``"all"`` (every site) and ``"changed"`` (sites in ``changed_layers``).
        mechanism: the fine-tune's known mechanism.
        description: what the fine-tune did.
    """

    label: str
    out_dir: Path
    gap: GapResult
    exact: dict[str, PatchResult]
    attribution: dict[str, PatchResult]
    figures: tuple[Path, ...]
    directions: tuple[str, ...]
    changed_layers: tuple[int, ...]
    agreement: dict[str, dict[str, float]]
    mechanism: str | None = None
    description: str | None = None

    @property
    def ranked_by(self) -> str:
        """``exact`` when exact results exist, else ``attribution``."""
        return "exact" if self.exact else "attribution"

    def ranking(self) -> list[tuple[RankedComponent | None, RankedComponent | None]]:
        """(exact row, attribution row) per component, strongest first by :attr:`ranked_by`."""
        exact = {r.component: r for r in rank_components(self.exact.values(), self.directions)}
        attr = {r.component: r for r in rank_components(self.attribution.values(),
                                                       self.directions)}
        lead = exact if self.exact else attr
        order = sorted(lead.values(), key=lambda r: r.rank) + [
            r for c, r in attr.items() if c not in lead]
        return [(exact.get(r.component), attr.get(r.component)) for r in order]

    def table(self, k: int | None = None) -> str:
        """Ranked components with exact and attribution scores side by side (top ``k``)."""
        cols = "".join(f"  {_HEADINGS[d]:^19}" for d in self.directions)
        sub = "".join(f"  {'exact':>9}{'attrib.':>10}" for _ in self.directions)
        lines = [_heading(self.label, self.mechanism, self.gap),
                 f"  {'':>4}  {'':<12}{cols}", f"  {'rank':>4}  {'component':<12}{sub}"]
        for i, (ex, at) in enumerate(self.ranking()[:k], 1):
            name = (ex or at).component
            vals = "".join(
                f"  {_fmt(ex.scores[d] if ex else math.nan):>9}"
                f"{_fmt(at.scores[d] if at else math.nan):>10}"
                for d in self.directions
            )
            lines.append(f"  {i:>4}  {name:<12}{vals}")
        lines += [f"  {line}" for line in self.agreement_lines()]
        lines.append(
            f"  (ranked by {self.ranked_by} scores; fraction of the gap closed by patching one "
            "component: exact = the patch itself, attrib. = its gradient estimate; FT->base = "
            "sufficiency, base->FT = necessity)"
        )
        return "\n".join(lines)

    def agreement_lines(self) -> list[str]:
        """One line per site kind: Spearman's rho of attribution against exact, per direction."""
        out = []
        span = _span_text(self.changed_layers)
        for kind in dict.fromkeys(key.split()[0] for key in self.agreement):
            parts = []
            for d in self.directions:
                rho = self.agreement.get(f"{kind} {d}")
                if rho is None:
                    continue
                text = f"{_HEADINGS[d].split()[0]} {_fmt_r(rho['all'])}"
                if "changed" in rho:
                    text += f" (layers {span}: {_fmt_r(rho['changed'])})"
                parts.append(text)
            out.append(f"Spearman rho, attribution vs exact, {_KIND_LABEL.get(kind, kind)}: "
                       + "; ".join(parts))
        return out

    def markdown(self, k: int | None = None) -> str:
        """The ranked components as a Markdown section."""
        p = self.gap.provenance
        known = f": {self.mechanism}" if self.mechanism else ""
        base, ft = float(self.gap.base_metric.mean()), float(self.gap.finetuned_metric.mean())
        heads = " | ".join(f"exact {_md_direction(d)} | attribution {_md_direction(d)}"
                           for d in self.directions)
        lines = [f"## {self.label}{known}", ""]
        if self.description:
            lines += [self.description, ""]
        lines += [
            f"Task `{p.task}`, {p.n_prompts} prompts, metric `{p.metric}`: base {base:.3f}, "
            f"fine-tuned {ft:.3f}, gap {self.gap.gap:+.3f}. Scores are the fraction of the gap "
            "closed by patching one component: *exact* patches it, *attribution* is the "
            f"gradient estimate of that patch. Ranked by {self.ranked_by} scores.",
            "",
            f"| rank | component | {heads} |",
            "|---:|---|" + "---:|---:|" * len(self.directions),
        ]
        for i, (ex, at) in enumerate(self.ranking()[:k], 1):
            vals = " | ".join(f"{_fmt(ex.scores[d] if ex else math.nan)} | "
                              f"{_fmt(at.scores[d] if at else math.nan)}" for d in self.directions)
            lines.append(f"| {i} | {(ex or at).component} | {vals} |")
        agreement = self.agreement_lines()
        if agreement:
            lines += [""] + [f"- {line}" for line in agreement]
        return "\n".join(lines) + "\n"

    def summary(self, k: int | None = None) -> dict[str, Any]:
        """A JSON-ready summary: gap, both rankings, agreement, where results and figures are."""
        p = self.gap.provenance
        return {
            "label": self.label, "mechanism": self.mechanism, "description": self.description,
            "base": p.base, "finetuned": p.finetuned, "task": p.task, "n_prompts": p.n_prompts,
            "metric": p.metric, "prompts_hash": p.prompts_hash, "processing": p.processing,
            "gap": {
                "base": float(self.gap.base_metric.mean()),
                "finetuned": float(self.gap.finetuned_metric.mean()),
                "gap": self.gap.gap, "kl_final": float(self.gap.kl_final.mean()),
                "kl_mean": float(self.gap.kl_mean.mean()), "message": self.gap.message,
            },
            "changed_layers": list(self.changed_layers),
            "ranked_by": self.ranked_by,
            "ranking": [
                {"rank": i, "component": (ex or at).component, "sites": (ex or at).sites,
                 "exact": ex.scores if ex else None, "attribution": at.scores if at else None}
                for i, (ex, at) in enumerate(self.ranking()[:k], 1)
            ],
            "spearman_attribution_vs_exact": self.agreement,
            "results": {name: str(self.out_dir / name)
                        for name in ["gap", *self.exact, *self.attribution]},
            "figures": [str(f) for f in self.figures],
        }


@dataclass(frozen=True)
class FinetuneComparison:
    """Do two fine-tunes of the same behaviour use the same components? (rank agreement)

    Attributes:
        label: the compared fine-tune (e.g. ``distill_lora``).
        reference: the fine-tune it is compared with (e.g. ``distilled``).
        method: which scores are compared (``attribution``: same estimator on both sides).
        gaps: each fine-tune's behaviour gap on the shared task.
        layers: the reference's changed layers (the restricted comparison's sites).
        agreement: by ``"<sites> <direction>"``: ``all`` and ``changed`` (Spearman's rho) and
            ``top10`` (how many of each side's ten strongest sites are shared).
    """

    label: str
    reference: str
    method: str
    gaps: dict[str, float]
    layers: tuple[int, ...]
    agreement: dict[str, dict[str, float]]

    def text(self) -> str:
        heads = [v for key, v in self.agreement.items() if key.startswith("heads ")]
        key = "changed" if heads and "changed" in heads[0] else "all"
        rho = [v[key] for v in heads if math.isfinite(v[key])]
        lines = [
            f"{self.label} vs {self.reference}: the same behaviour from two fine-tunes",
            "  gap " + ", ".join(f"{k} {v:+.3f}" for k, v in self.gaps.items()),
        ]
        for name, v in self.agreement.items():
            kind, direction = name.split()
            restricted = (f", layers {_span_text(self.layers)}: {_fmt_r(v['changed'])}"
                          if "changed" in v else "")
            lines.append(
                f"  {_KIND_LABEL.get(kind, kind)} {_HEADINGS[direction].split()[0]}: Spearman rho "
                f"{_fmt_r(v['all'])}{restricted}; top 10 shared {int(v['top10'])}/10"
            )
        if rho:
            mean = sum(rho) / len(rho)
            word = ("largely the same heads" if mean >= 0.7 else "partly the same heads"
                    if mean >= 0.4 else "mostly different heads")
            where = f" in layers {_span_text(self.layers)}" if key == "changed" else ""
            lines.append(f"  reading: by {self.method} scores, the two fine-tunes use {word}"
                         f"{where} (mean rho {mean:+.2f}).")
        return "\n".join(lines)

    def markdown(self) -> str:
        return f"## {self.label} vs {self.reference}\n\n```\n{self.text()}\n```\n"

    def summary(self) -> dict[str, Any]:
        return {"label": self.label, "reference": self.reference, "method": self.method,
                "gaps": self.gaps, "layers": list(self.layers), "agreement": self.agreement}


@dataclass(frozen=True)
class PromptedBaseComparison:
    """The prompted base as a third model: where the system prompt acts inside the base, beside
    where the distilled fine-tune acts.

    Attributes:
        prompted: per site kind, single-model patching of the base, prompted (clean) into
            unprompted (corrupted) at all positions: ``activation_patch(base, distill_prompted)``.
        finetuned: per site kind, ``cross_patch(base vs distilled, distill, direction="ft->base")``.
        metrics: mean metric of ``base``, ``prompted base`` and ``distilled`` on the same questions.
        correlation: Pearson's r of the two per-layer profiles, by site kind: ``all`` layers and
            ``changed`` (the layers the fine-tune changed).
        changed_layers: layers whose weights the fine-tune changed.
        figures: the profile figure.
    """

    prompted: dict[str, PatchResult]
    finetuned: dict[str, PatchResult]
    metrics: dict[str, float]
    correlation: dict[str, dict[str, float]]
    changed_layers: tuple[int, ...]
    figures: tuple[Path, ...]

    def reading(self) -> str:
        """The measurements, and a short reading whose wording the numbers decide."""
        m = self.metrics
        base, prompted, ft = m["base"], m["prompted base"], m["distilled"]
        n_layers = int(next(iter(self.prompted.values())).scores.shape[0])
        n_prompts = next(iter(self.prompted.values())).provenance.n_prompts
        share = (ft - base) / (prompted - base) if prompted != base else math.nan
        lines = [
            "The prompted base as the third model (same questions; first-token logit difference, "
            f"{n_prompts} prompts):",
            f"  base {base:+.3f}   prompted base {prompted:+.3f}   distilled {ft:+.3f}   "
            f"(distillation reproduces {share:.0%} of the system prompt's effect, without it)",
        ]
        ft_span, ft_peak = _profile_span(self.finetuned)
        pr_span, pr_peak = _profile_span(self.prompted)
        lines.append(f"  distillation acts most in layers {ft_span} (peak {ft_peak}, FT->base); "
                     f"the system prompt acts most in layers {pr_span} of the base (peak "
                     f"{pr_peak}, prompted->unprompted)")
        span = _span_text(self.changed_layers)
        restricted = len(self.changed_layers) < n_layers
        for kind, r in self.correlation.items():
            extra = (f"; over the layers the fine-tune changed ({span}): r = "
                     f"{_fmt_r(r['changed'])}" if "changed" in r else "")
            lines.append(f"  per-layer correlation, {_KIND_LABEL.get(kind, kind)}: r = "
                         f"{_fmt_r(r['all'])} over all {n_layers} layers{extra}")
        key = "changed" if restricted else "all"
        rs = [r[key] for r in self.correlation.values() if math.isfinite(r.get(key, math.nan))]
        if not rs:
            lines.append("  reading: a profile is flat, so no correlation is defined.")
            return "\n".join(lines)
        mean = sum(rs) / len(rs)
        where = f"within the layers it changed ({span})" if restricted else "across layers"
        if mean >= 0.7:
            verdict = "the fine-tune acts where the system prompt acts in the base"
        elif mean >= 0.3:
            verdict = "the fine-tune acts partly where the system prompt acts in the base"
        elif mean > -0.3:
            verdict = ("the fine-tune's layer profile does not follow where the system prompt "
                       "acts in the base")
        else:
            verdict = "the fine-tune acts most where the system prompt acts least"
        lines.append(f"  reading: {where}, {verdict} (mean r = {mean:+.2f}; {n_prompts} prompts, "
                     "so indicative)." + (
                         f" Layers outside {span} were not trained, so the fine-tune's profile "
                         "there is zero by construction." if restricted else ""))
        return "\n".join(lines)

    def markdown(self) -> str:
        return f"## The prompted base as the third model\n\n```\n{self.reading()}\n```\n"

    def summary(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics, "correlation": self.correlation,
            "changed_layers": list(self.changed_layers),
            "prompted": {k: r.scores.tolist() for k, r in self.prompted.items()},
            "finetuned": {k: r.scores.tolist() for k, r in self.finetuned.items()},
            "figures": [str(f) for f in self.figures],
        }


def run_demo_real(
    out: str | Path,
    *,
    cache_dir: str | Path | None = None,
    n_prompts: int = REAL_N_PROMPTS,
    seed: int = 0,
    top: int = 10,
    device: str | None = "cpu",
    progress: bool = True,
    report: Report | None = None,
    threads: int | None = REAL_THREADS,
) -> list[MethodsAnalysis]:
    """The demo on the real model (SmolLM2-135M-Instruct and its fine-tunes, :mod:`mechdiff.zoo.real`).

    Builds the real zoo if it is not cached (conversion and fine-tuning, minutes, once), then:

    * ``distill`` and ``trigger`` (:data:`REAL_EXACT`): behaviour gap; exact cross-model patching
      and attribution patching of every head and MLP in both directions; a table of both
      scores side by side with Spearman's rho between them.
    * the prompted base as the third model: :func:`mechdiff.activation_patch` of the base,
      persona-prompted into unprompted (attention layers and MLPs), beside the per-layer profile
      of ``cross_patch(base vs distilled)``, their correlation, and the three models' metrics.
    * ``distill_lora``: behaviour gap and attribution patching, its head ranking compared with the
      full distillation's (same behaviour: same components?).

    Every result is saved under ``<out>/<experiment>/`` (``<out>/prompted_base/`` for the base's
    own patching), figures under each ``figures/``, and ``<out>/summary.json`` / ``summary.md``.

    Args:
        out: output folder.
        cache_dir: the real zoo cache (default ``$MECHDIFF_CACHE/real`` or
            ``~/.cache/mechdiff/real``).
        n_prompts: prompts per task (a deterministic subset chosen with ``seed``).
        seed: seed of the subset.
        top: rows per ranked table.
        device: where to run the models.
        progress: show progress bars.
        report: called with each table and reading as soon as it is ready.
        threads: torch threads while the demo runs (restored after); ``None`` leaves them.
    """
    from mechdiff.zoo import real

    if n_prompts < 1:
        raise OptionError(f"n_prompts must be at least 1, got {n_prompts}")
    if threads is not None and threads < 1:
        raise OptionError(f"threads must be at least 1, got {threads}")
    say: Report = report or (lambda _: None)
    out = Path(out)
    start = time.perf_counter()
    dirs = real.build(cache_dir, progress=progress)
    tasks = real.tasks(cache_dir, progress=progress)
    distill_keep = _pick(len(tasks["distill"]), n_prompts, seed)
    chosen = {
        "distill": _subset(tasks["distill"], distill_keep),
        "distill_prompted": _subset(tasks["distill_prompted"], distill_keep),
        "trigger": _subset(tasks["trigger"], _pick(len(tasks["trigger"]), n_prompts, seed)),
    }
    analyses: list[MethodsAnalysis] = []
    sections: list[str] = []
    distilled: MethodsAnalysis | None = None
    comparison: PromptedBaseComparison | None = None
    lora: FinetuneComparison | None = None
    steps = ["distill", "prompted base", "trigger", "distill_lora"]
    bar = tqdm(steps, desc="mechdiff demo (real)", disable=not progress)
    with _torch_threads(threads):
        try:
            base = load_pair(dirs["base"], dirs["base"], device=device).base
            for step in bar:
                bar.set_postfix_str(step)
                if step == "prompted base":
                    continue  # runs inside "distill", while the distilled model is loaded
                exp = real.EXPERIMENTS[step]
                spec = real.FINETUNES[exp.finetuned]
                pair = _real_pair(base, dirs["base"], dirs[exp.finetuned], device)
                task = chosen[exp.task]
                analysis = _analyse_methods(
                    pair, task, out / step, label=step, exact=step in REAL_EXACT,
                    progress=progress, mechanism=MECHANISMS.get(exp.mechanism, exp.mechanism),
                    description=spec.description,
                )
                analyses.append(analysis)
                say(analysis.table(top))
                if step == "distill":
                    distilled = analysis
                    comparison = _prompted_base(
                        pair, analysis, task, chosen["distill_prompted"], out, str(dirs["base"]),
                        progress=progress,
                    )
                    sections.append(comparison.markdown())
                    say("\n" + comparison.reading())
                elif exp.prompted_task == "distill_prompted" and distilled is not None:
                    lora = _compare_finetunes(analysis, distilled)
                    sections.append(lora.markdown())
                    say("\n" + lora.text())
                del pair
        finally:
            bar.close()
    write_summary(out, analyses, top=top, sections=sections, meta={
        "title": "mechdiff demo: SmolLM2-135M-Instruct and its fine-tunes",
        "intro": (
            "Context distillation (`distill`, full and LoRA) re-weights a behaviour the base shows "
            "under a system prompt; a planted trigger (`trigger`) is a new behaviour. Heads "
            "(patched after their own W_O) and MLPs are ranked by the fraction of the behaviour "
            "gap that patching each one alone closes, exactly and by attribution patching."
        ),
        "demo": "real",
        "real_zoo": str(dirs["base"].parent),
        "n_prompts": n_prompts,
        "seed": seed,
        "threads": threads,
        "prompted_base": comparison.summary() if comparison else None,
        "lora_vs_full": lora.summary() if lora else None,
        "seconds": round(time.perf_counter() - start, 1),
    })
    return analyses


def _analyse_methods(
    pair: ModelPair,
    task: Task,
    out: Path,
    *,
    label: str,
    exact: bool,
    progress: bool,
    mechanism: str | None,
    description: str | None,
    sites: Sequence[SiteKind] = ("heads", "mlp"),
) -> MethodsAnalysis:
    """Gap, exact patching (if ``exact``) and attribution patching of ``sites``, both directions."""
    about = label if label == task.name else f"{label} \u00b7 task: {task.name}"
    if exact:
        pa = analyse_pair(pair, task, out, label=label, sites=sites, progress=progress,
                          mechanism=mechanism, description=description)
        gap, exact_results, figures = pa.gap, pa.results, pa.figures
    else:
        gap = behaviour_gap(pair, task)
        gap.save(out / "gap")
        figures = tuple(viz.save_figure(viz.plot_gap(gap, title=f"Behaviour gap \u00b7 {about}"),
                                        out / "figures" / "gap"))
        exact_results = {}
    attribution: dict[str, PatchResult] = {}
    for kind in sites:
        by_direction = {}
        for direction in DIRECTIONS:
            result = attribute(pair, task, sites=kind, direction=direction,
                               method="attribution", progress=progress)
            name = f"attribution_{kind}_{_slug(direction)}"
            result.save(out / name)
            attribution[name] = by_direction[direction] = result
        fig = viz.plot_directions(
            by_direction["ft->base"], by_direction["base->ft"],
            title=f"{SITE_NAMES.get(kind, kind)} \u00b7 attribution patching (gradient estimate) "
            f"\u00b7 {about}",
        )
        figures += tuple(viz.save_figure(fig, out / "figures" / f"attribution_{kind}"))
    changed = _changed_layers(pair)
    agreement = {}
    for name, est in attribution.items():
        ref = exact_results.get(name.removeprefix("attribution_"))
        if ref is not None:
            agreement[f"{est.sites} {est.direction}"] = _agreement(est.scores, ref.scores, changed)
    return MethodsAnalysis(
        label=label, out_dir=out, gap=gap, exact=dict(exact_results), attribution=attribution,
        figures=tuple(figures), directions=DIRECTIONS, changed_layers=changed,
        agreement=agreement, mechanism=mechanism, description=description,
    )


def _prompted_base(
    pair: ModelPair, distilled: MethodsAnalysis, task: Task, prompted_task: Task, out: Path,
    base_id: str, *, progress: bool,
) -> PromptedBaseComparison:
    """Patch the base, prompted into unprompted, and the distilled model into the base, per layer."""
    prompted, finetuned = {}, {}
    for kind in ("attn", "mlp"):
        p = activation_patch(pair.base, prompted_task, sites=kind, positions="all",
                             progress=progress, model_id=base_id)
        p.save(out / "prompted_base" / kind)
        prompted[kind] = p
        name = f"{kind}_ft_to_base"
        f = distilled.exact.get(name)
        if f is None:
            f = cross_patch(pair, task, sites=kind, direction="ft->base",
                            progress=progress)
            f.save(distilled.out_dir / name)
        finetuned[kind] = f
    changed = distilled.changed_layers
    correlation = {}
    for kind in prompted:
        r = {"all": pearson(prompted[kind].scores, finetuned[kind].scores)}
        if 0 < len(changed) < prompted[kind].scores.shape[0]:
            idx = torch.tensor(changed)
            r["changed"] = pearson(prompted[kind].scores[idx], finetuned[kind].scores[idx])
        correlation[kind] = r
    metrics = {
        "base": float(distilled.gap.base_metric.mean()),
        "prompted base": float(prompted["attn"].donor.mean()),
        "distilled": float(distilled.gap.finetuned_metric.mean()),
    }
    notes = {SITE_NAMES[k]: f"r = {_fmt_r(r['all'])}" + (
        f" (layers {_span_text(changed)}: {_fmt_r(r['changed'])})" if "changed" in r else "")
        for k, r in correlation.items()}
    fig = viz.plot_layer_profiles(
        {SITE_NAMES[k]: {"system prompt in the base (prompted \u2192 unprompted)": prompted[k],
                         "distilled \u2192 base (FT \u2192 base)": finetuned[k]}
         for k in prompted},
        title=f"Where the system prompt acts vs where distillation acts \u00b7 {task.name}",
        notes=notes,
    )
    figures = tuple(viz.save_figure(fig, out / "prompted_base" / "figures" / "profiles"))
    return PromptedBaseComparison(prompted=prompted, finetuned=finetuned, metrics=metrics,
                                  correlation=correlation, changed_layers=changed, figures=figures)


def _compare_finetunes(a: MethodsAnalysis, ref: MethodsAnalysis) -> FinetuneComparison:
    """Spearman's rho (and top-10 overlap) of two fine-tunes' attribution scores, site by site."""
    agreement = {}
    for name, result in a.attribution.items():
        other = ref.attribution.get(name)
        if other is not None:
            agreement[f"{result.sites} {result.direction}"] = _agreement(
                result.scores, other.scores, ref.changed_layers, top=10)
    return FinetuneComparison(
        label=a.label, reference=ref.label, method="attribution",
        gaps={a.label: a.gap.gap, ref.label: ref.gap.gap}, layers=ref.changed_layers,
        agreement=agreement,
    )


def _agreement(
    a: Tensor, b: Tensor, layers: Sequence[int], *, top: int | None = None
) -> dict[str, float]:
    """Spearman's rho of two score grids (layers first): all sites, and sites in ``layers``."""
    out = {"all": spearman(a, b)}
    if 0 < len(layers) < a.shape[0]:
        idx = torch.tensor(list(layers))
        out["changed"] = spearman(a[idx], b[idx])
    if top is not None:
        out["top10"] = float(top_overlap(a, b, top))
    return out


def _changed_layers(pair: ModelPair) -> tuple[int, ...]:
    """Blocks whose parameters differ between the two models (both processed the same way)."""
    changed = []
    for layer, (a, b) in enumerate(zip(pair.base.blocks, pair.finetuned.blocks, strict=True)):
        pa, pb = list(a.parameters()), list(b.parameters())
        if len(pa) != len(pb) or any(not torch.equal(x, y) for x, y in zip(pa, pb, strict=True)):
            changed.append(layer)
    return tuple(changed)


def _profile_span(results: dict[str, PatchResult]) -> tuple[str, str]:
    """Layers where a per-layer profile is at least half its peak (any kind), and the peak."""
    strength = torch.stack([r.scores.abs() for r in results.values()]).amax(0)
    peak = float(strength.max())
    if peak == 0:
        return "(none)", "none"
    layers = [i for i, v in enumerate(strength.tolist()) if v >= 0.5 * peak]
    kind, result = max(results.items(), key=lambda kv: float(kv[1].scores.abs().max()))
    layer = int(result.scores.abs().argmax())
    label = f"{_SITE_PREFIX.get(kind, kind.upper())}{layer} {_fmt(float(result.scores[layer]))}"
    return _span_text(layers), label


def _span_text(layers: Sequence[int]) -> str:
    """``15-29`` for a contiguous run, ``3, 7-9`` otherwise."""
    layers = sorted(layers)
    if not layers:
        return "(none)"
    runs, start = [], layers[0]
    for prev, cur in zip(layers, [*layers[1:], None], strict=True):
        if cur != prev + 1:
            runs.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(runs)


def _fmt_r(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "n/a"


def _pick(n_total: int, n: int, seed: int) -> list[int]:
    """``n`` of ``range(n_total)`` (all if fewer), chosen with a local RNG seeded by ``seed``."""
    if n >= n_total:
        return list(range(n_total))
    return sorted(random.Random(seed).sample(range(n_total), n))


def _subset(task: Task, keep: Sequence[int]) -> Task:
    """The task restricted to the prompts at ``keep`` (answers and corrupted prompts alike)."""
    if list(keep) == list(range(len(task))):
        return task

    def pick(items: Sequence[Any] | None) -> list[Any] | None:
        return None if items is None else [items[i] for i in keep]

    return dataclasses.replace(task, prompts=pick(task.prompts), answers=pick(task.answers),
                               wrong_answers=pick(task.wrong_answers),
                               corrupted=pick(task.corrupted))


def _real_pair(base: TransformerBridge, base_dir: Path, finetuned: Path,
               device: str | None) -> ModelPair:
    """A pair sharing the already-loaded base bridge; a LoRA adapter is merged into the base."""
    if (finetuned / "adapter_config.json").is_file():
        ft, ft_id = _load_adapter(base_dir, finetuned, device=device or "cpu",
                                  dtype=torch.float32, processing="compat")
    else:
        ft, ft_id = load_pair(finetuned, finetuned, device=device).base, str(finetuned)
    pair = load_pair(base, ft, device=device)
    return dataclasses.replace(pair, base_id=str(base_dir), finetuned_id=ft_id)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch threads (``None``: unchanged), restoring the caller's count after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


DEMOS: dict[str, Callable[..., Sequence[PairAnalysis | MethodsAnalysis]]] = {
    "real": run_demo_real,
    "synthetic": run_demo_synthetic,
}
"""The demos ``mechdiff demo`` can run, by name (``--real``, the default, and ``--synthetic``)."""


# ---------------------------------------------------------------- argument parsing and main


def _direction(text: str) -> Direction:
    try:
        return _DIRECTION_ALIASES[text]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"invalid direction {text!r}; choose ft->base or base->ft (shell-safe: ft-to-base, "
            "base-to-ft)"
        ) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechdiff",
        description="What did fine-tuning change inside this model? Cross-model activation "
        "patching of a base and a fine-tuned model.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{demo,patch}")

    demo = sub.add_parser(
        "demo", help="analyse a real model's fine-tunes (default) or the synthetic zoo",
        description="By default: SmolLM2-135M-Instruct (converted offline) and its fine-tunes "
        "(context distillation, full and LoRA; a planted trigger): behaviour gaps, exact and "
        "attribution patching of every head and MLP in both directions, the prompted base as a "
        "third model, ranked tables and figures. The first run converts and fine-tunes (minutes, "
        "cached). --synthetic: the embedded zoo of small models with known mechanisms.",
    )
    which = demo.add_mutually_exclusive_group()
    which.add_argument("--real", dest="demo", action="store_const", const="real",
                       help="run on SmolLM2-135M-Instruct and its fine-tunes (the default)")
    which.add_argument("--synthetic", dest="demo", action="store_const", const="synthetic",
                       help="run on the controlled synthetic zoo (small GPT-2-style models "
                       "trained offline with known mechanisms)")
    demo.set_defaults(demo=DEFAULT_DEMO)
    demo.add_argument("--out", type=Path, default=Path("mechdiff_out"),
                      help="output folder (default: mechdiff_out)")
    demo.add_argument("--cache", type=Path, default=None,
                      help="model cache folder (default: $MECHDIFF_CACHE/real, or "
                      "$MECHDIFF_CACHE/zoo with --synthetic; without MECHDIFF_CACHE under "
                      "~/.cache/mechdiff)")
    demo.add_argument("--n-prompts", type=_positive, default=None,
                      help=f"prompts per task (default {REAL_N_PROMPTS} for the real model, which "
                      "keeps a run from the cache within about 5 minutes on 2 CPU cores; 64 with "
                      "--synthetic)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the task prompts (default 0)")
    demo.add_argument("--top", type=_positive, default=10, help="rows per ranked table (default 10)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    patch = sub.add_parser(
        "patch", help="analyse your own base and fine-tuned checkpoints",
        description="Behaviour gap and exact cross-model patching of a base and a fine-tuned "
        "checkpoint on your prompts. Prompt files: .jsonl (one {\"prompt\", \"answer\", "
        "\"wrong_answer\"} object per line), .json ({\"prompts\": [...], \"answers\": [...], ...}) "
        "or plain text (one prompt per line; task-free KL metric).",
    )
    patch.add_argument("--base", required=True, help="base model: a local HF directory")
    patch.add_argument("--finetuned", required=True,
                       help="fine-tuned model: a local HF directory or LoRA adapter directory")
    patch.add_argument("--prompts", required=True, type=Path, help="prompt file (.jsonl, .json, .txt)")
    patch.add_argument("--sites", nargs="+", choices=SITE_KINDS, default=["heads", "mlp"],
                       help="site kinds to patch (default: heads mlp)")
    patch.add_argument("--direction", nargs="+", type=_direction, default=list(DIRECTIONS),
                       metavar="DIRECTION",
                       help="ft->base (sufficiency) and/or base->ft (necessity); default both. "
                       "Quote them in a shell, or write ft-to-base / base-to-ft")
    patch.add_argument("--positions", choices=("all", "each"), default="all",
                       help="patch every position at once (all, default) or one at a time (each)")
    patch.add_argument("--metric", choices=METRICS, default=None,
                       help="default: logit_diff with wrong answers, logprob with answers only, "
                       "else kl")
    patch.add_argument("--out", type=Path, default=Path("mechdiff_out"),
                       help="output folder (default: mechdiff_out)")
    patch.add_argument("--batch-size", type=_positive, default=64,
                       help="sequences per patched forward; bounds memory (default 64)")
    patch.add_argument("--device", choices=("cpu", "cuda"), default=None,
                       help="default: cuda if available, else cpu")
    patch.add_argument("--top", type=_positive, default=10, help="rows in the ranked table (default 10)")
    patch.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise _UsageError(f"output path {out} exists and is not a folder; pass another --out")


class _UsageError(MechdiffError):
    """A command-line argument is unusable (reported like every other MechdiffError)."""


def _cmd_demo(args: argparse.Namespace, report: Report) -> int:
    _check_out(args.out)
    start = time.perf_counter()
    chosen = {} if args.n_prompts is None else {"n_prompts": args.n_prompts}
    analyses = DEMOS[args.demo](
        args.out, cache_dir=args.cache, seed=args.seed, top=args.top, progress=not args.quiet,
        report=report, **chosen,
    )
    report(f"\n{len(analyses)} fine-tunes analysed in {time.perf_counter() - start:.0f} s; "
           f"results, figures and summary.md in {args.out}/")
    return 0


def _cmd_patch(args: argparse.Namespace, report: Report) -> int:
    _check_out(args.out)
    extra = {} if args.metric is None else {"metric": args.metric}
    task = Task.from_file(args.prompts, **extra)  # prompt errors before any model is loaded
    pair = load_pair(args.base, args.finetuned, device=args.device)
    analysis = analyse_pair(
        pair, task, args.out, label=task.name, directions=args.direction, sites=args.sites,
        progress=not args.quiet, positions=args.positions, batch_size=args.batch_size,
    )
    write_summary(args.out, [analysis], top=args.top, meta={
        "title": f"mechdiff patch: {task.name}",
        "intro": f"Base `{pair.base_id}`, fine-tuned `{pair.finetuned_id}`.",
        "positions": args.positions,
    })
    report(analysis.table(args.top))
    report(f"\nresults, figures and summary.md in {args.out}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mechdiff`` command line; returns the exit status.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse reports usage errors itself (status 2), --help status 0
        return int(e.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    report: Report = tqdm.write
    _fixed_mmap_threshold()
    try:
        with _hf_progress(enabled=not args.quiet):
            if args.command == "demo":
                return _cmd_demo(args, report)
            return _cmd_patch(args, report)
    except MechdiffError as e:
        return _fail(str(e))
    except OSError as e:  # unwritable output folder, full disk, ...
        return _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    except KeyboardInterrupt:
        print("mechdiff: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _hf_progress(*, enabled: bool) -> Iterator[None]:
    """Silence transformers' own progress bars (weight loading) when asked; restore them after."""
    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


def _fixed_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Give glibc a fixed mmap threshold for this process (the command is the application).

    By default glibc raises the threshold after every large free, after which freed activation
    buffers stay in its heap and count as resident memory: patching a GPT-2-small pair kept
    726 MB resident where 307 MB were needed. Equivalent to ``MALLOC_MMAP_THRESHOLD_=1048576``;
    a no-op off glibc or when that variable is set.
    """
    import ctypes
    import ctypes.util
    import os

    name = ctypes.util.find_library("c")
    if not name or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, nbytes)  # M_MMAP_THRESHOLD


def _fail(message: str) -> int:
    print("mechdiff: error: " + " ".join(message.split()), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
