"""LoRA adapters are checked against the base they are merged into: the recorded base (a mismatch
needs ``allow_adapter_mismatch=True``) and the shapes of every adapter tensor (a mismatch cannot be
merged at all). A valid adapter, including Conv1D, embedding and fully saved modules, merges to
exactly what peft merges."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import mechdiff
from mechdiff.errors import CheckpointError, IncompatibleModelsError, OptionError
from mechdiff.loading import load_model

peft = pytest.importorskip("peft")


def _adapter(base: Path, out: Path, *, seed: int = 3, **lora) -> tuple[Path, torch.nn.Module]:
    """An adapter trained (randomly initialised) on ``base``; also the model peft merges."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(base))
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **lora)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = peft.get_peft_model(hf, config)
    model.save_pretrained(out)
    return out, model.merge_and_unload().eval()


@pytest.fixture(scope="module")
def gpt2_adapter(gpt2_dir, tmp_path_factory):
    return _adapter(gpt2_dir, tmp_path_factory.mktemp("lora") / "adapter",
                    target_modules=["c_attn", "wte"], fan_in_fan_out=True,
                    modules_to_save=["lm_head"])


def _ids() -> torch.Tensor:
    return torch.randint(0, 60, (2, 8), generator=torch.Generator().manual_seed(5))


def _rewrite_config(adapter: Path, dst: Path, **changes) -> Path:
    shutil.copytree(adapter, dst)
    config = json.loads((dst / "adapter_config.json").read_text())
    for k, v in changes.items():
        if v is None:
            config.pop(k, None)
        else:
            config[k] = v
    (dst / "adapter_config.json").write_text(json.dumps(config))
    return dst


def test_valid_adapter_merges_to_what_peft_merges(gpt2_dir, gpt2_adapter):
    adapter, merged = gpt2_adapter  # Conv1D (fan_in_fan_out), embedding and modules_to_save
    model, info = load_model(adapter, base=gpt2_dir, device="cpu", processing="none")
    assert info.model_id == f"{gpt2_dir}+lora:{adapter}"
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()), merged(_ids()).logits, atol=1e-4, rtol=1e-4)


def test_gqa_linear_adapter_passes_the_shape_check(tmp_path, models):
    base = models.save(models.random("llama"), tmp_path / "llama")  # k_proj: 64 -> 32
    adapter, merged = _adapter(base, tmp_path / "adapter", target_modules=["k_proj", "o_proj"])
    model, _ = load_model(adapter, base=base, device="cpu", processing="none")
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()), merged(_ids()).logits, atol=1e-4, rtol=1e-4)


def test_adapter_of_another_base_is_refused_unless_allowed(gpt2_adapter, tmp_path, models,
                                                           monkeypatch):
    adapter, _ = gpt2_adapter
    other = models.save(models.random("gpt2", seed=9), tmp_path / "other")
    with monkeypatch.context() as m:
        def boom(*a, **k):
            raise AssertionError("loaded before the adapter was checked")

        m.setattr(mechdiff.loading.pair.TransformerBridge, "boot_transformers", boom)
        m.setattr("transformers.AutoModelForCausalLM.from_pretrained", boom)
        with pytest.raises(IncompatibleModelsError, match=r"was trained on .*base.* but it is being "
                                                          r"merged into .*other.*allow_adapter_mismatch"
                                                          r"=True \(CLI: --allow-adapter-mismatch\)"):
            mechdiff.load_pair(other, adapter, device="cpu")
    pair = mechdiff.load_pair(other, adapter, device="cpu", processing="none",
                              allow_adapter_mismatch=True)
    assert pair.finetuned_id.startswith(str(other))


def test_moved_base_needs_the_flag(gpt2_dir, gpt2_adapter, tmp_path, no_boot):
    adapter, _ = gpt2_adapter
    moved = shutil.copytree(gpt2_dir, tmp_path / "moved")
    with pytest.raises(IncompatibleModelsError, match="was trained on"):
        load_model(adapter, base=moved, device="cpu")
    gone = _rewrite_config(adapter, tmp_path / "gone", base_model_name_or_path="/nowhere/base")
    with pytest.raises(IncompatibleModelsError, match=r"'/nowhere/base' \(no longer there\)"):
        load_model(gone, base=gpt2_dir, device="cpu")


def test_adapter_without_a_recorded_base(gpt2_dir, gpt2_adapter, tmp_path, no_boot):
    adapter, _ = gpt2_adapter
    anon = _rewrite_config(adapter, tmp_path / "anon", base_model_name_or_path=None)
    with pytest.raises(IncompatibleModelsError, match="records no base model"):
        load_model(anon, base=gpt2_dir, device="cpu")


def test_adapter_that_does_not_fit_is_refused_even_when_allowed(gpt2_dir, tmp_path, models,
                                                                 forbid_loading):
    narrow = models.save(models.random("gpt2", d_mlp=96), tmp_path / "narrow")
    raw, _ = _adapter(narrow, tmp_path / "raw", target_modules=["c_fc"], fan_in_fan_out=True)
    adapter = _rewrite_config(raw, tmp_path / "adapter", base_model_name_or_path=str(gpt2_dir))
    forbid_loading()
    for allow in (False, True):
        with pytest.raises(IncompatibleModelsError,
                           match=r"does not fit base .*c_fc\.lora_B\.weight \[96, 4\]: the base's "
                                 r"transformer\.h\.0\.mlp\.c_fc has output size 128"):
            load_model(adapter, base=gpt2_dir, device="cpu", allow_adapter_mismatch=allow)


def test_adapter_targeting_a_module_the_base_lacks(gpt2_dir, gpt2_adapter, tmp_path, no_boot):
    from safetensors.torch import load_file, save_file

    adapter, _ = gpt2_adapter
    bad = shutil.copytree(adapter, tmp_path / "bad")
    sd = load_file(bad / "adapter_model.safetensors")
    sd["base_model.model.transformer.h.5.attn.c_attn.lora_A.weight"] = torch.zeros(4, 64)
    save_file(sd, bad / "adapter_model.safetensors")
    with pytest.raises(IncompatibleModelsError, match=r"the base has no module transformer\.h\.5"):
        load_model(bad, base=gpt2_dir, device="cpu")


def test_not_a_lora_adapter(gpt2_dir, gpt2_adapter, tmp_path, no_boot):
    adapter, _ = gpt2_adapter
    prefix = _rewrite_config(adapter, tmp_path / "prefix", peft_type="PREFIX_TUNING")
    with pytest.raises(CheckpointError, match="'PREFIX_TUNING' adapter; mechdiff merges LoRA"):
        load_model(prefix, base=gpt2_dir, device="cpu")
    empty = shutil.copytree(adapter, tmp_path / "empty")
    (empty / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no adapter weights"):
        load_model(empty, base=gpt2_dir, device="cpu")
    listed = shutil.copytree(adapter, tmp_path / "listed")
    (listed / "adapter_config.json").write_text("[]")
    with pytest.raises(CheckpointError, match="must be a JSON object"):
        load_model(listed, base=gpt2_dir, device="cpu")


def test_adapter_needs_a_full_base(gpt2_dir, gpt2_adapter, no_boot):
    adapter, _ = gpt2_adapter
    with pytest.raises(OptionError, match="pass the base it was trained on"):
        load_model(adapter, device="cpu")
    with pytest.raises(CheckpointError, match="not a bridge or another adapter"):
        load_model(adapter, base=adapter, device="cpu")
    with pytest.raises(CheckpointError, match="is a LoRA adapter; a pair's base is a full model"):
        mechdiff.load_pair(adapter, gpt2_dir, device="cpu")
