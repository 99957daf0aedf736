"""The zoo's recipes: architecture, pretraining schedule, fine-tunes and accuracy thresholds.

Changing anything here changes :func:`recipe_hash`, which is part of the cache path, so the next
:func:`mechdiff.zoo.build` trains a fresh zoo instead of reusing models built by another recipe.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal, TypeAlias

from mechdiff.zoo._bounds import Bounded
from mechdiff.zoo.synthetic.evaluate import Measure
from mechdiff.zoo.synthetic.tasks import TaskName
from mechdiff.zoo.synthetic.train import Arch, Schedule

ZOO_VERSION = 1
"""Bumped by hand when code outside this module changes what a recipe produces."""

ModelName: TypeAlias = Literal["base", "reweight", "reweight_seed1", "newskill"]

ARCH = Arch(n_layer=2, n_head=4, n_embd=64, n_positions=32)

BASE_SEED = 0
"""Seed of the base model's initialisation and of its pretraining data."""

PRETRAIN_MIX: tuple[tuple[str, float], ...] = (
    ("ambiguous", 0.25),
    ("induction", 0.30),
    ("kv_recall", 0.45),
)
"""Pretraining families (``ambiguous`` continues reversed 30% of the time, copied 70%)."""

PRETRAIN = Schedule(
    steps=4000, batch_size=64, lr=3e-3, warmup=100, weight_decay=0.01, mix=PRETRAIN_MIX
)

Mechanism: TypeAlias = Literal["reweight", "new_skill"]


@dataclass(frozen=True)
class FineTuneSpec:
    """A fine-tune of the base model whose mechanism is known by construction.

    Attributes:
        name: the model's name in the zoo.
        task: the zoo task its behaviour change is measured on.
        mechanism: ``"reweight"``: the behaviour already exists in the base and is made dominant;
            ``"new_skill"``: the behaviour is absent from the base's pretraining data.
        description: what the fine-tune does and which mechanism the base already had.
        seed: seed of the fine-tune's data stream (the starting point is always the base).
        schedule: steps, optimiser settings and data mix.
    """

    name: ModelName
    task: TaskName
    mechanism: Mechanism
    description: str
    seed: int
    schedule: Schedule


_REWEIGHT = Schedule(
    steps=250,
    batch_size=64,
    lr=1e-3,
    warmup=20,
    weight_decay=0.01,
    mix=(("ambiguous_reversed", 0.4), ("induction", 0.3), ("kv_recall", 0.3)),
)
_REWEIGHT_TEXT = (
    "Re-weights an existing behaviour: trained only on the reversed continuation of the "
    "ambiguous family, which the base already produces on ~30% of its pretraining examples. "
    "The reversal circuit exists in the base; fine-tuning makes it win over copying."
)

FINETUNES: dict[str, FineTuneSpec] = {
    "reweight": FineTuneSpec(
        name="reweight",
        task="ambiguous",
        mechanism="reweight",
        description=_REWEIGHT_TEXT,
        seed=0,
        schedule=_REWEIGHT,
    ),
    "reweight_seed1": FineTuneSpec(
        name="reweight_seed1",
        task="ambiguous",
        mechanism="reweight",
        description=_REWEIGHT_TEXT + " Same recipe as 'reweight', another data seed.",
        seed=1,
        schedule=_REWEIGHT,
    ),
    "newskill": FineTuneSpec(
        name="newskill",
        task="newskill",
        mechanism="new_skill",
        description=(
            "Builds a new skill: 'x1 .. xL ?' -> the alphabet successor of xL. The marker '?' "
            "never occurs in pretraining and nothing in pretraining orders the letters, so the "
            "base is at chance; fine-tuning must build the successor map (it can reuse the base's "
            "previous-token information to find xL)."
        ),
        seed=0,
        schedule=Schedule(
            steps=1000,
            batch_size=64,
            lr=2e-3,
            warmup=20,
            weight_decay=0.01,
            mix=(("newskill", 0.6), ("induction", 0.15), ("kv_recall", 0.15), ("ambiguous", 0.1)),
        ),
    ),
}
"""The fine-tunes, by name. Each starts from the base model."""

MODELS: tuple[ModelName, ...] = ("base", "reweight", "reweight_seed1", "newskill")


@dataclass(frozen=True)
class Threshold(Bounded):
    """A stated bound on one model's score on one zoo task.

    Attributes:
        model: zoo model name.
        task: zoo task name.
        measure: ``accuracy`` (top-1), ``answer_prob`` (mean probability of the answer; for
            ``ambiguous`` this is the expected share of prompts on which sampling picks the
            reversal) or ``pair_prob`` (answer or wrong answer).
        low: inclusive lower bound.
        high: inclusive upper bound.
        why: what the bound establishes.
    """

    model: ModelName
    task: TaskName
    measure: Measure
    low: float = 0.0
    high: float = 1.0
    why: str = ""

    def __str__(self) -> str:
        return f"{self.model}/{self.task} {self.measure} {self.bound}"


THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("base", "induction", "accuracy", low=0.9, why="base has induction heads"),
    Threshold(
        "base",
        "kv_recall",
        "accuracy",
        low=0.45,
        why="base does key-value recall, if imperfectly (chance: 0.25 among the four values)",
    ),
    Threshold(
        "base",
        "ambiguous",
        "answer_prob",
        low=0.1,
        high=0.6,
        why="base already reverses: sampling picks the reversal on 10-60% of prompts",
    ),
    Threshold(
        "base",
        "ambiguous",
        "pair_prob",
        low=0.8,
        why="base continues with x1 (copy) or x4 (reversal), nothing else",
    ),
    Threshold("base", "newskill", "accuracy", high=0.2, why="base cannot do the new skill"),
    Threshold("reweight", "ambiguous", "accuracy", low=0.9, why="reversal now dominant"),
    Threshold("reweight_seed1", "ambiguous", "accuracy", low=0.9, why="reversal now dominant"),
    Threshold("reweight", "induction", "accuracy", low=0.85, why="other skills kept"),
    Threshold("reweight_seed1", "induction", "accuracy", low=0.85, why="other skills kept"),
    Threshold("newskill", "newskill", "accuracy", low=0.9, why="the new skill is learned"),
    Threshold("newskill", "induction", "accuracy", low=0.85, why="other skills kept"),
)
"""Every stated bound, checked at build time (logged) and by the test suite."""


def recipe_hash() -> str:
    """A short hash of everything that determines the zoo's weights."""
    payload = {
        "version": ZOO_VERSION,
        "arch": asdict(ARCH),
        "base_seed": BASE_SEED,
        "pretrain": asdict(PRETRAIN),
        "finetunes": {k: asdict(v) for k, v in FINETUNES.items()},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]
