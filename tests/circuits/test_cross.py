"""Edges across models: exact edge patching against a hand-written one, a planted change found
on its own edges and nowhere upstream, EAP-IG's completeness across models, bad inputs."""

from __future__ import annotations

import pytest
import torch
from circuit_models import gpt2, random_task, save_dir
from circuit_reference import capture, run_edges
from support import D_MODEL, N_HEADS, unchecked

import mechdiff
from mechdiff.circuits import CrossEdgeScores, _prep, cross_edge_attribution
from mechdiff.errors import OptionError, ZeroGapError

LAYER, HEAD = 1, 2


@pytest.fixture(scope="module")
def planted_dirs(tmp_path_factory):
    """A base and a copy whose head L1H2 has a new W_O (rows of c_proj reading its z)."""
    root = tmp_path_factory.mktemp("cross")
    ft = gpt2(0)
    d_head = D_MODEL // N_HEADS
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        w = ft.transformer.h[LAYER].attn.c_proj.weight
        w[HEAD * d_head:(HEAD + 1) * d_head] += 0.5 * torch.randn(d_head, D_MODEL, generator=gen)
    return save_dir(gpt2(0), root / "base"), save_dir(ft, root / "ft")


@pytest.fixture(scope="module")
def planted(planted_dirs) -> mechdiff.ModelPair:
    return mechdiff.load_pair(*planted_dirs, device="cpu", dtype=torch.float64)


@pytest.mark.parametrize("direction", ["ft->base", "base->ft"])
def test_exact_edge_patching_equals_a_hand_written_patch(planted, direction) -> None:
    task = random_task(5, seed=3)
    r = cross_edge_attribution(planted, task, direction=direction, exact_top=30,
                               circuit_batch=7, progress=False)
    recv, donor = ((planted.base, planted.finetuned) if direction == "ft->base"
                   else (planted.finetuned, planted.base))
    graph = r.graph
    _, tokens = _prep.prepare(recv, task, "mean")
    donor_acts = capture(donor, tokens.tokens)
    rows = torch.arange(tokens.n)
    gap = float(r.donor.mean() - r.receiver.mean())
    for e in r.exact_edges[:6].tolist():
        w, rd = int(graph.edge_writer[e]), int(graph.edge_reader[e])
        named_w = _named_writer(graph, w)
        named_r = _named_reader(graph, rd)
        read = run_edges(recv, tokens.tokens, tokens.read_pos, donor_acts, {(named_w, named_r): 1})
        m = read[rows, tokens.answer_ids] - read[rows, tokens.wrong_ids]
        assert float(r.exact[e]) == pytest.approx((float(m.mean()) - float(r.receiver.mean()))
                                                  / gap, abs=1e-7)
        # The per-prompt values behind the interval are the hand-written patch's.
        row = r.exact_edges.tolist().index(e)
        torch.testing.assert_close(r.patched[row].double(), m.double(), atol=1e-6, rtol=0)
    assert torch.isnan(r.exact).sum() == graph.n_edges - 30
    lo, hi = r.exact_interval()
    chosen = r.exact_edges
    assert torch.isfinite(lo[chosen]).all() and torch.isnan(lo).sum() == graph.n_edges - 30
    assert (lo[chosen] <= hi[chosen]).all()
    # 5 prompts, seeded bootstrap: a nonzero share has a nonzero-width interval around it.
    moved = chosen[r.exact[chosen].abs() > 1e-3]
    assert len(moved) and (hi[moved] - lo[moved] > 0).all()


def _named_writer(graph, w):
    if w == 0:
        return ("input",)
    layer, i = divmod(w - 1, graph.per_layer_writers)
    return ("mlp", layer) if i == graph.n_heads else ("head", layer, i)


def _named_reader(graph, r):
    if r == graph.logits_reader:
        return ("logits",)
    layer, i = divmod(r, graph.per_layer_readers)
    if i < graph.n_heads:
        return ("q", layer, i)
    if i < graph.n_heads + graph.n_kv_heads:
        return ("k", layer, i - graph.n_heads)
    if i < graph.n_heads + 2 * graph.n_kv_heads:
        return ("v", layer, i - graph.n_heads - graph.n_kv_heads)
    return ("mlp", layer)


def test_the_planted_head_carries_the_gap_and_nothing_upstream_does(planted) -> None:
    task = random_task(6, seed=5)
    r = cross_edge_attribution(planted, task, exact_top=262, circuit_batch=32, progress=False)
    graph = r.graph
    planted_w = graph.head(LAYER, HEAD)
    layer_of = torch.tensor([graph.writer_layer(int(w)) for w in graph.edge_writer])
    heads_of_layer = torch.tensor([graph.head(LAYER, h) for h in range(graph.n_heads)
                                   if h != HEAD])
    same = (layer_of < LAYER) | torch.isin(graph.edge_writer, heads_of_layer)
    # Writers up to the planted head's layer compute the same in both models: patching their
    # edges changes nothing, exactly, whatever the estimate says.
    torch.testing.assert_close(r.exact[same], torch.zeros(int(same.sum()), dtype=r.exact.dtype),
                               atol=1e-9, rtol=0)
    torch.testing.assert_close(r.estimate[same], torch.zeros(int(same.sum()),
                                                             dtype=r.exact.dtype),
                               atol=1e-9, rtol=0)
    # The change enters through the planted head's edges (and what reads them downstream).
    assert "L1H2" in {row.writer for row in r.top(3)}
    out_of_planted = r.exact[graph.edge_writer == planted_w]
    assert float(out_of_planted.abs().max()) > 0.3


@pytest.mark.parametrize("processing", ["none", "compat"])
def test_eap_ig_across_models_is_complete(planted_dirs, processing) -> None:
    """The EAP-IG shares sum to the effect of patching every edge at once (midpoint rule, 60
    steps). Without processing that is the whole gap (only W_O of one head changed); with
    compat processing the head's value bias, folded into the constant b_O, is outside the edges
    (measured: 0.958 of the gap)."""
    pair = mechdiff.load_pair(*planted_dirs, device="cpu", dtype=torch.float64,
                              processing=processing)
    task = random_task(4, seed=6)
    r = cross_edge_attribution(pair, task, method="eap_ig", steps=60, exact_top=0,
                               progress=False)
    assert float(r.estimate.sum()) == pytest.approx(r.all_edges, abs=2e-3)
    if processing == "none":
        assert r.all_edges == pytest.approx(1.0, abs=1e-9)  # float64 throughout
    else:
        assert 0.9 < r.all_edges < 0.99
    eap = cross_edge_attribution(pair, task, method="eap", exact_top=0, progress=False)
    assert eap.exact.isnan().all() and len(eap.exact_edges) == 0


def test_identical_models_have_no_gap(tiny) -> None:
    pair = mechdiff.load_pair(tiny["gpt2"], tiny["gpt2"], device="cpu")
    with pytest.raises(ZeroGapError):
        cross_edge_attribution(pair, random_task(3), progress=False)


def test_bad_options_and_saving(planted, tmp_path) -> None:
    task = random_task(3)
    cross = unchecked(cross_edge_attribution)
    with pytest.raises(OptionError):
        cross(planted, task, direction="sideways")
    with pytest.raises(OptionError):
        cross(planted, task, method="acdc")
    with pytest.raises(OptionError):
        cross(planted, task, exact_top=-1)
    with pytest.raises(OptionError, match="exact_top must be an integer"):
        cross(planted, task, exact_top=True)  # once a bare ValueError deep in the run
    with pytest.raises(OptionError, match="pair must be a ModelPair.*got TransformerBridge"):
        cross(planted.base, task)
    r = cross_edge_attribution(planted, task, exact_top=5, progress=False)
    loaded = CrossEdgeScores.load(r.save(tmp_path / "x"))
    torch.testing.assert_close(loaded.exact, r.exact, equal_nan=True)
    torch.testing.assert_close(loaded.exact_interval(), r.exact_interval(), equal_nan=True)
    assert loaded.direction == "ft->base"
    assert "patched for real" in r.table(3)
    with pytest.raises(OptionError):
        r.top(3, by="guess")
