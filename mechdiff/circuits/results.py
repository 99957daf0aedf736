"""Shared pieces of the circuit result types: the graph they index, ranked rows, text tables.

Every circuit result stores the graph's sizes (``n_layers``, ``n_heads``, ``n_kv_heads``) so it
can rebuild the :class:`~mechdiff.circuits.graph.Graph` (edge order, labels) without a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mechdiff.circuits.graph import Graph
from mechdiff.errors import check_count


@dataclass(frozen=True)
class RankedEdge:
    """One row of an edge ranking.

    Attributes:
        label: ``writer->reader`` (e.g. ``L0H1->L2H3.k``, ``MLP1->logits``).
        index: the edge's flat index in the graph.
        score: the ranked value.
        writer: the upstream node's label.
        reader: the downstream input's label.
    """

    label: str
    index: int
    score: float
    writer: str
    reader: str


class OnGraph:
    """Mixin for results indexed by a graph's edges (needs ``n_layers``, ``n_heads``,
    ``n_kv_heads`` fields)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int

    @property
    def graph(self) -> Graph:
        return Graph(self.n_layers, self.n_heads, self.n_kv_heads)

    def edge_labels(self) -> list[str]:
        """Labels of every edge, in the graph's edge order."""
        g = self.graph
        w, r = g.writer_labels, g.reader_labels
        return [f"{w[a]}->{r[b]}" for a, b in zip(g.edge_writer.tolist(), g.edge_reader.tolist(),
                                                  strict=True)]

    def _ranked(self, values: Tensor, k: int, absolute: bool) -> list[RankedEdge]:
        check_count("k", k)
        g = self.graph
        flat = values.detach().flatten().float().cpu()
        key = flat.abs() if absolute else flat
        key = key.nan_to_num(float("-inf"))
        order = key.argsort(descending=True, stable=True)[:k].tolist()
        out = []
        for i in order:
            wi, ri = int(g.edge_writer[i]), int(g.edge_reader[i])
            out.append(RankedEdge(f"{g.writer_labels[wi]}->{g.reader_labels[ri]}", i,
                                  float(flat[i]), g.writer_labels[wi], g.reader_labels[ri]))
        return out
