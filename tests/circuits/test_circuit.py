"""Circuit selection (top-n, threshold, greedy) and pruning against slow references: a generic
breadth-first search over the explicit node graph, and a greedy loop that rescans every edge."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from support import unchecked

from mechdiff.circuits import Circuit, Graph, prune_edges, select_circuit
from mechdiff.errors import OptionError


@dataclass
class FakeScores:
    scores: torch.Tensor
    n_layers: int
    n_heads: int
    n_kv_heads: int
    provenance: object = None


def _reference_prune(graph: Graph, chosen: torch.Tensor) -> torch.Tensor:
    """Breadth-first search over nodes ``("w", i)`` / ``("r", j)``: chosen edges w -> r, and each
    reader into the writers it feeds; an edge survives if input reaches its writer and its reader
    reaches the logits."""
    succ: dict[tuple, set] = {}
    pred: dict[tuple, set] = {}

    def link(a, b):
        succ.setdefault(a, set()).add(b)
        pred.setdefault(b, set()).add(a)

    for e in chosen.nonzero().flatten().tolist():
        link(("w", int(graph.edge_writer[e])), ("r", int(graph.edge_reader[e])))
    for r, owners in enumerate(graph.reader_owners):
        for w in owners:
            link(("r", r), ("w", w))

    def reach(start, nxt):
        seen, todo = {start}, [start]
        while todo:
            for b in nxt.get(todo.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen

    fwd, bwd = reach(("w", 0), succ), reach(("r", graph.logits_reader), pred)
    out = torch.zeros_like(chosen)
    for e in chosen.nonzero().flatten().tolist():
        w, r = ("w", int(graph.edge_writer[e])), ("r", int(graph.edge_reader[e]))
        out[e] = w in fwd and r in bwd
    return out


@pytest.mark.parametrize("dims", [(3, 4, 4), (2, 4, 2), (4, 6, 2)])
@pytest.mark.parametrize("density", [0.02, 0.1, 0.4])
def test_pruning_matches_a_breadth_first_search(dims, density) -> None:
    graph = Graph(*dims)
    gen = torch.Generator().manual_seed(int(density * 100) + sum(dims))
    for _ in range(5):
        chosen = torch.rand(graph.n_edges, generator=gen) < density
        kept = prune_edges(graph, chosen)
        assert torch.equal(kept, _reference_prune(graph, chosen))
        assert torch.equal(prune_edges(graph, kept), kept)  # a fixed point
        assert not (kept & ~chosen).any()


def test_a_key_value_input_connects_every_head_of_its_group() -> None:
    graph = Graph(2, 4, 2)
    chosen = torch.zeros(graph.n_edges, dtype=torch.bool)
    chosen[graph.edge(0, graph.reader(0, "k", 1))] = True        # input -> L0KV1.k
    chosen[graph.edge(graph.head(0, 3), graph.logits_reader)] = True  # L0H3 (group 1) -> logits
    assert prune_edges(graph, chosen).sum() == 2
    other = chosen.clone()
    other[graph.edge(graph.head(0, 3), graph.logits_reader)] = False
    other[graph.edge(graph.head(0, 1), graph.logits_reader)] = True  # L0H1 is in group 0
    assert prune_edges(graph, other).sum() == 0


def _reference_greedy(graph: Graph, key: torch.Tensor, n: int) -> torch.Tensor:
    chosen = torch.zeros(graph.n_edges, dtype=torch.bool)
    in_graph: set[int] = set()
    for _ in range(n):
        best, best_e = None, None
        for e in range(graph.n_edges):
            if chosen[e]:
                continue
            r = int(graph.edge_reader[e])
            if r != graph.logits_reader and not (set(graph.reader_owners[r]) & in_graph):
                continue
            if best is None or key[e] > best:
                best, best_e = key[e], e
        if best_e is None:
            break
        chosen[best_e] = True
        in_graph.add(int(graph.edge_writer[best_e]))
    return chosen


@pytest.mark.parametrize("dims", [(3, 4, 4), (2, 4, 2)])
def test_greedy_growth_matches_a_rescanning_loop(dims) -> None:
    graph = Graph(*dims)
    scores = torch.randn(graph.n_edges, generator=torch.Generator().manual_seed(3))
    fake = FakeScores(scores, *dims)
    for n in (1, 5, 20, 60):
        c = select_circuit(fake, rule="greedy", n=n, prune=False)
        assert torch.equal(c.edges, _reference_greedy(graph, scores.abs(), n))
        assert c.requested == n


def test_top_n_and_threshold_select_the_largest_scores() -> None:
    graph = Graph(3, 4, 4)
    scores = torch.randn(graph.n_edges, generator=torch.Generator().manual_seed(0))
    fake = FakeScores(scores, 3, 4, 4)
    c = select_circuit(fake, rule="top_n", n=10, prune=False)
    assert c.requested == 10 and c.n_edges == 10
    assert float(scores.abs()[c.edges].min()) >= float(scores.abs()[~c.edges].max())
    signed = select_circuit(fake, rule="top_n", n=10, absolute=False, prune=False)
    assert float(scores[signed.edges].min()) >= float(scores[~signed.edges].max())
    th = float(scores.abs().median())
    t = select_circuit(fake, rule="threshold", threshold=th, prune=False)
    assert torch.equal(t.edges, scores.abs() >= th)
    f = select_circuit(fake, rule="top_n", fraction=0.1)
    assert f.requested == int(0.1 * graph.n_edges)
    assert torch.equal(f.edges, prune_edges(graph, select_circuit(
        fake, rule="top_n", fraction=0.1, prune=False).edges))


def test_circuit_nodes_labels_and_saving(tmp_path) -> None:
    graph = Graph(2, 4, 2)
    chosen = torch.zeros(graph.n_edges, dtype=torch.bool)
    chosen[graph.edge(0, graph.reader(1, "q", 2))] = True
    chosen[graph.edge(graph.head(1, 2), graph.logits_reader)] = True
    c = Circuit(chosen, 2, 4, 2, rule="custom", requested=2)
    assert c.node_labels() == ["input", "L1H2"]
    assert c.edge_list() == ["input->L1H2.q", "L1H2->logits"]
    assert set(Circuit.full(graph).ablated().unique().tolist()) == {0.0}
    assert int(Circuit.empty(graph).ablated().sum()) == graph.n_edges
    loaded = Circuit.load(c.save(tmp_path / "c"))
    assert torch.equal(loaded.edges, c.edges) and loaded.rule == "custom"
    assert "2 of 82 edges" in c.table()


def test_bad_selection_options() -> None:
    fake = FakeScores(torch.randn(82), 2, 4, 2)
    select = unchecked(select_circuit)
    with pytest.raises(OptionError):
        select(fake, rule="top_n")
    with pytest.raises(OptionError):
        select(fake, rule="top_n", n=3, fraction=0.1)
    with pytest.raises(OptionError):
        select(fake, rule="threshold", n=3)
    with pytest.raises(OptionError):
        select(fake, rule="top_n", n=1000)
    with pytest.raises(OptionError):
        select(fake, rule="top_n", fraction=1.5)
    with pytest.raises(OptionError):
        select(fake, rule="best")
