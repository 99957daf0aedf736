"""Faithfulness by real intervention: the batched edge ablation against a hand-written one, the
full and empty circuits against the plain model and closed forms, and a trained induction model
whose circuit is known from exact ablations."""

from __future__ import annotations

import math

import pytest
import torch
from circuit_models import induction_task, random_task
from circuit_reference import all_edges, capture, index_of, run_edges
from support import unchecked

import mechdiff
from mechdiff.circuits import (
    MIB_FRACTIONS,
    Circuit,
    FaithfulnessCurve,
    GraphError,
    _prep,
    _run,
    edge_attribution,
    faithfulness,
    faithfulness_curve,
    graph_of,
    select_circuit,
)
from mechdiff.circuits.ablation import Replacements, mean_outputs
from mechdiff.circuits.faithfulness import areas, evaluate
from mechdiff.errors import OptionError, PromptError, ResultError


def _model(tiny, name, dtype=torch.float32):
    return mechdiff.load_pair(tiny[name], tiny[name], device="cpu", dtype=dtype).base


def _metric(tokens, read):
    rows = torch.arange(tokens.n)
    return read[rows, tokens.answer_ids] - read[rows, tokens.wrong_ids]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_batched_edge_ablation_equals_a_hand_written_intervention(tiny, name) -> None:
    model = _model(tiny, name, torch.float64)
    graph = graph_of(model)
    task = random_task(4, seed=2)
    _, tokens = _prep.prepare(model, task, "corrupted")
    corr = capture(model, tokens.corrupted_tokens)
    named = all_edges(graph.n_layers, graph.n_heads, graph.n_kv_heads)
    gen = torch.Generator().manual_seed(0)
    picks = {  # one edge into each kind of reader, and whole circuits
        "q": [e for e in named if e[1][0] == "q"][5],
        "k": [e for e in named if e[1][0] == "k"][-1],
        "v": [e for e in named if e[1][0] == "v"][7],
        "mlp": [e for e in named if e[1][0] == "mlp"][-2],
        "logits": [e for e in named if e[1][0] == "logits"][3],
    }
    edge_sets = [{picks[k]: 1.0} for k in picks]
    for density in (0.05, 0.5, 0.97):  # sparse, dense, most edges ablated
        mask = torch.rand(len(named), generator=gen) < density
        edge_sets.append({e: 1.0 for e, m in zip(named, mask.tolist(), strict=True) if m})
    edge_sets.append({e: float(c) for e, c in zip(named, torch.rand(len(named), generator=gen)
                                                  .tolist(), strict=True)})  # fractional
    coefs = torch.zeros(len(edge_sets), graph.n_readers, graph.n_writers, dtype=torch.float64)
    for i, edges in enumerate(edge_sets):
        for e, c in edges.items():
            j = index_of(graph, e)
            coefs[i, graph.edge_reader[j], graph.edge_writer[j]] = c
    full, _, vals = evaluate(model, graph, task, tokens, Replacements("corrupted"), coefs,
                             circuit_batch=3, prompt_batch_size=3)
    for i, edges in enumerate(edge_sets):
        ref = _metric(tokens, run_edges(model, tokens.tokens, tokens.read_pos, corr, edges))
        torch.testing.assert_close(vals[i], ref, atol=1e-6, rtol=1e-6)
        assert float((vals[i] - full).abs().max()) > 1e-4  # every intervention changed something


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_full_and_empty_circuits(tiny, ablation) -> None:
    model = _model(tiny, "llama")
    graph = graph_of(model)
    task = random_task(6, seed=4)
    full_f = faithfulness(model, task, Circuit.full(graph), ablation=ablation, progress=False)
    empty_f = faithfulness(model, task, Circuit.empty(graph), ablation=ablation, progress=False)
    assert full_f.value == 1.0
    assert empty_f.value == 0.0
    _, tokens = _prep.prepare(model, task, ablation)
    plain = _run.forward(model, graph, tokens.tokens, tokens.read_pos)
    torch.testing.assert_close(full_f.circuit, _metric(tokens, plain.read))
    # The empty circuit, run through the engine with every edge ablated, is the corrupted run;
    # with means, the model reading the mean residual stream at its last position.
    torch.testing.assert_close(empty_f.circuit, empty_f.empty, atol=2e-4, rtol=1e-4)
    if ablation == "corrupted":
        corr = _run.forward(model, graph, tokens.corrupted_tokens, tokens.read_pos)
        torch.testing.assert_close(empty_f.empty, _metric(tokens, corr.read), atol=2e-4,
                                   rtol=1e-4)
    else:
        acts = {}
        names = [f"blocks.{graph.n_layers - 1}.hook_resid_post"]
        with model.hooks(fwd_hooks=[(names[0], lambda x, hook: acts.__setitem__("r", x))]):
            model(tokens.tokens)
        mask = tokens.position_mask().float()[..., None]
        mean_resid = (acts["r"] * mask).sum(0) / mask.sum(0)
        final = model.unembed(model.ln_final(mean_resid[tokens.read_pos][:, None]))[:, 0]
        torch.testing.assert_close(empty_f.empty, _metric(tokens, final), atol=2e-4, rtol=1e-4)


def test_batching_does_not_change_results(tiny) -> None:
    model = _model(tiny, "gpt2")
    task = random_task(7, seed=8, lengths=(4, 12))
    scores = edge_attribution(model, task, method="eap", progress=False)
    a = faithfulness_curve(model, task, scores, circuit_batch=1, prompt_batch_size=7,
                           progress=False)
    b = faithfulness_curve(model, task, scores, circuit_batch=4, prompt_batch_size=3,
                           progress=False)
    torch.testing.assert_close(a.circuit, b.circuit, atol=1e-5, rtol=1e-5)
    assert a.kept == b.kept


def test_curve_areas_and_saving(tiny, tmp_path) -> None:
    fr = (0.0, 0.5, 1.0)
    assert areas(fr, [0.0, 1.0, 1.0]) == pytest.approx((0.75, 0.25))
    assert areas(MIB_FRACTIONS, [1.0] * 10) == pytest.approx((0.999, 0.0))
    model = _model(tiny, "gpt2")
    task = random_task(4)
    scores = edge_attribution(model, task, method="eap", progress=False)
    curve = faithfulness_curve(model, task, scores, rule="greedy", progress=False)
    assert curve.values[-1] == 1.0 and curve.kept[-1] == graph_of(model).n_edges
    cpr, cmd = areas(curve.fractions, curve.values.tolist())
    assert (curve.cpr, curve.cmd) == pytest.approx((cpr, cmd))
    loaded = FaithfulnessCurve.load(curve.save(tmp_path / "curve"))
    torch.testing.assert_close(loaded.values, curve.values)
    assert loaded.circuit_at(0.1).n_edges == curve.kept[MIB_FRACTIONS.index(0.1)]
    assert "CPR" in curve.table()
    # CPR and CMD carry intervals over prompts (they had none): each resample's curve from its
    # means, its areas by areas(); a slow loop over the same resamples is the oracle
    from mechdiff.circuits.verdict import fixed
    from mechdiff.stats import bootstrap_weights

    iv = curve.intervals()
    w = bootstrap_weights(4).double()
    boot = []
    for row in w:
        full, empty = float(row @ curve.full.double()), float(row @ curve.empty.double())
        scale = max(1.0, float(row @ curve.full.double().abs()),
                    float(row @ curve.empty.double().abs()))
        if abs(full - empty) <= 1e-6 * scale:  # no behaviour to keep in this resample
            continue
        f = [(float(row @ c.double()) - empty) / (full - empty) for c in curve.circuit]
        boot.append(areas(curve.fractions, f))
    ref = torch.tensor(boot, dtype=torch.float64).quantile(
        torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)
    got = torch.tensor([[float(iv["cpr"][0]), float(iv["cmd"][0])],
                        [float(iv["cpr"][1]), float(iv["cmd"][1])]], dtype=torch.float64)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert f"CPR {fixed(curve.cpr)} [{fixed(float(iv['cpr'][0]))}" in curve.table()
    # A baseline whose difference from the full model changes sign across prompts (interval
    # containing 0) is said under the table; a steady one is not.
    import dataclasses

    from mechdiff.circuits.faithfulness import unseparated

    full = torch.tensor([2.0, 0.0, 2.2, -0.1])
    flat = dataclasses.replace(curve, full=full, empty=torch.ones(4))
    mean, lo, hi = unseparated(flat.full, flat.empty)
    assert mean == pytest.approx(0.025) and lo < 0 < hi
    assert flat.table().endswith("contains 0 (mean ablation keeps what the prompts share, so a "
                                 "behaviour every prompt shows survives in the per-position "
                                 "means: corrupted prompts that lack the behaviour give a "
                                 "baseline that removes it): f has no scale here")
    steady = dataclasses.replace(curve, full=full + 3, empty=torch.ones(4))
    assert unseparated(steady.full, steady.empty) is None
    assert "not separated" not in steady.table()


def test_a_circuit_of_another_graph_is_refused(tiny) -> None:
    model = _model(tiny, "gpt2")
    graph = graph_of(model)
    other = Circuit.full(graph_of(_model(tiny, "llama")))
    with pytest.raises(GraphError, match="graph"):
        faithfulness(model, random_task(2), other, progress=False)
    with pytest.raises(ResultError, match=f"has {graph.n_edges} edges; edges has shape \\(5,\\)"):
        Circuit(torch.ones(5, dtype=torch.bool), **graph.dims)
    with pytest.raises(GraphError, match="positive sizes"):
        Circuit(torch.ones(5, dtype=torch.bool), 0, 4, 2)
    task = random_task(2)
    scores = edge_attribution(model, task, method="eap", progress=False)
    with pytest.raises(OptionError, match="circuit must be a Circuit.*got EdgeScores"):
        unchecked(faithfulness)(model, task, scores, progress=False)
    with pytest.raises(OptionError, match="scores must be edge scores.*got NoneType"):
        unchecked(faithfulness_curve)(model, task, None, progress=False)
    with pytest.raises(OptionError, match="scores must be edge scores.*got Tensor"):
        unchecked(select_circuit)(scores.scores, n=3)


def test_faithfulness_over_rounding_noise_is_not_defined(tiny) -> None:
    """Mean ablation over identical prompts ablates nothing: full and empty differ by float
    rounding (-1.8e-7 in a review), and a ratio to it was reported as f = -0.000 with CPR 0.25.
    Below the gap tolerance of mechdiff.metrics the ratio is NaN, as CPR and CMD are."""
    model = _model(tiny, "gpt2")
    one = random_task(1, seed=2)
    # the same prompt twice is refused up front (nothing would be ablated) ...
    with pytest.raises(PromptError, match="all 2 prompts are the same"):
        edge_attribution(model, mechdiff.Task(one.prompts * 2, answers=one.answers * 2,
                                              wrong_answers=one.wrong_answers * 2),
                         progress=False)
    # ... so spell it twice (a second space: the same tokens) to reach the rounding noise
    task = mechdiff.Task([one.prompts[0], one.prompts[0].replace(" ", "  ", 1)],
                         answers=one.answers * 2, wrong_answers=one.wrong_answers * 2)
    scores = edge_attribution(model, task, method="eap_ig", steps=2, progress=False)
    curve = faithfulness_curve(model, task, scores, progress=False)
    assert float((curve.full - curve.empty).abs().max()) < 1e-5
    assert bool(curve.values.isnan().all()) and math.isnan(curve.cpr) and math.isnan(curve.cmd)
    assert " nan" in curve.table() and "-0.000" not in curve.table()


# --- a model with a known circuit -----------------------------------------------------------

def _head_effects(model, task):
    """Exact ablation of every node's output (all its out-edges), corrupted ablation."""
    graph, tokens = _prep.prepare(model, task, "corrupted")
    coefs = torch.zeros(graph.n_writers, graph.n_readers, graph.n_writers)
    for w in range(graph.n_writers):
        coefs[w, :, w] = graph.valid[:, w].float()
    full, _, vals = evaluate(model, graph, task, tokens, Replacements("corrupted"), coefs,
                             circuit_batch=16)
    return vals.mean(1) - full.mean()


def test_the_induction_circuit_is_found_and_faithful(induction_dir) -> None:
    model = mechdiff.load_pair(induction_dir, induction_dir, device="cpu").base
    graph = graph_of(model)
    task = induction_task(16)
    effects = _head_effects(model, task)
    heads = [graph.head(layer, h) for layer in range(graph.n_layers)
             for h in range(graph.n_heads)]
    head_effects = effects[heads]
    # Established by exact ablation, not assumed: the heads whose removal costs more than a
    # quarter of the largest head effect (measured: L1H2 -1.87, L1H3 -1.31, the two induction
    # heads of layer 1; every other head under 0.25 in absolute value).
    important = [heads[i] for i in range(len(heads))
                 if head_effects[i].abs() > 0.25 * head_effects.abs().max()]
    assert {graph.writer_labels[w] for w in important} == {"L1H2", "L1H3"}
    scores = edge_attribution(model, task, method="eap_ig", steps=10, ablation="corrupted",
                              progress=False)
    curve = faithfulness_curve(model, task, scores, progress=False)
    i = MIB_FRACTIONS.index(0.1)
    circuit = curve.circuit_at(0.1)
    assert set(important) <= set(circuit.nodes.nonzero().flatten().tolist())
    # Measured: f = 0.914 with 4 of 82 edges (5%), 0.979 with 6 (10%); CPR 0.95 on one machine;
    # on an AMD EPYC, whose float kernels train a slightly different model from the same seed,
    # 0.845 with 4 edges at 5% and at 10%, 1.011 with 11 (20%); CPR 0.91. Other seeds there:
    # 0.72-1.02 at 10%, 0.82-1.02 at 20%.
    assert curve.values[i] >= 0.8
    assert curve.kept[i] <= 8
    assert curve.values[MIB_FRACTIONS.index(0.05)] >= 0.8
    assert curve.values[MIB_FRACTIONS.index(0.2)] >= 0.9
    assert curve.cpr >= 0.85
    top = select_circuit(scores, rule="top_n", n=4)
    assert {"L1H2->logits", "L1H3->logits"} <= set(top.edge_list())


def test_mean_values_are_per_position_means_over_prompts(tiny) -> None:
    model = _model(tiny, "gpt2")
    graph = graph_of(model)
    task = random_task(5, seed=9, lengths=(3, 9))
    _, tokens = _prep.prepare(model, task, "mean")
    means = mean_outputs(model, graph, tokens, batch_size=2)
    acts = capture(model, tokens.tokens)
    lengths = tokens.lengths.tolist()
    for pos in (0, 2, max(lengths) - 1):
        have = [i for i, n in enumerate(lengths) if n > pos]
        expected = acts["blocks.1.hook_mlp_out"][have, pos].mean(0)
        torch.testing.assert_close(means[4][0, pos, 0], expected, atol=1e-5, rtol=1e-5)
        expected_head = acts["blocks.2.attn.hook_result"][have, pos, 3].mean(0)
        torch.testing.assert_close(means[5][0, pos, 3], expected_head, atol=1e-5, rtol=1e-5)
