"""Bad input gets a typed error that says what to fix, before any expensive work; after any
exception both models carry no hooks. Also the LoRA-adapter path of ``load_pair``."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch
from support import make_model, random_prompts, save, unchecked

import mechdiff
from mechdiff import Task, _engine
from mechdiff.errors import (
    AnswerTokenError,
    CheckpointError,
    IncompatibleModelsError,
    MechdiffError,
    MetricError,
    MissingDependencyError,
    OptionError,
    PromptError,
)
from mechdiff.loading import active_hooks


def _task(n: int = 4, **kw) -> Task:
    return Task(random_prompts(n), answers=["t1"] * n, wrong_answers=["t2"] * n, **kw)


@pytest.fixture(scope="module")
def pair(ckpts):
    return mechdiff.load_pair(ckpts["base"], ckpts["other"], device="cpu")


# ------------------------------------------------------------------------------ checkpoints


def test_missing_directory(ckpts, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        mechdiff.load_pair(ckpts["base"], tmp_path / "nope", device="cpu")


def test_directory_without_config(ckpts, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        mechdiff.load_pair(tmp_path / "empty", ckpts["base"], device="cpu")


def test_corrupt_config(ckpts, tmp_path):
    bad = shutil.copytree(ckpts["base"], tmp_path / "bad")
    (bad / "config.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        mechdiff.load_pair(ckpts["base"], bad, device="cpu")


def test_corrupt_weights(ckpts, tmp_path):
    bad = shutil.copytree(ckpts["base"], tmp_path / "bad")
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="cannot load model"):
        mechdiff.load_pair(ckpts["base"], bad, device="cpu")


def test_no_weights(ckpts, tmp_path):
    bad = shutil.copytree(ckpts["base"], tmp_path / "bad")
    (bad / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weight files"):
        mechdiff.load_pair(ckpts["base"], bad, device="cpu")


def test_unreachable_hub_name(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="save the model locally"):
        mechdiff.load_pair("no-such-org/no-such-model", "no-such-org/no-such-model", device="cpu")


def test_mismatched_architecture_is_refused_before_loading(ckpts, monkeypatch):
    def no_boot(*a, **k):
        raise AssertionError("a model was loaded before the configs were compared")

    monkeypatch.setattr(mechdiff.loading.pair.TransformerBridge, "boot_transformers", no_boot)
    with pytest.raises(IncompatibleModelsError, match="n_layer: 3 vs 4"):
        mechdiff.load_pair(ckpts["base"], ckpts["deeper"], device="cpu")


def test_mismatched_vocabulary(ckpts):
    with pytest.raises(IncompatibleModelsError, match="1 only in base, 1 only in fine-tuned"):
        mechdiff.load_pair(ckpts["base"], ckpts["other_vocab"], device="cpu")


def test_mismatched_bridges(ckpts):
    from transformer_lens.model_bridge import TransformerBridge

    a = TransformerBridge.boot_transformers(str(ckpts["base"]), device="cpu")
    b = TransformerBridge.boot_transformers(str(ckpts["deeper"]), device="cpu")
    with pytest.raises(IncompatibleModelsError, match="n_layers: 3 vs 4"):
        mechdiff.load_pair(a, b)


def test_bad_processing_option(ckpts):
    with pytest.raises(OptionError, match="processing"):
        unchecked(mechdiff.load_pair)(ckpts["base"], ckpts["base"], processing="folded")


# ------------------------------------------------------------------------------ prompts, answers


def test_empty_prompt_list():
    with pytest.raises(PromptError, match="empty"):
        Task([])
    with pytest.raises(PromptError, match="prompt 1 is empty"):
        Task(["t1", []])


def test_prompt_file_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(PromptError, match="empty"):
        Task.from_file(tmp_path / "empty.txt")
    with pytest.raises(PromptError, match="does not exist"):
        Task.from_file(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "t1"\n')
    with pytest.raises(PromptError, match="cannot read"):
        Task.from_file(tmp_path / "bad.jsonl")


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


def test_answers_must_match_prompts():
    with pytest.raises(PromptError, match="answers has 1 entries but there are 2 prompts"):
        Task(["t1", "t2"], answers=["t1"])
    with pytest.raises(MetricError, match="needs answers and wrong_answers"):
        Task(["t1"], answers=["t1"], metric="logit_diff")


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


def test_every_error_is_a_mechdiff_error():
    for cls in (CheckpointError, IncompatibleModelsError, PromptError, AnswerTokenError,
                MetricError, MissingDependencyError, OptionError):
        assert issubclass(cls, MechdiffError)
    assert issubclass(OptionError, ValueError)


# ------------------------------------------------------------------------------ NaN, hooks


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
    with pytest.raises(MetricError, match="NaN/inf for the donor model"):
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


# ------------------------------------------------------------------------------ LoRA adapters


def test_lora_adapter_is_merged_into_a_copy_of_the_base(ckpts, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(ckpts["base"])
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], init_lora_weights=False,
                             fan_in_fan_out=True)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        lora = peft.get_peft_model(hf, config)
    lora.save_pretrained(tmp_path / "adapter")
    merged = lora.merge_and_unload().eval()

    pair = mechdiff.load_pair(ckpts["base"], tmp_path / "adapter", device="cpu",
                              processing="none")
    assert "lora" in pair.finetuned_id
    ids = Task(random_prompts(3, lengths=(7, 7))).tokenize(pair.tokenizer, n_ctx=32).tokens
    with torch.no_grad():
        ours = pair.finetuned(ids)
        ref = merged(ids).logits
        base = GPT2LMHeadModel.from_pretrained(ckpts["base"]).eval()(ids).logits
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    assert (ours - base).abs().max() > 1e-2  # the adapter changed something
    # The base side is untouched by the merge.
    torch.testing.assert_close(pair.base(ids), base, atol=1e-4, rtol=1e-4)


def test_lora_without_peft_says_what_to_install(ckpts, tmp_path, monkeypatch):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'mechdiff\[lora\]'"):
        mechdiff.load_pair(ckpts["base"], tmp_path / "adapter", device="cpu")
