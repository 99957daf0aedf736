"""The demos ``mechdiff demo`` runs.

* :func:`run_demo_real` (the default): the real model SmolLM2-135M-Instruct and its fine-tunes
  (:mod:`mechdiff.zoo.real`): per fine-tune, exact *and* attribution patching side by side
  (:class:`MethodsAnalysis`), the prompted base as a third model (:class:`PromptedBaseComparison`)
  and a LoRA-vs-full comparison (:class:`FinetuneComparison`).
* :func:`run_demo_synthetic` (``--synthetic``): the embedded zoo (:mod:`mechdiff.zoo`), whose
  fine-tunes have known mechanisms, analysed with :func:`mechdiff.analysis.analyse_pair`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from mechdiff import viz, zoo
from mechdiff.analysis import (
    _HEADINGS,
    MECHANISMS,
    PairAnalysis,
    RankedComponent,
    Report,
    _fmt,
    _heading,
    _md_direction,
    _md_section_head,
    _slug,
    analyse_pair,
    rank_components,
    write_summary,
)
from mechdiff.directions import DIRECTIONS
from mechdiff.errors import OptionError
from mechdiff.gap import GapResult, behaviour_gap
from mechdiff.loading import ModelPair, load_pair
from mechdiff.loading.pair import _load_adapter
from mechdiff.patching import PatchResult, activation_patch, attribute, cross_patch
from mechdiff.sites import SiteKind
from mechdiff.stats import pearson, spearman, top_overlap
from mechdiff.tasks import Task
from mechdiff.viz._style import SITE_NAMES

DemoName: TypeAlias = Literal["real", "synthetic"]
DEFAULT_DEMO: DemoName = "real"
"""What ``mechdiff demo`` runs without a flag. ``real``: SmolLM2-135M-Instruct and its fine-tunes
(:mod:`mechdiff.zoo.real`); ``synthetic`` (``--synthetic``): the embedded zoo of small models."""

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
REAL_THREADS: int | None = None
"""torch threads of the real demo; ``None`` keeps torch's default (one per core). Measured on 2
idle cores: all-heads patching of 2 prompts took 10.6 s with 2 threads and 20 s with 1. (With
another process busy on the same cores, 2 threads spin-wait and can be several times slower;
pass ``threads=1`` to :func:`run_demo_real` there.)"""
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
        heads = " | ".join(f"exact {_md_direction(d)} | attribution {_md_direction(d)}"
                           for d in self.directions)
        lines = _md_section_head(
            self.label, self.mechanism, self.description, self.gap,
            "closed by patching one component: *exact* patches it, *attribution* is the "
            f"gradient estimate of that patch. Ranked by {self.ranked_by} scores.",
        )
        lines += [
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


