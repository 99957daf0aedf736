"""Turning a task's prompts and answers into token ids, with the checks that need the tokenizer.

Used by :meth:`mechdiff.tasks.Task.tokenize`. Refused here (each would be a silently wrong number):

* a string prompt that tokenizes to nothing (only a BOS would be scored);
* a prompt with words the tokenizer does not know (a word-level tokenizer maps them to its unknown
  token; the unknown token's own text, written in the prompt, is allowed);
* a token id outside the tokenizer's vocabulary (``0 .. len(tokenizer) - 1``);
* an answer string that is not exactly one token, or that the tokenizer maps to its unknown token
  (it would be scored as that token); answers given as ids are taken as the user's choice;
* an answer and its wrong answer that are the same token (``"t1"`` and ``1``, ``" t1"`` and
  ``"t1"`` for a tokenizer that drops spaces).

Tokenizers without an unknown token (byte-level BPE: GPT-2, LLaMA-3, SmolLM2) never produce one,
so for them the unknown-token checks pass by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from mechdiff.errors import AnswerTokenError, OptionError, PromptError
from mechdiff.tasks.chat import ChatPrompt, render_chat


def check_tokenizer(tokenizer: Any) -> int:
    """The vocabulary size of a Hugging Face tokenizer.

    Raises:
        OptionError: ``tokenizer`` is not callable with a length (not a tokenizer).
    """
    if not callable(tokenizer) or not hasattr(tokenizer, "__len__"):
        raise OptionError(
            f"tokenizer must be a Hugging Face tokenizer (pair.tokenizer, model.tokenizer), got "
            f"{type(tokenizer).__name__}"
        )
    return len(tokenizer)


def check_n_ctx(n_ctx: object) -> int:
    """The model's context length: a positive integer.

    Raises:
        OptionError: ``n_ctx`` is not a positive integer.
    """
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
        raise OptionError(
            f"n_ctx must be a positive integer (the model's context length, model.cfg.n_ctx), "
            f"got {n_ctx!r}"
        )
    return n_ctx


def check_device(device: object) -> torch.device:
    """A torch device that exists here.

    Raises:
        OptionError: ``device`` is not a device name, is ``meta``, or is not available here.
    """
    if not isinstance(device, (str, torch.device)):
        raise OptionError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise OptionError(
            f"device {device!r} is not a torch device ({str(e).splitlines()[0]}); use 'cpu', "
            "'cuda', 'cuda:1' or 'mps'"
        ) from None
    if dev.type == "meta":
        raise OptionError("device 'meta' holds no data; use 'cpu', 'cuda' or 'mps'")
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise OptionError(f"device {device!r} is not available here ({first}); use 'cpu'") from None
    return dev


def _ids(tokenizer: Any, text: str, label: str, error: type[Exception]) -> list[int]:
    """``text``'s token ids (no special tokens added); a tokenizer failure becomes ``error``."""
    try:
        return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    except Exception as e:  # tokenizers raise bare Exceptions (e.g. WordLevel without unk)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise error(
            f"{label} ({text[:40]!r}) cannot be tokenized: the tokenizer says {first!r}; use "
            "words in the tokenizer's vocabulary"
        ) from None


def _unk(tokenizer: Any) -> tuple[int | None, str | None]:
    unk_id = getattr(tokenizer, "unk_token_id", None)
    unk = getattr(tokenizer, "unk_token", None)
    return (int(unk_id) if unk_id is not None else None), (str(unk) if unk is not None else None)


def _unknown_words(tokenizer: Any, text: str, unk_id: int) -> list[str]:
    """The pieces of ``text`` mapped to the unknown token (fast tokenizers; else ``[]``)."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        return []
    spans = enc.get("offset_mapping") or []
    return [text[a:b] for t, (a, b) in zip(enc["input_ids"], spans, strict=False) if t == unk_id]


def encode_prompt(
    tokenizer: Any, prompt: Any, bos: int | None, vocab: int, label: str
) -> list[int]:
    """A frozen prompt's token ids (BOS prepended to strings when ``bos`` is given).

    Raises:
        PromptError: the prompt tokenizes to nothing, holds unknown words, or holds token ids
            outside the vocabulary.
    """
    if isinstance(prompt, tuple):
        for j, t in enumerate(prompt):
            if not 0 <= t < vocab:
                raise PromptError(
                    f"{label} holds token id {t} at position {j}, outside the tokenizer's "
                    f"vocabulary (ids 0..{vocab - 1}); give ids of this tokenizer"
                )
        return list(prompt)
    if isinstance(prompt, ChatPrompt) and not getattr(tokenizer, "chat_template", None):
        raise PromptError(
            f"{label} is a chat, but the tokenizer has no chat template (tokenizer.chat_template "
            "is empty); give the prompts as plain strings, or use the chat model's own tokenizer"
        )
    text = render_chat(tokenizer, prompt) if isinstance(prompt, ChatPrompt) else prompt
    ids = _ids(tokenizer, text, label, PromptError)
    if not ids:
        raise PromptError(
            f"{label} ({text[:40]!r}) tokenizes to nothing: only a BOS would be scored; write text "
            "the tokenizer keeps, or remove the prompt"
        )
    unk_id, unk = _unk(tokenizer)
    if unk_id is not None and ids.count(unk_id) > (text.count(unk) if unk else 0):
        words = _unknown_words(tokenizer, text, unk_id)
        shown = f" ({', '.join(repr(w) for w in words[:5])})" if words else ""
        raise PromptError(
            f"{label} has {ids.count(unk_id)} piece(s){shown} the tokenizer does not know: it maps "
            f"them to its unknown token {unk!r}, which would be scored; use words in the "
            "tokenizer's vocabulary"
        )
    # Chat templates hold their own special tokens (BOS included where the model uses one).
    if bos is not None and not isinstance(prompt, ChatPrompt) and ids[0] != bos:
        ids = [int(bos), *ids]
    return ids


def answer_ids(
    tokenizer: Any, answers: Sequence[str | int], labels: Sequence[str], vocab: int
) -> list[int]:
    """Each answer's single token id.

    Raises:
        AnswerTokenError: an answer is not one token, maps to the unknown token, or is an id
            outside the vocabulary.
    """
    unk_id, unk = _unk(tokenizer)
    ids = []
    for a, label in zip(answers, labels, strict=True):
        if isinstance(a, int):
            tok = a
        else:
            enc = _ids(tokenizer, a, label, AnswerTokenError)
            if len(enc) != 1:
                from mechdiff.views.tokens import shown, token_texts  # (light; not at import)

                pieces = " | ".join(shown(t) for t in token_texts(tokenizer, enc))
                raise AnswerTokenError(
                    f"{label} = {a!r} is {len(enc)} tokens ({pieces}; \u2423 marks a space), "
                    "not one. Give a single token (mind the leading space: ' Paris' vs "
                    "'Paris'), or a token id."
                )
            tok = enc[0]
            if tok == unk_id and a.strip() != unk:
                raise AnswerTokenError(
                    f"{label} = {a!r} is not in the tokenizer's vocabulary: it maps to the "
                    f"unknown token {unk!r} (id {tok}), which would be scored instead; give a "
                    "token of the vocabulary"
                )
        if not 0 <= tok < vocab:
            raise AnswerTokenError(
                f"{label} = {tok} is not a token id of this tokenizer (vocabulary of {vocab}: "
                f"ids 0..{vocab - 1}); give a token of the vocabulary"
            )
        ids.append(tok)
    return ids


def check_pairs(
    answers: Sequence[str | int], wrong: Sequence[str | int], a_ids: Sequence[int],
    w_ids: Sequence[int], labels: Sequence[tuple[str, str]],
) -> None:
    """Refuse an answer and wrong answer that are the same token after tokenization.

    Raises:
        AnswerTokenError: naming both, and the shared token id.
    """
    for a, w, i, j, (la, lw) in zip(answers, wrong, a_ids, w_ids, labels, strict=True):
        if i == j:
            raise AnswerTokenError(
                f"{la} ({a!r}) and {lw} ({w!r}) are the same token (id {i}): their logit "
                "difference is 0 by construction; give a wrong answer that differs"
            )
