"""Attribution patching against oracles: finite differences of real interventions, exact
cross-model patching (linear regime, rank agreement, planted changes), the completeness axiom of
integrated gradients, and TransformerLens's own single-model attribution patching."""

from __future__ import annotations

import pytest
import torch
from support import N_HEADS, N_LAYERS, make_model, random_prompts, save, unchecked
from transformer_lens.tools.analysis import attribution_patching as tl_attr

import mechdiff
from mechdiff import Task
from mechdiff.errors import OptionError, PromptError, SiteError, ZeroGapError
from mechdiff.loading import active_hooks
from mechdiff.patching import attribute_single

KINDS = ["heads", "attn", "mlp", "resid"]


def _task(n: int = 6, seed: int = 0, **kw) -> Task:
    return Task(random_prompts(n, seed=seed), answers=["t1"] * n, wrong_answers=["t2"] * n, **kw)


def _noisy(scale: float, seed: int = 3):
    """The base plus Gaussian noise of ``scale`` x each tensor's std (a small 'fine-tune')."""
    model = make_model(0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p += scale * p.std() * torch.randn(p.shape, generator=g)
    return model


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (no ties expected among float scores)."""
    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@pytest.fixture(scope="module")
def noise_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("noise")
    return {s: save(_noisy(s), root / f"noise{s}") for s in (0.01, 0.05)}


@pytest.fixture(scope="module")
def pair_other(ckpts):
    return mechdiff.load_pair(ckpts["base"], ckpts["other"], device="cpu")


# --------------------------------------------------------------------------------------------
# 1. the gradient itself: finite differences of real interventions


def _site_deltas(recv, donor, tokens, kind: str, layer: int) -> tuple[str, list[torch.Tensor]]:
    """Hook where the patch enters, and donor - receiver there per site ``[batch, pos, d]``."""
    _, dc = donor.run_with_cache(tokens)
    _, rc = recv.run_with_cache(tokens)
    if kind == "heads":
        z = f"blocks.{layer}.attn.hook_z"
        return f"blocks.{layer}.hook_attn_out", [
            dc[z][:, :, h] @ donor.W_O[layer, h] - rc[z][:, :, h] @ recv.W_O[layer, h]
            for h in range(N_HEADS)]
    name = {"attn": f"blocks.{layer}.hook_attn_out", "mlp": f"blocks.{layer}.hook_mlp_out",
            "resid": f"blocks.{layer}.hook_resid_pre"}[kind]
    return name, [dc[name] - rc[name]]


def finite_difference_effects(recv, donor, task: Task, kind: str, positions: str,
                              eps: float = 1e-3) -> torch.Tensor:
    """d/de of the mean metric with e * delta added at one site (one position): central
    differences of real interventions, one pair of full forwards per (site, position)."""
    tok = task.tokenize(recv.tokenizer, n_ctx=int(recv.cfg.n_ctx))
    idx = torch.arange(tok.n)
    width = tok.tokens.shape[1]

    def metric(extra: torch.Tensor, name: str) -> float:
        logits = recv.run_with_hooks(tok.tokens, fwd_hooks=[(name, lambda a, hook: a + extra)])
        last = logits[idx, tok.read_pos]
        return float((last[idx, tok.answer_ids] - last[idx, tok.wrong_ids]).mean())

    pos_list = list(range(width)) if positions == "each" else [None]
    n_sites = N_HEADS if kind == "heads" else 1
    out = torch.zeros(N_LAYERS, n_sites, len(pos_list), dtype=torch.float64)
    for layer in range(N_LAYERS):
        name, deltas = _site_deltas(recv, donor, tok.tokens, kind, layer)
        for s, delta in enumerate(deltas):
            for j, p in enumerate(pos_list):
                d = delta.clone()
                if p is not None:
                    keep = torch.zeros(1, width, 1, dtype=d.dtype)
                    keep[:, p] = 1
                    d = d * keep
                out[layer, s, j] = (metric(eps * d, name) - metric(-eps * d, name)) / (2 * eps)
    out = out if kind == "heads" else out[:, 0]
    return out if positions == "each" else out.squeeze(-1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("positions", ["all", "each"])
def test_estimate_is_the_gradient_of_a_real_intervention(ckpts, kind, positions):
    pair = mechdiff.load_pair(ckpts["base"], ckpts["other"], device="cpu", dtype=torch.float64)
    task = Task(random_prompts(3, lengths=(4, 7), seed=4), answers=["t1"] * 3,
                wrong_answers=["t2"] * 3)
    for direction in ("ft->base", "base->ft"):
        r = mechdiff.attribute(pair, task, sites=kind, direction=direction, positions=positions,
                               prompt_batch_size=2, progress=False)
        recv, donor = ((pair.base, pair.finetuned) if direction == "ft->base"
                       else (pair.finetuned, pair.base))
        ref = finite_difference_effects(recv, donor, task, kind, positions)
        assert ref.abs().max() > 0.1  # the oracle is not trivially zero
        torch.testing.assert_close(r.effects.double(), ref, atol=1e-4, rtol=1e-4)
        assert r.method == "attribution"


# --------------------------------------------------------------------------------------------
# 2. against exact patching


def test_small_fine_tune_is_in_the_linear_regime(ckpts, noise_dirs):
    """Estimates approach exact patching as the change shrinks (error ~ size^2, gap ~ size)."""
    task = _task(8)
    err = {}
    for scale, path in noise_dirs.items():
        pair = mechdiff.load_pair(ckpts["base"], path, device="cpu")
        for kind in KINDS:
            exact = mechdiff.cross_patch(pair, task, sites=kind, progress=False)
            est = mechdiff.attribute(pair, task, sites=kind, progress=False)
            err[scale, kind] = float((est.scores - exact.scores).abs().max())
            if kind == "heads":
                assert spearman(est.scores, exact.scores) > 0.98
    for kind in KINDS:
        assert err[0.01, kind] < 0.05  # measured 0.004-0.023 of the gap
        assert err[0.01, kind] < err[0.05, kind] / 3  # measured 9x-80x smaller


def test_large_change_ranks_heads_like_exact_patching(pair_other):
    task = _task(8)
    exact = mechdiff.cross_patch(pair_other, task, sites="heads", progress=False)
    attr = mechdiff.attribute(pair_other, task, sites="heads", progress=False)
    ig = mechdiff.attribute(pair_other, task, sites="heads", method="integrated_gradients",
                            steps=16, progress=False)
    rho_attr, rho_ig = spearman(attr.scores, exact.scores), spearman(ig.scores, exact.scores)
    assert rho_attr > 0.8  # measured 0.91
    assert rho_ig > 0.9 and rho_ig > rho_attr  # measured 0.97
    assert ig.method == "integrated_gradients(steps=16)"


def test_resid_integrated_gradients_converge_to_exact_patching(pair_other):
    """Each resid layer is interpolated on its own, so IG tends to the exact patch."""
    task = _task(6)
    exact = mechdiff.cross_patch(pair_other, task, sites="resid", progress=False)
    attr = mechdiff.attribute(pair_other, task, sites="resid", progress=False)
    ig = mechdiff.attribute(pair_other, task, sites="resid", method="integrated_gradients",
                            steps=32, progress=False)
    # measured: tangent 1.8 off (layer 0: the two embeddings are far apart); IG, 32 steps: 2e-4
    # (8 steps: 0.07; the straight path between the embeddings crosses sharp LayerNorm regions)
    assert float((attr.scores - exact.scores).abs().max()) > 0.3
    torch.testing.assert_close(ig.scores, exact.scores, atol=5e-3, rtol=0)


@pytest.mark.parametrize("sites", ["heads", "resid"])
def test_attribution_runs_under_torchs_flop_counter(pair_other, sites):
    """FlopCounterMode's module tracker refuses ``torch.autograd.grad`` on a leaf passed into a
    module (residual IG's suffix runs): every site kind must run there, with the same scores."""
    from torch.utils.flop_counter import FlopCounterMode

    task = _task(3)
    kw = {"sites": sites, "method": "integrated_gradients", "steps": 2, "progress": False}
    with FlopCounterMode(display=False) as counter:
        counted = mechdiff.attribute(pair_other, task, **kw)
    torch.testing.assert_close(counted.scores, mechdiff.attribute(pair_other, task, **kw).scores)
    assert counter.get_total_flops() > 0


def test_integrated_gradients_completeness(pair_other):
    """Sundararajan et al.'s completeness: IG scores of all heads sum to the effect of the
    joint shift they integrate along (every layer's summed head deltas added at once)."""
    task = _task(4)
    ig = mechdiff.attribute(pair_other, task, sites="heads", method="integrated_gradients",
                            steps=32, progress=False)
    recv, donor = pair_other.base, pair_other.finetuned
    tok = task.tokenize(recv.tokenizer, n_ctx=32)
    _, dc = donor.run_with_cache(tok.tokens)
    _, rc = recv.run_with_cache(tok.tokens)
    hooks = []
    for layer in range(N_LAYERS):
        z = f"blocks.{layer}.attn.hook_z"
        shift = (torch.einsum("bthe,hed->btd", dc[z], donor.W_O[layer])
                 - torch.einsum("bthe,hed->btd", rc[z], recv.W_O[layer]))
        hooks.append((f"blocks.{layer}.hook_attn_out", lambda a, hook, s=shift: a + s))
    logits = recv.run_with_hooks(tok.tokens, fwd_hooks=hooks)
    idx = torch.arange(tok.n)
    last = logits[idx, tok.read_pos]
    joint = float((last[idx, tok.answer_ids] - last[idx, tok.wrong_ids]).mean())
    assert float(ig.effects.sum()) == pytest.approx(joint - float(ig.receiver.mean()), abs=2e-3)


@pytest.mark.parametrize("direction", ["ft->base", "base->ft"])
def test_planted_head_ranks_first(ckpts, direction):
    pair = mechdiff.load_pair(ckpts["base"], ckpts["head_last"], device="cpu")
    task = _task()
    attr = mechdiff.attribute(pair, task, sites="heads", direction=direction, progress=False)
    ig = mechdiff.attribute(pair, task, sites="heads", direction=direction,
                            method="integrated_gradients", steps=16, progress=False)
    for r in (attr, ig):
        assert r.top(1)[0].label == f"L{N_LAYERS - 1}H2"
        others = r.scores.clone()
        others[N_LAYERS - 1, 2] = 0
        assert others.abs().max() < 1e-5  # no other head's output differs
    # the only changed site: IG integrates the curvature the tangent misses
    assert abs(float(ig.scores[N_LAYERS - 1, 2]) - 1) < 1e-3
    assert abs(float(ig.scores[N_LAYERS - 1, 2]) - 1) < abs(float(attr.scores[N_LAYERS - 1, 2]) - 1)


def test_kl_tangent_overshoots_twice_and_integrated_gradients_fix_it(ckpts):
    """-KL(donor || model) is ~quadratic near the donor: the tangent at the receiver predicts
    twice the change; the midpoint rule integrates a quadratic exactly."""
    pair = mechdiff.load_pair(ckpts["base"], ckpts["head_last"], device="cpu")
    for metric in ("kl", "kl_all"):
        task = Task(random_prompts(4), metric=metric)
        attr = mechdiff.attribute(pair, task, sites="heads", progress=False)
        ig = mechdiff.attribute(pair, task, sites="heads", method="integrated_gradients",
                                steps=16, progress=False)
        assert float(attr.scores[N_LAYERS - 1, 2]) == pytest.approx(2.0, abs=0.15)
        assert float(ig.scores[N_LAYERS - 1, 2]) == pytest.approx(1.0, abs=1e-3)
        assert attr.donor.abs().max() < 1e-5 and (attr.receiver < 0).all()


def test_results_identical_whatever_the_prompt_batch_size(pair_other):
    task = _task(7)  # unequal lengths: batches have different widths
    for kind, method in (("heads", "attribution"), ("mlp", "integrated_gradients"),
                         ("resid", "integrated_gradients")):
        a = mechdiff.attribute(pair_other, task, sites=kind, method=method, steps=3,
                               positions="each", progress=False)
        b = mechdiff.attribute(pair_other, task, sites=kind, method=method, steps=3,
                               positions="each", prompt_batch_size=3, progress=False)
        torch.testing.assert_close(a.patched, b.patched, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-5, rtol=1e-5)
        # positions="all" is the sum over positions
        c = mechdiff.attribute(pair_other, task, sites=kind, method=method, steps=3,
                               progress=False)
        torch.testing.assert_close(c.scores, a.scores.sum(-1), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# 3. TransformerLens's single-model attribution patching


def test_single_model_equals_transformer_lens(ckpts):
    """TL 4.3 tools.analysis.attribution_patching (node granularity) scores
    (a_clean - a_corrupt) . d metric / d a on the corrupt run at attn.hook_z and hook_mlp_out,
    per position, averaged over pairs: attribute_single's effects, per position."""
    pair = mechdiff.load_pair(ckpts["base"], ckpts["base"], device="cpu")
    model = pair.base
    task = Task(random_prompts(4, lengths=(9, 9), seed=1), answers=["t1"] * 4,
                wrong_answers=["t2"] * 4, corrupted=random_prompts(4, lengths=(9, 9), seed=2))
    tok = task.tokenize(model.tokenizer, n_ctx=32)

    def metric(logits):  # TL scores one pair at a time
        return logits[0, -1, tok.answer_ids[0]] - logits[0, -1, tok.wrong_ids[0]]

    params = list(model.parameters())  # TL's tool needs a graph through the weights
    for p in params:
        p.requires_grad_(True)
    try:
        tl = tl_attr.attribution_patch(model, tok.tokens, tok.corrupted_tokens, metric).node_scores
    finally:
        for p in params:
            p.requires_grad_(False)
    heads = attribute_single(model, task, sites="heads", positions="each", progress=False)
    mlp = attribute_single(model, task, sites="mlp", positions="each", progress=False)
    width = tok.tokens.shape[1]  # 9 tokens + BOS
    expected_heads = torch.zeros(N_LAYERS, N_HEADS, width)
    expected_mlp = torch.zeros(N_LAYERS, width)
    for node, value in tl.items():
        if node.kind == "attn_head_out":
            expected_heads[node.layer, node.head, node.position] = value
        elif node.kind == "mlp_out":
            expected_mlp[node.layer, node.position] = value
    assert expected_heads.abs().max() > 0.1
    torch.testing.assert_close(heads.effects, expected_heads, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mlp.effects, expected_mlp, atol=1e-4, rtol=1e-4)
    summed = attribute_single(model, task, sites="heads", positions="all", progress=False)
    torch.testing.assert_close(summed.effects, expected_heads.sum(-1), atol=1e-4, rtol=1e-4)
    assert heads.direction == "clean->corrupted" and heads.provenance.finetuned is None


# --------------------------------------------------------------------------------------------
# 4. errors and hooks


def test_identical_pair_is_a_zero_gap_and_leaves_no_hooks(ckpts):
    pair = mechdiff.load_pair(ckpts["base"], ckpts["base"], device="cpu")
    pair.base(torch.tensor([[1, 2, 3]]))  # the bridge wires its own capture hooks on first use
    before = active_hooks(pair.base)
    for method in ("attribution", "integrated_gradients"):
        with pytest.raises(ZeroGapError, match="no gap"):
            mechdiff.attribute(pair, _task(), method=method, steps=2, progress=False)
    assert active_hooks(pair.base) == before


def test_hooks_removed_and_weights_frozen_after_an_exception(pair_other, monkeypatch):
    recv = pair_other.base  # ft->base
    for model in (pair_other.base, pair_other.finetuned):
        model(torch.tensor([[1, 2, 3]]))  # the bridge wires its own capture hooks on first use
    before = active_hooks(recv), active_hooks(pair_other.finetuned)
    real = mechdiff.patching.attribution.metric_values
    for kind in KINDS:
        for method, fail_at in (("attribution", 2), ("integrated_gradients", 3)):
            hooks_at_call: list[int] = []

            def boom(*args, fail_at=fail_at, hooks_at_call=hooks_at_call, **kwargs):
                # call 1: donor; then the receiver's gradient run (IG: after its plain forward)
                hooks_at_call.append(active_hooks(recv))
                if len(hooks_at_call) == fail_at:
                    raise RuntimeError("metric failed")
                return real(*args, **kwargs)

            monkeypatch.setattr(mechdiff.patching.attribution, "metric_values", boom)
            with pytest.raises(RuntimeError, match="metric failed"):
                mechdiff.attribute(pair_other, _task(), sites=kind, method=method,
                                   progress=False)
            if not (kind == "resid" and method == "integrated_gradients"):  # suffix runs: no hooks
                assert hooks_at_call[-1] > before[0]  # it failed with shift hooks attached
            assert (active_hooks(recv), active_hooks(pair_other.finetuned)) == before
    assert not any(p.requires_grad for p in recv.parameters())


def test_bad_arguments_are_refused_before_any_forward(pair_other, monkeypatch):
    def no_forward(*args, **kwargs):
        raise AssertionError("a forward ran before validation")

    monkeypatch.setattr(mechdiff._engine, "capture", no_forward)
    fn = unchecked(mechdiff.attribute)  # past jaxtyping's Literal checks, to the library's own
    with pytest.raises(SiteError, match="unknown site kind"):
        fn(pair_other, _task(), sites="neurons", progress=False)
    with pytest.raises(OptionError, match="method"):
        fn(pair_other, _task(), method="shapley", progress=False)
    with pytest.raises(OptionError, match="steps"):
        fn(pair_other, _task(), method="integrated_gradients", steps=0, progress=False)
    with pytest.raises(OptionError, match="direction"):
        fn(pair_other, _task(), direction="sideways", progress=False)
    with pytest.raises(PromptError, match="context"):
        fn(pair_other, Task([" ".join(["t1"] * 40)], answers=["t1"], wrong_answers=["t2"]),
           progress=False)
    with pytest.raises(PromptError, match="corrupted"):
        attribute_single(pair_other.base, _task(), progress=False)


def test_save_load_roundtrip_keeps_the_method(pair_other, tmp_path):
    r = mechdiff.attribute(pair_other, _task(), sites="heads", method="integrated_gradients",
                           steps=2, progress=False)
    back = mechdiff.PatchResult.load(r.save(tmp_path / "r"))
    torch.testing.assert_close(back.scores, r.scores)
    torch.testing.assert_close(back.patched, r.patched)
    assert back.method == "integrated_gradients(steps=2)" and back.provenance == r.provenance
    exact = mechdiff.cross_patch(pair_other, _task(), sites="mlp", progress=False)
    assert mechdiff.PatchResult.load(exact.save(tmp_path / "e")).method == "exact"
