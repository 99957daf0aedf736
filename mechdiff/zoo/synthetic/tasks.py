"""Evaluation tasks of the zoo: prompts with their answers and contrasting wrong answers.

Each task is a :class:`mechdiff.tasks.Task` of ``n`` prompts of equal length drawn from the same
generators as the training data (:mod:`mechdiff.zoo.synthetic.data`) with a seeded :class:`random.Random`.
Prompts are strings without ``<bos>`` (the Task prepends it); answers are single token strings.

========== ================================= ===================== ==========================
name       prompt                            answer                wrong answer
========== ================================= ===================== ==========================
induction  ``x1 .. x8 | x1 x2 x3 x4``        ``x5``                ``x6`` (copies one too far)
kv_recall  ``k1 v1 , .. , k4 v4 ; kq``       ``vq``                another key's value
ambiguous  ``x1 x2 x3 x4 ->``                ``x4`` (reversal)     ``x1`` (copy)
newskill   ``x1 x2 x3 x4 ?``                 successor of ``x4``   ``x4`` itself
========== ================================= ===================== ==========================

For ``ambiguous`` the answer is the pretraining *minority* continuation, so the logit difference
rises under the ``reweight`` fine-tunes.
"""

from __future__ import annotations

import random
from typing import Literal, TypeAlias, get_args

from mechdiff.errors import OptionError
from mechdiff.tasks import Task
from mechdiff.zoo.synthetic import data
from mechdiff.zoo.synthetic.vocab import TOKENS, decode

TaskName: TypeAlias = Literal["induction", "kv_recall", "ambiguous", "newskill"]
TASKS: tuple[TaskName, ...] = get_args(TaskName)


def _example(name: TaskName, rng: random.Random) -> tuple[data.Example, int]:
    """An evaluation example and the id of its wrong answer."""
    if name == "induction":
        ex = data.induction(rng, length=8, query=4)
        return ex, ex.ids[ex.answer_pos + 2]
    if name == "kv_recall":
        ex = data.kv_recall(rng, pairs=4, queries=1, distinct_values=True)
        values = {ex.ids[2 + 3 * i] for i in range(4)}  # <bos> k v , k v ...: v at 2, 5, 8, 11
        answer = ex.ids[ex.answer_pos + 1]
        return ex, rng.choice(sorted(values - {answer}))
    if name == "ambiguous":
        ex = data.ambiguous(rng, p_reverse=1.0)
        return ex, ex.ids[1]
    if name == "newskill":
        ex = data.newskill(rng, length=4)
        return ex, ex.ids[ex.answer_pos - 1]
    raise OptionError(f"unknown zoo task {name!r}; choose one of {TASKS}")


def task(name: TaskName, *, n: int = 32, seed: int = 0) -> Task:
    """``n`` evaluation prompts of the zoo task ``name``.

    Args:
        name: one of ``"induction"``, ``"kv_recall"``, ``"ambiguous"``, ``"newskill"``.
        n: number of prompts.
        seed: seed of the prompt generator (same seed, same prompts).

    Returns:
        A :class:`~mechdiff.tasks.Task` with answers and wrong answers (logit-difference metric),
        named ``"zoo/<name>"``.
    """
    if name not in TASKS:
        raise OptionError(f"unknown zoo task {name!r}; choose one of {TASKS}")
    if n < 1:
        raise OptionError(f"n must be at least 1, got {n}")
    rng = random.Random(f"mechdiff.zoo.task/{name}/{seed}")
    prompts, answers, wrong = [], [], []
    for _ in range(n):
        ex, wrong_id = _example(name, rng)
        prompts.append(decode(ex.ids[1 : ex.answer_pos + 1]))
        answers.append(TOKENS[ex.ids[ex.answer_pos + 1]])
        wrong.append(TOKENS[wrong_id])
    return Task(prompts=prompts, answers=answers, wrong_answers=wrong, name=f"zoo/{name}")
