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

**Checks.** A task is checked when it is built, with the same checks (and the same words) as
prompt files (:mod:`mechdiff.tasks.checks`): empty or whitespace-only prompts, booleans as answers
or token ids, negative ids, an answer equal to its wrong answer, a corrupted prompt of another kind
than its clean prompt, an unknown metric, a ``name`` that is not a string are refused. What needs
the tokenizer is checked by :meth:`Task.tokenize` (:mod:`mechdiff.tasks.encoding`): answers that
are not one token or that map to the unknown token, token ids outside the vocabulary, answers that
become the same token as their wrong answers, prompts longer than the context.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import torch
from jaxtyping import Int
from torch import Tensor

from mechdiff.choices import METRICS, MetricName
from mechdiff.errors import AnswerTokenError, MetricError, OptionError, PromptError
from mechdiff.tasks import checks, encoding
from mechdiff.tasks.chat import ChatPrompt, Message
from mechdiff.tasks.checks import Loc

Prompt: TypeAlias = str | Sequence[int] | Sequence[Message] | ChatPrompt
Answer: TypeAlias = str | int

FIELDS: tuple[str, ...] = ("prompts", "answers", "wrong_answers", "corrupted")
"""The per-prompt fields of a task, in order."""


def _api_loc(name: str, i: int) -> Loc:
    """How the Python API names entry ``i`` of a per-prompt field."""
    if name == "prompts":
        return Loc("", f"prompt {i}")
    if name == "corrupted":
        return Loc("", f"corrupted prompt {i}")
    return Loc("", f"{name}[{i}]")


def check_metric(metric: object, where: str = "") -> MetricName:
    """A known metric name.

    Raises:
        MetricError: ``metric`` is not one of :data:`METRICS`.
    """
    if not isinstance(metric, str) or metric not in METRICS:
        hint = checks.suggest(metric, METRICS) if isinstance(metric, str) else ""
        raise MetricError(
            f"{where}unknown metric {metric!r}{hint}; choose one of {', '.join(METRICS)}"
        )
    return metric  # type: ignore[return-value]


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
        corrupted: one corrupted prompt per prompt, of the same kind (string, ids, chat) and the
            same token length as its clean prompt (classic single-model patching: clean is the
            donor, corrupted the receiver).
        metric: how behaviour is scored; by default ``logit_diff`` if wrong answers are given,
            ``logprob`` if only answers are, else ``kl``.
        name: a short name used in results and figures.
        prepend_bos: prepend the tokenizer's BOS token to string prompts (TransformerLens's
            default). Ignored when the tokenizer has no BOS token, and for chat prompts (their
            template decides the special tokens).

    Raises:
        PromptError: a prompt is empty, whitespace only, or not a string, token ids or a chat; a
            token id is negative or a boolean; a per-prompt list has the wrong length; a
            corrupted prompt is of another kind than its clean prompt.
        AnswerTokenError: an answer is a boolean, empty, negative, or equal to its wrong answer;
            wrong answers without answers.
        MetricError: an unknown metric, or one the task cannot score.
        OptionError: ``name`` is not a non-blank string, ``prepend_bos`` not a boolean.
    """

    prompts: Sequence[Prompt]
    answers: Sequence[Answer] | None = None
    wrong_answers: Sequence[Answer] | None = None
    corrupted: Sequence[Prompt] | None = None
    metric: MetricName | None = None
    name: str = "task"
    prepend_bos: bool = True
    _resolved_metric: MetricName = field(init=False, repr=False, compare=False)
    _locs: Mapping[str, tuple[Loc, ...]] | None = field(
        init=False, repr=False, compare=False, default=None
    )

    def __post_init__(self) -> None:
        checks.name(self.name)
        checks.flag(self.prepend_bos, "prepend_bos")
        prompts = tuple(
            checks.prompt(p, _api_loc("prompts", i))
            for i, p in enumerate(checks.items(self.prompts, "prompts", PromptError))
        )
        if not prompts:
            raise PromptError("the prompt list is empty: give at least one prompt")
        object.__setattr__(self, "prompts", prompts)
        for name in FIELDS[1:]:
            value = getattr(self, name)
            if value is None:
                continue
            is_answer = name != "corrupted"
            raw = checks.items(value, name, AnswerTokenError if is_answer else PromptError)
            if len(raw) != len(prompts):
                raise PromptError(
                    f"{name} has {len(raw)} entries but there are {len(prompts)} prompts; "
                    "give exactly one per prompt"
                )
            freeze = checks.answer if is_answer else checks.prompt
            frozen = tuple(freeze(x, _api_loc(name, i)) for i, x in enumerate(raw))
            object.__setattr__(self, name, frozen)
        if self.wrong_answers is not None and self.answers is None:
            raise AnswerTokenError(
                "wrong_answers were given without answers; give answers too (one per prompt)"
            )
        if self.wrong_answers is not None:
            for i, (a, w) in enumerate(zip(self.answers, self.wrong_answers, strict=True)):
                checks.answer_pair(a, w, "", f"answers[{i}]", f"wrong_answers[{i}]")
        if self.corrupted is not None:
            for i, (p, c) in enumerate(zip(prompts, self.corrupted, strict=True)):
                checks.same_kind(p, c, _api_loc("corrupted", i))
        metric = self.metric
        if metric is None:
            metric = (
                "logit_diff"
                if self.wrong_answers is not None
                else "logprob"
                if self.answers is not None
                else "kl"
            )
        metric = check_metric(metric)
        if metric == "logit_diff" and self.wrong_answers is None:
            raise MetricError(
                "metric 'logit_diff' needs answers and wrong_answers; give both, or choose "
                "'logprob' (answers only) or 'kl' (no answers)"
            )
        if metric == "logprob" and self.answers is None:
            raise MetricError("metric 'logprob' needs answers; give them, or choose 'kl'")
        object.__setattr__(self, "_resolved_metric", metric)
        object.__setattr__(self, "_locs", None)

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
    def from_file(cls, path: str | Path, **overrides: Any) -> Task:
        """Read a task from a prompt file (``.jsonl``, ``.json`` or ``.txt``, any case).

        The schema is in :mod:`mechdiff.tasks.files`; ``overrides`` (``metric``, ``name``,
        ``prepend_bos``) replace what the file says. Errors name the file and line.
        """
        from mechdiff.tasks.files import read_task

        return read_task(path, **overrides)

    def _loc(self, name: str, i: int) -> Loc:
        """Where entry ``i`` of a per-prompt field came from (a file line, or the API)."""
        if self._locs is not None and name in self._locs:
            return self._locs[name][i]
        return _api_loc(name, i)

    def tokenize(self, tokenizer: Any, *, n_ctx: int, device: torch.device | str = "cpu") -> Tokens:
        """Turn the task into right-padded token ids, checking lengths and answers.

        Chat prompts are rendered with the tokenizer's chat template (see :func:`render_chat`).

        Args:
            tokenizer: the models' Hugging Face tokenizer.
            n_ctx: the model's context length; longer prompts are refused, never truncated.
            device: where the token tensors go.

        Raises:
            OptionError: ``tokenizer`` is not a tokenizer, ``n_ctx`` not a positive integer, or
                ``device`` not a device available here.
            PromptError: a prompt is longer than ``n_ctx``, tokenizes to nothing, has words the
                tokenizer maps to its unknown token, or holds ids outside the vocabulary; a
                corrupted prompt's token length differs from its clean prompt's; chat prompts meet
                a tokenizer without a chat template.
            AnswerTokenError: an answer string is not exactly one token or maps to the unknown
                token; an answer id is outside the vocabulary; an answer and its wrong answer are
                the same token.
        """
        vocab = encoding.check_tokenizer(tokenizer)
        n_ctx = encoding.check_n_ctx(n_ctx)
        device = encoding.check_device(device)
        bos = getattr(tokenizer, "bos_token_id", None) if self.prepend_bos else None

        def encode(name: str, prompts: Sequence[Any]) -> list[list[int]]:
            out = []
            for i, p in enumerate(prompts):
                label = str(self._loc(name, i))
                ids = encoding.encode_prompt(tokenizer, p, bos, vocab, label)
                if len(ids) > n_ctx:
                    raise PromptError(
                        f"{label} is {len(ids)} tokens long but the model's context is {n_ctx}; "
                        "shorten it (mechdiff never truncates silently)"
                    )
                out.append(ids)
            return out

        clean = encode("prompts", self.prompts)
        corrupted = None
        if self.corrupted is not None:
            corrupted = encode("corrupted", self.corrupted)
            for i, (c, k) in enumerate(zip(clean, corrupted, strict=True)):
                if len(c) != len(k):
                    raise PromptError(
                        f"{self._loc('corrupted', i)} has {len(k)} tokens but its clean prompt has "
                        f"{len(c)}; clean and corrupted prompts must line up token for token"
                    )
        ids = {
            name: encoding.answer_ids(
                tokenizer, values, [str(self._loc(name, i)) for i in range(len(values))], vocab
            )
            for name in ("answers", "wrong_answers")
            if (values := getattr(self, name)) is not None
        }
        if "wrong_answers" in ids:
            labels = []
            for i in range(len(self)):
                la, lw = self._loc("answers", i), self._loc("wrong_answers", i)
                labels.append((str(la), lw.what if la.where == lw.where else str(lw)))
            encoding.check_pairs(
                self.answers, self.wrong_answers, ids["answers"], ids["wrong_answers"], labels
            )
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = int(pad) if pad is not None else 0

        def tensor(name: str) -> Tensor | None:
            return torch.tensor(ids[name], dtype=torch.long, device=device) if name in ids else None

        return Tokens(
            tokens=_pad(clean, pad).to(device),
            lengths=torch.tensor([len(c) for c in clean], dtype=torch.long, device=device),
            answer_ids=tensor("answers"),
            wrong_ids=tensor("wrong_answers"),
            corrupted_tokens=_pad(corrupted, pad).to(device) if corrupted is not None else None,
        )


@dataclass(frozen=True)
class Tokens:
    """A tokenized task. ``tokens`` are right-padded; ``read_pos`` is each prompt's last position.

    Built by :meth:`Task.tokenize`. Constructing one by hand checks shapes and dtypes only (no
    values, so no device synchronisation): integer tensors, ``lengths``/``answer_ids``/
    ``wrong_ids`` of shape ``[batch]``, ``corrupted_tokens`` of the shape of ``tokens``.

    Raises:
        OptionError: a tensor has the wrong shape or dtype.
    """

    tokens: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]
    answer_ids: Int[Tensor, " batch"] | None = None
    wrong_ids: Int[Tensor, " batch"] | None = None
    corrupted_tokens: Int[Tensor, "batch pos"] | None = None

    def __post_init__(self) -> None:
        def check(name: str, shape: tuple[int, ...]) -> None:
            x = getattr(self, name)
            if x is None and name not in ("tokens", "lengths"):
                return
            if not isinstance(x, Tensor) or x.dtype.is_floating_point or x.dtype.is_complex or (
                x.dtype == torch.bool
            ):
                got = f"a {x.dtype} tensor" if isinstance(x, Tensor) else type(x).__name__
                raise OptionError(f"Tokens.{name} must be an integer tensor, got {got}")
            if tuple(x.shape) != shape:
                raise OptionError(
                    f"Tokens.{name} has shape {tuple(x.shape)} but must be {shape} "
                    f"(tokens is {tuple(self.tokens.shape)})"
                )

        if not isinstance(self.tokens, Tensor) or self.tokens.ndim != 2:
            got = (f"shape {tuple(self.tokens.shape)}" if isinstance(self.tokens, Tensor)
                   else type(self.tokens).__name__)
            raise OptionError(f"Tokens.tokens must be a [batch, pos] tensor, got {got}")
        check("tokens", tuple(self.tokens.shape))
        batch = int(self.tokens.shape[0])
        for name in ("lengths", "answer_ids", "wrong_ids"):
            check(name, (batch,))
        check("corrupted_tokens", tuple(self.tokens.shape))

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
        """Prompts ``start:stop``, trimmed to their own longest length.

        Raises:
            OptionError: unless ``0 <= start < stop <= n`` (integers).
        """
        for v in (start, stop):
            if isinstance(v, bool) or not isinstance(v, int):
                raise OptionError(f"select takes integer bounds, got {v!r}")
        if not 0 <= start < stop <= self.n:
            raise OptionError(
                f"select({start}, {stop}) is not a non-empty range of the {self.n} prompts; "
                f"give 0 <= start < stop <= {self.n}"
            )
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


def _pad(seqs: list[list[int]], pad: int) -> Tensor:
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out
