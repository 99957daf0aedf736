"""Model construction and the training loop shared by pretraining and fine-tuning.

Training is plain next-token cross-entropy on the trained positions of procedurally generated
batches (see :mod:`mechdiff.zoo.synthetic.data`), AdamW with linear warm-up and cosine decay, gradient
clipping at 1, on one CPU thread (the caller's thread count is restored afterwards).

Dropout is off, so a run consumes no random numbers beyond its data, and the data come from a
:class:`random.Random` passed in by the caller: the same seed on the same machine gives the same
weights. Model initialisation draws from torch's global generator inside
:func:`torch.random.fork_rng`, so the caller's RNG state is left exactly as it was.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from mechdiff._progress import progress_bar
from mechdiff._runtime import torch_threads
from mechdiff.zoo.synthetic import data
from mechdiff.zoo.synthetic.vocab import BOS, ID, PAD, VOCAB_SIZE
from mechdiff.zoo.training import warmup_cosine


@dataclass(frozen=True)
class Arch:
    """GPT-2 shape of the zoo's models."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    n_positions: int = 32

    def config(self) -> GPT2Config:
        """A ``GPT2Config`` with dropout off and the zoo tokenizer's special-token ids."""
        return GPT2Config(
            vocab_size=VOCAB_SIZE,
            n_positions=self.n_positions,
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_inner=4 * self.n_embd,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=ID[BOS],
            eos_token_id=ID[BOS],
            pad_token_id=ID[PAD],
        )


@dataclass(frozen=True)
class Schedule:
    """One training run: steps, optimiser settings and the data mix.

    Attributes:
        steps: optimiser steps.
        batch_size: examples per step.
        lr: peak learning rate.
        warmup: linear warm-up steps; cosine decay to ``lr / 10`` after.
        weight_decay: AdamW weight decay.
        mix: data family -> weight (see :data:`mechdiff.zoo.synthetic.data.FAMILIES`), as sorted pairs so
            the schedule is hashable.
    """

    steps: int
    batch_size: int
    lr: float
    warmup: int
    weight_decay: float
    mix: tuple[tuple[str, float], ...]

    def lr_at(self, step: int) -> float:
        """Learning rate at ``step`` (0-based): :func:`mechdiff.zoo.training.warmup_cosine`."""
        return warmup_cosine(step, lr=self.lr, warmup=self.warmup, steps=self.steps)


def init_model(arch: Arch, seed: int) -> GPT2LMHeadModel:
    """A freshly initialised model; the caller's global RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(arch.config())


def train(
    model: GPT2LMHeadModel,
    schedule: Schedule,
    *,
    rng: random.Random,
    progress: bool = True,
    desc: str = "train",
) -> list[float]:
    """Train ``model`` in place on batches drawn from ``schedule.mix``.

    Args:
        model: the model to train.
        schedule: steps, optimiser settings, data mix.
        rng: the run's data generator (seeded by the caller).
        progress: show a progress bar with the running loss.
        desc: the progress bar's label.

    Returns:
        The training loss at every step.
    """
    mix: Mapping[str, float] = dict(schedule.mix)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "wpe" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "wpe" not in n)]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": schedule.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=schedule.lr,
        betas=(0.9, 0.98),
    )
    model.train()
    losses: list[float] = []
    # One thread: these matmuls are tiny, and with two threads a run slowed >5x whenever another
    # process shared the two cores (spin-waiting threads); one thread costs ~30% when alone.
    try:
        with torch_threads(1), progress_bar(total=schedule.steps, desc=desc,
                                            enabled=progress) as bar:
            for step in range(schedule.steps):
                for group in opt.param_groups:
                    group["lr"] = schedule.lr_at(step)
                tokens, targets = data.batch(rng, mix, schedule.batch_size)
                logits = model(tokens).logits
                loss = F.cross_entropy(
                    logits.flatten(0, 1), targets.flatten(), ignore_index=data.IGNORE
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                losses.append(float(loss.detach()))
                if step % 25 == 0:
                    bar.set_postfix(loss=f"{sum(losses[-25:]) / len(losses[-25:]):.3f}")
                bar.update(1)
    finally:
        model.eval()
    return losses
