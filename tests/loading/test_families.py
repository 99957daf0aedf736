"""Every supported family, on tiny random checkpoints with and without square shapes: the loaded
model computes what ``transformers`` computes (``"none"``: equal logits; ``"compat"``: equal up to a
per-position constant), the probe check leaves out steps exactly when TransformerLens's full
processing is wrong, and exact cross-model patching finds a planted MLP change."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.model_bridge import TransformerBridge

import mechdiff
from mechdiff import Task
from mechdiff.loading import SUPPORTED_FAMILIES, load_model
from mechdiff.loading.processing import declined_by_transformer_lens

FAMILIES = sorted(SUPPORTED_FAMILIES)
RTOL = 1e-4  # of the logit range, as the probe check
OUT_PROJ = ("mlp.c_proj.weight", "down_proj.weight", "dense_4h_to_h.weight", "fc2.weight")


def _tokens(n: int = 3, length: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 60, (n, length), generator=torch.Generator().manual_seed(seed))


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


def _scale(logits: torch.Tensor) -> float:
    return float((logits.amax(-1) - logits.amin(-1)).max())


def test_every_supported_family_is_tested(models):
    for family in FAMILIES:  # each builds a tiny model of the class mechdiff loads it as
        cfg = models.config(family, models.VOCAB, 128)
        assert cfg.model_type == family


@pytest.mark.parametrize("shape", ["plain", "square_vocab", "square_mlp"])
@pytest.mark.parametrize("family", FAMILIES)
def test_loaded_model_computes_what_transformers_computes(family, shape, family_dir, models):
    path = family_dir(family, shape)
    tokens = _tokens()
    ref = models.hf_logits(path, tokens)
    scale = _scale(ref)

    raw, info = load_model(path, device="cpu", processing="none")
    assert (info.processing, info.processing_skipped, info.probe) == ("none", (), None)
    with torch.no_grad():
        assert (raw(tokens) - ref).abs().max() <= 1e-5 * scale

    compat, info = load_model(path, device="cpu")
    assert info.processing == "compat" and info.probe.passed
    with torch.no_grad():
        assert (_centred(compat(tokens)) - _centred(ref)).abs().max() <= RTOL * scale

    # Steps are left out exactly when TransformerLens's unchecked processing is wrong.
    full = TransformerBridge.boot_transformers(str(path), device="cpu")
    declined = set(declined_by_transformer_lens(full))
    full.enable_compatibility_mode(disable_warnings=True)
    with torch.no_grad():
        full_error = (_centred(full(tokens)) - _centred(ref)).abs().max() / scale
    assert bool(set(info.processing_skipped) - declined) == bool(full_error > RTOL), (
        info.processing_skipped, float(full_error))


@pytest.mark.parametrize("family", FAMILIES)
def test_cross_patch_finds_a_planted_mlp_change(family, tmp_path, models):
    """The fine-tune differs from the base only in the last MLP's output projection: patching
    that MLP closes the whole gap, every other MLP and every head closes none of it."""
    base = models.random(family)
    finetuned = models.random(family)
    last = f".{base.config.num_hidden_layers - 1}."
    planted = [n for n, _ in finetuned.named_parameters() if last in n and n.endswith(OUT_PROJ)]
    assert len(planted) == 1, planted
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        w = finetuned.get_parameter(planted[0])
        w += 0.5 * torch.randn(w.shape, generator=g)
    pair = mechdiff.load_pair(models.save(base, tmp_path / "base"),
                              models.save(finetuned, tmp_path / "ft"), device="cpu")
    prompts = _tokens(6, 7, seed=2).tolist()  # token ids: one path for every tokenizer class
    task = Task(prompts, answers=[1] * 6, wrong_answers=[2] * 6)
    heads = mechdiff.cross_patch(pair, task, sites="heads", progress=False)
    mlp = mechdiff.cross_patch(pair, task, sites="mlp", progress=False)
    assert abs(mlp.gap) > 1e-2
    assert heads.scores.shape == (pair.n_layers, pair.n_heads)
    torch.testing.assert_close(heads.scores, torch.zeros_like(heads.scores), atol=1e-4, rtol=0)
    expected = torch.zeros(pair.n_layers)
    expected[-1] = 1.0
    torch.testing.assert_close(mlp.scores.float(), expected, atol=1e-4, rtol=0)
