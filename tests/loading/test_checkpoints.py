"""Checkpoints are checked before use: the tensors a checkpoint holds against the ones its
architecture expects, the family, ``config.json``, shards, truncation, hub names. Each refusal
comes before any model is booted (``no_boot``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from support import make_tokenizer

import mechdiff
from mechdiff.errors import CheckpointError, IncompatibleModelsError
from mechdiff.loading import load_model


def _edit_weights(src: Path, dst: Path, edit) -> Path:
    """Copy a checkpoint directory and rewrite its state dict with ``edit(sd)``."""
    shutil.copytree(src, dst)
    sd = load_file(dst / "model.safetensors")
    edit(sd)
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def _ids() -> torch.Tensor:
    return torch.randint(0, 60, (2, 9), generator=torch.Generator().manual_seed(4))


# ------------------------------------------------------------------------------ tensors


def test_missing_tensor_is_listed_before_loading(gpt2_dir, tmp_path, no_boot):
    bad = _edit_weights(gpt2_dir, tmp_path / "bad",
                        lambda sd: sd.pop("transformer.h.1.mlp.c_fc.weight"))
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) missing: transformer\.h\.1\.mlp\."
                                              r"c_fc\.weight.*initialised at random"):
        load_model(bad, device="cpu")
    with pytest.raises(CheckpointError, match="missing"):
        mechdiff.load_pair(gpt2_dir, bad, device="cpu")


def test_unexpected_and_misshapen_tensors_are_listed(gpt2_dir, tmp_path, no_boot):
    def edit(sd):
        sd["transformer.h.7.attn.c_attn.weight"] = torch.zeros(64, 192)
        sd["transformer.wpe.weight"] = torch.zeros(16, 64)

    bad = _edit_weights(gpt2_dir, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError) as err:
        load_model(bad, device="cpu")
    msg = str(err.value)
    assert "1 tensor(s) unexpected: transformer.h.7.attn.c_attn.weight" in msg
    assert "1 tensor(s) with the wrong shape: transformer.wpe.weight [16, 64] (expected [32, 64])" in msg


def test_untied_lm_head_must_be_present_tied_may_be_absent(tmp_path, models, no_boot):
    untied = models.save(models.random("llama"), tmp_path / "untied")  # tie_word_embeddings=False
    bad = _edit_weights(untied, tmp_path / "no_head", lambda sd: sd.pop("lm_head.weight"))
    with pytest.raises(CheckpointError, match=r"missing: lm_head\.weight"):
        load_model(bad, device="cpu")
    # The same tensor is legitimately absent when the config ties it to the embedding.
    tied = models.save(models.random("llama", tie_word_embeddings=True), tmp_path / "tied")
    assert "lm_head.weight" not in load_file(tied / "model.safetensors")
    from mechdiff.loading.checkpoints import check_checkpoint

    assert check_checkpoint(tied).model_type == "llama"


def test_truncated_weights_are_refused_before_loading(gpt2_dir, tmp_path, no_boot):
    bad = shutil.copytree(gpt2_dir, tmp_path / "bad")
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="cannot load model .* is truncated"):
        load_model(bad, device="cpu")


def test_a_legacy_gpt2_layout_loads_like_transformers(gpt2_dir, tmp_path, models):
    """Hub GPT-2 checkpoints store keys without the ``transformer.`` prefix and carry ``attn.bias``
    mask buffers; transformers renames and ignores them, and so must the check."""

    def edit(sd):
        for k in list(sd):
            sd[k.removeprefix("transformer.")] = sd.pop(k)
        for layer in range(2):
            sd[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))

    legacy = _edit_weights(gpt2_dir, tmp_path / "legacy", edit)
    model, _ = load_model(legacy, device="cpu", processing="none")
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()), models.hf_logits(gpt2_dir, _ids()))


# ------------------------------------------------------------------------------ formats


def test_sharded_checkpoint_loads_and_is_checked(gpt2_dir, tmp_path, models, no_boot):
    sharded = models.save(models.random("gpt2"), tmp_path / "sharded", max_shard_size="60KB")
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and not (sharded / "model.safetensors").exists()
    from mechdiff.loading.checkpoints import check_checkpoint

    assert len(check_checkpoint(sharded).shapes) == len(index["weight_map"])
    (sharded / shards[-1]).unlink()
    with pytest.raises(CheckpointError, match=f"1 of {len(shards)} shards .* missing: {shards[-1]}"):
        load_model(sharded, device="cpu")


def test_sharded_checkpoint_computes_what_the_single_file_computes(gpt2_dir, tmp_path, models):
    sharded = models.save(models.random("gpt2"), tmp_path / "sharded", max_shard_size="60KB")
    model, _ = load_model(sharded, device="cpu", processing="none")
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()), models.hf_logits(gpt2_dir, _ids()))


def test_index_that_disagrees_with_its_shards(tmp_path, models, no_boot):
    sharded = models.save(models.random("gpt2"), tmp_path / "sharded", max_shard_size="60KB")
    index_file = sharded / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["transformer.h.0.ln_1.weight"] = sorted(set(index["weight_map"].values()))[-1]
    index_file.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="does not hold the tensors"):
        load_model(sharded, device="cpu")


def test_pytorch_bin_checkpoint_loads_and_is_checked(gpt2_dir, tmp_path, models, no_boot):
    binary = shutil.copytree(gpt2_dir, tmp_path / "bin")
    sd = load_file(binary / "model.safetensors")
    (binary / "model.safetensors").unlink()
    sd.pop("transformer.ln_f.bias")
    torch.save(sd, binary / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"missing: transformer\.ln_f\.bias"):
        load_model(binary, device="cpu")


def test_pytorch_bin_checkpoint_computes_what_transformers_computes(gpt2_dir, tmp_path, models):
    binary = shutil.copytree(gpt2_dir, tmp_path / "bin")
    torch.save(load_file(binary / "model.safetensors"), binary / "pytorch_model.bin")
    (binary / "model.safetensors").unlink()
    model, _ = load_model(binary, device="cpu", processing="none")
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()), models.hf_logits(gpt2_dir, _ids()))


# ------------------------------------------------------------------------------ config and family


def _with_config(src: Path, dst: Path, config) -> Path:
    shutil.copytree(src, dst)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_bert_config_with_gpt2_weights_is_not_a_causal_lm(gpt2_dir, tmp_path, no_boot):
    from transformers import BertConfig

    bert = _with_config(gpt2_dir, tmp_path / "bert", BertConfig().to_dict())
    with pytest.raises(CheckpointError, match="not a causal language model.*'bert'"):
        load_model(bert, device="cpu")
    with pytest.raises(CheckpointError, match="not a causal language model"):
        mechdiff.load_pair(bert, bert, device="cpu")


def test_unsupported_causal_lm_family_is_refused(gpt2_dir, tmp_path, no_boot):
    from transformers import BloomConfig

    bloom = _with_config(gpt2_dir, tmp_path / "bloom", BloomConfig().to_dict())
    with pytest.raises(CheckpointError, match="'bloom' model, a causal LM family mechdiff does "
                                              "not support.*gpt2.*llama"):
        load_model(bloom, device="cpu")


def test_post_layer_norm_opt_is_refused_by_name(gpt2_dir, tmp_path, no_boot):
    """OPT is supported, but not its post-LN layout (facebook/opt-350m): TL's bridge fails on it
    with an untyped error, so the config is refused before any weight is read."""
    from transformers import OPTConfig

    opt = _with_config(gpt2_dir, tmp_path / "opt", {
        **OPTConfig(do_layer_norm_before=False).to_dict(), "architectures": ["OPTForCausalLM"]})
    with pytest.raises(CheckpointError, match="post-layer-norm OPT"):
        load_model(opt, device="cpu")


def test_a_head_other_than_the_lm_head_is_refused(gpt2_dir, tmp_path, no_boot):
    config = json.loads((gpt2_dir / "config.json").read_text())
    config["architectures"] = ["GPT2ForSequenceClassification"]
    bad = _with_config(gpt2_dir, tmp_path / "cls", config)
    with pytest.raises(CheckpointError, match="only as GPT2LMHeadModel"):
        load_model(bad, device="cpu")


@pytest.mark.parametrize(("content", "words"), [
    ("[1, 2, 3]", "must be a JSON object, but it holds a list"),
    ('"gpt2"', "must be a JSON object, but it holds a str"),
    ("{ not json", "is corrupt"),
    (b"\xff\xfe{}", "is corrupt"),
    ("{}", "has no model_type"),
    ('{"model_type": "gpt2", "architectures": "GPT2LMHeadModel"}', "architectures must be a list"),
])
def test_unusable_config_json_is_a_checkpoint_error(gpt2_dir, tmp_path, no_boot, content, words):
    bad = shutil.copytree(gpt2_dir, tmp_path / "bad")
    target = bad / "config.json"
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CheckpointError, match=words):
        load_model(bad, device="cpu")


def test_config_transformers_cannot_build(gpt2_dir, tmp_path, no_boot):
    config = json.loads((gpt2_dir / "config.json").read_text())
    config["n_head"] = 5  # 64 is not divisible by 5
    bad = _with_config(gpt2_dir, tmp_path / "bad", config)
    with pytest.raises(CheckpointError, match="does not describe a model transformers can build"):
        load_model(bad, device="cpu")


def test_missing_tokenizer_is_refused_before_loading(gpt2_dir, tmp_path, no_boot):
    bad = shutil.copytree(gpt2_dir, tmp_path / "bad")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (bad / f).unlink()
    with pytest.raises(CheckpointError, match="has no tokenizer"):
        load_model(bad, device="cpu")


def test_pair_configs_are_compared_before_loading(gpt2_dir, tmp_path, models, no_boot):
    wider = models.save(models.random("gpt2", d_mlp=192), tmp_path / "wider")
    with pytest.raises(IncompatibleModelsError, match="n_inner: 128 vs 192"):
        mechdiff.load_pair(gpt2_dir, wider, device="cpu")


# ------------------------------------------------------------------------------ hub names


def _fake_hub_cache(root: Path, name: str, src: Path) -> Path:
    """A Hugging Face hub cache holding ``name`` as a snapshot of ``src``."""
    repo = root / f"models--{name.replace('/', '--')}"
    commit = "0" * 40
    shutil.copytree(src, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


def test_a_cached_hub_name_is_checked_and_loaded_offline(gpt2_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(_fake_hub_cache(tmp_path, "org/tiny", gpt2_dir)))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    model, info = load_model("org/tiny", device="cpu", processing="none")
    assert info.model_id == "org/tiny"
    assert model.tokenizer.get_vocab() == make_tokenizer().get_vocab()


def test_a_cached_hub_name_with_a_missing_tensor_is_refused(gpt2_dir, tmp_path, monkeypatch,
                                                           no_boot):
    import huggingface_hub.constants as hub

    bad = _edit_weights(gpt2_dir, tmp_path / "bad", lambda sd: sd.pop("transformer.wte.weight"))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(_fake_hub_cache(tmp_path / "hub", "org/bad", bad)))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match=r"missing: .*transformer\.wte\.weight"):
        load_model("org/bad", device="cpu")


def test_an_unknown_hub_name_offline_says_to_save_locally(tmp_path, monkeypatch, no_boot):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="save the model locally"):
        load_model("no-such-org/no-such-model", device="cpu")
