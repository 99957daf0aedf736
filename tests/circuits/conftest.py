"""Fixtures of the circuit tests: tiny random GPT-2 and GQA LLaMA checkpoints, and a small
LLaMA trained to do induction (built once per session, about 10-30 s on 2 cores)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # circuit_models, circuit_reference

from circuit_models import gpt2, induction_model, llama, save_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny checkpoints: ``gpt2`` (3 layers x 4 heads, biases), ``gpt2_b`` (another seed),
    ``llama`` (3 layers, 4 query heads sharing 2 key-value heads), ``llama_b``."""
    root = tmp_path_factory.mktemp("circuits")
    return {
        "gpt2": save_dir(gpt2(0), root / "gpt2"),
        "gpt2_b": save_dir(gpt2(1), root / "gpt2_b"),
        "llama": save_dir(llama(0), root / "llama"),
        "llama_b": save_dir(llama(1), root / "llama_b"),
    }


@pytest.fixture(scope="session")
def induction_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained induction LLaMA (see :func:`circuit_models.induction_model`)."""
    return save_dir(induction_model(), tmp_path_factory.mktemp("induction") / "model")
