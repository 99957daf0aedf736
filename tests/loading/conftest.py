"""Tiny random checkpoints of every supported family (seconds), built on the fly; square shapes on
request. Every weight is perturbed (LayerNorm gains and biases too), so folding and centring have
something to get wrong."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers
from support import make_tokenizer

import mechdiff

D_MODEL, N_LAYERS, N_HEADS, N_CTX = 64, 2, 4, 32
VOCAB = 62  # the words of support.make_tokenizer
SHAPES = {"plain": (VOCAB, 128), "square_vocab": (D_MODEL, 128), "square_mlp": (VOCAB, D_MODEL)}
"""Shape name -> (vocabulary size, MLP width): vocab == d_model, d_mlp == d_model are the cases
TransformerLens 4.3 processes wrongly."""


def family_config(family: str, vocab: int, d_mlp: int) -> transformers.PretrainedConfig:
    T = transformers
    common = {"vocab_size": vocab, "bos_token_id": 61, "eos_token_id": 61, "pad_token_id": 60}
    llama_like = {"hidden_size": D_MODEL, "intermediate_size": d_mlp,
                  "num_hidden_layers": N_LAYERS, "num_attention_heads": N_HEADS,
                  "max_position_embeddings": N_CTX, **common}
    gqa = {**llama_like, "num_key_value_heads": 2}
    return {
        "gpt2": lambda: T.GPT2Config(n_embd=D_MODEL, n_layer=N_LAYERS, n_head=N_HEADS,
                                     n_positions=N_CTX, n_inner=d_mlp, **common),
        "llama": lambda: T.LlamaConfig(**gqa, tie_word_embeddings=False),
        "mistral": lambda: T.MistralConfig(**gqa),
        "qwen2": lambda: T.Qwen2Config(**gqa),
        "qwen3": lambda: T.Qwen3Config(**gqa, head_dim=D_MODEL // N_HEADS),
        "gpt_neox": lambda: T.GPTNeoXConfig(**llama_like),
        "gemma": lambda: T.GemmaConfig(**gqa, head_dim=D_MODEL // N_HEADS),
        "gemma2": lambda: T.Gemma2Config(**gqa, head_dim=D_MODEL // N_HEADS),
        "opt": lambda: T.OPTConfig(hidden_size=D_MODEL, ffn_dim=d_mlp, num_hidden_layers=N_LAYERS,
                                   num_attention_heads=N_HEADS, max_position_embeddings=N_CTX,
                                   word_embed_proj_dim=D_MODEL, **common),
        "phi": lambda: T.PhiConfig(**llama_like),
        "phi3": lambda: T.Phi3Config(**gqa),
        "olmo": lambda: T.OlmoConfig(**llama_like),
    }[family]()


def random_model(family: str, *, vocab: int = VOCAB, d_mlp: int = 128, seed: int = 0,
                 **overrides) -> transformers.PreTrainedModel:
    cfg = family_config(family, vocab, d_mlp)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(cfg)
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 2:
                    p.normal_(0, 0.2)
                else:  # LayerNorm gains/biases and linear biases away from 1 and 0
                    p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def save_dir(model: transformers.PreTrainedModel, path: Path, **save_kwargs) -> Path:
    model.save_pretrained(path, **save_kwargs)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def forbid_loading(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to fail the test if any model is booted or weights are read by transformers from
    then on (checks must come first)."""

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the checks refused the input")

    def forbid() -> None:
        monkeypatch.setattr(mechdiff.loading.pair.TransformerBridge, "boot_transformers", boom)
        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)

    return forbid


@pytest.fixture
def no_boot(forbid_loading: Callable[[], None]) -> None:
    """Fail the test if any model is booted or weights are read by transformers."""
    forbid_loading()


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_dir(random_model("gpt2"), tmp_path_factory.mktemp("gpt2") / "base")


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``family_dir(family, shape="plain", seed=0)``: a saved checkpoint, built once."""
    cache: dict[tuple[str, str, int], Path] = {}

    def make(family: str, shape: str = "plain", seed: int = 0) -> Path:
        key = (family, shape, seed)
        if key not in cache:
            vocab, d_mlp = SHAPES[shape]
            path = tmp_path_factory.mktemp(f"{family}-{shape}-{seed}")
            cache[key] = save_dir(random_model(family, vocab=vocab, d_mlp=d_mlp, seed=seed), path)
        return cache[key]

    return make


def hf_logits(path: Path, tokens: torch.Tensor) -> torch.Tensor:
    """``transformers``' own logits (eager attention, as the bridge uses)."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path),
                                                              attn_implementation="eager")
    with torch.no_grad():
        return model.eval()(tokens).logits


@pytest.fixture(scope="session")
def models() -> SimpleNamespace:
    """The helpers above, for test modules (a conftest cannot be imported by name)."""
    return SimpleNamespace(random=random_model, save=save_dir, hf_logits=hf_logits,
                           config=family_config, SHAPES=SHAPES, VOCAB=VOCAB, D_MODEL=D_MODEL)
