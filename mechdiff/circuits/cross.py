"""Edges across models: which paths carry the gap between a fine-tuned model and its base.

Cross-model patching of one **edge** ``u -> v`` (Prakash et al. 2024, "Fine-Tuning Enhances
Existing Mechanisms: A Case Study on Entity Tracking", patch paths from one model into another;
here at edge level): in the receiving model's run, the input of node ``v`` receives the donor
model's output of ``u`` in place of the receiver's own::

    x_v  ->  x_v + (a_u^donor - a_u^receiver)

``a_u^donor`` is ``u``'s output in the donor's own run on the same prompt. The score is the fraction
of the gap the patch closes, the convention of :func:`mechdiff.cross_patch`::

    score = (mean M(patched) - mean M(receiver)) / (mean M(donor) - mean M(receiver))

``direction="ft->base"`` patches the fine-tuned model's outputs into the base (what is
*sufficient* for the new behaviour); ``"base->ft"`` the base's into the fine-tuned model (what
is *necessary*). Both models must share the graph (same architecture and sizes).

Every edge is **estimated** from gradients, and the ``exact_top`` edges with the largest estimates
are **patched for real** (one batched forward per ``circuit_batch`` edges), both values stored:

* ``method="eap"``: ``(a_u^donor - a_u^receiver) . dM/dx_v`` on the receiver's clean run (one
  forward and one backward of the receiver, one forward of the donor);
* ``method="eap_ig"``: integrated gradients along the path on which *every* edge carries
  ``alpha`` of its patch at once (``x_v + alpha sum_u (a_u^donor - a_u^receiver(alpha))``,
  midpoint rule): ``mean_k (a_u^donor - a_u(alpha_k)) . dM/dx_v(alpha_k)``, each edge's share of
  the joint patch (its Aumann-Shapley value; the scores sum to the effect of patching every edge,
  for many steps). ``steps`` forwards and backwards.

What edge patching cannot show: what is not an edge. The logits node applies the *receiver's*
final norm and unembedding, and the residual stream's constants (positional embedding, ``b_O``)
stay the receiver's. With ``processing="compat"``, TransformerLens folds each head's value bias
into ``b_O`` (``b_O + sum_h b_V[h] W_O[h]``), so a fine-tune that changed ``W_O`` or ``b_V`` of a head
moves part of that head's output into the constant; models without attention biases (LLaMA,
SmolLM2) are unaffected, GPT-2-style models can be loaded with ``processing="none"`` to keep the
bias in the heads' outputs. ``all_edges`` measures it: the fraction of the gap closed by patching
every edge at once (1 when nothing outside the edges changed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdiff._progress import make_bar
from mechdiff.circuits import _prep, _run
from mechdiff.circuits._contract import Contraction
from mechdiff.circuits.ablation import Replacements
from mechdiff.circuits.attribution import METHODS, Method
from mechdiff.circuits.faithfulness import evaluate
from mechdiff.circuits.graph import graph_of
from mechdiff.circuits.results import OnGraph, RankedEdge
from mechdiff.circuits.verdict import fixed, signed
from mechdiff.directions import Direction, parse_direction, receiver_and_donor
from mechdiff.errors import IncompatibleModelsError, OptionError, check_count
from mechdiff.loading import ModelPair
from mechdiff.metrics import check_finite, checked_gap
from mechdiff.results import Provenance, SavableResult
from mechdiff.stats import fraction_interval
from mechdiff.tasks import Task

EXACT_TOP = 50
"""Edges patched for real by default (the largest ``|estimate|``)."""


@dataclass(frozen=True)
class CrossEdgeScores(SavableResult, OnGraph, name="circuits.CrossEdgeScores"):
    """Every edge's share of the fine-tuned-vs-base gap.

    Attributes:
        estimate: estimated fraction of the gap closed by patching each edge ``[edge]``.
        exact: fraction closed by real edge patching ``[edge]``; NaN for edges not patched.
        exact_edges: the edges patched for real ``[k]`` (largest ``|estimate|`` first).
        all_edges: fraction of the gap closed by patching every edge at once (exact; less than 1
            when the models also differ outside the edges, see the module docstring).
        per_prompt: estimated metric change per prompt ``[batch, edge]``.
        receiver: metric per prompt of the receiving model ``[batch]``.
        donor: metric per prompt of the donor model ``[batch]``.
        n_layers, n_heads, n_kv_heads: the graph.
        direction: ``"ft->base"`` or ``"base->ft"``.
        method: ``"eap"`` or ``"eap_ig"``.
        steps: integration steps (1 for EAP).
        provenance: both models, task, metric, processing.
        patched: the receiver's metric per prompt with each edge of ``exact_edges`` patched
            ``[k + 1, batch]``, the last row with every edge at once (intervals over prompts).
    """

    estimate: Float[Tensor, " edge"]
    exact: Float[Tensor, " edge"]
    exact_edges: Int[Tensor, " k"]
    all_edges: float
    per_prompt: Float[Tensor, "batch edge"]
    receiver: Float[Tensor, " batch"]
    donor: Float[Tensor, " batch"]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    direction: str
    method: str
    steps: int
    provenance: Provenance
    patched: Float[Tensor, "patch batch"] | None = None

    @property
    def gap(self) -> float:
        return float(self.donor.mean() - self.receiver.mean())

    def top(self, k: int = 10, *, by: str = "exact", absolute: bool = True) -> list[RankedEdge]:
        """The ``k`` edges with the largest exact (default; only patched edges) or estimated
        fraction of the gap."""
        if by not in ("exact", "estimate"):
            raise OptionError(f"by must be 'exact' or 'estimate', got {by!r}")
        values = self.exact if by == "exact" else self.estimate
        k = min(k, len(self.exact_edges)) if by == "exact" else k
        return self._ranked(values, k, absolute)

    @property
    def ranked_by(self) -> str:
        """``"exact"`` when edges were patched for real, else ``"estimate"``: how tables rank."""
        return "exact" if len(self.exact_edges) else "estimate"

    def exact_interval(self) -> tuple[Tensor, Tensor]:
        """95% bootstrap interval over prompts of each exact share ``[edge]`` (NaN where not
        patched, or for results saved without per-prompt values)."""
        lo = torch.full_like(self.exact, float("nan"))
        hi = lo.clone()
        k = len(self.exact_edges)
        if self.patched is not None and k:
            low, high = fraction_interval(self.patched[:k], self.receiver, self.donor)
            lo[self.exact_edges], hi[self.exact_edges] = low.to(lo.dtype), high.to(hi.dtype)
        return lo, hi

    def table(self, k: int = 10) -> str:
        p = self.provenance
        name = self.method if self.method == "eap" else f"eap_ig(steps={self.steps})"
        lines = [
            f"edge patching {self.direction} on {p.task!r} ({p.n_prompts} prompts, metric "
            f"{p.metric}): receiver {fixed(float(self.receiver.mean()), 4)}, donor "
            f"{fixed(float(self.donor.mean()), 4)}, gap {_gap(self.gap)}; "
            f"{len(self.exact_edges)} of {self.graph.n_edges} edges patched for real, all "
            f"estimated ({name}); every edge at once closes "
            f"{fixed(self.all_edges)} of the gap",
            f"{'rank':>4}  {'edge':<24} {'exact':>9} {'95% interval':>16} {'estimate':>9}",
        ]
        lo, hi = self.exact_interval()
        for r, row in enumerate(self.top(k, by=self.ranked_by), 1):
            i = row.index
            span = (f"[{signed(float(lo[i]), 2)}, {signed(float(hi[i]), 2)}]"
                    if math.isfinite(float(lo[i])) else "")
            exact = float(self.exact[i])
            shown = fixed(exact) if math.isfinite(exact) else "-"  # not patched for real
            lines.append(f"{r:>4}  {row.label:<24} {shown:>9} {span:>16} "
                         f"{fixed(float(self.estimate[i])):>9}")
        return "\n".join(lines)


def _gap(gap: float) -> str:
    """The gap with 4 decimals, or in significant digits when those would read 0 (a gap of
    1e-5 printed as '+0.0000' beside shares of it)."""
    return fixed(gap, 4, sign=True) if abs(gap) >= 5e-4 or gap == 0 else f"{gap:+.2e}"


def cross_edge_attribution(
    pair: ModelPair,
    task: Task,
    *,
    direction: Direction = "ft->base",
    method: Method = "eap",
    steps: int = 5,
    exact_top: int = EXACT_TOP,
    prompt_batch_size: int = 16,
    circuit_batch: int = 8,
    progress: bool = True,
) -> CrossEdgeScores:
    """Each edge's share of the gap, estimated for all and patched for real for the top ones.

    Args:
        pair: the base and fine-tuned models (same graph).
        task: prompts and metric.
        direction: ``"ft->base"`` (sufficiency) or ``"base->ft"`` (necessity).
        method: ``"eap"`` or ``"eap_ig"`` (module docstring).
        steps: integration steps of ``"eap_ig"``.
        exact_top: how many edges (largest ``|estimate|``) to patch for real; 0 for none.
        prompt_batch_size: prompts per forward.
        circuit_batch: patched edges run as stacked copies in one forward.
        progress: show progress bars.

    Raises:
        GraphError, IncompatibleModelsError: the models have no exact graph, or not the same.
        OptionError, PromptError, AnswerTokenError, MetricError: bad arguments (before any
            forward).
        ZeroGapError: the two models score the same.
    """
    direction = parse_direction(direction)
    _prep.check_option("method", method, METHODS)
    _prep.check_positive(steps=steps, prompt_batch_size=prompt_batch_size,
                         circuit_batch=circuit_batch)
    check_count("exact_top", exact_top)
    _prep.check_pair(pair)
    recv, donor = receiver_and_donor(pair, direction)
    graph, tokens = _prep.prepare(recv, task, "mean")
    if graph != graph_of(donor):
        raise IncompatibleModelsError(f"the two models have different graphs: {graph} vs "
                                      f"{graph_of(donor)}")
    steps = steps if method == "eap_ig" else 1
    n = tokens.n
    dtype = _prep.result_dtype(recv)
    per_prompt = torch.zeros(n, graph.n_edges, dtype=dtype)
    recv_vals, donor_vals = [], []
    starts = list(range(0, n, prompt_batch_size))
    bar = make_bar(total=len(starts) * steps, desc=f"edge attribution {direction}",
                   enabled=progress)
    try:
        for i, (start, stop, sub) in enumerate(_prep.batches(tokens, prompt_batch_size)):
            r, d, pp = _estimate(recv, donor, graph, task, sub, method, steps, check=i == 0,
                                 bar=bar)
            recv_vals.append(r)
            donor_vals.append(d)
            per_prompt[start:stop] = pp
    finally:
        bar.close()
    receiver, donor_m = torch.cat(recv_vals), torch.cat(donor_vals)
    gap = checked_gap(receiver, donor_m, task.metric_name, task.name)
    check_finite(per_prompt, "an edge estimate")
    estimate = per_prompt.mean(0) / gap
    k = min(exact_top, graph.n_edges)
    chosen = estimate.abs().argsort(descending=True, stable=True)[:k]
    exact = torch.full((graph.n_edges,), float("nan"), dtype=dtype)
    coefs = torch.zeros(k + 1, graph.n_readers, graph.n_writers)
    coefs[torch.arange(k), graph.edge_reader[chosen], graph.edge_writer[chosen]] = 1.0
    coefs[k] = graph.valid.float()  # every edge at once

    def donor_blocks(sub):
        out = _run.forward(donor, graph, sub.tokens, _read_pos(task, sub), capture=True,
                           fork=True)  # computed as the patched runs are
        return out.writers, out.read

    _, _, vals = evaluate(recv, graph, task, tokens, Replacements("mean"), coefs,
                          circuit_batch=circuit_batch, prompt_batch_size=prompt_batch_size,
                          progress=progress, donor_blocks=donor_blocks, with_empty=False)
    fractions = ((vals.mean(1) - receiver.mean()) / gap).to(dtype)
    exact[chosen] = fractions[:k]
    return CrossEdgeScores(
        estimate=estimate, exact=exact, exact_edges=chosen, all_edges=float(fractions[k]),
        per_prompt=per_prompt,
        receiver=receiver, donor=donor_m, **graph.dims, direction=direction, method=method,
        steps=steps, provenance=pair.provenance(task), patched=vals.to(dtype),
    )


def _read_pos(task: Task, sub) -> Tensor | None:
    return None if task.reads_all_positions else sub.read_pos


def _estimate(recv, donor, graph, task, sub, method, steps, *, check, bar):
    """Receiver and donor metric per prompt and per-prompt estimated effects ``[batch, edge]``."""
    ids, read_pos = sub.tokens, _read_pos(task, sub)
    dtype = _prep.result_dtype(recv)
    dn = _run.forward(donor, graph, ids, read_pos, capture=True)
    ref = _prep.reference(task, dn.read)
    donor_vals = _prep.metric(task, dn.read, sub, ref)
    con = Contraction(sub.n, graph.n_readers, graph.n_writers, int(ids.shape[1]), dtype=dtype,
                      device=ids.device, per_position=False)
    con.weight = 1.0 / steps

    record = _prep.check_records(graph) if check else ()
    if method == "eap":
        out = _run.forward(recv, graph, ids, read_pos, capture=True, record=record,
                           on_grad=con.on_grad, slot=con.slot)
        if check:
            _prep.checked(recv, graph, out, sub)
        recv_vals = _prep.metric(task, out.read.detach(), sub, ref)
        con.set_delta(dn.writers, out.writers, stacked=out.stacked)
        con.backward(_prep.metric(task, out.read, sub, ref), out)
        bar.update(1)
    else:
        base = _run.forward(recv, graph, ids, read_pos, capture=True, record=record)
        if check:
            _prep.checked(recv, graph, base, sub)
        recv_vals = _prep.metric(task, base.read, sub, ref)
        full = graph.valid.to(device=ids.device, dtype=dn.writers[0].dtype)
        for k in range(steps):
            alpha = (k + 0.5) / steps
            run = _run.forward(recv, graph, ids, read_pos, replace=dn.writers,
                               coef=(alpha * full)[None], capture=True, on_grad=con.on_grad)
            con.set_delta(dn.writers, run.writers)
            con.backward(_prep.metric(task, run.read, sub, ref), run)
            bar.update(1)
    check_finite(recv_vals, "the receiving model")
    check_finite(donor_vals, "the donor model")
    return _prep.cpu(recv_vals), _prep.cpu(donor_vals), graph.flat(con.acc).cpu()
