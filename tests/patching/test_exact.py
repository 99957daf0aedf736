"""Exact patching against oracles: a one-forward-per-site reference built on TransformerLens's own
run_with_hooks, TransformerLens's patching module, and pairs with planted changes."""

from __future__ import annotations

import pytest
import torch
import transformer_lens.patching as tl_patching
from support import N_HEADS, N_LAYERS, random_prompts, reference_patch, unchecked

import mechdiff
from mechdiff import Task
from mechdiff.errors import SiteError, ZeroGapError
from mechdiff.loading import active_hooks


def _task(n: int = 5, seed: int = 0, **kw) -> Task:
    return Task(random_prompts(n, seed=seed), answers=["t1"] * n, wrong_answers=["t2"] * n, **kw)


@pytest.fixture(scope="module")
def pair_other(ckpts):
    return mechdiff.load_pair(ckpts["base"], ckpts["other"], device="cpu")


@pytest.mark.parametrize("kind", ["heads", "attn", "mlp", "resid"])
@pytest.mark.parametrize("positions", ["all", "each"])
def test_batched_equals_one_forward_per_site(pair_other, kind, positions):
    task = _task()
    for direction in ("ft->base", "base->ft"):
        r = mechdiff.cross_patch(pair_other, task, sites=kind, direction=direction,
                                 positions=positions, batch_size=13, progress=False)
        recv, donor = ((pair_other.base, pair_other.finetuned) if direction == "ft->base"
                       else (pair_other.finetuned, pair_other.base))
        ref = reference_patch(recv, donor, task, kind, positions)
        assert r.patched.mean(-1).shape == ref.shape
        torch.testing.assert_close(r.patched.mean(-1), ref, atol=1e-4, rtol=1e-4)
        # The receiver's own metric, and the score normalisation.
        gap = r.donor.mean() - r.receiver.mean()
        torch.testing.assert_close(r.scores, (ref - r.receiver.mean()) / gap, atol=1e-4, rtol=1e-3)


def test_results_identical_whatever_the_batch_size(pair_other):
    task = _task(7)
    a = mechdiff.cross_patch(pair_other, task, sites="heads", progress=False)
    b = mechdiff.cross_patch(pair_other, task, sites="heads", batch_size=1, prompt_batch_size=3,
                             progress=False)
    torch.testing.assert_close(a.patched, b.patched, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("direction", ["ft->base", "base->ft"])
def test_planted_head_in_last_layer_scores_one_there_zero_elsewhere(ckpts, direction):
    pair = mechdiff.load_pair(ckpts["base"], ckpts["head_last"], device="cpu")
    r = mechdiff.cross_patch(pair, _task(), sites="heads", direction=direction, progress=False)
    expected = torch.zeros(N_LAYERS, N_HEADS)
    expected[N_LAYERS - 1, 2] = 1.0
    assert abs(r.gap) > 1e-2
    torch.testing.assert_close(r.scores, expected, atol=1e-4, rtol=0)
    assert r.top(1)[0].label == f"L{N_LAYERS - 1}H2"
    # The whole attention layer carries it too. MLPs below it see identical inputs in both models
    # (score 0); the last MLP reads the changed head's output, so it may differ and is not checked.
    attn = mechdiff.cross_patch(pair, _task(), sites="attn", direction=direction, progress=False)
    torch.testing.assert_close(attn.scores, torch.tensor([0.0, 0.0, 1.0]), atol=1e-4, rtol=0)
    mlp = mechdiff.cross_patch(pair, _task(), sites="mlp", direction=direction, progress=False)
    torch.testing.assert_close(mlp.scores[:-1], torch.zeros(N_LAYERS - 1), atol=1e-4, rtol=0)


def test_planted_head_mid_layer_only_wo_changed(ckpts):
    """Patching z (before W_O) could not see this change; mechdiff patches after W_O."""
    pair = mechdiff.load_pair(ckpts["base"], ckpts["head_mid"], device="cpu")
    r = mechdiff.cross_patch(pair, _task(), sites="heads", progress=False)
    assert r.scores[1, 1] == pytest.approx(1.0, abs=1e-4)
    torch.testing.assert_close(r.scores[0], torch.zeros(N_HEADS), atol=1e-6, rtol=0)
    others = r.scores[1].clone()
    others[1] = 0
    torch.testing.assert_close(others, torch.zeros(N_HEADS), atol=1e-6, rtol=0)


@pytest.mark.parametrize("direction", ["ft->base", "base->ft"])
def test_planted_mlp_scores_one_there_zero_elsewhere(ckpts, direction):
    pair = mechdiff.load_pair(ckpts["base"], ckpts["mlp_last"], device="cpu")
    task = _task()
    mlp = mechdiff.cross_patch(pair, task, sites="mlp", direction=direction, progress=False)
    torch.testing.assert_close(mlp.scores, torch.tensor([0.0, 0.0, 1.0]), atol=1e-4, rtol=0)
    heads = mechdiff.cross_patch(pair, task, sites="heads", direction=direction, progress=False)
    torch.testing.assert_close(heads.scores, torch.zeros(N_LAYERS, N_HEADS), atol=1e-4, rtol=0)


def test_task_free_kl_metric(ckpts):
    pair = mechdiff.load_pair(ckpts["base"], ckpts["head_last"], device="cpu")
    for metric in ("kl", "kl_all"):
        task = Task(random_prompts(4), metric=metric)
        r = mechdiff.cross_patch(pair, task, sites="heads", progress=False)
        assert r.donor.abs().max() < 1e-5  # -KL(donor || donor) = 0
        assert (r.receiver < 0).all()
        assert r.scores[N_LAYERS - 1, 2] == pytest.approx(1.0, abs=1e-4)
        assert r.scores[:N_LAYERS - 1].abs().max() < 1e-5


@pytest.mark.parametrize(
    ("kind", "tl_fn", "positions"),
    [
        ("resid", tl_patching.get_act_patch_resid_pre, "each"),
        ("mlp", tl_patching.get_act_patch_mlp_out, "each"),
        ("attn", tl_patching.get_act_patch_attn_out, "each"),
        ("heads", tl_patching.get_act_patch_attn_head_out_all_pos, "all"),
    ],
)
def test_single_model_patching_equals_transformer_lens(ckpts, kind, tl_fn, positions):
    pair = mechdiff.load_pair(ckpts["base"], ckpts["base"], device="cpu")
    model = pair.base
    clean = random_prompts(4, lengths=(9, 9), seed=1)
    corrupted = random_prompts(4, lengths=(9, 9), seed=2)
    task = Task(clean, answers=["t1"] * 4, wrong_answers=["t2"] * 4, corrupted=corrupted)
    tok = task.tokenize(model.tokenizer, n_ctx=32)
    _, cache = model.run_with_cache(tok.tokens)
    idx = torch.arange(4)

    def metric(logits):
        last = logits[:, -1]
        return (last[idx, tok.answer_ids] - last[idx, tok.wrong_ids]).mean()

    expected = tl_fn(model, tok.corrupted_tokens, cache, metric)
    r = mechdiff.activation_patch(model, task, sites=kind, positions=positions, progress=False)
    torch.testing.assert_close(r.patched.mean(-1), expected.float(), atol=1e-4, rtol=1e-4)


def test_identical_pair_is_a_clean_zero_gap(ckpts):
    pair = mechdiff.load_pair(ckpts["base"], ckpts["base"], device="cpu")
    task = _task()
    gap = mechdiff.behaviour_gap(pair, task)
    hooks = active_hooks(pair.base)  # after a first forward (transformers adds its own hooks)
    assert gap.is_zero
    assert gap.gap == 0.0
    assert torch.isfinite(gap.kl_mean).all() and gap.kl_mean.abs().max() < 1e-7
    assert "zero gap" in gap.message
    with pytest.raises(ZeroGapError, match="no gap"):
        mechdiff.cross_patch(pair, task, progress=False)
    assert active_hooks(pair.base) == hooks


def test_behaviour_gap_numbers(ckpts):
    pair = mechdiff.load_pair(ckpts["base"], ckpts["other"], device="cpu")
    prompts = random_prompts(4)
    task = Task(prompts, answers=["t1"] * 4, wrong_answers=["t2"] * 4)
    gap = mechdiff.behaviour_gap(pair, task, top_k=3)
    for i in range(len(prompts)):  # each prompt alone, its own final position
        ids = task.tokenize(pair.tokenizer, n_ctx=32).select(i, i + 1).tokens
        lb, lf = pair.base(ids)[0, -1], pair.finetuned(ids)[0, -1]
        assert gap.base_metric[i] == pytest.approx(float(lb[1] - lb[2]), abs=1e-4)
        assert gap.finetuned_metric[i] == pytest.approx(float(lf[1] - lf[2]), abs=1e-4)
        pf, pb = lf.log_softmax(-1), lb.log_softmax(-1)
        assert gap.kl_final[i] == pytest.approx(float((pf.exp() * (pf - pb)).sum()), abs=1e-4)
    assert len(gap.rose_tokens) == 3 and (gap.rose_delta > 0).all() and (gap.fell_delta < 0).all()


def test_unequal_lengths_read_each_prompts_own_final_position(ckpts):
    pair = mechdiff.load_pair(ckpts["base"], ckpts["other"], device="cpu")
    prompts = ["t1 t2 t3", "t4 t5 t6 t7 t8 t9 t10 t11"]
    task = Task(prompts, answers=["t1", "t1"], wrong_answers=["t2", "t2"])
    r = mechdiff.cross_patch(pair, task, sites="mlp", progress=False)
    alone = [mechdiff.cross_patch(pair, Task([p], answers=["t1"], wrong_answers=["t2"]),
                                  sites="mlp", progress=False) for p in prompts]
    for i in range(2):
        torch.testing.assert_close(r.patched[:, i], alone[i].patched[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r.receiver[i], alone[i].receiver[0], atol=1e-5, rtol=1e-5)


def test_save_load_roundtrip(pair_other, tmp_path):
    r = mechdiff.cross_patch(pair_other, _task(), sites="heads", progress=False)
    r.save(tmp_path / "r")
    back = mechdiff.PatchResult.load(tmp_path / "r")
    torch.testing.assert_close(back.scores, r.scores)
    torch.testing.assert_close(back.patched, r.patched)
    assert back.dims == ("layer", "head") and back.provenance == r.provenance
    assert back.labels()[:2] == ["L0H0", "L0H1"] and back.top(3) == r.top(3)
    g = mechdiff.behaviour_gap(pair_other, _task())
    g.save(tmp_path / "g")
    assert mechdiff.GapResult.load(tmp_path / "g").rose_tokens == g.rose_tokens


def test_bad_site_kind_is_refused_before_work(pair_other):
    with pytest.raises(SiteError, match="unknown site kind"):
        unchecked(mechdiff.cross_patch)(pair_other, _task(), sites="neurons", progress=False)


def test_only_patches_the_chosen_sites_and_matches_the_full_sweep(pair_other) -> None:
    from mechdiff.errors import SiteError
    from mechdiff.sites import MLP, Head

    task = _task()
    full = mechdiff.cross_patch(pair_other, task, sites="heads", progress=False)
    chosen = [Head(0, 1), Head(2, 3), Head(2, 0)]
    part = mechdiff.cross_patch(pair_other, task, sites="heads", progress=False, only=chosen)
    mask = torch.zeros(N_LAYERS, N_HEADS, dtype=torch.bool)
    for h in chosen:
        mask[h.layer, h.head] = True
    torch.testing.assert_close(part.scores[mask], full.scores[mask])
    assert torch.isnan(part.scores[~mask]).all()
    assert {r.label for r in part.top(10)} == {h.label for h in chosen}  # unpatched never rank
    lo, hi = part.interval()
    assert torch.isfinite(lo[mask]).all() and torch.isnan(lo[~mask]).all()
    with pytest.raises(SiteError, match="not a site of kind"):
        mechdiff.cross_patch(pair_other, task, sites="heads", only=[MLP(0)], progress=False)
    with pytest.raises(SiteError, match="does not exist"):
        mechdiff.cross_patch(pair_other, task, sites="heads", only=[Head(9, 0)], progress=False)
