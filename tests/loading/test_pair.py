"""Loading a pair: bad checkpoint directories, mismatched models and LoRA adapters get typed errors
that say what to fix, before any weights are loaded where the check allows."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch
from support import random_prompts, unchecked

import mechdiff
from mechdiff import Task
from mechdiff.errors import (
    CheckpointError,
    IncompatibleModelsError,
    MissingDependencyError,
    OptionError,
)


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


