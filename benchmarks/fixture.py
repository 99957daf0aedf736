"""The benchmark's model pair and prompts: a GPT-2-small-shaped base and a perturbed copy.

The pair is random (no hub is reachable), but every shape is GPT-2 small's: 12 layers x 12 heads,
d_model 768, n_ctx 1024 and the full 50,257-token vocabulary, so the unembedding costs what it
costs in the real model. The tokenizer is a ``tokenizers`` WordLevel vocabulary of 50,257 entries
(``t0`` ... ``t50255`` and ``<|endoftext|>`` as BOS/EOS/pad), saved next to the weights because
``TransformerBridge.boot_transformers`` reads it from the directory.

The "fine-tune" is the base plus Gaussian noise of 10% of each tensor's standard deviation, so the
two models are close, like a real fine-tune, and their behaviour gap is not zero. Seeds are explicit
and the global RNG state is restored after building.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

import mechdiff

VOCAB = 50257
N_LAYER, N_HEAD, N_EMBD, N_POSITIONS = 12, 12, 768, 1024
FORMAT = 1  # bump when the way the pair is built changes, so stale caches are rebuilt
SPEC = {"format": FORMAT, "vocab": VOCAB, "n_layer": N_LAYER, "n_head": N_HEAD, "n_embd": N_EMBD,
        "n_positions": N_POSITIONS, "seed": 0, "ft_noise": 0.1}


def build_pair_dirs(root: Path) -> tuple[Path, Path]:
    """Write (or reuse) ``root/base`` and ``root/finetuned``: HF model + tokenizer directories."""
    base_dir, ft_dir = root / "base", root / "finetuned"
    stamp = root / "spec.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == SPEC:
        return base_dir, ft_dir

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    vocab = {f"t{i}": i for i in range(VOCAB - 1)} | {eos: VOCAB - 1}
    raw = Tokenizer(models.WordLevel(vocab, unk_token=eos))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=eos, eos_token=eos, pad_token=eos, unk_token=eos
    )
    cfg = GPT2Config(n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, n_positions=N_POSITIONS,
                     vocab_size=VOCAB)
    with torch.random.fork_rng():  # HF initialises from the global RNG; leave it as it was
        torch.manual_seed(SPEC["seed"])
        base = GPT2LMHeadModel(cfg).eval()
    ft = GPT2LMHeadModel(cfg).eval()
    ft.load_state_dict(base.state_dict())
    gen = torch.Generator().manual_seed(SPEC["seed"] + 1)
    with torch.no_grad():
        for p in ft.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * (SPEC["ft_noise"] * float(p.std())))
    for model, path in ((base, base_dir), (ft, ft_dir)):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    stamp.write_text(json.dumps(SPEC))
    return base_dir, ft_dir


@dataclass(frozen=True)
class Prompts:
    """``n`` equal-length token-id prompts with answers, wrong answers and corrupted versions."""

    clean: torch.Tensor  # [n, t]
    corrupted: torch.Tensor  # [n, t]: clean with the second half replaced by other tokens
    answers: torch.Tensor  # [n]
    wrong: torch.Tensor  # [n]

    @property
    def shape(self) -> str:
        n, t = self.clean.shape
        return f"{n}x{t}"

    def cross_task(self) -> mechdiff.Task:
        return mechdiff.Task(prompts=self.clean.tolist(), answers=self.answers.tolist(),
                             wrong_answers=self.wrong.tolist(), name=f"bench{self.shape}")

    def corrupted_task(self) -> mechdiff.Task:
        return mechdiff.Task(prompts=self.clean.tolist(), answers=self.answers.tolist(),
                             wrong_answers=self.wrong.tolist(), corrupted=self.corrupted.tolist(),
                             name=f"bench{self.shape}-corrupted")


def make_prompts(n: int, t: int, seed: int = 0) -> Prompts:
    """Random token-id prompts (no BOS; ``<|endoftext|>`` never appears inside a prompt)."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB - 1, (n, t), generator=gen)
    corrupted = clean.clone()
    corrupted[:, t // 2:] = torch.randint(0, VOCAB - 1, (n, t - t // 2), generator=gen)
    answers = torch.randint(0, VOCAB - 1, (n,), generator=gen)
    wrong = (answers + 1 + torch.randint(0, VOCAB - 2, (n,), generator=gen)) % (VOCAB - 1)
    return Prompts(clean, corrupted, answers, wrong)
