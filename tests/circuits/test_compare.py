"""compare_circuits against independent computations: every number of the comparison recomputed
from its two circuits and two score vectors by other code (faithfulness runs of each circuit inside
the other model, set operations on the edge masks, the node masks from the dense reader x writer
matrix, a Spearman correlation from ranks, IoU of circuits selected at each MIB size, the changed
edges sorted by hand); and two circuits given by the caller compared as given."""

from __future__ import annotations

import math

import pytest
import torch
from circuit_models import gpt2, random_task, save_dir
from support import plant_head, unchecked

import mechdiff
from mechdiff.circuits import (
    MIB_FRACTIONS,
    Circuit,
    CircuitComparison,
    GraphError,
    compare_circuits,
    faithfulness,
    graph_of,
    select_circuit,
)
from mechdiff.circuits.compare import TOP_CHANGES
from mechdiff.errors import OptionError
from mechdiff.viz import plot_faithfulness

N = 8


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> mechdiff.ModelPair:
    """A tiny GPT-2 and a fine-tune of it with head L2H1 rewritten."""
    root = tmp_path_factory.mktemp("compare")
    return mechdiff.load_pair(save_dir(gpt2(0), root / "base"),
                              save_dir(plant_head(gpt2(0), 2, 1), root / "ft"), device="cpu")


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share their mean rank), by a sort."""
    x = x.double()
    order = x.argsort(stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    for v in x.unique():
        tie = x == v
        ranks[tie] = ranks[tie].mean()
    return ranks


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else math.nan


def _check_numbers(pair: mechdiff.ModelPair, task: mechdiff.Task, c: CircuitComparison,
                   ablation: str) -> None:
    graph = graph_of(pair.base)
    cb, cf = c.base_circuit, c.ft_circuit
    kw = {"ablation": ablation, "progress": False}
    b_in_f = faithfulness(pair.finetuned, task, cb, **kw).value
    f_in_b = faithfulness(pair.base, task, cf, **kw).value
    nums = c.verdict.numbers
    assert c.base_in_ft.value == pytest.approx(b_in_f, rel=1e-5, abs=1e-6)
    assert nums["base_in_ft"] == pytest.approx(b_in_f, rel=1e-5, abs=1e-6)
    assert c.ft_in_base.value == pytest.approx(f_in_b, rel=1e-5, abs=1e-6)
    assert nums["ft_in_base"] == pytest.approx(f_in_b, rel=1e-5, abs=1e-6)
    b, f = cb.edges, cf.edges
    assert (c.n_shared_edges, c.n_new_edges, c.n_dropped_edges) == (
        int((b & f).sum()), int((f & ~b).sum()), int((b & ~f).sum()))
    assert nums["edge_iou"] == pytest.approx(_iou(b, f))
    # nodes: writers with a kept edge out of them, read off the dense reader x writer matrix
    nb, nf = (graph.dense(e.float()).ne(0).any(0) for e in (b, f))
    labels = graph.writer_labels
    assert set(c.new_nodes) == {labels[i] for i in (nf & ~nb).nonzero().flatten().tolist()}
    assert set(c.dropped_nodes) == {labels[i] for i in (nb & ~nf).nonzero().flatten().tolist()}
    assert nums["node_iou"] == pytest.approx(_iou(nb, nf))
    s_b, s_f = c.base_scores.scores, c.ft_scores.scores
    assert nums["score_rank"] == pytest.approx(_spearman(s_b, s_f), abs=1e-6)
    mass = float(s_f.double().abs()[f].sum())
    assert nums["new_mass"] == pytest.approx(float(s_f.double().abs()[f & ~b].sum()) / mass)
    for i, frac in enumerate(MIB_FRACTIONS):  # IoU of the circuits at each matched size
        want = _iou(select_circuit(c.base_scores, fraction=frac).edges,
                    select_circuit(c.ft_scores, fraction=frac).edges)
        got = float(c.iou_curve[i])
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want)
    # strengthened: largest growth of |score| among edges whose sign held, by a plain sort
    grew = sorted((float(s_f[e].abs() - s_b[e].abs()), graph.edge_label(e))
                  for e in range(graph.n_edges) if float(s_b[e] * s_f[e]) >= 0
                  and float(s_f[e].abs() - s_b[e].abs()) > 0)[::-1]
    assert [row[0] for row in c.strengthened] == [label for _, label in grew[:TOP_CHANGES]]
    assert c.strengthened


@pytest.mark.filterwarnings("ignore::mechdiff.errors.VerdictWarning")
@pytest.mark.parametrize("ablation", ["mean", "corrupted"])
def test_every_number_is_its_independent_computation(planted, ablation) -> None:
    task = random_task(N, seed=4)
    c = compare_circuits(planted, task, method="eap", ablation=ablation, n_boot=20,
                         progress=False)
    assert 0 < c.base_circuit.n_edges and 0 < c.ft_circuit.n_edges
    _check_numbers(planted, task, c, ablation)
    # Each model's circuits at every MIB fraction inside the other model: faithfulness() of each
    # circuit there; at the chosen size, the chosen circuit's cross-faithfulness.
    for curve, scores, other, chosen, size in (
            (c.base_in_ft_curve, c.base_scores, planted.finetuned, c.base_in_ft, c.base_size),
            (c.ft_in_base_curve, c.ft_scores, planted.base, c.ft_in_base, c.ft_size)):
        for i, frac in enumerate(MIB_FRACTIONS):
            circuit = select_circuit(scores, fraction=frac)
            assert torch.equal(curve.edges[i], circuit.edges)
            want = faithfulness(other, task, circuit, ablation=ablation, progress=False).value
            assert float(curve.values[i]) == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert float(curve.values[MIB_FRACTIONS.index(size)]) == pytest.approx(
            chosen.value, rel=1e-5, abs=1e-6)
    assert "inside the other model: base circuits in fine-tuned CPR" in c.summary()


@pytest.mark.filterwarnings("ignore::mechdiff.errors.VerdictWarning")
def test_two_circuits_given_are_compared_as_given(planted, tmp_path) -> None:
    """Circuits from elsewhere (here: the top 40 edges of each model's EAP-IG scores, unpruned,
    and a hand-made one) are compared as they are: same edges, the same independent numbers,
    said so in the text, the HTML size rule and after a save and load."""
    task = random_task(N, seed=4)
    graph = graph_of(planted.base)
    scores = {name: mechdiff.circuits.edge_attribution(model, task, method="eap_ig", steps=3,
                                                       progress=False)
              for name, model in (("base", planted.base), ("ft", planted.finetuned))}
    cb = select_circuit(scores["base"], n=40, prune=False)
    by_hand = torch.zeros(graph.n_edges, dtype=torch.bool)
    by_hand[scores["ft"].scores.abs().argsort(descending=True)[:25]] = True
    cf = Circuit(by_hand, **graph.dims)  # rule "custom"
    c = compare_circuits(planted, task, method="eap", base_circuit=cb, ft_circuit=cf,
                         n_boot=20, progress=False)
    assert torch.equal(c.base_circuit.edges, cb.edges) and torch.equal(c.ft_circuit.edges,
                                                                        by_hand)
    assert c.base_size == cb.n_edges / graph.n_edges and c.ft_circuit.rule == "custom"
    assert c.verdict.extra["size_rule"] == "given circuits"
    _check_numbers(planted, task, c, "mean")
    text = c.summary()
    assert "circuits given: base 40 edges" in text and "fine-tuned 25 edges" in text
    from mechdiff.circuits.sections import _size_rule

    assert "given by the caller" in _size_rule(c)
    loaded = CircuitComparison.load(c.save(tmp_path / "given"))
    assert loaded.summary() == text
    torch.testing.assert_close(loaded.base_in_ft_curve.values, c.base_in_ft_curve.values)
    lines = {line.get_gid() for line in plot_faithfulness(loaded).axes[0].get_lines()}
    assert {"base_in_ft_curve", "ft_in_base_curve", "base_curve", "ft_curve"} <= lines


@pytest.mark.filterwarnings("ignore::mechdiff.errors.VerdictWarning")
def test_without_cross_curves(planted, tmp_path) -> None:
    """cross_curves=False: no cross curves (None, saved and loaded as None), the figure without
    their lines, the two cross-evaluated circuits as before."""
    task = random_task(N, seed=4)
    c = compare_circuits(planted, task, method="eap", cross_curves=False, n_boot=10,
                         progress=False)
    assert c.base_in_ft_curve is None and c.ft_in_base_curve is None
    assert "inside the other model" not in c.summary()
    loaded = CircuitComparison.load(c.save(tmp_path / "plain"))
    assert loaded.base_in_ft_curve is None
    assert loaded.base_in_ft.value == c.base_in_ft.value
    lines = {line.get_gid() for line in plot_faithfulness(loaded).axes[0].get_lines()}
    assert "base_in_ft_curve" not in lines and "base_curve" in lines


def test_given_circuits_are_checked_before_any_forward(planted) -> None:
    compare = unchecked(compare_circuits)
    task = random_task(N, seed=4)
    graph = graph_of(planted.base)
    full = Circuit.full(graph)
    with pytest.raises(OptionError, match="base_circuit and ft_circuit come together"):
        compare(planted, task, base_circuit=full)
    with pytest.raises(OptionError, match="come together.*Tensor"):
        compare(planted, task, base_circuit=full, ft_circuit=full.edges)
    with pytest.raises(OptionError, match="nothing to size"):
        compare(planted, task, base_circuit=full, ft_circuit=full, edges=10)
    other = Circuit.full(mechdiff.circuits.Graph(graph.n_layers + 1, graph.n_heads,
                                                 graph.n_kv_heads))
    with pytest.raises(GraphError, match="ft_circuit is a circuit of"):
        compare(planted, task, base_circuit=full, ft_circuit=other)
