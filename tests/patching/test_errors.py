"""Patching on bad input: typed errors before any forward, NaN metrics reported, and no hooks left
on either model after any exception."""

from __future__ import annotations

import pytest
import torch
from support import make_model, random_prompts, save, unchecked

import mechdiff
from mechdiff import Task, _engine
from mechdiff.errors import AnswerTokenError, MetricError, OptionError, PromptError
from mechdiff.loading import active_hooks


def _task(n: int = 4, **kw) -> Task:
    return Task(random_prompts(n), answers=["t1"] * n, wrong_answers=["t2"] * n, **kw)


@pytest.fixture(scope="module")
def pair(ckpts):
    return mechdiff.load_pair(ckpts["base"], ckpts["other"], device="cpu")


def test_prompt_longer_than_context_is_refused_before_any_forward(pair, monkeypatch):
    def no_forward(*a, **k):
        raise AssertionError("a forward ran before the prompt length was checked")

    monkeypatch.setattr(_engine, "capture", no_forward)
    long = " ".join(["t3"] * 40)  # + BOS = 41 tokens; the models' context is 32
    task = Task([long, "t1 t2"], answers=["t1", "t1"], wrong_answers=["t2", "t2"])
    with pytest.raises(PromptError, match="prompt 0 is 41 tokens long but the model's context is 32"):
        mechdiff.cross_patch(pair, task, progress=False)
    with pytest.raises(PromptError, match="41 tokens"):
        mechdiff.behaviour_gap(pair, task)


def test_multi_token_answer(pair):
    task = Task(["t1 t2"], answers=["t3 t4"], wrong_answers=["t2"])
    with pytest.raises(AnswerTokenError, match=r"answers\[0\] = 't3 t4' is 2 tokens"):
        mechdiff.cross_patch(pair, task, progress=False)
    with pytest.raises(AnswerTokenError, match="not a token id"):
        mechdiff.cross_patch(pair, Task(["t1"], answers=[10_000], wrong_answers=[1]),
                             progress=False)


def test_corrupted_prompts_must_line_up(pair):
    task = Task(["t1 t2 t3"], answers=["t1"], wrong_answers=["t2"], corrupted=["t1 t2"])
    with pytest.raises(PromptError, match="line up token for token"):
        mechdiff.activation_patch(pair.base, task, progress=False)


def test_bad_options_are_typed(pair):
    with pytest.raises(OptionError, match="direction"):
        unchecked(mechdiff.cross_patch)(pair, _task(), direction="up", progress=False)
    with pytest.raises(OptionError, match="positions"):
        unchecked(mechdiff.cross_patch)(pair, _task(), positions="some", progress=False)
    with pytest.raises(OptionError, match="batch_size"):
        mechdiff.cross_patch(pair, _task(), batch_size=0, progress=False)


def _hooks_after_warmup(pair) -> tuple[int, int]:
    """Hook counts once each model has run (transformers installs its own output-capturing
    hooks on a model's first forward; those are not mechdiff's)."""
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        pair.base(ids)
        pair.finetuned(ids)
    return active_hooks(pair.base), active_hooks(pair.finetuned)


def test_nan_metric(ckpts, tmp_path):
    broken = make_model(0)
    with torch.no_grad():
        broken.transformer.h[1].mlp.c_fc.weight.fill_(float("nan"))
    pair = mechdiff.load_pair(ckpts["base"], save(broken, tmp_path / "nan"), device="cpu",
                              processing="none")
    before = _hooks_after_warmup(pair)
    with pytest.raises(MetricError, match=r"NaN/inf in the donor model \(prompts \[0, 1, 2"):
        mechdiff.cross_patch(pair, _task(), progress=False)
    with pytest.raises(MetricError, match="NaN/inf"):
        mechdiff.behaviour_gap(pair, _task())
    assert (active_hooks(pair.base), active_hooks(pair.finetuned)) == before


@pytest.mark.parametrize("where", ["capture", "suffix", "unembed"])
def test_no_hooks_left_after_an_exception(pair, monkeypatch, where):
    before = _hooks_after_warmup(pair)
    # capture: fails inside a block pre-hook, mid-forward, with hooks attached
    target = {"capture": "_strip_cache", "suffix": "_tile", "unembed": "unembed_columns"}[where]
    calls = {"n": 0}
    real = getattr(_engine, target)

    def boom(*a, **k):
        calls["n"] += 1
        if calls["n"] >= 2:
            raise RuntimeError("injected failure")
        return real(*a, **k)

    monkeypatch.setattr(_engine, target, boom)
    with pytest.raises(RuntimeError, match="injected failure"):
        mechdiff.cross_patch(pair, _task(), sites="heads", positions="each", progress=False)
    assert (active_hooks(pair.base), active_hooks(pair.finetuned)) == before
    monkeypatch.undo()
    mechdiff.cross_patch(pair, _task(), sites="mlp", progress=False)  # still usable
    assert (active_hooks(pair.base), active_hooks(pair.finetuned)) == before




def test_non_finite_values_name_the_prompts_not_flat_indices():
    """check_finite names the prompts along the given axis (it once listed the flattened
    (prompt, edge) index pairs of a [batch, edge] tensor as "prompts")."""
    from mechdiff.metrics import check_finite

    per_prompt = torch.zeros(5, 7)  # [batch, edge]
    per_prompt[3, 2] = per_prompt[3, 5] = float("inf")
    per_prompt[1, 0] = float("nan")
    with pytest.raises(MetricError, match=r"NaN/inf in an estimate \(prompts \[1, 3\]\)"):
        check_finite(per_prompt, "an estimate")
    vals = torch.zeros(2, 5)  # [circuit, batch]
    vals[1, 4] = float("nan")
    with pytest.raises(MetricError, match=r"\(prompts \[4\]\)"):
        check_finite(vals, "a circuit", prompt_dim=1)
    many = torch.full((12,), float("nan"))
    with pytest.raises(MetricError, match=r"prompts \[0, 1, 2, 3, 4, 5, 6, 7\] and 4 more"):
        check_finite(many, "x")
    check_finite(torch.zeros(3, 2), "finite values pass")
