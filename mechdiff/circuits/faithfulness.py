"""Faithfulness of circuits, by real intervention: every edge outside the circuit ablated at once.

A circuit ``C`` is run as the model with **every edge outside C ablated**: the input of each
downstream node ``v`` becomes ``x_v + sum_{u -> v not in C} (A_u - a_u)``, where ``a_u`` is the upstream
node's output *in this run* and ``A_u`` its ablated value (:mod:`mechdiff.circuits.ablation`), as
EAP-IG's ``evaluate`` does (Hanna et al. 2024). All ablated edges of a circuit share one forward
pass; several circuits run as stacked copies of the prompt batch. Nothing is estimated.

**Normalized faithfulness** (MIB, Mueller et al. 2025, "MIB: A Mechanistic Interpretability
Benchmark")::

    f(C) = (m(C) - m(empty)) / (m(full) - m(empty))

with ``m`` the task metric averaged over prompts, ``m(full)`` the unablated model and ``m(empty)``
the model with every edge ablated (which reads the sum of the ablated outputs at the logits: the
corrupted run for ``"corrupted"`` ablation, the mean residual stream for ``"mean"``). ``f(full) = 1``
and ``f(empty) = 0`` exactly.

**The curve** (:func:`faithfulness_curve`): circuits of ``floor(p * n_edges)`` edges (MIB's count,
before pruning) at the MIB fractions ``p`` = 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100 % of edges.
With ``x`` the requested fraction of edges on a *linear* axis from 0.001 to 1 and the trapezoid
rule between consecutive points (MIB's ``evaluate_area_under_curve`` with ``log_scale=False``):

* **CPR** = area under ``f`` (higher is better: a faithful circuit early on);
* **CMD** = area under ``|1 - f|`` (lower is better: close to the model everywhere).

The x axis spans 0.999, so CPR of a circuit perfect from the first point is 0.999.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechdiff._progress import make_bar
from mechdiff.circuits import _prep, _run
from mechdiff.circuits.ablation import Ablation, Replacements, mean_outputs
from mechdiff.circuits.circuit import Circuit, Rule, select_circuit
from mechdiff.circuits.graph import Graph, GraphError
from mechdiff.circuits.results import OnGraph
from mechdiff.circuits.verdict import fixed, signed
from mechdiff.errors import OptionError
from mechdiff.loading import model_provenance
from mechdiff.metrics import check_finite, negligible
from mechdiff.results import Provenance, SavableResult
from mechdiff.stats import (
    CI_LEVEL,
    bootstrap_weights,
    fraction_samples,
    mean_interval,
    percentile_interval,
)
from mechdiff.tasks import Task, Tokens

MIB_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Fractions of edges at which MIB evaluates circuits."""


def normalized(circuit: float, full: float, empty: float) -> float:
    """``(m(C) - m(empty)) / (m(full) - m(empty))``; NaN when full and empty agree to rounding
    (:func:`mechdiff.metrics.negligible`: a ratio to float noise is not a faithfulness)."""
    denom = full - empty
    return (circuit - empty) / denom if not negligible(denom, full, empty) else float("nan")


def unseparated(full: Tensor, empty: Tensor) -> tuple[float, float, float] | None:
    """``(mean, lo, hi)`` of ``m(full) - m(empty)`` when its 95% interval over prompts contains
    0, else None: the every-edge-ablated baseline is then not separated from the full model, and
    ``f``, a ratio to that difference, has no scale (on the real distillation's 4 demo prompts
    mean ablation left the fine-tune more Spanish than the full model on two of them)."""
    diff = full.double() - empty.double()
    lo, hi = mean_interval(diff)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= 0 <= hi):
        return None
    return float(diff.mean()), lo, hi


def baseline_text(whose: str, got: tuple[float, float, float], ablation: str) -> str:
    """What :func:`unseparated` found, for ``whose`` baseline ("the base model's"), and what
    to do about it."""
    mean, lo, hi = got
    why = ("mean ablation keeps what the prompts share, so a behaviour every prompt shows "
           "survives in the per-position means: corrupted prompts that lack the behaviour give a "
           "baseline that removes it" if ablation == "mean" else
           "the corrupted prompts do not remove the behaviour in this model: pick ones on "
           "which it is absent")
    return (f"{whose} every-edge-ablated baseline is not separated from its full "
            f"model on these prompts: m(full) - m(empty) = {signed(mean, 3)}, 95% interval "
            f"[{signed(lo, 3)}, {signed(hi, 3)}] over prompts, contains 0 ({why})")


def _no_scale(full: Tensor, empty: Tensor, ablation: str) -> str:
    """A note line for a summary or table whose baseline is not separated (else nothing)."""
    got = unseparated(full, empty)
    if got is None:
        return ""
    said = baseline_text("the model's", got, ablation)
    return f"\n  note: {said}: f has no scale here"


def areas(fractions: tuple[float, ...], values: list[float]) -> tuple[float, float]:
    """(CPR, CMD): trapezoid areas under ``f`` and ``|1 - f|`` on the linear fraction axis."""
    cpr = cmd = 0.0
    for i in range(len(values) - 1):
        dx = fractions[i + 1] - fractions[i]
        cpr += dx * (values[i] + values[i + 1]) / 2
        cmd += dx * (abs(1 - values[i]) + abs(1 - values[i + 1])) / 2
    return cpr, cmd


@dataclass(frozen=True)
class Faithfulness(SavableResult, OnGraph, name="circuits.Faithfulness"):
    """How much of the model's behaviour a circuit alone keeps, measured by intervention.

    Attributes:
        value: normalized faithfulness ``f`` (module docstring).
        circuit: metric per prompt with every edge outside the circuit ablated ``[batch]``.
        full: metric per prompt of the unablated model ``[batch]``.
        empty: metric per prompt with every edge ablated ``[batch]``.
        edges: the circuit's edges ``[edge]``.
        n_layers, n_heads, n_kv_heads: the graph.
        rule: how the circuit was chosen.
        ablation: ``"corrupted"`` or ``"mean"``.
        provenance: the model the circuit was *evaluated* in, task, metric.
    """

    value: float
    circuit: Float[Tensor, " batch"]
    full: Float[Tensor, " batch"]
    empty: Float[Tensor, " batch"]
    edges: Bool[Tensor, " edge"]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    rule: str
    ablation: str
    provenance: Provenance

    @property
    def n_edges(self) -> int:
        return int(self.edges.sum())

    def summary(self) -> str:
        p = self.provenance
        return (f"faithfulness {fixed(self.value)} of a {self.n_edges}-edge circuit ({self.rule}) "
                f"in {p.base} on {p.task!r} ({p.n_prompts} prompts, {p.metric}, {self.ablation} "
                f"ablation): circuit {fixed(float(self.circuit.mean()), 4)}, full "
                f"{fixed(float(self.full.mean()), 4)}, empty {fixed(float(self.empty.mean()), 4)}"
                + _no_scale(self.full, self.empty, self.ablation))


@dataclass(frozen=True)
class FaithfulnessCurve(SavableResult, OnGraph, name="circuits.FaithfulnessCurve"):
    """Faithfulness of circuits of growing size, with MIB's CPR and CMD.

    Attributes:
        fractions: requested fractions of edges (the x axis).
        requested: edges selected at each fraction (``floor(fraction * n_edges)``).
        kept: edges left after pruning ``[n_fractions]``.
        values: normalized faithfulness at each fraction ``[n_fractions]``.
        circuit: metric per prompt of each circuit ``[n_fractions, batch]``.
        full: metric per prompt of the unablated model ``[batch]``.
        empty: metric per prompt with every edge ablated ``[batch]``.
        edges: the circuits ``[n_fractions, edge]``.
        cpr: area under ``f`` (module docstring).
        cmd: area under ``|1 - f|``.
        rule: selection rule of the circuits.
        ablation: ``"corrupted"`` or ``"mean"``.
        method: how the edge scores were computed (``eap``, ``eap_ig(steps=5)``).
        n_layers, n_heads, n_kv_heads: the graph.
        provenance: the model the circuits were evaluated in, task, metric.
        scores_from: the model the edge scores (and circuits) came from.
    """

    fractions: tuple[float, ...]
    requested: tuple[int, ...]
    kept: tuple[int, ...]
    values: Float[Tensor, " fraction"]
    circuit: Float[Tensor, "fraction batch"]
    full: Float[Tensor, " batch"]
    empty: Float[Tensor, " batch"]
    edges: Bool[Tensor, "fraction edge"]
    cpr: float
    cmd: float
    rule: str
    ablation: str
    method: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    provenance: Provenance
    scores_from: str = ""

    def circuit_at(self, fraction: float) -> Circuit:
        """The circuit evaluated at ``fraction``."""
        if fraction not in self.fractions:
            raise OptionError(f"no circuit at {fraction}; fractions are {self.fractions}")
        i = self.fractions.index(fraction)
        return Circuit(self.edges[i], self.n_layers, self.n_heads, self.n_kv_heads,
                       rule=self.rule, requested=self.requested[i])

    def smallest(self, target: float) -> int | None:
        """Index of the first fraction whose faithfulness reaches ``target`` (None if none)."""
        for i, v in enumerate(self.values.tolist()):
            if v >= target:
                return i
        return None

    def intervals(self, level: float = CI_LEVEL) -> dict[str, tuple[Tensor, Tensor]]:
        """Bootstrap intervals over prompts (:mod:`mechdiff.stats`): ``"values"`` (each
        fraction's ``f``, ``[fraction]`` each), ``"cpr"`` and ``"cmd"`` (0-d): each resample's
        ``f`` is the ratio of its means, its areas those of its curve (a resample whose
        full-minus-empty difference is rounding noise is left out)."""
        weights = bootstrap_weights(int(self.full.shape[0]))
        samples = fraction_samples(self.circuit, self.empty, self.full, weights)  # [F, S]
        f = samples.double()
        dx = torch.tensor(self.fractions, dtype=torch.float64).diff()[:, None]
        cpr = (dx * (f[:-1] + f[1:]) / 2).sum(0)
        cmd = (dx * ((1 - f[:-1]).abs() + (1 - f[1:]).abs()) / 2).sum(0)
        # the values' interval as stats.fraction_interval computes it (the same numbers)
        return {"values": percentile_interval(samples, level),
                "cpr": percentile_interval(cpr, level), "cmd": percentile_interval(cmd, level)}

    def areas_text(self, iv: dict[str, tuple[Tensor, Tensor]] | None = None) -> str:
        """``CPR x [lo, hi], CMD y [lo, hi]`` (95% intervals over prompts; ``iv``: the
        :meth:`intervals` already computed)."""
        iv = self.intervals() if iv is None else iv

        def one(value: float, lo_hi: tuple[Tensor, Tensor]) -> str:
            lo, hi = (float(x) for x in lo_hi)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                return fixed(value)
            return f"{fixed(value)} [{fixed(lo)}, {fixed(hi)}]"

        return f"CPR {one(self.cpr, iv['cpr'])}, CMD {one(self.cmd, iv['cmd'])}"

    def table(self) -> str:
        p = self.provenance
        iv = self.intervals()
        lo, hi = iv["values"]
        lines = [f"faithfulness curve ({self.rule} circuits from {self.method} scores, "
                 f"{self.ablation} ablation) in {p.base} on {p.task!r} ({p.n_prompts} prompts, "
                 f"{p.metric}): {self.areas_text(iv)}; full "
                 f"{fixed(float(self.full.mean()), 4)}, empty {fixed(float(self.empty.mean()), 4)}"
                 " (95% intervals over prompts)",
                 f"{'edges %':>8} {'selected':>9} {'kept':>7} {'f':>8} {'95% interval':>18}"]
        for i, fr in enumerate(self.fractions):
            span = ("(empty circuit)" if self.kept[i] == 0 else
                    f"[{fixed(float(lo[i]))}, {fixed(float(hi[i]))}]"
                    if math.isfinite(float(lo[i])) else "")
            lines.append(f"{100 * fr:>8.1f} {self.requested[i]:>9} {self.kept[i]:>7} "
                         f"{fixed(float(self.values[i])):>8} {span:>18}")
        return "\n".join(lines) + _no_scale(self.full, self.empty, self.ablation)


def faithfulness(
    model: TransformerBridge,
    task: Task,
    circuit: Circuit,
    *,
    ablation: Ablation = "mean",
    prompt_batch_size: int = 16,
    progress: bool = True,
    model_id: str = "<bridge>",
) -> Faithfulness:
    """Run ``model`` with every edge outside ``circuit`` ablated; normalized faithfulness.

    The circuit may come from another model with the same graph (a base circuit inside its
    fine-tune). Cost: three forwards per prompt batch (full, circuit, and the ablated values:
    corrupted run or, for ``"mean"``, one pass for the means).

    Raises:
        GraphError: the model has no exact edge graph, or the circuit belongs to another graph.
        OptionError, PromptError, MetricError: bad arguments (before any forward).
    """
    graph, tokens = _prep.prepare(model, task, ablation)
    _check_circuit(graph, circuit)
    _prep.check_positive(prompt_batch_size=prompt_batch_size)
    full, empty, vals = evaluate(model, graph, task, tokens, Replacements(ablation),
                                 circuit.ablated()[None], prompt_batch_size=prompt_batch_size,
                                 progress=progress)
    value = normalized(float(vals[0].mean()), float(full.mean()), float(empty.mean()))
    return Faithfulness(value=value, circuit=vals[0], full=full, empty=empty,
                        edges=circuit.edges.clone(), **graph.dims, rule=circuit.rule,
                        ablation=ablation, provenance=model_provenance(model, task,
                                                                       model_id=model_id))


def faithfulness_curve(
    model: TransformerBridge,
    task: Task,
    scores: object,
    *,
    fractions: tuple[float, ...] = MIB_FRACTIONS,
    rule: Rule = "top_n",
    ablation: Ablation | None = None,
    circuit_batch: int = 4,
    prompt_batch_size: int = 16,
    progress: bool = True,
    model_id: str = "<bridge>",
) -> FaithfulnessCurve:
    """Faithfulness of circuits chosen from ``scores`` at each fraction, with CPR and CMD.

    Args:
        model: the model to evaluate the circuits in (usually the one scored).
        task: prompts and metric.
        scores: :class:`~mechdiff.circuits.EdgeScores` the circuits are chosen from.
        fractions: requested fractions of edges, increasing (default: MIB's).
        rule: ``"top_n"`` or ``"greedy"``, then pruned.
        ablation: default: the scores' own ablation.
        circuit_batch: circuits run as stacked copies in one forward (memory x this).
        prompt_batch_size: prompts per forward.
        progress: show a progress bar.
        model_id: the evaluated model's name in the provenance.
    """
    if not hasattr(scores, "ablation"):
        raise OptionError(f"scores must be edge scores (circuits.edge_attribution(...)), got "
                          f"{type(scores).__name__}")
    ablation = ablation or scores.ablation
    if rule not in ("top_n", "greedy"):
        raise OptionError(f"rule must be 'top_n' or 'greedy' for a curve, got {rule!r}")
    if not fractions or list(fractions) != sorted(fractions) or not all(
            0 <= f <= 1 for f in fractions):
        raise OptionError(f"fractions must be increasing within [0, 1], got {fractions}")
    _prep.check_positive(circuit_batch=circuit_batch, prompt_batch_size=prompt_batch_size)
    graph, tokens = _prep.prepare(model, task, ablation)
    circuits = [select_circuit(scores, rule=rule, fraction=f) for f in fractions]
    for c in circuits:
        _check_circuit(graph, c)
    coefs = torch.stack([c.ablated() for c in circuits])
    full, empty, vals = evaluate(model, graph, task, tokens, Replacements(ablation), coefs,
                                 circuit_batch=circuit_batch, prompt_batch_size=prompt_batch_size,
                                 progress=progress)
    f_full, f_empty = float(full.mean()), float(empty.mean())
    values = [normalized(float(v.mean()), f_full, f_empty) for v in vals]
    cpr, cmd = areas(tuple(fractions), values)
    method = scores.method if scores.method == "eap" else f"eap_ig(steps={scores.steps})"
    return FaithfulnessCurve(
        fractions=tuple(fractions), requested=tuple(c.requested for c in circuits),
        kept=tuple(c.n_edges for c in circuits), values=torch.tensor(values), circuit=vals,
        full=full, empty=empty, edges=torch.stack([c.edges for c in circuits]), cpr=cpr, cmd=cmd,
        rule=rule, ablation=ablation, method=method, **graph.dims,
        provenance=model_provenance(model, task, model_id=model_id),
        scores_from=scores.provenance.base,
    )


def _check_circuit(graph: Graph, circuit: object) -> None:
    _prep.check_kind("circuit", circuit, Circuit, "a Circuit (select_circuit(scores, ...), "
                     "Circuit.full(graph), ...)")
    if (circuit.n_layers, circuit.n_heads, circuit.n_kv_heads) != (
            graph.n_layers, graph.n_heads, graph.n_kv_heads):
        raise GraphError(
            f"the circuit belongs to a graph of {circuit.n_layers} layers x {circuit.n_heads} "
            f"heads ({circuit.n_kv_heads} key-value heads), the model's is {graph.n_layers} x "
            f"{graph.n_heads} ({graph.n_kv_heads})"
        )


def evaluate(
    model: TransformerBridge,
    graph: Graph,
    task: Task,
    tokens: Tokens,
    repl: Replacements,
    coefs: Float[Tensor, "circuit reader writer"],
    *,
    circuit_batch: int = 4,
    prompt_batch_size: int = 16,
    progress: bool = False,
    donor_blocks: object = None,
    with_empty: bool = True,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Metric per prompt of the full model, of the empty circuit and of each coefficient matrix.

    The empty circuit (every edge ablated) runs through the same machinery as the circuits, so
    ``f(empty) = 0`` exactly; it equals the closed form of :func:`~.ablation.empty_logits` to
    float precision (tested). ``donor_blocks(sub) -> (blocks, read)``: replacement outputs taken
    from another model's run (cross-model edge patching), whose logits are also the ``kl``
    reference; else ``repl``.

    Returns:
        ``full [batch]``, ``empty [batch]`` (None without ``with_empty``), ``values [circuit,
        batch]`` (CPU; float32, float64 for a float64 model).
    """
    n = tokens.n
    if repl.kind == "mean" and donor_blocks is None and repl.means is None:
        repl.means = mean_outputs(model, graph, tokens, prompt_batch_size, progress)
    if with_empty:
        coefs = torch.cat([coefs, graph.valid[None].to(coefs.dtype)])
    vals = torch.zeros(coefs.shape[0], n, dtype=_prep.result_dtype(model))
    fulls = []
    chunks = [list(range(c, min(c + circuit_batch, coefs.shape[0])))
              for c in range(0, coefs.shape[0], circuit_batch)]
    starts = list(range(0, n, prompt_batch_size))
    bar = make_bar(total=len(starts) * (1 + len(chunks)), desc="circuit evaluation",
                   enabled=progress)
    try:
        for i, (start, stop, sub) in enumerate(_prep.batches(tokens, prompt_batch_size)):
            read_pos = None if task.reads_all_positions else sub.read_pos
            record = _prep.check_records(graph) if i == 0 else ()
            # fork=True: the same computation as the intervened runs, so the full circuit's
            # metric equals this one exactly (f = 1)
            out = _run.forward(model, graph, sub.tokens, read_pos, capture=i == 0, record=record,
                               fork=True)
            if i == 0:
                _prep.checked(model, graph, out, sub)
            bar.update(1)
            if donor_blocks is not None:
                blocks, donor_read = donor_blocks(sub)
                ref = _prep.reference(task, donor_read)
            else:
                blocks = repl.blocks(model, graph, sub)
                ref = _prep.reference(task, out.read)
            fulls.append(_prep.cpu(_prep.metric(task, out.read, sub, ref)))
            for chunk in chunks:
                k = len(chunk)
                coef = coefs[chunk].to(sub.tokens.device)
                run = _run.forward(model, graph, sub.tokens, read_pos, copies=k, replace=blocks,
                                   coef=coef)
                v = _prep.metric(task, run.read, _prep.tile(sub, k), _prep.tile_ref(ref, k))
                vals[chunk, start:stop] = _prep.cpu(v).reshape(k, sub.n)
                bar.update(1)
    finally:
        bar.close()
    full = torch.cat(fulls)
    check_finite(full, "the full model")
    check_finite(vals, "a circuit", prompt_dim=1)
    if with_empty:
        return full, vals[-1], vals[:-1]
    return full, None, vals
