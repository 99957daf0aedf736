"""Views computed from the models: attention patterns against transformers' own (no
TransformerLens), per-token KL and log-probability changes against a reference computed from
transformers' logits, the behaviour gap at each prompt's last token, and bad options refused before
any forward."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from support import random_prompts, unchecked
from transformers import GPT2LMHeadModel

from mechdiff import Task, cross_patch, load_pair
from mechdiff.errors import OptionError, ResultError
from mechdiff.gap import behaviour_gap
from mechdiff.pipeline import analyse_pair
from mechdiff.sites import Head
from mechdiff.views import PairViews, pair_views, top_heads
from mechdiff.views import pair as views_pair

N = 6


def _task(n: int = N, **kw) -> Task:
    return Task(random_prompts(n, seed=3), answers=["t1"] * n, wrong_answers=["t2"] * n,
                name="toy", **kw)


@pytest.fixture(scope="module")
def pair(ckpts):
    return load_pair(ckpts["base"], ckpts["head_last"])


def _hf(path: Path) -> GPT2LMHeadModel:
    return GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()


def _hf_run(path: Path, ids: list[int]):
    with torch.no_grad():
        out = _hf(path)(torch.tensor([ids]), output_attentions=True)
    return out.logits[0].float(), [a[0] for a in out.attentions]


def test_patterns_and_token_stats_match_transformers(pair, ckpts) -> None:
    task = _task()
    heads = [Head(2, 2), Head(0, 1)]
    views = pair_views(pair, task, label="toy", heads=heads, prompts=[0, 3])
    tokens = task.tokenize(pair.tokenizer, n_ctx=pair.n_ctx)
    assert views.prompt_indices == (0, 3) and views.heads == ("L2H2", "L0H1")
    for i, index in enumerate(views.prompt_indices):
        n = int(tokens.lengths[index])
        ids = tokens.tokens[index, :n].tolist()
        lb, att_b = _hf_run(ckpts["base"], ids)
        lf, att_f = _hf_run(ckpts["head_last"], ids)
        for h, head in enumerate(heads):
            torch.testing.assert_close(views.pattern(i, h, "base"), att_b[head.layer][head.head],
                                       atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(views.pattern(i, h, "finetuned"),
                                       att_f[head.layer][head.head], atol=1e-5, rtol=1e-4)
        lpb, lpf = lb.log_softmax(-1), lf.log_softmax(-1)
        kl = (lpf.exp() * (lpf - lpb)).sum(-1)
        torch.testing.assert_close(views.kl[i, :n], kl, atol=1e-4, rtol=1e-4)
        nxt = torch.tensor(ids[1:])
        gained = lpf[:-1].gather(-1, nxt[:, None])[:, 0] - lpb[:-1].gather(-1, nxt[:, None])[:, 0]
        torch.testing.assert_close(views.next_logprob_diff[i, : n - 1], gained, atol=1e-4,
                                   rtol=1e-4)
        assert math.isnan(float(views.next_logprob_diff[i, n - 1]))
        a, w = pair.tokenizer.convert_tokens_to_ids(["t1", "t2"])
        task_diff = (lf[:, a] - lf[:, w]) - (lb[:, a] - lb[:, w])
        torch.testing.assert_close(views.task_diff[i, :n], task_diff, atol=1e-4, rtol=1e-4)
        assert views.tokens[i] == tuple(pair.tokenizer.convert_ids_to_tokens(ids))
        # Past the prompt's own length nothing is defined.
        assert torch.isnan(views.kl[i, n:]).all()
        assert torch.isnan(views.base_pattern[i, :, n:]).all()


def test_last_token_values_are_the_behaviour_gap(pair) -> None:
    task = _task()
    gap = behaviour_gap(pair, task)
    views = pair_views(pair, task, label="toy", prompts=list(range(N)))
    last = views.lengths - 1
    rows = torch.arange(N)
    torch.testing.assert_close(views.task_diff[rows, last],
                               gap.finetuned_metric - gap.base_metric, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(views.kl[rows, last], gap.kl_final, atol=1e-4, rtol=1e-4)
    assert views.base_pattern is None and views.heads == ()


def test_default_prompts_are_those_the_models_disagree_on_most(pair) -> None:
    task = _task()
    gap = behaviour_gap(pair, task)
    views = pair_views(pair, task, label="toy", n_prompts=3)
    expected = (gap.finetuned_metric - gap.base_metric).abs().argsort(descending=True)[:3]
    assert list(views.prompt_indices) == expected.tolist()
    assert "largest |gap|" in views.chosen_by


def test_identical_models_show_no_difference(ckpts) -> None:
    same = load_pair(ckpts["base"], ckpts["base"])
    views = pair_views(same, _task(), label="same", heads=[Head(1, 0)], prompts=[1])
    n = int(views.lengths[0])
    assert float(views.kl[0, :n].abs().max()) < 1e-6
    assert float(views.next_logprob_diff[0, : n - 1].abs().max()) < 1e-5
    torch.testing.assert_close(views.base_pattern, views.finetuned_pattern, equal_nan=True)


def test_task_free_views_have_no_task_quantity(pair) -> None:
    views = pair_views(pair, Task(random_prompts(4, seed=1), name="free"), label="free")
    assert views.task_diff is None and views.task_quantity is None
    assert "KL" in views.chosen_by


def test_top_heads_find_the_planted_head(pair) -> None:
    task = _task()
    analysis = analyse_pair(pair, task, label="toy", sites=("heads",), progress=False)
    ranked = top_heads(analysis, 3)
    assert ranked[0].head == Head(2, 2)  # plant_head changed W_O of L2H2 only
    scores = [abs(r.score) for r in ranked]
    assert scores == sorted(scores, reverse=True)
    assert "exact patching" in ranked[0].source
    one = top_heads(analysis.exact["heads_base_to_ft"], 1)[0]
    assert one.head == Head(2, 2) and one.score == pytest.approx(
        float(analysis.exact["heads_base_to_ft"].scores[2, 2]))
    views = pair_views(pair, task, label="toy", heads=analysis, k=2)
    assert views.heads[0] == "L2H2" and len(views.heads) == 2
    assert views.head_scores[0] == pytest.approx(ranked[0].score)


def test_top_heads_of_a_per_position_result_take_the_largest_over_positions(pair) -> None:
    task = _task(3)
    result = cross_patch(pair, task, sites="heads", positions="each", progress=False)
    ranked = top_heads(result, 12)
    for r in ranked:  # slow reference
        column = result.scores[r.head.layer, r.head.head]
        assert abs(r.score) == pytest.approx(float(column.abs().max()))
    assert [abs(r.score) for r in ranked] == sorted((abs(r.score) for r in ranked), reverse=True)


def test_views_round_trip(pair, tmp_path: Path) -> None:
    views = pair_views(pair, _task(), label="toy", heads=[Head(2, 2)], prompts=[2, 0])
    loaded = PairViews.load(views.save(tmp_path / "v"))
    assert loaded.tokens == views.tokens and loaded.prompt_indices == (2, 0)
    assert loaded.provenance == views.provenance
    for name in ("kl", "next_logprob_diff", "task_diff", "base_pattern", "finetuned_pattern"):
        torch.testing.assert_close(getattr(loaded, name), getattr(views, name), equal_nan=True)


def test_bad_options_are_refused_before_any_forward(pair, monkeypatch) -> None:
    def no_forward(*a, **k):
        raise AssertionError("a forward ran before the options were checked")

    monkeypatch.setattr(views_pair, "_batch", no_forward)
    task = _task()
    cases = [
        (dict(heads=[Head(3, 0)]), "outside the model"),
        (dict(heads=[Head(0, 4)]), "outside the model"),
        (dict(heads=Head(0, 0)), "list of Head"),
        (dict(prompts=[N]), "indices into the task"),
        (dict(prompts=[]), "indices into the task"),
        (dict(n_prompts=0), "n_prompts"),
        (dict(label=""), "label"),
        (dict(heads=[(0, 1)]), "Head sites"),
    ]
    for kwargs, needle in cases:
        with pytest.raises(OptionError, match=needle):
            unchecked(pair_views)(pair, task, **({"label": "toy"} | kwargs))
    mlp = _fake_mlp_result(pair)
    with pytest.raises(OptionError, match="positive"):
        top_heads(mlp, 0)
    with pytest.raises(OptionError, match="no heads"):
        top_heads(mlp, 1)


def _fake_mlp_result(pair):
    from mechdiff.patching import PatchResult

    result = PatchResult(scores=torch.zeros(3), patched=torch.zeros(3, 2), receiver=torch.zeros(2),
                         donor=torch.ones(2), sites="mlp", dims=("layer",), direction="ft->base",
                         positions="all", provenance=pair.provenance(_task(2)))
    return result


def test_mismatched_views_are_refused(pair) -> None:
    views = pair_views(pair, _task(), label="toy", heads=[Head(0, 0)], prompts=[0])
    with pytest.raises(ResultError, match="token lists"):
        PairViews(**{**_fields(views), "tokens": (views.tokens[0][:-1],)})
    with pytest.raises(ResultError, match="one pattern per head"):
        PairViews(**{**_fields(views), "heads": ("L0H0", "L0H1"), "head_layers": (0, 0),
                     "head_indices": (0, 1), "head_scores": (1.0, 1.0)})
    with pytest.raises(ResultError, match="go together"):
        PairViews(**{**_fields(views), "task_quantity": None})


def _fields(views: PairViews) -> dict:
    import dataclasses

    return {f.name: getattr(views, f.name) for f in dataclasses.fields(views)}
