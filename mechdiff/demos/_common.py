"""What the demo drivers share: how they report, and how they pick a subset of a task."""

from __future__ import annotations

import collections
import dataclasses
import random
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from mechdiff.tasks import Task

FIGURE_FORMATS = ("pdf", "png")
"""Figure files the synthetic demo writes: PDF for papers, PNG for a quick look (the demo's HTML
report inlines its own SVG). ``mechdiff patch`` / ``circuits`` and :func:`mechdiff.viz.save_figure`
also write SVG; for the real demo's 8 figures of one fine-tune it took 2.9 s of 10 s of writing."""
REAL_FIGURE_FORMATS = ("png",)
"""Figure files the real demo writes: PNG (its HTML report inlines vector SVG). Its 28 figures
took 41 s of drawing and writing as PDF and PNG, of a demo measured at 4.5-5.1 min on a slower
2-core machine; the PDFs (12 s) are one call away from the saved results:
``pair_figures(PairAnalysis.load(...), folder)`` / ``circuit_figures(CircuitAnalysis.load(...),
folder)`` write PDF, PNG and SVG without a model."""

Report: TypeAlias = Callable[[str], None]
"""Where a demo sends its tables and readings as soon as they are ready."""


def quiet(_: str) -> None:
    """A :data:`Report` that drops everything."""


def pick(n_total: int, n: int, seed: int) -> list[int]:
    """``n`` of ``range(n_total)`` (all if fewer), chosen with a local RNG seeded by ``seed``."""
    if n >= n_total:
        return list(range(n_total))
    return sorted(random.Random(seed).sample(range(n_total), n))


def equal_length(task: Task, tokenizer: Any, n_ctx: int, n: int, seed: int) -> Task:
    """``n`` prompts of ``task``'s most common token length (:func:`pick` among them, so the
    same seed gives the same prompts). Mean ablation averages each position over the prompts
    that reach it: with equal lengths every position, the read position included, averages all
    of them (with unequal ones the longest prompt's read position is its own mean, not
    ablated: one of the real demo's 4 prompts was)."""
    lengths = task.tokenize(tokenizer, n_ctx=n_ctx).lengths.tolist()
    counts = collections.Counter(lengths)
    common = max(counts, key=lambda length: (counts[length], -length))
    same = [i for i, length in enumerate(lengths) if length == common]
    return subset(task, [same[i] for i in pick(len(same), n, seed)])


def subset(task: Task, keep: Sequence[int]) -> Task:
    """The task restricted to the prompts at ``keep`` (answers and corrupted prompts alike)."""
    if list(keep) == list(range(len(task))):
        return task

    def take(items: Sequence[Any] | None) -> list[Any] | None:
        return None if items is None else [items[i] for i in keep]

    return dataclasses.replace(task, prompts=take(task.prompts), answers=take(task.answers),
                               wrong_answers=take(task.wrong_answers),
                               corrupted=take(task.corrupted))
