"""Scoring a model on a zoo task: top-1 accuracy and answer probabilities at the final position.

Works on a HF ``GPT2LMHeadModel`` (output ``.logits``) and on a TransformerLens
``TransformerBridge`` (output: the logits tensor). Prompts are right-padded and read at each
prompt's own last position (see :meth:`mechdiff.tasks.Task.tokenize`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import torch
from jaxtyping import Float
from torch import Tensor

from mechdiff.errors import OptionError
from mechdiff.tasks import Task
from mechdiff.zoo.synthetic import vocab

Measure: TypeAlias = Literal["accuracy", "answer_prob", "pair_prob"]
"""``accuracy``: fraction of prompts whose top-1 next token is the answer.
``answer_prob``: mean probability of the answer.
``pair_prob``: mean probability of the answer or the wrong answer (both continuations together)."""


@dataclass(frozen=True)
class Scores:
    """Per-prompt scores of a model on a task.

    Attributes:
        correct: 1.0 where the top-1 next token is the answer.
        p_answer: probability of the answer.
        p_wrong: probability of the wrong answer.
    """

    correct: Float[Tensor, " batch"]
    p_answer: Float[Tensor, " batch"]
    p_wrong: Float[Tensor, " batch"]

    def get(self, measure: Measure) -> float:
        """The mean of one measure over the prompts."""
        if measure == "accuracy":
            return float(self.correct.mean())
        if measure == "answer_prob":
            return float(self.p_answer.mean())
        if measure == "pair_prob":
            return float((self.p_answer + self.p_wrong).mean())
        raise OptionError(f"unknown measure {measure!r}")


def _n_ctx(model: Any) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is not None and getattr(cfg, "n_ctx", None):
        return int(cfg.n_ctx)
    return int(model.config.n_positions)


@torch.no_grad()
def score(model: Any, task: Task, *, tokenizer: Any = None) -> Scores:
    """Score ``model`` on every prompt of ``task`` (one batched forward).

    Args:
        model: a HF causal LM or a TransformerBridge.
        task: a task with answers and wrong answers.
        tokenizer: defaults to the zoo tokenizer.
    """
    if task.answers is None or task.wrong_answers is None:
        raise OptionError("scoring needs a task with answers and wrong_answers")
    tok = tokenizer if tokenizer is not None else vocab.tokenizer()
    device = next(model.parameters()).device
    t = task.tokenize(tok, n_ctx=_n_ctx(model), device=device)
    out = model(t.tokens)
    logits = out.logits if hasattr(out, "logits") else out
    rows = torch.arange(t.n, device=device)
    final = logits[rows, t.read_pos].float()
    probs = final.softmax(-1)
    return Scores(
        correct=(final.argmax(-1) == t.answer_ids).float().cpu(),
        p_answer=probs[rows, t.answer_ids].cpu(),
        p_wrong=probs[rows, t.wrong_ids].cpu(),
    )


def accuracy(model: Any, task: Task, *, tokenizer: Any = None) -> float:
    """Top-1 accuracy of the answer at each prompt's final position.

    Args:
        model: a HF causal LM (e.g. loaded from :func:`mechdiff.zoo.model_dir`) or a
            TransformerBridge.
        task: a task with answers (and wrong answers), e.g. from :func:`mechdiff.zoo.task`.
        tokenizer: defaults to the zoo tokenizer.
    """
    return score(model, task, tokenizer=tokenizer).get("accuracy")
