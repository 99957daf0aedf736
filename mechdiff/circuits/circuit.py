"""Circuits: sets of edges chosen from edge scores, pruned to paths from the input to the logits.

Three selection rules, as in EAP-IG (Hanna et al. 2024, ``eap/graph.py``) and the MIB circuit
track (Mueller et al. 2025):

* ``"top_n"``: the ``n`` edges with the largest ``|score|``;
* ``"threshold"``: every edge with ``|score| >= threshold``;
* ``"greedy"``: grown from the logits: start with the logits node; repeatedly add the
  highest-``|score|`` edge whose downstream node is already in the circuit, adding its upstream
  node (and making that node's incoming edges candidates) until ``n`` edges are in.

Then **pruning** keeps only edges on a path from the input to the logits: an edge ``u -> v``
survives if ``u`` is reachable from the input through kept edges and the node ``v`` feeds reaches
the logits through kept edges. A head is reached when any of its inputs is (its query input, or
the key or value input of its key-value head: in grouped-query attention, an edge into a shared
k/v input enters every query head of the group). One pass each way is a fixed point: every
surviving edge lies on a surviving input-to-logits path.

A :class:`Circuit` is a boolean mask over the graph's edges; it can be evaluated in any model with
the same graph (:func:`mechdiff.circuits.faithfulness`), e.g. a base model's circuit inside its
fine-tune.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Literal, TypeAlias

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mechdiff.circuits._prep import check_option
from mechdiff.circuits.graph import Graph
from mechdiff.circuits.results import OnGraph, RankedEdge
from mechdiff.circuits.verdict import fixed
from mechdiff.errors import OptionError, ResultError, check_count
from mechdiff.results import Provenance, SavableResult

Rule: TypeAlias = Literal["top_n", "threshold", "greedy"]
RULES: tuple[Rule, ...] = ("top_n", "threshold", "greedy")


@dataclass(frozen=True)
class Circuit(SavableResult, OnGraph, name="circuits.Circuit"):
    """A set of edges of a model's graph.

    Attributes:
        edges: ``[edge]`` True for the edges in the circuit (after pruning).
        n_layers, n_heads, n_kv_heads: the graph.
        rule: how it was chosen (``top_n``, ``threshold``, ``greedy``, ``full``, ``empty``,
            ``custom``).
        requested: edges selected before pruning.
        scores: the edge scores it was chosen from ``[edge]`` (for drawing), if any.
        provenance: the scores' provenance, if any.
    """

    edges: Bool[Tensor, " edge"]
    n_layers: int
    n_heads: int
    n_kv_heads: int
    rule: str = "custom"
    requested: int = 0
    scores: Float[Tensor, " edge"] | None = None
    provenance: Provenance | None = None

    def validate(self) -> None:
        n = self.graph.n_edges  # GraphError for sizes no graph has
        if self.edges.ndim != 1 or self.edges.numel() != n:
            raise ResultError(
                f"a circuit of a graph of {self.n_layers} layers x {self.n_heads} heads "
                f"({self.n_kv_heads} key-value heads) has {n} edges; edges has shape "
                f"{tuple(self.edges.shape)} (build it from that graph's edge order: "
                "circuits.graph_of(model), Circuit.full(graph), select_circuit(scores, ...))"
            )

    @property
    def n_edges(self) -> int:
        return int(self.edges.sum())

    @property
    def fraction(self) -> float:
        return self.n_edges / self.edges.numel()

    @property
    def nodes(self) -> Bool[Tensor, " writer"]:
        """Writers (input, heads, MLPs) with a kept edge out of them."""
        g = self.graph
        out = torch.zeros(g.n_writers, dtype=torch.bool)
        out[g.edge_writer[self.edges]] = True
        return out

    def node_labels(self) -> list[str]:
        labels = self.graph.writer_labels
        return [labels[i] for i in self.nodes.nonzero().flatten().tolist()]

    def edge_list(self) -> list[str]:
        """Labels of the kept edges, in edge order."""
        labels = self.edge_labels()
        return [labels[i] for i in self.edges.nonzero().flatten().tolist()]

    def top(self, k: int = 10) -> list[RankedEdge]:
        """The kept edges with the largest ``|score|`` (needs ``scores``)."""
        if self.scores is None:
            raise OptionError("this circuit carries no scores (a circuit built by hand, or taken "
                              "from a FaithfulnessCurve, keeps only its edges); rank the "
                              "EdgeScores it was chosen from, e.g. select_circuit(scores, ...)")
        return self._ranked(torch.where(self.edges, self.scores, torch.nan), k, True)[
            : min(k, self.n_edges)]

    def table(self, k: int = 10) -> str:
        g = self.graph
        head = (f"circuit ({self.rule}, {self.requested} selected): {self.n_edges} of {g.n_edges} "
                f"edges ({100 * self.fraction:.2f}%), {int(self.nodes.sum())} of {g.n_writers} nodes")
        if self.scores is None:
            return head + "\n  " + ", ".join(self.edge_list()[:k])
        rows = [f"{r:>4}  {e.label:<24} {fixed(e.score, 4, sign=True):>10}"
                for r, e in enumerate(self.top(k), 1)]
        return "\n".join([head, *rows])

    def ablated(self) -> Float[Tensor, "reader writer"]:
        """Dense ``[reader, writer]`` coefficients: 1 on every edge outside the circuit."""
        g = self.graph
        return g.dense((~self.edges).float())

    @classmethod
    def full(cls, graph: Graph) -> Circuit:
        return cls(torch.ones(graph.n_edges, dtype=torch.bool), **graph.dims, rule="full",
                   requested=graph.n_edges)

    @classmethod
    def empty(cls, graph: Graph) -> Circuit:
        return cls(torch.zeros(graph.n_edges, dtype=torch.bool), **graph.dims, rule="empty")


def select_circuit(
    scores: object,
    *,
    rule: Rule = "top_n",
    n: int | None = None,
    fraction: float | None = None,
    threshold: float | None = None,
    absolute: bool = True,
    prune: bool = True,
) -> Circuit:
    """Choose a circuit from edge scores.

    Args:
        scores: an :class:`~mechdiff.circuits.EdgeScores` (or anything with ``scores``,
            ``n_layers``, ``n_heads``, ``n_kv_heads`` and ``provenance``).
        rule: ``"top_n"``, ``"threshold"`` or ``"greedy"`` (see module docstring).
        n: edges to select (``top_n``, ``greedy``).
        fraction: instead of ``n``, a fraction of all edges (``n = floor(fraction * n_edges)``,
            as MIB counts).
        threshold: the ``|score|`` cut of ``"threshold"``.
        absolute: rank by ``|score|`` (default) or by the signed score.
        prune: keep only edges on input-to-logits paths.

    Raises:
        OptionError: a rule without its size, or sizes out of range.
    """
    check_option("rule", rule, RULES)
    if not all(hasattr(scores, a) for a in ("scores", "n_layers", "n_heads", "n_kv_heads")):
        raise OptionError(f"scores must be edge scores (circuits.edge_attribution(...)), got "
                          f"{type(scores).__name__}")
    if n is not None:
        check_count("n", n)
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(
            threshold, int | float) or not math.isfinite(threshold)):
        raise OptionError(f"threshold must be a finite number, got {threshold!r}")
    if fraction is not None and (isinstance(fraction, bool)
                                 or not isinstance(fraction, int | float)):
        raise OptionError(f"fraction must be a number within [0, 1], got {fraction!r}")
    graph = Graph(scores.n_layers, scores.n_heads, scores.n_kv_heads)
    values = scores.scores.detach().float().cpu()
    key = values.abs() if absolute else values
    if rule == "threshold":
        if threshold is None or n is not None or fraction is not None:
            raise OptionError("rule='threshold' takes threshold= (and neither n nor fraction)")
        chosen = key >= threshold
    else:
        if (n is None) == (fraction is None) or threshold is not None:
            raise OptionError(f"rule={rule!r} takes exactly one of n= and fraction=")
        if fraction is not None:
            if not 0.0 <= fraction <= 1.0:
                raise OptionError(f"fraction must be within [0, 1], got {fraction}")
            n = int(fraction * graph.n_edges)
        if not 0 <= n <= graph.n_edges:
            raise OptionError(f"n must be within [0, {graph.n_edges}], got {n}")
        chosen = _top(key, n) if rule == "top_n" else greedy(graph, key, n)
    requested = int(chosen.sum())
    kept = prune_edges(graph, chosen) if prune else chosen
    return Circuit(kept, **graph.dims, rule=rule, requested=requested, scores=values,
                   provenance=getattr(scores, "provenance", None))


def _top(key: Tensor, n: int) -> Tensor:
    out = torch.zeros(key.numel(), dtype=torch.bool)
    out[key.argsort(descending=True, stable=True)[:n]] = True
    return out


def greedy(graph: Graph, key: Tensor, n: int) -> Bool[Tensor, " edge"]:
    """Greedy growth from the logits (see module docstring); ties broken by edge order."""
    chosen = torch.zeros(graph.n_edges, dtype=torch.bool)
    if n == 0:
        return chosen
    keys = key.tolist()
    readers_of = _readers_of(graph)
    offsets, upstream = graph.offsets.tolist(), graph.upstream.tolist()
    heap: list[tuple[float, int]] = []
    opened = set()

    def open_reader(r: int) -> None:
        if r in opened:
            return
        opened.add(r)
        for e in range(offsets[r], offsets[r] + upstream[r]):
            heapq.heappush(heap, (-keys[e], e))

    in_graph = set()
    open_reader(graph.logits_reader)
    count = 0
    while count < n and heap:
        _, e = heapq.heappop(heap)
        chosen[e] = True
        count += 1
        w = int(graph.edge_writer[e])
        if w not in in_graph:
            in_graph.add(w)
            for r in readers_of[w]:
                open_reader(r)
    return chosen


def _readers_of(graph: Graph) -> list[list[int]]:
    """The readers whose input enters each writer node's computation (inverse of owners)."""
    out: list[list[int]] = [[] for _ in range(graph.n_writers)]
    for r, owners in enumerate(graph.reader_owners):
        for w in owners:
            out[w].append(r)
    return out


def prune_edges(graph: Graph, chosen: Bool[Tensor, " edge"]) -> Bool[Tensor, " edge"]:
    """Keep the chosen edges that lie on a path from the input to the logits."""
    kept = graph.dense(chosen.float()).bool()  # [reader, writer]
    up = graph.upstream.tolist()
    owners = graph.reader_owners
    fw_w = torch.zeros(graph.n_writers, dtype=torch.bool)  # reachable from the input
    fw_w[0] = True
    fw_r = torch.zeros(graph.n_readers, dtype=torch.bool)
    for r in range(graph.n_readers):  # readers are in topological order of their inputs...
        fw_r[r] = bool((kept[r, : up[r]] & fw_w[: up[r]]).any())
        if fw_r[r]:  # ...and a reader's owners come after every writer it reads
            fw_w[owners[r]] = True
    bw_r = torch.zeros(graph.n_readers, dtype=torch.bool)  # feeds the logits
    bw_r[graph.logits_reader] = True
    bw_w = torch.zeros(graph.n_writers, dtype=torch.bool)
    for layer in range(graph.n_layers - 1, -1, -1):
        readers = [graph.reader(layer, "mlp")]
        mlp = graph.mlp(layer)
        bw_w[mlp] = bool((kept[:, mlp] & bw_r).any())
        bw_r[readers[0]] = bw_w[mlp]
        heads = [graph.head(layer, h) for h in range(graph.n_heads)]
        bw_w[heads] = (kept[:, heads] & bw_r[:, None]).any(0)
        for kind, count in (("q", graph.n_heads), ("k", graph.n_kv_heads), ("v", graph.n_kv_heads)):
            for i in range(count):
                r = graph.reader(layer, kind, i)
                bw_r[r] = bool(bw_w[owners[r]].any())
    bw_w[0] = bool((kept[:, 0] & bw_r).any())
    keep = kept & fw_w[None, :] & bw_r[:, None]
    return graph.flat(keep)
