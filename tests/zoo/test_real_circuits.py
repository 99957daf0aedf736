"""The circuit analyses on the real SmolLM2-135M (30 layers, 9 query heads sharing 3 key-value
heads, RMSNorm, rotary positions), not only on tiny stand-ins: its graph, EAP scores equal to their
hand-computed linear estimates (written against TransformerLens's hooks), and faithfulness
exactly 1 and 0 for the full and the empty circuit. Three chat prompts of the distillation task."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import mechdiff
from mechdiff.circuits import Circuit, _prep, edge_attribution, faithfulness, graph_of
from mechdiff.demos._common import equal_length

sys.path.insert(0, str(Path(__file__).parents[1] / "circuits"))
from circuit_reference import capture, index_of, reader_grads, writer_value  # noqa: E402


@pytest.fixture(scope="module")
def smol(real_zoo: dict[str, Path]) -> tuple[mechdiff.ModelPair, mechdiff.Task]:
    from mechdiff.zoo import real

    pair = mechdiff.load_pair(real_zoo["base"], real_zoo["distilled"], device="cpu")
    tasks = real.tasks(real_zoo["base"].parent.parent, progress=False)
    return pair, equal_length(tasks["distill"], pair.tokenizer, pair.n_ctx, 3, seed=0)


def test_the_real_models_graph_and_eap_scores(smol) -> None:
    """70,651 edges (key and value inputs per key-value head); the decomposition check passes on
    the first forward; EAP with mean ablation scores edges into a query, a shared key-value head's
    key and value, an MLP and the logits as their linear estimates (one backward pass of the
    reference gives the six reader gradients): (mean output - clean output)
    . d metric / d reader input, summed over positions, averaged over prompts."""
    pair, task = smol
    model = pair.base
    graph = graph_of(model)
    assert (graph.n_layers, graph.n_heads, graph.n_kv_heads, graph.n_edges) == (30, 9, 3, 70651)
    scores = edge_attribution(model, task, method="eap", ablation="mean", progress=False)
    _, tokens = _prep.prepare(model, task, "mean")
    ids = tokens.tokens
    assert int(tokens.read_pos.min()) == int(tokens.read_pos.max()) == ids.shape[1] - 1
    clean = capture(model, ids)
    rows = torch.arange(tokens.n)

    def metric(read):
        return read[rows, tokens.answer_ids] - read[rows, tokens.wrong_ids]

    cases = [(("input",), ("q", 3, 4)), (("head", 2, 7), ("k", 20, 1)),
             (("mlp", 10), ("v", 29, 2)), (("head", 29, 4), ("mlp", 29)),
             (("mlp", 29), ("logits",)), (("head", 27, 0), ("q", 28, 8))]
    grads = reader_grads(model, ids, tokens.read_pos, metric, [r for _, r in cases])
    for (w, r), g in zip(cases, grads, strict=True):
        a = writer_value(clean, w)
        hand = float(((a.mean(0, keepdim=True) - a) * g).sum()) / tokens.n
        got = float(scores.scores[index_of(graph, (w, r))])
        # measured: within 4e-5 relative (float32, reductions in another order)
        assert got == pytest.approx(hand, rel=1e-3, abs=1e-6)


def test_the_real_models_empty_circuit_is_the_mean_residual_stream(smol) -> None:
    """Every edge ablated through the per-head fork of all 30 layers reads what the closed form
    says the empty circuit reads (the mean residual stream, then the final norm and unembedding):
    f = 0 by the intervention, equal to the closed form's metric."""
    from mechdiff.circuits.ablation import Replacements, empty_logits, mean_outputs

    pair, task = smol
    model = pair.finetuned
    graph, tokens = _prep.prepare(model, task, "mean")
    f = faithfulness(model, task, Circuit.empty(graph), ablation="mean", progress=False)
    means = mean_outputs(model, graph, tokens, 16)
    read = empty_logits(model, graph, Replacements("mean", means=means).blocks(
        model, graph, tokens), tokens.read_pos, tokens.n)
    rows = torch.arange(tokens.n)
    closed = read[rows, tokens.answer_ids] - read[rows, tokens.wrong_ids]
    assert f.value == pytest.approx(0.0, abs=1e-4)
    assert float((f.full - closed).abs().min()) > 0.1  # the ablation changes every prompt
    torch.testing.assert_close(f.circuit.double(), closed.double(), atol=1e-3, rtol=1e-4)
