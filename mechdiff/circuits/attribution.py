"""Edge attribution in one model: EAP and EAP-IG scores for every edge of the graph at once.

**EAP** (edge attribution patching; Syed, Rager & Conmy 2023, "Attribution Patching Outperforms
Automated Circuit Discovery") scores edge ``u -> v`` by the first-order estimate of ablating it::

    score(u -> v) = (1/N) sum_prompts sum_positions (A_u - a_u) . dM/dx_v

``a_u`` is the upstream node's output on the clean prompt, ``A_u`` its ablated value (the
corrupted prompt's output or the per-position mean, :mod:`mechdiff.circuits.ablation`), and
``dM/dx_v`` the gradient of the prompt's metric at the downstream input ``x_v`` (the residual stream
before the layer norm that node ``v`` applies; for a key-value head, the shared k or v input) on the
clean run. **Sign convention** (EAP-IG's): ``score`` estimates ``M(edge ablated) - M(clean)``, so an
edge that supports the behaviour has a negative score. **Scaling**: the estimate of the change of
the *mean* metric over prompts, so numbers do not depend on the batch size (EAP-IG's code divides by
the number of prompts a second time, after a metric that already averages over the batch).
Circuits rank edges by ``|score|``. Cost, for all edges: the ablated values (one forward of the
corrupted prompts, which writes its outputs minus the clean run's straight into the clean run's
writer tensor, heads as ``(z_A - z_a) W_O``; for the means one forward over all prompts, none when
the prompts fit in one batch, whose clean run gives them) and one forward and one backward of the
clean prompts, without the per-head q/k/v fork (:mod:`mechdiff.circuits._run`); the reader
gradients are contracted with the upstream differences as the backward pass reaches them, several
layers per matrix product (:mod:`mechdiff.circuits._contract`), so memory holds a bounded buffer of
reader gradients. Counted by ``FlopCounterMode`` on a GPT-2-small-shaped model: 2.63 plain
forwards of arithmetic with corrupted prompts, 1.91 with mean ablation (``benchmarks/circuits.py``,
which also times them).

**EAP-IG** (Hanna, Pezzelle & Belinkov 2024, "Have Faith in Faithfulness", integrated gradients
on the inputs, their "EAP-IG-inputs") averages the gradient along a path from the ablated input
to the clean input::

    score(u -> v) = (1/N) sum sum (A_u - a_u) . (1/m) sum_k dM/dx_v (run_k),

where run ``k`` feeds the token embedding ``e_ablated + alpha_k (e_clean - e_ablated)`` with
``alpha_k = (k + 1/2) / m`` (midpoint rule; EAP-IG's code takes ``k / m``, a left Riemann sum that
never reaches the clean end). Cost: ``m`` forwards and backwards. Preferred for saturated metrics
and for ``kl`` metrics, whose gradient at the clean run is zero (EAP gives all zeros there).

The edge graph, including key-value heads of grouped-query attention as their own k/v inputs, is
:mod:`mechdiff.circuits.graph`. The same quantities as TransformerLens 4.3's
``attribution_patch(..., EdgeAttributionConfig(granularity="edge"))`` for one clean/corrupted pair,
summed over positions, with the opposite sign (TransformerLens takes the gradient on the corrupted
run and scores ``(a_clean - a_corrupt) . g``, the denoising direction); it refuses GQA models and
integrated gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechdiff._progress import make_bar
from mechdiff.choices import METHODS, Method
from mechdiff.circuits import _prep, _run
from mechdiff.circuits._contract import Contraction
from mechdiff.circuits.ablation import (
    Ablation,
    MeanSum,
    Replacements,
    empty_logits,
    mean_outputs,
)
from mechdiff.circuits.graph import Graph
from mechdiff.circuits.results import OnGraph, RankedEdge
from mechdiff.circuits.verdict import fixed
from mechdiff.loading import model_provenance
from mechdiff.metrics import check_finite
from mechdiff.results import Provenance, SavableResult
from mechdiff.tasks import Task, Tokens

EdgePositions: TypeAlias = Literal["all", "each"]


@dataclass(frozen=True)
class EdgeScores(SavableResult, OnGraph, name="circuits.EdgeScores"):
    """Every edge's estimated ablation effect in one model.

    Attributes:
        scores: estimated ``M(edge ablated) - M(clean)`` of the mean metric, summed over
            positions, ``[edge]`` in the graph's edge order (see :class:`Graph`).
        per_prompt: each prompt's own estimate ``[batch, edge]`` (``scores`` is their mean).
        per_position: estimates per position ``[edge, pos]`` (mean over prompts of each position's
            term; positions counted from each prompt's start), with ``positions="each"``.
        clean: metric per prompt on the clean run ``[batch]``.
        ablated: metric per prompt with every edge ablated (the empty circuit) ``[batch]``.
        n_layers, n_heads, n_kv_heads: the graph.
        method: ``"eap"`` or ``"eap_ig"``.
        steps: integration steps of EAP-IG (1 for EAP).
        ablation: ``"corrupted"`` or ``"mean"``.
        provenance: model, task, metric, processing, versions.
    """

    scores: Float[Tensor, " edge"]
    per_prompt: Float[Tensor, "batch edge"]
    per_position: Float[Tensor, "edge pos"] | None
    clean: Float[Tensor, " batch"]
    ablated: Float[Tensor, " batch"]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    method: str
    steps: int
    ablation: str
    provenance: Provenance

    def top(self, k: int = 10, *, absolute: bool = True) -> list[RankedEdge]:
        """The ``k`` edges with the largest ``|score|`` (largest score if not ``absolute``)."""
        return self._ranked(self.scores, k, absolute)

    def table(self, k: int = 10) -> str:
        """A plain-text ranking of the top ``k`` edges."""
        p, g = self.provenance, self.graph
        name = self.method if self.method == "eap" else f"eap_ig(steps={self.steps})"
        lines = [
            f"edge attribution ({name}, {self.ablation} ablation) on {p.task!r} ({p.n_prompts} "
            f"prompts, metric {p.metric}): {g.n_edges} edges; clean "
            f"{fixed(float(self.clean.mean()), 4)}, all edges ablated "
            f"{fixed(float(self.ablated.mean()), 4)}",
            f"{'rank':>4}  {'edge':<24} {'est. M(ablated)-M(clean)':>25}",
        ]
        for r, row in enumerate(self.top(k), 1):
            lines.append(f"{r:>4}  {row.label:<24} {fixed(row.score, 4, sign=True):>25}")
        return "\n".join(lines)

    def dense(self) -> Tensor:
        """Scores as ``[reader, writer]`` (0 where there is no edge)."""
        return self.graph.dense(self.scores)


def edge_attribution(
    model: TransformerBridge,
    task: Task,
    *,
    method: Method = "eap_ig",
    steps: int = 5,
    ablation: Ablation = "mean",
    positions: EdgePositions = "all",
    prompt_batch_size: int = 16,
    progress: bool = True,
    model_id: str = "<bridge>",
) -> EdgeScores:
    """Score every edge of ``model``'s graph on ``task`` (see module docstring).

    Args:
        model: a ``TransformerBridge`` (GPT-2- or LLaMA-style; GQA supported natively). Runs on
            the model's device.
        task: prompts (any lengths; each is read at its own last position) and metric.
        method: ``"eap"`` (gradient at the clean run) or ``"eap_ig"`` (integrated gradients on
            the input embedding).
        steps: integration steps of ``"eap_ig"`` (ignored by ``"eap"``).
        ablation: ``"mean"`` or ``"corrupted"`` (needs ``task.corrupted``); see
            :mod:`mechdiff.circuits.ablation`.
        positions: ``"all"``; ``"each"`` also keeps per-position scores.
        prompt_batch_size: prompts per forward/backward; results do not depend on it.
        progress: show a progress bar.
        model_id: the model's name in the provenance.

    Raises:
        GraphError: the model has no exact edge graph.
        OptionError, PromptError, AnswerTokenError, MetricError: bad arguments (before any
            forward).
    """
    _prep.check_option("method", method, METHODS)
    _prep.check_option("positions", positions, ("all", "each"))
    _prep.check_positive(steps=steps, prompt_batch_size=prompt_batch_size)
    graph, tokens = _prep.prepare(model, task, ablation)
    _prep.check_method_metric(method, task)
    return attribute_edges(model, graph, task, tokens, Replacements(ablation), method=method,
                           steps=steps, positions=positions, prompt_batch_size=prompt_batch_size,
                           progress=progress, model_id=model_id)


def attribute_edges(model: TransformerBridge, graph: Graph, task: Task, tokens: Tokens,
                    repl: Replacements, *, method: str, steps: int, positions: str,
                    prompt_batch_size: int, progress: bool, model_id: str) -> EdgeScores:
    """:func:`edge_attribution` after its checks, with the ablation values ``repl`` (means
    computed here unless given, so callers can share them)."""
    steps = steps if method == "eap_ig" else 1
    n, width = tokens.n, int(tokens.tokens.shape[1])
    if repl.kind == "mean" and repl.means is None and n > prompt_batch_size:
        repl.means = mean_outputs(model, graph, tokens, prompt_batch_size, progress)
    # (with one prompt batch, the means come from its clean run: no forward pass of their own)
    dtype = _prep.result_dtype(model)
    per_prompt = torch.zeros(n, graph.n_edges, dtype=dtype)
    per_pos = torch.zeros(graph.n_edges, width, dtype=dtype) if positions == "each" else None
    clean_vals, empty_vals = [], []
    starts = list(range(0, n, prompt_batch_size))
    bar = make_bar(total=len(starts) * steps, desc=f"edge attribution ({method})",
                   enabled=progress)
    try:
        for i, (start, stop, sub) in enumerate(_prep.batches(tokens, prompt_batch_size)):
            vals, empty, pp, pos = _batch(model, graph, task, sub, repl, method, steps,
                                          per_pos is not None, check=i == 0, bar=bar)
            clean_vals.append(vals)
            empty_vals.append(empty)
            per_prompt[start:stop] = pp
            if per_pos is not None:
                per_pos[:, : pos.shape[1]] += pos
    finally:
        bar.close()
    check_finite(per_prompt, "an edge attribution estimate")
    if per_pos is not None:
        per_pos /= n
    prov = model_provenance(model, task, model_id=model_id)
    return EdgeScores(
        scores=per_prompt.mean(0), per_prompt=per_prompt, per_position=per_pos,
        clean=torch.cat(clean_vals), ablated=torch.cat(empty_vals), **graph.dims,
        method=method, steps=steps, ablation=repl.kind, provenance=prov,
    )


def _batch(model: TransformerBridge, graph: Graph, task: Task, sub, repl: Replacements,
           method: str, steps: int, keep_pos: bool, *, check: bool, bar: Any
           ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Scores of one prompt batch: metric values, empty-circuit values, ``[batch, edge]`` and
    (if ``keep_pos``) ``[edge, pos]`` sums over the batch."""
    ids, read_pos = sub.tokens, None if task.reads_all_positions else sub.read_pos
    b, width = sub.n, int(ids.shape[1])
    con = Contraction(b, graph.n_readers, graph.n_writers, width,
                      dtype=_prep.result_dtype(model), device=ids.device, per_position=keep_pos)
    con.weight = 1.0 / steps
    record = _prep.check_records(graph) if check else ()
    # EAP with corrupted prompts only needs A - a: the clean run keeps its heads' z, and the
    # corrupted run writes its outputs minus the clean ones straight into the clean run's tensor
    # (heads as (z_A - z_a) W_O): one head-output product per layer instead of two, and no
    # second writer tensor
    fused = method == "eap" and repl.kind == "corrupted" and _run.unforked(model)
    if method == "eap":  # one forward with grad: capture the clean outputs and differentiate
        out = _run.forward(model, graph, ids, read_pos, capture=True, record=record,
                           on_grad=con.on_grad, slot=con.slot, lazy_heads=fused)
    else:
        out = _run.forward(model, graph, ids, read_pos, capture=True, record=record)
    if check:
        if fused:  # the decomposition check reads the first prompts' head outputs
            _run.fill_heads(model, graph, out, min(_prep.CHECKED_PROMPTS, b))
        _prep.checked(model, graph, out, sub)
    if repl.kind == "mean" and repl.means is None:  # the only batch: its own clean run
        acc = MeanSum(width)
        acc.add(out.writers, sub)
        repl.means = acc.means(next(model.parameters()).dtype)
    if fused:
        blocks, corrupted_read = None, _run.forward(model, graph, sub.corrupted_tokens,
                                                    read_pos, capture=True, into=out).read
        con.use_delta(out.stacked)  # A - a
    else:
        blocks, corrupted_read = repl.run(model, graph, sub, read_pos)
    ref = _prep.reference(task, out.read)
    vals = _prep.metric(task, out.read.detach(), sub, ref)
    check_finite(vals, "the clean run")
    clean_in = out.writers[0][:, :, 0].clone() if method == "eap_ig" else None
    if not fused:
        con.set_delta(blocks, out.writers, stacked=out.stacked)  # out.writers: A - a from here
    if method == "eap":
        con.backward(_prep.metric(task, out.read, sub, ref), out)
        bar.update(1)
    else:
        base_in = blocks[0][:, :, 0]
        for k in range(steps):
            alpha = (k + 0.5) / steps
            embed = (base_in + alpha * (clean_in - base_in)).expand_as(clean_in)
            run = _run.forward(model, graph, ids, read_pos, embed=embed, on_grad=con.on_grad,
                               slot=con.slot)
            con.backward(_prep.metric(task, run.read, sub, ref), run)
            bar.update(1)
    # the empty circuit: exactly the corrupted run, or the closed form for means
    empty_read = corrupted_read if corrupted_read is not None else empty_logits(
        model, graph, blocks, read_pos, b).to(_prep.result_dtype(model))
    empty = _prep.metric(task, empty_read, sub, ref)
    pos = None
    if con.acc_pos is not None:
        pos = graph.flat(con.acc_pos.permute(2, 0, 1)).T.cpu()
    return _prep.cpu(vals), _prep.cpu(empty), graph.flat(con.acc).cpu(), pos
