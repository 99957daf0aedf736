"""Circuits of a base and a fine-tuned model on the same task, compared, with a verdict.

:func:`compare_circuits` runs, for each model of the pair, edge attribution
(:func:`~mechdiff.circuits.edge_attribution`) and the faithfulness curve of its circuits
(:func:`~mechdiff.circuits.faithfulness_curve`), then:

1. **each model's circuit**: the smallest MIB fraction of edges from which the model's own
   circuits are faithful within :data:`CLOSE` (``|1 - f| <= CLOSE``) at that fraction and every
   larger one (the whole graph if none is): a curve that only passes through the band at a small
   fraction, on its way to swinging far, does not pick that fraction (on 4 prompts a real curve
   touched 1.0 at 0.2%, then ran from -1.2 to +3.3 up to 50%);
2. **overlap**: shared / new (fine-tuned only) / dropped (base only) nodes and edges of the two
   circuits, their node and edge IoU, and the edge IoU of the two models' circuits *at matched
   sizes*, at every fraction of the curves (``iou_curve``);
3. **scores**: Spearman's rank correlation of every edge's score in the two models; the edges
   whose ``|score|`` grew and shrank most;
4. **cross-faithfulness**, by real intervention: the base circuit run inside the fine-tuned model
   (every edge outside it ablated, with the fine-tuned model's own ablation values) and the
   fine-tuned circuit inside the base, each normalized within the model it runs in;
5. **the change carried by the base circuit**, by cross-model edge patching
   (:mod:`~mechdiff.circuits.cross`): every edge of the base circuit receives the fine-tuned
   model's upstream output inside the base model's run, all at once; the fraction of the gap
   this closes;
6. the :mod:`~mechdiff.circuits.verdict` from those numbers, with bootstrap intervals over prompts.

Cost (per model): the edge attribution, one forward per curve point and prompt batch, and two
forwards per prompt batch for the cross-evaluation; the ablation values (means) are computed once
per model and shared.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechdiff.circuits import _prep, _run
from mechdiff.circuits.ablation import Ablation, Replacements, mean_outputs
from mechdiff.circuits.attribution import METHODS, EdgeScores, Method, attribute_edges
from mechdiff.circuits.circuit import Circuit, Rule, select_circuit
from mechdiff.circuits.faithfulness import (
    MIB_FRACTIONS,
    Faithfulness,
    FaithfulnessCurve,
    areas,
    baseline_text,
    evaluate,
    normalized,
    unseparated,
)
from mechdiff.circuits.graph import Graph, GraphError
from mechdiff.circuits.results import OnGraph
from mechdiff.circuits.verdict import (
    LABELS,
    NUMBERS,
    Verdict,
    checked_thresholds,
    decide,
    fixed,
    label_of,
    number_and_interval,
    sensitivity,
    share,
    signed,
    split_text,
    undetermined,
)
from mechdiff.errors import OptionError, VerdictWarning, check_seed
from mechdiff.loading import ModelPair, model_provenance
from mechdiff.metrics import checked_gap, negligible
from mechdiff.results import Provenance, SavableResult
from mechdiff.stats import spearman
from mechdiff.tasks import Task

CLOSE = 0.2
"""Each model's circuit is its smallest one faithful within this: ``|1 - f| <= CLOSE``."""
N_BOOT = 200
"""Default bootstrap resamples of the prompts."""
TOP_CHANGES = 10
"""Edges listed as strengthened and weakened most."""


@dataclass(frozen=True)
class CircuitComparison(SavableResult, OnGraph, name="circuits.CircuitComparison"):
    """A base and a fine-tuned model's circuits on one task, compared, with a verdict.

    Attributes:
        base_scores, ft_scores: edge scores in each model.
        base_curve, ft_curve: each model's faithfulness curve of its own circuits.
        base_size, ft_size: the fraction of edges of each model's circuit (module docstring).
        base_circuit, ft_circuit: each model's smallest faithful circuit.
        base_in_ft: the base circuit evaluated inside the fine-tuned model.
        ft_in_base: the fine-tuned circuit evaluated inside the base model.
        patched: base model's metric per prompt with the base circuit's edges carrying the
            fine-tuned model's outputs ``[batch]`` (``carried`` in the verdict).
        iou_curve: edge IoU of the two models' circuits at each fraction of the curves.
        shared_nodes, new_nodes, dropped_nodes: node labels in both / only the fine-tuned / only
            the base circuit.
        n_shared_edges, n_new_edges, n_dropped_edges: edge counts likewise.
        strengthened, weakened: ``(edge, base score, fine-tuned score)`` of the edges whose
            ``|score|`` grew / shrank most, keeping their sign (scores estimate ``M(edge
            ablated) - M(clean)``: negative for an edge that supports the behaviour).
        flipped: edges whose score changed sign (supporting in one model, opposing in the
            other), by how far the score moved.
        base_in_ft_curve, ft_in_base_curve: each model's circuits at every MIB fraction (those
            of its own curve) evaluated inside the other model, with the other model's ablation
            values; None when not computed (``cross_curves=False``).
        verdict: the verdict, its numbers, thresholds and bootstrap intervals.
        n_layers, n_heads, n_kv_heads: the graph.
        provenance: both models, task, metric; ``seed`` is the bootstrap's.
    """

    base_scores: EdgeScores
    ft_scores: EdgeScores
    base_curve: FaithfulnessCurve
    ft_curve: FaithfulnessCurve
    base_size: float
    ft_size: float
    base_circuit: Circuit
    ft_circuit: Circuit
    base_in_ft: Faithfulness
    ft_in_base: Faithfulness
    patched: Float[Tensor, " batch"]
    iou_curve: Float[Tensor, " fraction"]
    shared_nodes: tuple[str, ...]
    new_nodes: tuple[str, ...]
    dropped_nodes: tuple[str, ...]
    n_shared_edges: int
    n_new_edges: int
    n_dropped_edges: int
    strengthened: tuple[tuple[str, float, float], ...]
    weakened: tuple[tuple[str, float, float], ...]
    verdict: Verdict
    n_layers: int
    n_heads: int
    n_kv_heads: int
    provenance: Provenance
    flipped: tuple[tuple[str, float, float], ...] = ()
    base_in_ft_curve: FaithfulnessCurve | None = None
    ft_in_base_curve: FaithfulnessCurve | None = None

    def summary(self) -> str:
        """The comparison and the verdict as text (what a report prints)."""
        p, g = self.provenance, self.graph
        bc, fc = self.base_curve, self.ft_curve
        lines = [
            f"circuits of {p.base} and {p.finetuned} on {p.task!r} ({p.n_prompts} prompts, "
            f"{p.metric}; {self.base_scores.method} scores, {bc.ablation} ablation, {bc.rule} "
            f"circuits; graph of {g.n_edges} edges)",
            f"  own circuits: base {bc.areas_text()}; fine-tuned {fc.areas_text()}",
            *([f"  inside the other model: base circuits in fine-tuned "
               f"{self.base_in_ft_curve.areas_text()}; fine-tuned circuits in base "
               f"{self.ft_in_base_curve.areas_text()}"]
              if self.base_in_ft_curve is not None and self.ft_in_base_curve is not None
              else []),
            f"  {self._sized}: base {self._size(self.base_size, self.base_circuit)}, "
            f"fine-tuned {self._size(self.ft_size, self.ft_circuit)}; edge IoU at matched sizes "
            + ", ".join(f"{100 * f:g}%: {fixed(v, 2)}" for f, v in zip(
                MIB_FRACTIONS, self.iou_curve.tolist(), strict=True) if not math.isnan(v)),
            f"  edges shared {self.n_shared_edges}, new {self.n_new_edges}, dropped "
            f"{self.n_dropped_edges}; nodes new: {_names(self.new_nodes)}; dropped: "
            f"{_names(self.dropped_nodes)}",
            f"  cross-faithfulness: base circuit in fine-tuned "
            f"{self._number('base_in_ft', self.base_in_ft.value)}, fine-tuned circuit in base "
            f"{self._number('ft_in_base', self.ft_in_base.value)}",
            "  edge scores (base -> fine-tuned) estimate M(edge ablated) - M(clean): negative "
            "for an edge that supports the behaviour",
            "  |score| grew most: " + _edges(self.strengthened),
            "  |score| shrank most: " + _edges(self.weakened),
            "  sign flipped (role switched): " + _edges(self.flipped),
        ]
        return "\n".join(lines + [self.verdict.text()])

    def _number(self, key: str, value: float) -> str:
        lo, hi = self.verdict.intervals.get(key, (math.nan, math.nan))
        return number_and_interval(key, value, lo, hi)

    def _size(self, size: float, c: Circuit) -> str:
        kept = f"{c.n_edges} edges, {int(c.nodes.sum())} nodes"
        if self._given:
            return f"{kept} ({100 * size:.3g}% of edges; {c.rule})"
        if self._fixed:  # asked for, then pruned
            asked = f"{c.requested} edge{'' if c.requested == 1 else 's'} asked"
            return f"{asked}, {kept} kept on input-to-logits paths"
        return f"{100 * size:.3g}% of edges ({kept})"

    @property
    def _fixed(self) -> bool:
        return self.verdict.extra.get("size_rule") == SIZE_RULES["edges"]

    @property
    def _given(self) -> bool:
        return self.verdict.extra.get("size_rule") == SIZE_RULES["given"]

    @property
    def _sized(self) -> str:
        if self._given:
            return "circuits given"
        return "circuits of a fixed size" if self._fixed else "smallest faithful circuits"


def _edges(rows: tuple[tuple[str, float, float], ...], k: int = 5) -> str:
    """Up to ``k`` ``edge (base score -> fine-tuned score)``; "-" for none."""
    if not rows:
        return "-"
    return ", ".join(f"{e} ({signed(b)} -> {signed(f)})" for e, b, f in rows[:k])


def _names(labels: tuple[str, ...], k: int = 12) -> str:
    """Up to ``k`` node labels, then how many more."""
    if not labels:
        return "-"
    more = f" (+{len(labels) - k} more)" if len(labels) > k else ""
    return ", ".join(labels[:k]) + more


def _check_given(name: str, given: EdgeScores, graph: Graph, task: Task, model_id: str,
                 method: str, steps: int, ablation: str) -> None:
    """Raise OptionError, naming every mismatch, unless ``given`` scores are what this
    comparison would compute itself."""
    if not isinstance(given, EdgeScores):
        raise OptionError(f"{name} must be EdgeScores (from circuits.edge_attribution), got "
                          f"{type(given).__name__}")
    wrong = []
    if given.graph != graph:
        wrong.append(f"graph {given.graph} (this pair: {graph})")
    if given.provenance.prompts_hash != task.fingerprint():
        wrong.append("another task's prompts")
    if given.provenance.base != model_id:
        wrong.append(f"model_id {given.provenance.base!r} (this model: {model_id!r}; pass "
                     f"model_id=pair.base_id or pair.finetuned_id to edge_attribution)")
    if given.method != method:
        wrong.append(f"method {given.method!r} (asked: {method!r})")
    elif method == "eap_ig" and given.steps != steps:
        wrong.append(f"steps={given.steps} (asked: steps={steps})")
    if given.ablation != ablation:
        wrong.append(f"ablation {given.ablation!r} (asked: {ablation!r})")
    if wrong:
        raise OptionError(f"{name} cannot be reused here: it has " + "; ".join(wrong))


def compare_circuits(
    pair: ModelPair,
    task: Task,
    *,
    method: Method = "eap_ig",
    steps: int = 5,
    ablation: Ablation = "mean",
    rule: Rule = "top_n",
    edges: int | None = None,
    base_circuit: Circuit | None = None,
    ft_circuit: Circuit | None = None,
    base_scores: EdgeScores | None = None,
    ft_scores: EdgeScores | None = None,
    base_curve: FaithfulnessCurve | None = None,
    thresholds: dict[str, float] | None = None,
    cross_curves: bool = True,
    n_boot: int = N_BOOT,
    seed: int = 0,
    prompt_batch_size: int = 16,
    circuit_batch: int = 4,
    progress: bool = True,
) -> CircuitComparison:
    """Discover each model's circuit on ``task``, compare them, and give a verdict.

    Args:
        pair: the base and fine-tuned models (same graph).
        task: prompts and metric (the behaviour fine-tuning changed).
        method: edge attribution method (``"eap"`` or ``"eap_ig"``).
        steps: EAP-IG steps.
        ablation: ``"mean"`` or ``"corrupted"``.
        rule: circuit selection (``"top_n"`` or ``"greedy"``), then pruned.
        edges: each model's circuit selects this many edges (before pruning) instead of the
            smallest MIB fraction faithful within :data:`CLOSE` from there on; the curves are
            computed either way.
        base_circuit, ft_circuit: compare these two circuits (both given; from
            :func:`select_circuit`, :meth:`Circuit.load`, or built by hand on this graph)
            instead of choosing each model's; the scores and curves are computed either way.
        base_scores, ft_scores: reuse edge scores computed before (same task and ablation).
        base_curve: reuse the base model's curve computed before, with ``base_scores`` (e.g.
            from the comparison of another fine-tune of the same base on the same task: two
            fine-tunes then cost one base side).
        thresholds: override thresholds of :mod:`mechdiff.circuits.verdict` by name.
        cross_curves: also evaluate each model's circuits at every MIB fraction inside the
            other model (two more curves: their cost again; the cross-faithfulness of the two
            chosen circuits is computed either way).
        n_boot: bootstrap resamples of the prompts for the intervals.
        seed: the bootstrap's seed (a local generator; recorded).
        prompt_batch_size: prompts per forward.
        circuit_batch: circuits per forward (stacked copies).
        progress: show progress bars.

    Raises:
        GraphError: the models have no exact graph or not the same one, or a circuit given is
            of another graph.
        OptionError, PromptError, AnswerTokenError, MetricError: bad arguments (before any
            forward).
        ZeroGapError: the two models score the same on the task (after the edge attribution,
            before the faithfulness curves): there is no change to explain.
    """
    if rule not in ("top_n", "greedy"):
        raise OptionError(f"rule must be 'top_n' or 'greedy', got {rule!r}")
    _prep.check_option("method", method, METHODS)
    _prep.check_positive(steps=steps)
    min_prompts = checked_thresholds(thresholds)["MIN_PROMPTS"]
    _prep.check_positive(n_boot=n_boot, prompt_batch_size=prompt_batch_size,
                         circuit_batch=circuit_batch)
    check_seed(seed)
    if edges is not None:
        _prep.check_positive(edges=edges)
    given = (base_circuit, ft_circuit)
    if any(c is not None for c in given):
        if any(not isinstance(c, Circuit) for c in given):
            raise OptionError("base_circuit and ft_circuit come together, each a "
                              "circuits.Circuit; got "
                              f"{type(base_circuit).__name__} and {type(ft_circuit).__name__}")
        if edges is not None:
            raise OptionError("edges= sizes the circuits compare_circuits chooses; with "
                              "base_circuit and ft_circuit given there is nothing to size")
    _prep.check_pair(pair)
    graph, tokens = _prep.prepare(pair.base, task, ablation)
    _prep.check_behaviour_metric(task)
    if len(task) < min_prompts:  # said before the minutes of work, not only in the result
        warnings.warn(VerdictWarning(
            f"{len(task)} prompts, fewer than MIN_PROMPTS {min_prompts:g}: the circuits and "
            "numbers are computed, but the verdict will be 'undetermined' with the label on these "
            f"prompts as a preview; give {min_prompts:g} or more prompts for a verdict"),
            stacklevel=2)
    if edges is not None and edges > graph.n_edges:
        raise OptionError(f"edges={edges} is more than the graph's {graph.n_edges} edges")
    for name, c in (("base_circuit", base_circuit), ("ft_circuit", ft_circuit)):
        if c is not None and c.graph != graph:
            raise GraphError(f"{name} is a circuit of {c.graph}; these models have {graph}")
    graph_ft, _ = _prep.prepare(pair.finetuned, task, ablation)
    if graph != graph_ft:
        raise GraphError(f"the two models have different graphs: {graph} vs {graph_ft}")
    for name, given, model_id in (("base_scores", base_scores, pair.base_id),
                                  ("ft_scores", ft_scores, pair.finetuned_id)):
        if given is not None:
            _check_given(name, given, graph, task, model_id, method, steps, ablation)
    if base_curve is not None and (
            base_scores is None or base_curve.scores_from != base_scores.provenance.base
            or base_curve.ablation != ablation or base_curve.rule != rule
            or base_curve.provenance.prompts_hash != task.fingerprint()
            or base_curve.graph != graph):
        raise OptionError("base_curve must come with the base_scores it was computed from, on "
                          "this task, graph, ablation and rule")
    if base_curve is not None and any(
            not torch.equal(base_curve.edges[i],
                            select_circuit(base_scores, rule=rule, fraction=f).edges)
            for i, f in enumerate(base_curve.fractions)):
        raise OptionError("base_curve's circuits are not those of base_scores")
    ids = {"base": pair.base_id, "finetuned": pair.finetuned_id}
    kw = {"prompt_batch_size": prompt_batch_size, "progress": progress}
    side: dict[str, dict] = {}
    for name, model, given in (("base", pair.base, base_scores),
                               ("finetuned", pair.finetuned, ft_scores)):
        repl = Replacements(ablation)
        if ablation == "mean":
            repl.means = mean_outputs(model, graph, tokens, prompt_batch_size, progress)
        scores = given or attribute_edges(model, graph, task, tokens, repl, method=method,
                                          steps=steps, positions="all", model_id=ids[name], **kw)
        side[name] = {"model": model, "repl": repl, "scores": scores}
    b, f = side["base"], side["finetuned"]
    # no behaviour gap: nothing for a verdict to explain (refused before the costlier curves)
    checked_gap(b["scores"].clean, f["scores"].clean, task.metric_name, task.name)
    for name, s in side.items():
        if name == "base" and base_curve is not None:
            s["curve"] = base_curve
        else:
            s["circuits"] = _mib_circuits(s["scores"], rule)
            s["curve"] = _curve(s["model"], graph, task, tokens, s["repl"], s["scores"],
                                s["circuits"], rule, ablation, ids[name], circuit_batch, kw)
    crossed = {}
    if cross_curves:  # each model's circuits inside the other, with the other's ablation values
        for name, s, other, other_id in (("base", b, f, ids["finetuned"]),
                                         ("finetuned", f, b, ids["base"])):
            circuits = s.get("circuits") or _mib_circuits(s["scores"], rule)
            crossed[name] = _curve(other["model"], graph, task, tokens, other["repl"],
                                   s["scores"], circuits, rule, ablation, other_id,
                                   circuit_batch, kw)
    if base_circuit is not None:
        sizing, cb, cf = "given", base_circuit, ft_circuit
        size_b, size_f = cb.fraction, cf.fraction
    elif edges is None:
        sizing = "faithful"
        size_b, size_f = _smallest(b["curve"].values), _smallest(f["curve"].values)
        cb, cf = b["curve"].circuit_at(size_b), f["curve"].circuit_at(size_f)
    else:
        sizing = "edges"
        cb, cf = (select_circuit(s["scores"], rule=rule, n=edges) for s in (b, f))
        size_b = size_f = edges / graph.n_edges
    # drawn with this comparison's scores; a given circuit keeps its own rule
    cb = Circuit(cb.edges, **graph.dims, rule=cb.rule if sizing == "given" else rule,
                 requested=cb.requested, scores=b["scores"].scores,
                 provenance=b["scores"].provenance)
    cf = Circuit(cf.edges, **graph.dims, rule=cf.rule if sizing == "given" else rule,
                 requested=cf.requested, scores=f["scores"].scores,
                 provenance=f["scores"].provenance)
    b_in_f = _cross(f["model"], graph, task, tokens, f["repl"], cb, ablation, ids["finetuned"],
                    kw)
    f_in_b = _cross(b["model"], graph, task, tokens, b["repl"], cf, ablation, ids["base"], kw)
    patched = _patch_circuit(pair, graph, task, tokens, cb, circuit_batch, kw)
    per_prompt = {
        "b_full": b["curve"].full, "f_full": f["curve"].full,
        "b_empty": b["curve"].empty, "f_empty": f["curve"].empty,
        "b_patched": patched,
        "f_cb": b_in_f.circuit, "b_cf": f_in_b.circuit,
        "s_b": b["scores"].per_prompt, "s_f": f["scores"].per_prompt,
    }
    numbers = _numbers(per_prompt, cb, cf, None)
    hint = _size_hint(b["scores"], rule, edges) if edges is not None and not cb.n_edges else ""
    verdict = _verdict(per_prompt, cb, cf, numbers, thresholds, n_boot, seed, size_b,
                       sizing=sizing, empty_hint=hint, ablation=ablation)
    return CircuitComparison(
        base_scores=b["scores"], ft_scores=f["scores"], base_curve=b["curve"],
        ft_curve=f["curve"], base_size=size_b, ft_size=size_f, base_circuit=cb, ft_circuit=cf,
        base_in_ft=b_in_f, ft_in_base=f_in_b, patched=patched, iou_curve=_iou_curve(b["curve"], f["curve"]),
        **_overlap(graph, cb, cf), **_changes(graph, b["scores"].scores, f["scores"].scores), verdict=verdict,
        base_in_ft_curve=crossed.get("base"), ft_in_base_curve=crossed.get("finetuned"),
        **graph.dims, provenance=pair.provenance(task, seed=seed),
    )


def _mib_circuits(scores: EdgeScores, rule: str) -> list[Circuit]:
    """The circuits of ``scores`` at every MIB fraction (those of a faithfulness curve)."""
    return [select_circuit(scores, rule=rule, fraction=fr) for fr in MIB_FRACTIONS]


def _curve(model: TransformerBridge, graph: Graph, task: Task, tokens, repl: Replacements,
           scores: EdgeScores, circuits: list[Circuit], rule: str, ablation: str, model_id: str,
           circuit_batch: int, kw: dict) -> FaithfulnessCurve:
    coefs = torch.stack([c.ablated() for c in circuits])
    full, empty, vals = evaluate(model, graph, task, tokens, repl, coefs,
                                 circuit_batch=circuit_batch, **kw)
    f_full, f_empty = float(full.mean()), float(empty.mean())
    values = [normalized(float(v.mean()), f_full, f_empty) for v in vals]
    cpr, cmd = areas(MIB_FRACTIONS, values)
    method = scores.method if scores.method == "eap" else f"eap_ig(steps={scores.steps})"
    return FaithfulnessCurve(
        fractions=MIB_FRACTIONS, requested=tuple(c.requested for c in circuits),
        kept=tuple(c.n_edges for c in circuits), values=torch.tensor(values), circuit=vals,
        full=full, empty=empty, edges=torch.stack([c.edges for c in circuits]), cpr=cpr, cmd=cmd,
        rule=rule, ablation=ablation, method=method, **graph.dims,
        provenance=model_provenance(model, task, model_id=model_id),
        scores_from=scores.provenance.base,
    )


def _cross(model: TransformerBridge, graph: Graph, task: Task, tokens, repl: Replacements,
           circuit: Circuit, ablation: str, model_id: str, kw: dict) -> Faithfulness:
    full, empty, vals = evaluate(model, graph, task, tokens, repl, circuit.ablated()[None], **kw)
    value = normalized(float(vals[0].mean()), float(full.mean()), float(empty.mean()))
    return Faithfulness(value=value, circuit=vals[0], full=full, empty=empty,
                        edges=circuit.edges.clone(), **graph.dims, rule=circuit.rule,
                        ablation=ablation,
                        provenance=model_provenance(model, task, model_id=model_id))


def _patch_circuit(pair: ModelPair, graph: Graph, task: Task, tokens, circuit: Circuit,
                   circuit_batch: int, kw: dict) -> Tensor:
    """The base model's metric per prompt with every edge of ``circuit`` carrying the fine-tuned
    model's upstream output (cross-model edge patching, ft->base)."""
    def donor_blocks(sub):
        read_pos = None if task.reads_all_positions else sub.read_pos
        out = _run.forward(pair.finetuned, graph, sub.tokens, read_pos, capture=True,
                           fork=True)  # computed as the patched runs are
        return out.writers, out.read

    coef = graph.dense(circuit.edges.float())[None]
    _, _, vals = evaluate(pair.base, graph, task, tokens, Replacements("mean"), coef,
                          circuit_batch=circuit_batch, donor_blocks=donor_blocks,
                          with_empty=False, **kw)
    return vals[0]


def _size_hint(scores: EdgeScores, rule: str, edges: int) -> str:
    """How many edges a fixed-size base circuit needs to keep a path once pruned."""
    n_edges = scores.graph.n_edges
    lo, hi = edges, edges
    while hi < n_edges and select_circuit(scores, rule=rule, n=hi).n_edges == 0:
        lo, hi = hi, min(2 * hi, n_edges)
    if select_circuit(scores, rule=rule, n=hi).n_edges == 0:
        return f"edges={edges}: no number of edges gives one (are the scores all zero?)"
    while hi - lo > 1:  # the pruned circuit is empty at lo and not at hi
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if select_circuit(scores, rule=rule, n=mid).n_edges else (mid, hi)
    return f"edges={edges} is too few: the base model's circuit needs at least {hi}"


def _smallest(values: Tensor) -> float:
    """The smallest fraction from which every circuit of a curve (its ``values`` at the MIB
    fractions) is faithful within CLOSE (else the whole graph; a NaN value is not faithful)."""
    ok = [abs(1 - float(v)) <= CLOSE for v in values]
    for i, frac in enumerate(MIB_FRACTIONS):
        if all(ok[i:]):
            return frac
    return 1.0


def _iou(a: Tensor, b: Tensor) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else math.nan


def _iou_curve(base: FaithfulnessCurve, ft: FaithfulnessCurve) -> Tensor:
    return torch.tensor([_iou(base.edges[i], ft.edges[i]) for i in range(len(base.fractions))])


def _overlap(graph: Graph, cb: Circuit, cf: Circuit) -> dict:
    labels = graph.writer_labels
    nb, nf = cb.nodes, cf.nodes

    def names(mask: Tensor) -> tuple[str, ...]:
        return tuple(labels[i] for i in mask.nonzero().flatten().tolist())

    return {
        "shared_nodes": names(nb & nf), "new_nodes": names(nf & ~nb),
        "dropped_nodes": names(nb & ~nf), "n_shared_edges": int((cb.edges & cf.edges).sum()),
        "n_new_edges": int((cf.edges & ~cb.edges).sum()),
        "n_dropped_edges": int((cb.edges & ~cf.edges).sum()),
    }


def _changes(graph: Graph, b: Tensor, f: Tensor) -> dict:
    """Of the edge scores ``b`` (base) and ``f`` (fine-tuned): the edges whose ``|score|`` grew /
    shrank most with their sign kept (an edge that switched role, supporting in one model and
    opposing in the other, is neither: it is listed under ``flipped``, by how far its score
    moved)."""
    flip = (b * f) < 0
    delta = f.abs() - b.abs()

    def rows(idx: Tensor) -> tuple[tuple[str, float, float], ...]:
        return tuple((graph.edge_label(e), float(b[e]), float(f[e])) for e in idx.tolist())

    def top(values: Tensor, keep: Tensor) -> Tensor:
        order = values.argsort(descending=True, stable=True)
        return order[keep[order] & (values[order] > 0)][:TOP_CHANGES]

    return {"strengthened": rows(top(delta, ~flip)), "weakened": rows(top(-delta, ~flip)),
            "flipped": rows(top((f - b).abs(), flip))}


def _shown(x: float) -> str:
    """A verdict number in a reason: signed, 2 decimals, or "undefined"."""
    return signed(x, 2) if math.isfinite(x) else "undefined"


def _numbers(pp: dict[str, Tensor], cb: Circuit, cf: Circuit, idx: Tensor | None
             ) -> dict[str, float]:
    """The verdict's numbers from per-prompt values (resampled at ``idx`` if given)."""
    def m(key: str) -> float:
        x = pp[key] if idx is None else pp[key][idx]
        return float(x.double().mean())

    s_b = (pp["s_b"] if idx is None else pp["s_b"][idx]).double().mean(0)
    s_f = (pp["s_f"] if idx is None else pp["s_f"][idx]).double().mean(0)
    gap = m("f_full") - m("b_full")
    mass_f = float(s_f.abs()[cf.edges].sum())
    return {
        "base_in_ft": normalized(m("f_cb"), m("f_full"), m("f_empty")),
        "ft_in_base": normalized(m("b_cf"), m("b_full"), m("b_empty")),
        "score_rank": spearman(s_b, s_f),
        "carried": ((m("b_patched") - m("b_full")) / gap
                    if not negligible(gap, m("f_full"), m("b_full")) else math.nan),
        "new_mass": float(s_f.abs()[cf.edges & ~cb.edges].sum()) / mass_f if mass_f else math.nan,
        "edge_iou": _iou(cb.edges, cf.edges),
        "node_iou": _iou(cb.nodes, cf.nodes),
    }


SIZE_RULES = {"faithful": "smallest faithful", "edges": "fixed edges", "given": "given circuits"}
"""``Verdict.extra["size_rule"]``: how the compared circuits were sized."""

SMALL_SCALE = 0.25
"""A model whose full-minus-empty difference is below this share of the other model's gets a
note: normalized faithfulness inside it is a ratio to a small difference."""


def _small_scale(pp: dict[str, Tensor], skip: tuple[str, ...] = ()) -> list[str]:
    """Notes for a model whose full and every-edge-ablated values nearly agree next to the
    other model's (a review met a base curve reaching f = 51.6 over a difference of 0.228);
    none for the models in ``skip`` (``"base"``, ``"fine-tuned"``: said otherwise)."""
    den = {name: float(pp[f"{k}_full"].double().mean() - pp[f"{k}_empty"].double().mean())
           for name, k in (("base", "b"), ("fine-tuned", "f"))}
    notes = []
    for name, other, inside in (("base", "fine-tuned", "ft_in_base"),
                                ("fine-tuned", "base", "base_in_ft")):
        if name not in skip and abs(den[name]) < SMALL_SCALE * abs(den[other]):
            notes.append(
                f"the {name} model's full and every-edge-ablated values differ by only "
                f"{fixed(den[name], 3)} (the {other} model's by {fixed(den[other], 3)}): "
                f"faithfulness inside the {name} model (its own curve, {inside}) is a ratio to a "
                "small difference and swings far; its circuit sizes rest on it")
    return notes


def _unseparated(pp: dict[str, Tensor], k: str) -> tuple[float, float, float] | None:
    """:func:`~mechdiff.circuits.faithfulness.unseparated` of model ``k`` (``"b"``, ``"f"``)."""
    return unseparated(pp[f"{k}_full"], pp[f"{k}_empty"])


def _verdict(pp: dict[str, Tensor], cb: Circuit, cf: Circuit, numbers: dict[str, float],
             thresholds: dict[str, float] | None, n_boot: int, seed: int, size: float,
             *, sizing: str = "faithful", empty_hint: str = "", ablation: str = "mean"
             ) -> Verdict:
    """The verdict with its bootstrap; ``sizing``: how the circuits were sized (``"faithful"``:
    read off the curves; ``"edges"``: ``edges=``; ``"given"``: the caller's circuits);
    ``empty_hint``: what an empty base circuit needs instead (added to its reason);
    ``ablation``: the baseline's kind (for what to do when it does not remove the behaviour)."""
    t = checked_thresholds(thresholds)
    fixed = sizing != "faithful"  # the sizes were not read off the curves
    by = "edges=" if sizing == "edges" else "the caller (base_circuit=)"
    ft_flat = _unseparated(pp, "f")  # base_in_ft is normalized by this difference
    unscaled = ft_flat is not None
    label, reasons = decide(numbers, t, unscaled=unscaled)
    empty = cb.n_edges == 0  # no evidence: an empty circuit inside the fine-tune is not "new"
    whole = bool(cb.edges.all())  # base_in_ft and carried are then fixed by construction
    if empty:
        label, reasons = "undetermined", ((
            "the base circuit given is empty" if sizing == "given" else
            "the base circuit is empty: its selected edges have no path from the input to the "
            "logits once pruned") + (f"; {empty_hint}" if empty_hint else ""),)
    elif whole:
        why = (f"{by} asked for every edge" if fixed else
               f"no smaller base circuit stays faithful within CLOSE {CLOSE:g}: the base model's "
               "behaviour on this task has no sparse circuit")
        label, reasons = "undetermined", (
            f"the base circuit is the whole graph ({why}), so base_in_ft is 1 and carried is "
            "every edge patched at once by construction: they cannot tell re-use from a new "
            f"mechanism, and score_rank ({_shown(numbers['score_rank'])}) alone does not "
            "decide; compare circuits of a fixed size (edges=, --edges) for a verdict",)
    n = pp["b_full"].shape[0]
    gen = torch.Generator().manual_seed(seed)
    boots: dict[str, list[float]] = {k: [] for k in NUMBERS}
    counts = dict.fromkeys(LABELS, 0)
    seen: dict[tuple[int, ...], dict[str, float]] = {}
    for _ in range(n_boot):
        # the numbers depend only on which prompts were drawn, not their order: a resample
        # drawn before is not recomputed (4 prompts have 35 distinct resamples, not 200)
        idx = torch.randint(0, n, (n,), generator=gen).sort().values
        key = tuple(idx.tolist())
        if key not in seen:
            seen[key] = _numbers(pp, cb, cf, idx)
        nums = seen[key]
        for k in NUMBERS:
            boots[k].append(nums[k])
        counts["undetermined" if empty or whole else label_of(nums, t, unscaled=unscaled)[0]] += 1
    intervals = {}
    for k, vals in boots.items():
        x = torch.tensor(vals, dtype=torch.float64)
        x = x[torch.isfinite(x)]
        intervals[k] = ((float(x.quantile(0.025)), float(x.quantile(0.975))) if len(x)
                        else (math.nan, math.nan))
    frequency = {k: v / n_boot for k, v in counts.items()}
    settled = empty or whole or label == "undetermined" or frequency[label] >= t["MIN_SHARE"]
    if not settled:
        reasons = (f"the prompts do not settle it: all prompts give '{label}', but only "
                   f"{share(frequency[label])} of {n_boot} resamples do (< MIN_SHARE "
                   f"{t['MIN_SHARE']:g}; {split_text(frequency)}); on all prompts:", *reasons)
        label = "undetermined"
    few = n < t["MIN_PROMPTS"]
    if few and label != "undetermined":
        reasons = (f"too few prompts to settle a verdict: {n} (< MIN_PROMPTS "
                   f"{t['MIN_PROMPTS']:g}; its {n_boot} resamples are only {len(seen)} distinct "
                   "draws, too few to show how the label depends on which prompts were drawn); "
                   f"as a preview, on these prompts the rules give '{label}' "
                   f"({share(frequency[label])} of {n_boot} resamples):",
                   *reasons)
        label = "undetermined"
    notes = [] if empty or whole else sensitivity(numbers, intervals, t, unscaled=unscaled)
    notes += undetermined(numbers, intervals)
    if few:
        notes.append(f"only {n} prompts ({len(seen)} distinct draws in {n_boot} resamples): the "
                     "intervals are rough and a ratio to a small gap can swing far on some "
                     f"resamples; use {t['MIN_PROMPTS']:g} or more prompts for a verdict and "
                     "intervals to rely on")
    if whole:
        notes.append(f"the base circuit is the whole graph, so base_in_ft is 1 by "
                     f"construction, and carried ({signed(numbers['carried'], 3)}) is every edge "
                     "patched at once: it differs from 1 only by what fine-tuning changed "
                     "outside the graph's edges (layer norms, biases, positions, unembedding); "
                     "its shared / dropped edges are every edge of the fine-tuned circuit / "
                     "every other edge, not findings")
    base_flat = _unseparated(pp, "b")
    # a model whose baseline is not separated at all is said once, below
    notes += _small_scale(pp, skip=tuple(name for name, flat in (("base", base_flat),
                                                                  ("fine-tuned", ft_flat))
                                         if flat is not None))
    if base_flat is not None:
        said = baseline_text("the base model's", base_flat, ablation)
        notes.append(f"{said}: the base model's own curve and ft_in_base have no scale" + (
            f" (the base circuit's size was fixed by {by})" if fixed else
            ", and the base circuit's size was read off that curve: carried and base_in_ft are "
            "measured on a circuit whose size rests on no scale (a base model without the "
            "behaviour has no circuit for it; compare circuits of a fixed size with edges=)"))
    if ft_flat is not None:
        said = baseline_text("the fine-tuned model's", ft_flat, ablation)
        notes.append(f"{said}: base_in_ft ({_shown(numbers['base_in_ft'])}), normalized by it, "
                     "is left out of the rules (no evidence either way), and the fine-tuned "
                     "model's own curve has no scale" + (
                         "" if fixed else ", nor the fine-tuned circuit's size read off it "
                         "(and with it new_mass and the overlaps)"))
    if ft_flat is None and numbers["base_in_ft"] > 1 + (1 - t["REUSE_FAITHFULNESS"]):
        notes.append(f"the base circuit overshoots inside the fine-tuned model "
                     f"({numbers['base_in_ft']:.2f}): edges outside it oppose the behaviour "
                     "there")  # (> 1.3: never a negative zero)
    return Verdict(label=label, reasons=reasons, numbers=numbers, intervals=intervals,
                   thresholds=t, frequency=frequency,
                   notes=tuple(notes), n_boot=n_boot, seed=seed,
                   extra={"base_size": f"{size:g}", "close": f"{CLOSE:g}",
                          "size_rule": SIZE_RULES[sizing],
                          **({"left_out": "base_in_ft"} if unscaled else {})})
