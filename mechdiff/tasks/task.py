"""Tasks: the prompts a behaviour is measured on, and how they become tokens.

A :class:`Task` holds prompts (strings or token ids) of possibly different lengths, optional answers
and wrong answers (for a logit difference or an answer log-probability), optional corrupted prompts
(for classic single-model clean/corrupted patching), or no answers at all (a task-free metric:
KL(donor || model) at the final position, or averaged over every position of a text).

Prompt handling never truncates and never mis-aligns the final position: prompts are right-padded
and each prompt's own last position is tracked (``read_pos``). With causal attention, right padding
leaves every real position exactly as if the prompt ran alone, so no attention mask is needed.

Answers given as strings are tokenized as written (no space is added: write ``" Paris"`` for GPT-2
style tokenizers) and must be exactly one token; answers given as ints are token ids.

**Chat prompts.** A prompt may also be a conversation: a list of ``{"role", "content"}`` messages
with roles ``system``, ``user`` and ``assistant``. It is rendered with the tokenizer's own chat
template, ``tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)``
(see :func:`render_chat`), and the rendered text is tokenized *without* adding special tokens (the
template already holds them; no BOS is prepended, whatever ``prepend_bos`` says). The rendered
prompt ends with the template's assistant header (``<|im_start|>assistant\n`` for ChatML), so its
last token is the read position and the logits there predict **the first token of the assistant's
reply**: the answers of a chat task are first assistant tokens. Chat prompts are stored frozen as
:class:`ChatPrompt`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import torch
from jaxtyping import Int
from torch import Tensor

from mechdiff.errors import AnswerTokenError, MetricError, PromptError
from mechdiff.tasks.chat import ChatPrompt, Message, is_chat, render_chat

MetricName: TypeAlias = Literal["logit_diff", "logprob", "kl", "kl_all"]
"""``logit_diff``: logit(answer) - logit(wrong answer) at the final position.
``logprob``: log p(answer) at the final position.
``kl``: -KL(donor || model) at the final position (task-free).
``kl_all``: -KL(donor || model) averaged over every real position (task-free, for texts)."""

METRICS: tuple[MetricName, ...] = ("logit_diff", "logprob", "kl", "kl_all")

Prompt: TypeAlias = str | Sequence[int] | Sequence[Message] | ChatPrompt
Answer: TypeAlias = str | int


def _freeze_one(x: Any) -> Any:
    if isinstance(x, (str, int)):
        return x
    if is_chat(x):
        return ChatPrompt.of(x)
    return tuple(int(t) for t in x)


def _freeze(items: Sequence[Any] | None) -> tuple[Any, ...] | None:
    if items is None:
        return None
    if isinstance(items, str):
        raise PromptError("expected a list of prompts or answers, got a single string; wrap it in a list")
    return tuple(_freeze_one(x) for x in items)


def _json_default(x: Any) -> Any:
    return x.as_dicts() if isinstance(x, ChatPrompt) else list(x)


@dataclass(frozen=True)
class Task:
    """A prompt set and how behaviour on it is scored.

    Args:
        prompts: strings, token-id sequences (used as given: no BOS is added), or chat
            conversations (lists of ``{"role", "content"}`` dicts, rendered with the tokenizer's
            chat template and read at the last prompt token, which predicts the first assistant
            token; see the module docstring).
        answers: one correct next token per prompt (str or token id).
        wrong_answers: one contrasting next token per prompt; with ``answers`` gives a logit
            difference.
        corrupted: one corrupted prompt per prompt, same token length as its clean prompt
            (classic single-model patching: clean is the donor, corrupted the receiver).
        metric: how behaviour is scored; by default ``logit_diff`` if wrong answers are given,
            ``logprob`` if only answers are, else ``kl``.
        name: a short name used in results and figures.
        prepend_bos: prepend the tokenizer's BOS token to string prompts (TransformerLens's
            default). Ignored when the tokenizer has no BOS token, and for chat prompts (their
            template decides the special tokens).
    """

    prompts: Sequence[Prompt]
    answers: Sequence[Answer] | None = None
    wrong_answers: Sequence[Answer] | None = None
    corrupted: Sequence[Prompt] | None = None
    metric: MetricName | None = None
    name: str = "task"
    prepend_bos: bool = True
    _resolved_metric: MetricName = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        prompts = _freeze(self.prompts)
        if not prompts:
            raise PromptError("the prompt list is empty: give at least one prompt")
        for i, p in enumerate(prompts):
            if not isinstance(p, ChatPrompt) and len(p) == 0:
                raise PromptError(f"prompt {i} is empty")
        object.__setattr__(self, "prompts", prompts)
        for name in ("answers", "wrong_answers", "corrupted"):
            value = _freeze(getattr(self, name))
            if value is not None and len(value) != len(prompts):
                raise PromptError(
                    f"{name} has {len(value)} entries but there are {len(prompts)} prompts; "
                    "give exactly one per prompt"
                )
            object.__setattr__(self, name, value)
        if self.wrong_answers is not None and self.answers is None:
            raise AnswerTokenError("wrong_answers were given without answers")
        metric = self.metric
        if metric is None:
            metric = (
                "logit_diff"
                if self.wrong_answers is not None
                else "logprob"
                if self.answers is not None
                else "kl"
            )
        if metric not in METRICS:
            raise MetricError(f"unknown metric {metric!r}; choose one of {METRICS}")
        if metric == "logit_diff" and self.wrong_answers is None:
            raise MetricError("metric 'logit_diff' needs answers and wrong_answers")
        if metric == "logprob" and self.answers is None:
            raise MetricError("metric 'logprob' needs answers")
        object.__setattr__(self, "_resolved_metric", metric)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def metric_name(self) -> MetricName:
        """The metric in use (resolved from what the task holds when ``metric`` is None)."""
        return self._resolved_metric

    @property
    def reads_all_positions(self) -> bool:
        return self._resolved_metric == "kl_all"

    def fingerprint(self) -> str:
        """A short hash of prompts, answers and metric, recorded in results' provenance."""
        payload = json.dumps(
            [self.prompts, self.answers, self.wrong_answers, self.corrupted, self.metric_name,
             self.prepend_bos],
            default=_json_default,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    @classmethod
    def from_file(cls, path: str | Path, **kwargs: Any) -> Task:
        """Read a task from a file.

        ``.jsonl``: one object per line with ``prompt`` and optional ``answer``,
        ``wrong_answer``, ``corrupted``. ``.json``: an object with ``prompts`` and optional
        ``answers``, ``wrong_answers``, ``corrupted``, ``metric``, ``name``. Any other suffix:
        one prompt per non-empty line (task-free). In JSON files a prompt may be a chat: a list
        of ``{"role", "content"}`` messages.
        """
        from mechdiff.tasks.files import read_task

        return read_task(path, **kwargs)

    def tokenize(self, tokenizer: Any, *, n_ctx: int, device: torch.device | str = "cpu") -> Tokens:
        """Turn the task into right-padded token ids, checking lengths and answers.

        Chat prompts are rendered with the tokenizer's chat template (see :func:`render_chat`).

        Raises:
            PromptError: a prompt is longer than ``n_ctx``, a corrupted prompt's token length
                differs from its clean prompt's, or chat prompts meet a tokenizer without a chat
                template.
            AnswerTokenError: an answer string is not exactly one token.
        """
        bos = getattr(tokenizer, "bos_token_id", None) if self.prepend_bos else None
        clean = [_encode(tokenizer, p, bos) for p in self.prompts]
        _check_lengths(clean, n_ctx, "prompt")
        corrupted = None
        if self.corrupted is not None:
            corrupted = [_encode(tokenizer, p, bos) for p in self.corrupted]
            for i, (c, k) in enumerate(zip(clean, corrupted, strict=True)):
                if len(c) != len(k):
                    raise PromptError(
                        f"corrupted prompt {i} has {len(k)} tokens but its clean prompt has "
                        f"{len(c)}; clean and corrupted prompts must line up token for token"
                    )
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = int(pad) if pad is not None else 0
        lengths = torch.tensor([len(c) for c in clean], dtype=torch.long)
        return Tokens(
            tokens=_pad(clean, pad).to(device),
            lengths=lengths.to(device),
            answer_ids=_answer_ids(tokenizer, self.answers, "answers", device),
            wrong_ids=_answer_ids(tokenizer, self.wrong_answers, "wrong_answers", device),
            corrupted_tokens=_pad(corrupted, pad).to(device) if corrupted is not None else None,
        )


@dataclass(frozen=True)
class Tokens:
    """A tokenized task. ``tokens`` are right-padded; ``read_pos`` is each prompt's last position."""

    tokens: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]
    answer_ids: Int[Tensor, " batch"] | None = None
    wrong_ids: Int[Tensor, " batch"] | None = None
    corrupted_tokens: Int[Tensor, "batch pos"] | None = None

    @property
    def read_pos(self) -> Int[Tensor, " batch"]:
        return self.lengths - 1

    @property
    def n(self) -> int:
        return int(self.tokens.shape[0])

    def position_mask(self) -> Tensor:
        """Bool ``[batch, pos]``: True at real (non-pad) positions."""
        t = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return t[None, :] < self.lengths[:, None]

    def select(self, start: int, stop: int) -> Tokens:
        """Prompts ``start:stop``, trimmed to their own longest length."""
        width = int(self.lengths[start:stop].max())

        def cut(x: Tensor | None) -> Tensor | None:
            if x is None:
                return None
            return x[start:stop, :width] if x.ndim == 2 else x[start:stop]

        return Tokens(
            tokens=cut(self.tokens),
            lengths=self.lengths[start:stop],
            answer_ids=cut(self.answer_ids),
            wrong_ids=cut(self.wrong_ids),
            corrupted_tokens=cut(self.corrupted_tokens),
        )


def _encode(tokenizer: Any, prompt: Prompt, bos: int | None) -> list[int]:
    if isinstance(prompt, ChatPrompt):
        # The template holds the special tokens (BOS included where the model uses one).
        text = render_chat(tokenizer, prompt)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not isinstance(prompt, str):
        return [int(t) for t in prompt]
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if bos is not None and (not ids or ids[0] != bos):
        ids = [int(bos)] + ids
    if not ids:
        raise PromptError(f"prompt {prompt!r} tokenizes to nothing")
    return ids


def _check_lengths(seqs: list[list[int]], n_ctx: int, what: str) -> None:
    for i, s in enumerate(seqs):
        if len(s) > n_ctx:
            raise PromptError(
                f"{what} {i} is {len(s)} tokens long but the model's context is {n_ctx}; "
                "shorten it (mechdiff never truncates silently)"
            )


def _pad(seqs: list[list[int]], pad: int) -> Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def _answer_ids(
    tokenizer: Any, answers: Sequence[Answer] | None, what: str, device: torch.device | str
) -> Tensor | None:
    if answers is None:
        return None
    vocab = len(tokenizer)
    ids = []
    for i, a in enumerate(answers):
        if isinstance(a, int):
            tok = a
        else:
            enc = tokenizer(a, add_special_tokens=False)["input_ids"]
            if len(enc) != 1:
                pieces = tokenizer.convert_ids_to_tokens(enc)
                raise AnswerTokenError(
                    f"{what}[{i}] = {a!r} is {len(enc)} tokens {pieces}, not one. Give a single "
                    "token (mind the leading space: ' Paris' vs 'Paris'), or a token id."
                )
            tok = enc[0]
        if not 0 <= tok < vocab:
            raise AnswerTokenError(f"{what}[{i}] = {tok} is not a token id (vocabulary {vocab})")
        ids.append(tok)
    return torch.tensor(ids, dtype=torch.long, device=device)
