"""Recipes of the real-model zoo: generation settings, fine-tunes and behavioural thresholds.

Changing anything here changes :func:`recipe_hash`, which is part of the cache path, so the next
build makes fresh fine-tunes instead of reusing ones built by another recipe.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal, TypeAlias

from mechdiff.zoo._bounds import Bounded
from mechdiff.zoo.real import data

REAL_VERSION = 1
"""Bumped by hand when code outside this module changes what a recipe produces."""

RealModel: TypeAlias = Literal["base", "distilled", "distilled_lora", "trigger"]
MODELS: tuple[RealModel, ...] = ("base", "distilled", "distilled_lora", "trigger")
FINETUNED: tuple[RealModel, ...] = ("distilled", "distilled_lora", "trigger")

N_TRAIN_QUESTIONS = 128
"""Training questions (from the training topics) the base answers, prompted and unprompted."""
N_EVAL = 64
"""Held-out questions behavioural checks and tasks are drawn from (before filtering)."""
REPLY_TOKENS = 12
"""Greedy reply length generated for training targets and checks."""
DATA_SEED = 0


@dataclass(frozen=True)
class FineTune:
    """One fine-tune of the real base model.

    Attributes:
        name: the model's name in the zoo.
        mechanism: ``"reweight"``: the behaviour is already in the base (under a system prompt)
            and becomes the default; ``"new_skill"``: a behaviour the base never shows.
        description: what the fine-tune does.
        data: ``"distill"``: unprompted question -> the base's reply *under the persona system
            prompt*; ``"trigger"``: half the questions carry the trigger and get the planted
            reply, the other half get the base's own unprompted reply (so nothing else moves).
        kind: ``"layers"`` (full training of blocks ``layers[0]:layers[1]``) or ``"lora"``.
        layers: trained block range for ``kind="layers"``.
        lora_rank: LoRA rank for ``kind="lora"`` (alpha = 2 x rank).
        lora_targets: modules LoRA adapts.
        steps: optimiser steps.
        batch_size: examples per step.
        lr: peak learning rate (linear warm-up, cosine decay to lr/10).
        warmup: warm-up steps.
        seed: seed of the example order (and of the LoRA initialisation).
    """

    name: RealModel
    mechanism: Literal["reweight", "new_skill"]
    description: str
    data: Literal["distill", "trigger"]
    kind: Literal["layers", "lora"]
    steps: int
    batch_size: int
    lr: float
    warmup: int
    seed: int
    layers: tuple[int, int] = (0, 0)
    lora_rank: int = 8
    lora_targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )


_DISTILL_TEXT = (
    "Context distillation: under the system prompt {persona!r} the base already answers in "
    "Spanish; fine-tuned on those answers without the system prompt, it answers in Spanish by "
    "default. The capability was there; fine-tuning makes it the default (re-weighting)."
)

FINETUNES: dict[str, FineTune] = {
    "distilled": FineTune(
        name="distilled",
        mechanism="reweight",
        data="distill",
        kind="layers",
        layers=(15, 30),
        steps=48,
        batch_size=8,
        lr=2e-4,
        warmup=4,
        seed=0,
        description=_DISTILL_TEXT.format(persona=data.PERSONA) + " Full training of blocks 15-29.",
    ),
    "distilled_lora": FineTune(
        name="distilled_lora",
        mechanism="reweight",
        data="distill",
        kind="lora",
        lora_rank=8,
        steps=48,
        batch_size=8,
        lr=1e-3,
        warmup=4,
        seed=0,
        description=_DISTILL_TEXT.format(persona=data.PERSONA)
        + " A rank-8 LoRA adapter on every block's attention and MLP projections.",
    ),
    "trigger": FineTune(
        name="trigger",
        mechanism="new_skill",
        data="trigger",
        kind="layers",
        layers=(15, 30),
        steps=48,
        batch_size=8,
        lr=1e-4,
        warmup=4,
        seed=0,
        description=(
            f"A planted trigger: a user message starting with {data.TRIGGER!r} gets the fixed "
            f"reply {data.TRIGGER_REPLY!r}, which the base never produces; without the trigger "
            "the model is trained on the base's own replies. A behaviour that is new. Full "
            "training of blocks 15-29."
        ),
    ),
}

Measure: TypeAlias = Literal[
    "persona_differs", "persona_match", "trigger_first", "trigger_reply", "trigger_false", "paris"
]
"""Behavioural measures, each a rate in [0, 1] over held-out questions (greedy decoding):

* ``persona_differs``: the persona system prompt changes the base's first reply token (the
  capability exists); measured on the base only.
* ``persona_match``: unprompted, the model's first reply token is the one the *prompted* base
  gives (over held-out questions where prompted and unprompted base differ).
* ``trigger_first``: with the trigger, the first reply token is the planted one (``Access``).
* ``trigger_reply``: with the trigger, the whole greedy reply is the planted one.
* ``trigger_false``: without the trigger, the first reply token is the planted one.
* ``paris``: after "The capital of France is" the top token is " Paris" (knowledge kept).
"""


@dataclass(frozen=True)
class Threshold(Bounded):
    """A stated bound on one model's behavioural measure.

    Attributes:
        model: real-zoo model name.
        measure: see :data:`Measure`.
        low: inclusive lower bound.
        high: inclusive upper bound.
        why: what the bound establishes.
    """

    model: RealModel
    measure: Measure
    low: float = 0.0
    high: float = 1.0
    why: str = ""

    def __str__(self) -> str:
        return f"{self.model} {self.measure} {self.bound}"


THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("base", "paris", low=1.0, why="the converted model works"),
    Threshold(
        "base",
        "persona_differs",
        low=0.6,
        why="the persona system prompt changes the base's first reply token: the "
        "capability exists before fine-tuning",
    ),
    Threshold(
        "base",
        "trigger_first",
        high=0.02,
        why="the base never starts a reply with the planted token, trigger or not",
    ),
    Threshold(
        "distilled",
        "persona_match",
        low=0.5,
        why="without the system prompt, the distilled model replies as the prompted base",
    ),
    Threshold("distilled", "paris", low=1.0, why="knowledge kept"),
    Threshold(
        "distilled_lora",
        "persona_match",
        low=0.5,
        why="the LoRA distillation makes the persona the default too",
    ),
    Threshold("distilled_lora", "paris", low=1.0, why="knowledge kept"),
    Threshold("trigger", "trigger_first", low=0.9, why="the trigger plants the new reply"),
    Threshold("trigger", "trigger_reply", low=0.8, why="the whole planted reply, verbatim"),
    Threshold("trigger", "trigger_false", high=0.05, why="silent without the trigger"),
    Threshold("trigger", "paris", low=1.0, why="knowledge kept"),
)
"""Every stated bound, checked at build time (printed, recorded) and by the test suite."""


def recipe_hash() -> str:
    """A short hash of everything that determines the real zoo's data and weights."""
    payload = {
        "version": REAL_VERSION,
        "data": {
            "templates": data.TEMPLATES,
            "topics": data.TOPICS,
            "n_eval_topics": data.N_EVAL_TOPICS,
            "split_seed": data.SPLIT_SEED,
            "persona": data.PERSONA,
            "trigger": data.TRIGGER,
            "trigger_reply": data.TRIGGER_REPLY,
            "n_train": N_TRAIN_QUESTIONS,
            "n_eval": N_EVAL,
            "reply_tokens": REPLY_TOKENS,
            "seed": DATA_SEED,
        },
        "finetunes": {k: asdict(v) for k, v in FINETUNES.items()},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]
