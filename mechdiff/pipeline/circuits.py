"""One fine-tune against its base on one task, at the level of circuits: each model's circuit,
their comparison and the verdict, and which edges carry the behaviour gap.

:func:`analyse_circuits` is what ``mechdiff circuits`` and the demos run per pair. It composes
:func:`mechdiff.circuits.compare_circuits` (edge attribution in both models, faithfulness curves
by real edge ablation, each circuit run inside the other model, the base circuit's paths carrying
the fine-tuned model's outputs, the verdict with bootstrap intervals) and
:func:`mechdiff.circuits.cross_edge_attribution` (each edge's share of the gap, the strongest
patched for real). It only computes: :class:`CircuitAnalysis` saves and reloads as one folder;
figures (:func:`mechdiff.viz.circuit_figures`) and tables are drawn from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mechdiff.circuits import (
    Ablation,
    CircuitComparison,
    CrossEdgeScores,
    Method,
    _prep,
    compare_circuits,
    cross_edge_attribution,
)
from mechdiff.circuits.cross import EXACT_TOP
from mechdiff.errors import OptionError, check_seed
from mechdiff.loading import ModelPair
from mechdiff.results import SavableResult
from mechdiff.tasks import Task


@dataclass(frozen=True)
class CircuitAnalysis(SavableResult):
    """Everything :func:`analyse_circuits` computed for one pair.

    Attributes:
        label: the pair's name in tables and folders (e.g. the fine-tune's name).
        comparison: both models' circuits, compared, with the verdict.
        cross: each edge's share of the gap, fine-tuned into base (sufficiency); the strongest
            patched for real. None when not asked for.
        mechanism: the fine-tune's known mechanism, where one is known (the zoos').
    """

    label: str
    comparison: CircuitComparison
    cross: CrossEdgeScores | None = None
    mechanism: str | None = None

    def summary(self) -> str:
        """The comparison, the verdict and the edges that carry the gap, as text."""
        head = f"== circuits: {self.label}" + (f" ({self.mechanism})" if self.mechanism else "")
        parts = [head, self.comparison.summary()]
        if self.cross is not None:
            parts.append(self.cross.table(10))
        return "\n".join(parts)


def analyse_circuits(
    pair: ModelPair,
    task: Task,
    *,
    label: str,
    method: Method = "eap_ig",
    steps: int = 5,
    ablation: Ablation = "mean",
    edges: int | None = None,
    cross_top: int | None = EXACT_TOP,
    n_boot: int = 200,
    seed: int = 0,
    prompt_batch_size: int = 16,
    progress: bool = True,
    mechanism: str | None = None,
    base_from: CircuitAnalysis | None = None,
    cross_curves: bool = True,
) -> CircuitAnalysis:
    """Each model's circuit on ``task``, compared, with a verdict; and the edges carrying the gap.

    Args:
        pair: the base and fine-tuned models.
        task: prompts and metric (the behaviour fine-tuning changed).
        label: the pair's name.
        method: edge attribution, ``"eap"`` or ``"eap_ig"`` (both analyses).
        steps: EAP-IG integration steps.
        ablation: ``"mean"`` or ``"corrupted"`` (the task's corrupted prompts).
        edges: a fixed circuit size in edges for both models (default: each model's smallest MIB
            fraction faithful within :data:`mechdiff.circuits.compare.CLOSE`).
        cross_top: edges patched for real across models (largest estimated share first); None
            skips the cross-model edge attribution.
        n_boot: bootstrap resamples of the prompts for the verdict's intervals.
        seed: the bootstrap's seed.
        prompt_batch_size: prompts per forward.
        progress: show progress.
        mechanism: the fine-tune's known mechanism, recorded with the result.
        base_from: the analysis of another fine-tune of the same base on the same task and
            options: its base model's edge scores and curve are reused (half the comparison's
            cost), after checking they are this base's on this task.
        cross_curves: also run each model's circuits at every fraction inside the other model
            (two more faithfulness curves; see :func:`~mechdiff.circuits.compare_circuits`).

    Raises:
        OptionError, GraphError, PromptError, AnswerTokenError, MetricError: bad arguments or
            models without an exact edge graph, before any forward.
        ZeroGapError: the two models score the same (cross-model edge attribution).
    """
    if cross_top is not None and (isinstance(cross_top, bool) or not isinstance(cross_top, int)
                                  or cross_top < 0):
        raise OptionError(f"cross_top must be a non-negative integer or None, got {cross_top!r}")
    graph, _ = _prep.prepare(pair.base, task, ablation)  # every cheap check, before any forward
    check_seed(seed)
    n_edges = graph.n_edges
    if edges is not None and (isinstance(edges, bool) or not isinstance(edges, int)
                              or not 1 <= edges <= n_edges):
        raise OptionError(f"edges must be an integer from 1 to the graph's {n_edges} edges, "
                          f"got {edges!r}")
    cross = None
    if cross_top is not None:  # first: it refuses a zero gap before the costlier comparison
        cross = cross_edge_attribution(pair, task, direction="ft->base", method=method,
                                       steps=steps, exact_top=cross_top,
                                       prompt_batch_size=prompt_batch_size, progress=progress)
    reuse = {}
    if base_from is not None:
        reuse = {"base_scores": base_from.comparison.base_scores,
                 "base_curve": base_from.comparison.base_curve}
    comparison = compare_circuits(pair, task, method=method, steps=steps, ablation=ablation,
                                  edges=edges, n_boot=n_boot, seed=seed,
                                  cross_curves=cross_curves,
                                  prompt_batch_size=prompt_batch_size, progress=progress,
                                  **reuse)
    return CircuitAnalysis(label=label, comparison=comparison, cross=cross, mechanism=mechanism)
