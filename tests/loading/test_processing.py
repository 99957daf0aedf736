"""Checked processing: the probe check, the search for the steps to leave out (with faults
injected into processing), one set of steps for both models of a pair, records in provenance,
bridges passed in, non-finite checkpoints, the global RNG."""

from __future__ import annotations

import pytest
import torch
from support import random_prompts
from transformer_lens.model_bridge import TransformerBridge

import mechdiff
from mechdiff import Task
from mechdiff.errors import IncompatibleModelsError, OptionError
from mechdiff.loading import (
    ProcessingError,
    load_info,
    load_model,
    load_pair,
    model_provenance,
    processing,
)
from mechdiff.loading.processing import compare, probe_rtol


def _ids() -> torch.Tensor:
    return torch.randint(0, 60, (2, 9), generator=torch.Generator().manual_seed(6))


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


def _task() -> Task:
    return Task(random_prompts(3), answers=["t1"] * 3, wrong_answers=["t2"] * 3)


# ------------------------------------------------------------------------------ the check


def test_probe_check_allows_a_constant_per_position_and_nothing_else():
    g = torch.Generator().manual_seed(0)
    raw = _centred(torch.randn(1, 8, 50, generator=g, dtype=torch.float64) * 4)
    shifted = raw + torch.arange(8.0, dtype=torch.float64)[None, :, None]
    assert compare(raw, _centred(shifted), torch.float32).error < 1e-12
    scale = float((raw.amax(-1) - raw.amin(-1)).max())
    nudged = raw.clone()
    nudged[0, 3, 7] += 2e-4 * scale  # twice the float32 tolerance, on one logit
    check = compare(raw, _centred(nudged), torch.float32)
    assert not check.passed and 1.5e-4 < check.relative_error < 2.5e-4
    assert compare(raw, raw + float("nan"), torch.float32).passed is False


def test_probe_tolerance_by_dtype(monkeypatch):
    assert probe_rtol(torch.float32) == probe_rtol(torch.float64) == 1e-4
    assert probe_rtol(torch.bfloat16) == 16 * 2.0**-7
    assert probe_rtol(torch.float16) == 16 * 2.0**-10
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert probe_rtol(torch.float32) == 16 * 2.0**-10


# ------------------------------------------------------------------------------ square shapes


@pytest.mark.parametrize(("family", "skipped"), [("gpt2", ("fold_ln",)),
                                                 ("llama", ("center_unembed",))])
def test_square_unembedding_pair_is_processed_alike_and_recorded(family, skipped, family_dir):
    """vocab == d_model: TransformerLens 4.3 folds (GPT-2) or centres (LLaMA) along the wrong axis;
    that step is left out of both models, and every result's provenance says so."""
    pair = load_pair(family_dir(family, "square_vocab", 0), family_dir(family, "square_vocab", 1),
                     device="cpu")
    assert pair.processing_skipped == skipped
    assert load_info(pair.base).processing_skipped == load_info(pair.finetuned).processing_skipped
    assert pair.provenance(_task()).processing_skipped == skipped
    assert model_provenance(pair.finetuned, _task()).processing_skipped == skipped
    assert f"skipped={list(skipped)}" in repr(pair)
    result = mechdiff.cross_patch(pair, _task(), sites="mlp", progress=False)
    assert result.provenance.processing_skipped == skipped


# ------------------------------------------------------------------------------ injected faults


def _faulty(monkeypatch, broken: str, *, only: str | None = None) -> list[str]:
    """Make processing change the model whenever step ``broken`` is applied (to models whose
    tokenizer path contains ``only``); return a log of the booted directories."""
    real_apply = processing.apply
    real_boot = TransformerBridge.boot_transformers
    boots: list[str] = []

    def apply(model, skip):
        model = real_apply(model, skip)
        if (broken == "*" or broken not in skip) and (only is None
                                                     or only in model.tokenizer.name_or_path):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05)
        return model

    def boot(name, **kwargs):
        boots.append(str(name))
        return real_boot(name, **kwargs)

    monkeypatch.setattr(processing, "apply", apply)
    monkeypatch.setattr(TransformerBridge, "boot_transformers", boot)
    return boots


def test_a_step_that_changes_the_model_is_found_and_left_out(gpt2_dir, monkeypatch, models):
    boots = _faulty(monkeypatch, "center_writing_weights")
    model, info = load_model(gpt2_dir, device="cpu")
    assert info.processing_skipped == ("center_writing_weights",) and info.probe.passed
    assert 2 <= len(boots) <= 6  # fresh raw copies for the search, bounded by the step count
    ref = models.hf_logits(gpt2_dir, _ids())
    with torch.no_grad():
        error = (_centred(model(_ids())) - _centred(ref)).abs().max()
    assert error <= 1e-4 * (ref.amax(-1) - ref.amin(-1)).max()


def test_a_step_one_side_cannot_take_is_left_out_of_both(family_dir, monkeypatch):
    ft = family_dir("gpt2", "plain", 1)
    _faulty(monkeypatch, "fold_value_biases", only=ft.name)
    pair = load_pair(family_dir("gpt2", "plain", 0), ft, device="cpu")
    assert pair.processing_skipped == ("fold_value_biases",)
    assert load_info(pair.base).processing_skipped == ("fold_value_biases",)


def test_a_model_no_processing_keeps_is_refused(gpt2_dir, monkeypatch):
    _faulty(monkeypatch, "*")
    with pytest.raises(ProcessingError, match="even with every step left out.*processing='none'"):
        load_model(gpt2_dir, device="cpu")
    model, info = load_model(gpt2_dir, device="cpu", processing="none")  # raw is still fine
    assert info.processing == "none"


def test_non_finite_checkpoint_cannot_be_checked(tmp_path, models):
    broken = models.random("gpt2")
    with torch.no_grad():
        broken.transformer.h[1].mlp.c_fc.weight.fill_(float("nan"))
    path = models.save(broken, tmp_path / "nan")
    with pytest.raises(ProcessingError, match="NaN/inf logits with its raw weights"):
        load_model(path, device="cpu")
    load_model(path, device="cpu", processing="none")


def test_loading_leaves_the_global_rng_alone(family_dir):
    path = family_dir("gpt2", "square_mlp")  # the search re-boots several times
    state = torch.random.get_rng_state()
    _, info = load_model(path, device="cpu")
    assert info.processing_skipped  # the search ran
    assert torch.equal(state, torch.random.get_rng_state())


def test_bfloat16_processing_passes_its_check(family_dir):
    model, info = load_model(family_dir("llama"), device="cpu", dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert info.probe.passed and info.probe.rtol == 16 * 2.0**-7 and info.processing_skipped == ()


def test_a_float64_model_is_told_compat_processing_is_float32_accurate(gpt2_dir):
    """TransformerLens 4.3 casts float64 weights to float32 to process them: the processed
    logits are float32-accurate (a review measured 4.2e-7 against transformers in float64,
    2.7e-15 unprocessed). Loading says so; 'none' keeps float64 exact and says nothing."""
    from transformers import AutoModelForCausalLM

    ids = _ids()
    with torch.no_grad():
        ref = _centred(AutoModelForCausalLM.from_pretrained(
            gpt2_dir, torch_dtype=torch.float64).eval()(ids).logits)
    with pytest.warns(UserWarning, match="processes weights in float32.*processing='none'"):
        processed, _ = load_model(gpt2_dir, device="cpu", dtype=torch.float64)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raw, _ = load_model(gpt2_dir, device="cpu", dtype=torch.float64, processing="none")
    with torch.no_grad():
        assert float((_centred(raw(ids)) - ref).abs().max()) < 1e-12
        err = float((_centred(processed(ids)) - ref).abs().max())
    assert 1e-12 < err < 1e-4 * float(ref.abs().max())  # float32 rounding, within the check


# ------------------------------------------------------------------------------ bridges passed in


def test_a_raw_bridge_passed_in_is_not_modified(gpt2_dir):
    raw = TransformerBridge.boot_transformers(str(gpt2_dir), device="cpu")
    with torch.no_grad():
        before = raw(_ids())
    model, info = load_model(raw)
    assert model is not raw and model.compatibility_mode and info.model_id == "<bridge>"
    assert not getattr(raw, "compatibility_mode", False)
    with torch.no_grad():
        assert torch.equal(raw(_ids()), before)
        torch.testing.assert_close(_centred(model(_ids())), _centred(before), atol=1e-4, rtol=0)
    same, _ = load_model(raw, processing="none")
    assert same is raw


def test_a_bridge_processed_outside_mechdiff_is_refused(gpt2_dir):
    outside = TransformerBridge.boot_transformers(str(gpt2_dir), device="cpu")
    outside.enable_compatibility_mode(disable_warnings=True)
    with pytest.raises(ProcessingError, match="outside mechdiff.*before enable_compatibility_mode"):
        load_model(outside)
    with pytest.raises(OptionError, match="already in compatibility mode but processing='none'"):
        load_pair(outside, outside, processing="none")


def test_bridges_mechdiff_loaded_are_reused_without_processing(family_dir, monkeypatch):
    a, info_a = load_model(family_dir("gpt2", "square_vocab", 0), device="cpu")
    b, _ = load_model(family_dir("gpt2", "square_vocab", 1), device="cpu",
                      skip=info_a.processing_skipped)

    def no_processing(*args, **kwargs):
        raise AssertionError("a loaded bridge was processed again")

    monkeypatch.setattr(processing, "apply", no_processing)
    pair = load_pair(a, b)
    assert pair.base is a and pair.finetuned is b
    assert pair.processing_skipped == ("fold_ln",) and pair.base_id == info_a.model_id
    with pytest.raises(OptionError, match="loaded with processing='compat'"):
        load_pair(a, b, processing="none")
    with pytest.raises(OptionError, match="asks to leave them out"):
        load_model(a, skip=["center_unembed"])


def test_a_loaded_bridge_and_a_directory_are_processed_alike(family_dir):
    a, _ = load_model(family_dir("gpt2", "plain", 0), device="cpu", skip=["center_unembed"])
    pair = load_pair(a, family_dir("gpt2", "plain", 1), device="cpu")
    assert pair.processing_skipped == ("center_unembed",)
    assert load_info(pair.finetuned).processing_skipped == ("center_unembed",)


def test_differently_processed_bridges_are_not_a_pair(family_dir):
    a, _ = load_model(family_dir("gpt2", "plain", 0), device="cpu", skip=["center_unembed"])
    b, _ = load_model(family_dir("gpt2", "plain", 1), device="cpu")
    with pytest.raises(IncompatibleModelsError, match=r"leaving out \['center_unembed'\] but the "
                                                      r"fine-tuned model needs \[\] left out"):
        load_pair(a, b)
