"""Exact patching on a LLaMA-style model (grouped-query attention, RMSNorm, rotary positions):
the batched engine, with prefix reuse for per-position patches, against a one-forward-per-site
reference; per-query-head patching of a planted ``o_proj`` change; batch-size invariance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import make_tokenizer, random_prompts, reference_patch
from transformers import LlamaConfig, LlamaForCausalLM

import mechdiff
from mechdiff import Task, _engine

N_LAYERS, N_HEADS, N_KV, D_MODEL = 3, 4, 2, 64
D_HEAD = D_MODEL // N_HEADS


def _llama(seed: int) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=62, hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS, num_key_value_heads=N_KV, max_position_embeddings=32,
        bos_token_id=61, eos_token_id=61, pad_token_id=60, tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        for p in model.parameters():
            if p.ndim == 2:
                p.data.normal_(0, 0.15)
    return model.eval()


def _save(model: LlamaForCausalLM, path: Path) -> Path:
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llama")
    planted = _llama(0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # o_proj: [d_model, head * d_head]; columns of query head 3 of layer 1
        w = planted.model.layers[1].self_attn.o_proj.weight
        w[:, 3 * D_HEAD:4 * D_HEAD] += 0.5 * torch.randn(D_MODEL, D_HEAD, generator=g)
    return {"base": _save(_llama(0), root / "base"), "other": _save(_llama(7), root / "other"),
            "planted": _save(planted, root / "planted")}


def _task(n: int = 4) -> Task:
    return Task(random_prompts(n, lengths=(5, 10)), answers=["t1"] * n, wrong_answers=["t2"] * n)


def test_bridge_is_gqa_and_supports_prefix_reuse(llama_dirs):
    pair = mechdiff.load_pair(llama_dirs["base"], llama_dirs["other"], device="cpu")
    assert pair.cfg.n_key_value_heads == N_KV and pair.n_heads == N_HEADS
    assert _engine.supports_prefix_reuse(pair.base)


@pytest.mark.parametrize("kind", ["heads", "attn", "mlp", "resid"])
@pytest.mark.parametrize("positions", ["all", "each"])
def test_batched_equals_reference_on_gqa(llama_dirs, kind, positions):
    pair = mechdiff.load_pair(llama_dirs["base"], llama_dirs["other"], device="cpu")
    task = _task()
    r = mechdiff.cross_patch(pair, task, sites=kind, positions=positions, batch_size=11,
                             progress=False)
    ref = reference_patch(pair.base, pair.finetuned, task, kind, positions)
    torch.testing.assert_close(r.patched.mean(-1), ref, atol=1e-4, rtol=1e-4)


def test_per_position_results_do_not_depend_on_batch_size(llama_dirs):
    pair = mechdiff.load_pair(llama_dirs["base"], llama_dirs["other"], device="cpu")
    task = _task(5)
    runs = [mechdiff.cross_patch(pair, task, sites="heads", positions="each", batch_size=bs,
                                 prompt_batch_size=pbs, progress=False)
            for bs, pbs in ((1, 5), (7, 2), (64, 32))]
    for other in runs[1:]:
        torch.testing.assert_close(other.patched, runs[0].patched, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("direction", ["ft->base", "base->ft"])
def test_planted_query_head_scores_one_there_zero_elsewhere(llama_dirs, direction):
    pair = mechdiff.load_pair(llama_dirs["base"], llama_dirs["planted"], device="cpu")
    r = mechdiff.cross_patch(pair, _task(), sites="heads", direction=direction, progress=False)
    assert abs(r.gap) > 1e-2
    assert r.scores[1, 3] == pytest.approx(1.0, abs=1e-4)
    # Heads below and beside the planted one see identical inputs in both models.
    torch.testing.assert_close(r.scores[0], torch.zeros(N_HEADS), atol=1e-5, rtol=0)
    # Query head 2 shares its key-value head with head 3, yet its output is unchanged: the
    # score is per query head. (Heads of layer 2 read the changed stream, so they are free.)
    torch.testing.assert_close(r.scores[1, :3], torch.zeros(3), atol=1e-5, rtol=0)
