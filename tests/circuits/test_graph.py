"""The edge graph: counts (EAP-IG's 32,491 for GPT-2 small), indices and labels, exact
reconstruction of every reader's input from the writers, key-value heads as their own k/v inputs,
and models without an exact graph refused."""

from __future__ import annotations

import pytest
import torch
from circuit_models import random_task, save_dir
from circuit_reference import all_edges, capture, index_of
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

import mechdiff
from mechdiff.circuits import Circuit, Graph, GraphError, _prep, _run, graph_of
from mechdiff.circuits.graph import check_exact, constants, split_inputs
from mechdiff.loading import active_hooks


@pytest.mark.parametrize(("dims", "edges"), [
    ((12, 12, 12), 32_491),   # GPT-2 small: EAP-IG's count
    ((30, 9, 3), 70_651),     # SmolLM2-135M, key-value heads natively
    ((30, 9, 9), 123_211),    # SmolLM2-135M if its key-value heads were ungrouped
    ((3, 4, 4), 262),
    ((2, 4, 2), 82),
])
def test_edge_counts(dims: tuple[int, int, int], edges: int) -> None:
    g = Graph(*dims)
    assert g.n_edges == edges
    assert g.n_writers == 1 + dims[0] * (dims[1] + 1)
    assert g.n_readers == dims[0] * (dims[1] + 2 * dims[2] + 1) + 1


@pytest.mark.parametrize("dims", [(3, 4, 4), (2, 4, 2), (3, 6, 3)])
def test_edges_match_an_enumeration_from_the_definition(dims: tuple[int, int, int]) -> None:
    g = Graph(*dims)
    named = all_edges(*dims)
    assert len(named) == g.n_edges
    idx = [index_of(g, e) for e in named]
    assert sorted(idx) == list(range(g.n_edges))  # a bijection
    for i, (w, r) in zip(idx, named, strict=True):
        label = g.edge_label(i)
        writer = ("input" if w[0] == "input" else f"L{w[1]}H{w[2]}" if w[0] == "head"
                  else f"MLP{w[1]}")
        assert label.startswith(writer + "->")
        assert label.endswith({"q": ".q", "k": ".k", "v": ".v", "mlp": ".in",
                               "logits": "logits"}[r[0]])
    assert g.edge_label(g.edge(0, g.logits_reader)) == "input->logits"
    values = torch.randn(g.n_edges)
    torch.testing.assert_close(g.flat(g.dense(values)), values)
    assert int(g.valid.sum()) == g.n_edges


def test_gqa_reader_labels_and_owners() -> None:
    g = Graph(2, 4, 2)
    r = g.reader(1, "k", 1)
    assert g.reader_labels[r] == "L1KV1.k"
    assert [g.writer_labels[w] for w in g.reader_owners[r]] == ["L1H2", "L1H3"]
    assert g.reader_labels[g.reader(0, "q", 3)] == "L0H3.q"
    assert Graph(2, 4, 4).reader_labels[Graph(2, 4, 4).reader(1, "v", 2)] == "L1H2.v"
    with pytest.raises(GraphError):
        Graph(2, 4, 3)
    with pytest.raises(GraphError):
        g.edge(g.mlp(1), g.reader(1, "q", 0))  # an MLP does not feed its own block's attention


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("processing", ["compat", "none"])
def test_reader_inputs_are_the_sum_of_upstream_outputs(tiny, name, processing) -> None:
    pair = mechdiff.load_pair(tiny[name], tiny[name], device="cpu", processing=processing)
    model = pair.base
    graph = graph_of(model)
    task = random_task(5)
    _, tokens = _prep.prepare(model, task, "mean")
    out = _run.forward(model, graph, tokens.tokens, tokens.read_pos, capture=True,
                       record=_prep.check_records(graph))
    worst = check_exact(model, graph, out.acts, out.writers, tokens.position_mask())
    assert worst < 1e-4
    # The constants are not trivial here: positional embedding (GPT-2) and b_O.
    consts = constants(model, tokens.tokens.shape[1])
    if name == "gpt2":
        assert float(consts[1].abs().max()) > 1e-2
    # Independently of the engine: TransformerLens's own hooks, every reader's residual.
    acts = capture(model, tokens.tokens)
    total = acts["hook_embed"] + consts[0]
    model.set_use_split_qkv_input(True)
    names = [f"blocks.{layer}.attn.hook_{x}_input" for layer in range(graph.n_layers)
             for x in "qkv"]
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        return lambda x, hook: seen.__setitem__(name, x)

    try:
        with model.hooks(fwd_hooks=[(n, keep(n)) for n in names]):
            model(tokens.tokens)
    finally:
        model.set_use_split_qkv_input(False)
    for layer in range(graph.n_layers):
        for x, count in (("q", graph.n_heads), ("k", graph.n_kv_heads), ("v", graph.n_kv_heads)):
            inp = seen[f"blocks.{layer}.attn.hook_{x}_input"]
            assert inp.shape[2] == count  # one input per key-value head, natively
            for i in range(count):
                torch.testing.assert_close(inp[:, :, i], total, atol=1e-4, rtol=1e-4)
        total = (total + acts[f"blocks.{layer}.attn.hook_result"].sum(2) + consts[layer + 1]
                 - consts[layer] + acts[f"blocks.{layer}.hook_mlp_out"])


def test_a_key_value_head_input_changes_only_its_group(tiny) -> None:
    pair = mechdiff.load_pair(tiny["llama"], tiny["llama_b"], device="cpu")
    model, graph = pair.base, graph_of(pair.base)
    task = random_task(4)
    _, tokens = _prep.prepare(model, task, "mean")
    ids, rp = tokens.tokens, tokens.read_pos
    other = _run.forward(pair.finetuned, graph, ids, rp, capture=True)
    coef = torch.zeros(1, graph.n_readers, graph.n_writers)
    coef[0, graph.reader(1, "k", 1), 0] = 1.0  # input -> L1KV1.k carries the other model's
    record = ("blocks.1.attn.hook_k", "blocks.1.attn.hook_q", "blocks.1.attn.hook_z")
    clean = _run.forward(model, graph, ids, rp, record=record)
    patched = _run.forward(model, graph, ids, rp, replace=other.writers, coef=coef, record=record)
    k0, k1 = clean.acts[record[0]], patched.acts[record[0]]
    assert k0.shape[2] == graph.n_kv_heads
    torch.testing.assert_close(k1[:, :, 0], k0[:, :, 0])  # key-value head 0 untouched
    assert float((k1[:, :, 1] - k0[:, :, 1]).abs().max()) > 1e-3
    torch.testing.assert_close(patched.acts[record[1]], clean.acts[record[1]])  # queries too
    z0, z1 = clean.acts[record[2]], patched.acts[record[2]]
    torch.testing.assert_close(z1[:, :, :2], z0[:, :, :2])  # query heads 0, 1: group 0
    assert float((z1[:, :, 2:] - z0[:, :, 2:]).abs().max()) > 1e-4  # heads 2, 3 share KV 1


def _loaded(model_class, cfg, path):
    """A tiny random ``model_class(cfg)`` saved to ``path`` and loaded by mechdiff."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        d = save_dir(model_class(cfg).eval(), path)
    return mechdiff.load_pair(d, d, device="cpu").base


def test_parallel_attention_models_are_refused_before_any_forward(tmp_path) -> None:
    cfg = GPTNeoXConfig(vocab_size=62, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=32,
                        use_parallel_residual=True, bos_token_id=61, eos_token_id=61)
    model = _loaded(GPTNeoXForCausalLM, cfg, tmp_path / "neox")
    with pytest.raises(GraphError, match="parallel"):
        graph_of(model)
    with pytest.raises(GraphError):
        mechdiff.circuits.edge_attribution(model, random_task(2), progress=False)


def test_attention_without_per_head_outputs_is_refused_before_any_forward(tmp_path) -> None:
    """OPT's attention bridge cannot give per-head results (TL's ``use_attn_result``): edge
    scores could be computed without them, but no circuit could be evaluated, so the graph is
    refused up front, not by an untyped error in the first faithfulness run."""
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(vocab_size=62, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=32, word_embed_proj_dim=32,
                    do_layer_norm_before=True, bos_token_id=61, eos_token_id=61, pad_token_id=60)
    model = _loaded(OPTForCausalLM, cfg, tmp_path / "opt")
    with pytest.raises(GraphError, match="per-head outputs"):
        graph_of(model)
    with pytest.raises(GraphError):
        mechdiff.circuits.edge_attribution(model, random_task(2), progress=False)


def test_a_residual_stream_that_is_not_a_sum_is_refused(tiny) -> None:
    model = mechdiff.load_pair(tiny["gpt2"], tiny["gpt2"], device="cpu").base
    # A block that scales its attention output before the residual add (as post-norm and
    # scaled-residual blocks do) breaks the decomposition: refused on the first batch.
    handle = model.blocks[1].hook_attn_out.register_forward_hook(lambda m, i, o: 1.5 * o)
    try:
        with pytest.raises(GraphError, match="not the sum"):
            mechdiff.circuits.edge_attribution(model, random_task(3), progress=False)
        with pytest.raises(GraphError, match="not the sum"):
            mechdiff.circuits.faithfulness(model, random_task(3), Circuit.full(graph_of(model)),
                                           progress=False)
    finally:
        handle.remove()


def test_flags_and_hooks_are_restored_after_an_exception(tiny) -> None:
    model = mechdiff.load_pair(tiny["gpt2"], tiny["gpt2"], device="cpu").base
    cfg = model.cfg
    before = (cfg.use_attn_result, cfg.use_split_qkv_input, cfg.use_hook_mlp_in)
    hooks = active_hooks(model)
    with pytest.raises(RuntimeError, match="boom"), split_inputs(model):
        assert cfg.use_split_qkv_input
        raise RuntimeError("boom")
    assert (cfg.use_attn_result, cfg.use_split_qkv_input, cfg.use_hook_mlp_in) == before

    def fail(_rows, _n, _g):
        raise RuntimeError("boom in backward")

    graph = graph_of(model)
    task = random_task(2)
    _, tokens = _prep.prepare(model, task, "mean")
    out = _run.forward(model, graph, tokens.tokens, tokens.read_pos, on_grad=fail)
    with pytest.raises(RuntimeError, match="boom in backward"):
        torch.autograd.grad(out.read.sum(), [out.leaf])
    assert active_hooks(model) == hooks
    assert (cfg.use_attn_result, cfg.use_split_qkv_input, cfg.use_hook_mlp_in) == before
