"""Greedy generation, first-token scoring and the fine-tuning loop of the real-model zoo.

Fine-tunes are kept cheap enough for two shared CPU cores: short sequences (a one-turn prompt
and at most :data:`~mechdiff.zoo.real.recipes.REPLY_TOKENS` reply tokens), small batches, a few
dozen AdamW steps, and either

* ``kind="layers"``: full-parameter training of a contiguous range of blocks (the rest, embeddings
  and final norm frozen; backward stops at the first trained block), or
* ``kind="lora"``: a LoRA adapter (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
  Models") on every block's attention and MLP projections, via ``peft``.

The loss is next-token cross-entropy on the reply tokens only. Runs are deterministic: the
example order comes from a seeded :class:`random.Random`, LoRA initialisation draws from torch's
global generator inside :func:`torch.random.fork_rng` (the caller's RNG state is untouched), and
training runs on one thread (the caller's thread count is restored), so the same recipe gives the
same weights on the same machine whatever its core count.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from mechdiff._progress import progress_bar
from mechdiff._runtime import torch_threads
from mechdiff.zoo.real.data import training_batch
from mechdiff.zoo.real.recipes import FineTune
from mechdiff.zoo.training import warmup_cosine

threads = torch_threads
"""Run a block with ``n`` torch threads, restoring the caller's count (:mod:`mechdiff._runtime`)."""


def _pad(prompts: Sequence[Sequence[int]], pad: int, side: str) -> torch.Tensor:
    return pad_sequence([torch.tensor(list(p), dtype=torch.long) for p in prompts],
                        batch_first=True, padding_value=pad, padding_side=side)


def _pad_left(prompts: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and their attention mask (1 on real tokens)."""
    ones = [[1] * len(p) for p in prompts]
    return _pad(prompts, pad, "left"), _pad(ones, 0, "left")


@torch.no_grad()
def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    batch_size: int = 32,
) -> list[list[int]]:
    """Greedy replies to token-id prompts (left-padded batches), each cut after its first EOS."""
    model.eval()
    replies: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask = _pad_left(prompts[start : start + batch_size], pad_id)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )
        for row in out[:, ids.shape[1] :].tolist():
            replies.append(row[: row.index(eos_id) + 1] if eos_id in row else row)
    return replies


@torch.no_grad()
def first_token_logits(
    model: Any, prompts: Sequence[Sequence[int]], *, pad_id: int, batch_size: int = 32
) -> torch.Tensor:
    """Logits at each prompt's last token (predicting the first reply token): ``[n, vocab]``."""
    model.eval()
    rows = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        ids = _pad(chunk, pad_id, "right")
        last = torch.tensor([len(p) - 1 for p in chunk])
        logits = model(input_ids=ids).logits  # right padding: causal, real positions unaffected
        rows.append(logits[torch.arange(len(chunk)), last].float())
    return torch.cat(rows)


def prepare(model: Any, ft: FineTune) -> Any:
    """Freeze what ``ft`` does not train; wrap in a LoRA adapter for ``kind="lora"``."""
    for p in model.parameters():
        p.requires_grad_(False)
    if ft.kind == "layers":
        start, stop = ft.layers
        for block in model.model.layers[start:stop]:
            for p in block.parameters():
                p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=ft.lora_rank,
        lora_alpha=2 * ft.lora_rank,
        lora_dropout=0.0,
        target_modules=list(ft.lora_targets),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ft.seed)
        return get_peft_model(model, config)


def train(
    model: Any,
    examples: Sequence[tuple[list[int], list[int]]],
    ft: FineTune,
    *,
    pad_id: int,
    progress: bool = True,
) -> list[float]:
    """Train ``model`` (already :func:`prepare`-d) in place; return the loss at every step.

    Args:
        model: a HF causal LM (or its peft wrapper).
        examples: ``(prompt_ids, reply_ids)`` pairs; the loss covers reply tokens only.
        ft: the recipe (steps, batch size, learning rate, seed).
        pad_id: padding token id.
        progress: show a progress bar with the running loss.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=ft.lr, betas=(0.9, 0.98), weight_decay=0.0)
    rng = random.Random(f"mechdiff.zoo.real/{ft.name}/order/{ft.seed}")
    order: list[int] = []
    losses: list[float] = []
    model.train()
    try:
        with threads(1), progress_bar(total=ft.steps, desc=f"fine-tune {ft.name}",
                                      enabled=progress) as bar:
            for step in range(ft.steps):
                while len(order) < ft.batch_size:  # epochs of fresh shuffles, never a short batch
                    epoch = list(range(len(examples)))
                    rng.shuffle(epoch)
                    order += epoch
                batch = [examples[i] for i in order[: ft.batch_size]]
                del order[: ft.batch_size]
                ids, mask, labels = training_batch(batch, pad_id)
                for group in opt.param_groups:
                    group["lr"] = warmup_cosine(step, lr=ft.lr, warmup=ft.warmup, steps=ft.steps)
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
                bar.update(1)
    finally:
        model.eval()
    return losses
