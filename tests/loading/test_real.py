"""The real SmolLM2-135M (from the real-zoo cache, ``$MECHDIFF_CACHE/real``): its checkpoint passes
the checks, and "compat" processing is applied whole and keeps its logits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mechdiff.loading import load_model
from mechdiff.loading.checkpoints import check_checkpoint

_CACHE = os.environ.get("MECHDIFF_CACHE")
_BASES = sorted((Path(_CACHE) / "real").glob("*/base")) if _CACHE else []
needs_real = pytest.mark.skipif(not _BASES, reason="no real-zoo base in $MECHDIFF_CACHE/real")


@needs_real
def test_real_base_passes_the_checks_and_keeps_its_logits() -> None:
    from transformers import AutoModelForCausalLM

    base = _BASES[-1]
    ckpt = check_checkpoint(base)
    assert ckpt.model_type == "llama" and "lm_head.weight" not in ckpt.shapes  # tied
    model, info = load_model(base, device="cpu")
    assert info.processing_skipped == () and info.probe.relative_error < 1e-5
    ids = torch.randint(0, 49152, (2, 6), generator=torch.Generator().manual_seed(0))
    hf = AutoModelForCausalLM.from_pretrained(str(base), attn_implementation="eager").eval()
    with torch.no_grad():
        ref, ours = hf(ids).logits, model(ids)
    scale = (ref.amax(-1) - ref.amin(-1)).max()
    centred = (ours - ours.mean(-1, keepdim=True)) - (ref - ref.mean(-1, keepdim=True))
    assert centred.abs().max() <= 1e-4 * scale
