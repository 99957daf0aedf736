"""Checks on the values a task is made of, shared by :class:`~mechdiff.tasks.Task` and the
prompt-file reader (:mod:`mechdiff.tasks.files`), so that the API and files refuse the same things
with the same words.

Each check takes a value and a :class:`Loc` saying where the value came from (``prompt 3`` or
``answers[3]`` for the API; ``prompts.jsonl:4: 'answer'`` for a file) and returns the value frozen,
or raises the typed error whose one-line message reads ``<where> <what is wrong>; <what to do>``.
Prompt problems are :class:`~mechdiff.errors.PromptError`, answer problems
:class:`~mechdiff.errors.AnswerTokenError`, metric problems :class:`~mechdiff.errors.MetricError`,
and options of the Python API (``name``, ``prepend_bos``, ``n_ctx``, ``device``...)
:class:`~mechdiff.errors.OptionError`.

What is refused, and why (each is a silently wrong number otherwise):

* a prompt that is empty or whitespace only (it would be scored as a lone BOS);
* a boolean as an answer or a token id (Python reads ``True``/``False`` as token ids 1 and 0);
* a negative token id, a number with a fraction, ``None``/``null``;
* a list of strings as one prompt, a single chat message where a chat (a list) belongs;
* an answer equal to its wrong answer (a logit difference of 0 by construction);
* a corrupted prompt of another kind (text, token ids, chat) than its clean prompt;
* text holding half of a surrogate pair (no tokenizer can encode it).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Literal, TypeAlias

from mechdiff.errors import AnswerTokenError, OptionError, PromptError

Kind: TypeAlias = Literal["text", "ids", "chat"]
"""What a prompt is: a string, a list of token ids, or a chat (a list of messages)."""

PROMPT_FORMS = (
    "a prompt is a string, a list of token ids, or a chat (a list of "
    '{"role", "content"} messages)'
)


@dataclass(frozen=True)
class Loc:
    """Where a value came from, for error messages.

    Attributes:
        where: ``""`` for the Python API, ``"<file>:<line>: "`` for a row of a prompt file.
        what: the value's name there (``"prompt 3"``, ``"answers[3]"``, ``"'answer'"``).
        json: show values as JSON (``true``, ``null``) rather than Python (``True``, ``None``).
    """

    where: str
    what: str
    json: bool = False

    def __str__(self) -> str:
        return self.where + self.what

    def show(self, x: object, limit: int = 60) -> str:
        """``x`` as the user wrote it (JSON in files, Python in the API), cut to ``limit``."""
        try:
            text = json.dumps(x, ensure_ascii=False) if self.json else repr(x)
            text.encode("utf-8")  # half a surrogate pair: escape it, so the message prints
        except UnicodeEncodeError:
            text = json.dumps(x)
        except (TypeError, ValueError, RecursionError):
            try:
                text = repr(x)
            except (ValueError, RecursionError):  # ints past str()'s digit limit, deep nesting
                text = f"<{type(x).__name__}>"
        text = text.replace("\n", "\\n").replace("\r", "\\r")
        return text if len(text) <= limit else text[: limit - 3] + "..."


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean x?)`` for the closest of ``choices`` (difflib), or ``""``."""
    choices = list(choices)
    norm = word.strip().lower().replace("-", "_").replace(" ", "_")
    if norm in choices and norm != word:
        return f" (did you mean {norm}?)"
    close = difflib.get_close_matches(norm, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def plain(x: object) -> object:
    """Tensors and arrays as Python lists/scalars (``tolist``); anything else unchanged."""
    if not isinstance(x, (str, bytes, list, tuple, Mapping)) and hasattr(x, "tolist"):
        try:
            return x.tolist()
        except (TypeError, ValueError, RuntimeError):
            return x
    return x


def type_words(x: object, json_names: bool = False) -> str:
    """``"a boolean"``, ``"a number"``, ``"null"``... (what ``x`` is, in words)."""
    if x is None:
        return "null" if json_names else "None"
    if isinstance(x, bool):
        return "a boolean"
    if isinstance(x, (Integral, float)):
        return "a number"
    if isinstance(x, str):
        return "a string"
    if isinstance(x, Mapping):
        return "an object" if json_names else "a dict"
    if isinstance(x, (list, tuple)):
        return "a list"
    return f"a {type(x).__name__}"


def what_is(x: object, loc: Loc) -> str:
    """``x`` shown with what it is: ``true (a boolean)``, ``3 (a number)``, ``null``."""
    if x is None:
        return loc.show(x)
    return f"{loc.show(x)} ({type_words(x, loc.json)})"


def items(x: object, field: str, error: type[Exception]) -> list[Any]:
    """The entries of a list-valued field (``prompts``, ``answers``...), or ``error``."""
    x = plain(x)
    if isinstance(x, str):
        raise error(
            f"{field} is a single string; give a list with one entry per prompt (wrap it in [...])"
        )
    if not isinstance(x, Sequence) or isinstance(x, (bytes, Mapping)):
        raise error(f"{field} is {type_words(x)}; give a list with one entry per prompt")
    return list(x)


def text(x: str, loc: Loc, error: type[Exception]) -> str:
    """``x`` unchanged, unless it holds half a surrogate pair (no tokenizer can encode it)."""
    try:
        x.encode("utf-8")
    except UnicodeEncodeError as e:
        raise error(
            f"{loc} holds {x[e.start]!r} at character {e.start}, half of a UTF-16 surrogate pair "
            "(often a JSON escape like \\ud83d without its partner); write the whole character"
        ) from None
    return x


def token_id(x: object, loc: Loc, error: type[Exception]) -> int:
    """A non-negative integer token id (booleans and fractions refused)."""
    x = plain(x)
    if isinstance(x, bool):
        raise error(
            f"{loc} is {loc.show(x)} (a boolean), not a token id: it would be read as token id "
            f"{int(x)}; write the token as a string, or its id as a number"
        )
    if isinstance(x, float) and x.is_integer():
        raise error(
            f"{loc} is {loc.show(x)}, a number with a decimal point; write token ids as integers "
            f"({int(x)})"
        )
    if not isinstance(x, Integral):
        raise error(f"{loc} is {what_is(x, loc)}; token ids are integers")
    if x < 0:
        raise error(f"{loc} is a negative token id ({loc.show(x)}); token ids are 0 or more")
    if x >= MAX_ID:
        raise error(f"{loc} is {loc.show(x, 30)}, too large to be a token id; check the value")
    return int(x)


def kind(prompt: object) -> Kind:
    """The kind of a frozen prompt."""
    from mechdiff.tasks.chat import ChatPrompt

    if isinstance(prompt, str):
        return "text"
    return "chat" if isinstance(prompt, ChatPrompt) else "ids"


MAX_ID = 2**63
"""Token ids are torch ``long``s: anything from here up is refused before it reaches torch."""

KIND_WORDS: dict[Kind, str] = {"text": "a string", "ids": "a list of token ids", "chat": "a chat"}


def prompt(x: object, loc: Loc) -> Any:
    """A prompt frozen: a string, a tuple of token ids, or a :class:`ChatPrompt`.

    Raises:
        PromptError: ``x`` is empty, whitespace only, not one of the three forms, or holds a bad
            token id or chat message.
    """
    from mechdiff.tasks.chat import ChatPrompt, freeze_chat

    x = plain(x)
    if isinstance(x, ChatPrompt):
        return x
    if isinstance(x, str):
        if not x:
            raise PromptError(f"{loc} is empty; write the prompt's text, or remove it")
        if x.isspace():
            raise PromptError(
                f"{loc} is whitespace only ({loc.show(x)}): it would be scored as a lone BOS; "
                "write the prompt's text, or remove it"
            )
        return text(x, loc, PromptError)
    if isinstance(x, Mapping):
        raise PromptError(
            f"{loc} is a single {'object' if loc.json else 'dict'} {loc.show(x)}; a chat prompt "
            "is a list of messages: wrap it in [...]"
        )
    if isinstance(x, (bool, Integral, float)) or x is None:
        raise PromptError(f"{loc} is {what_is(x, loc)}; {PROMPT_FORMS}")
    if not isinstance(x, Sequence) or isinstance(x, bytes):
        raise PromptError(f"{loc} is {type_words(x)}; {PROMPT_FORMS}")
    if len(x) == 0:
        raise PromptError(f"{loc} is empty; {PROMPT_FORMS}, with at least one entry")
    if any(isinstance(plain(m), Mapping) for m in x):
        return freeze_chat(x, loc)
    if all(isinstance(plain(t), str) for t in x):
        raise PromptError(
            f"{loc} is a list of strings {loc.show(x)}; a prompt is one string (join the pieces), "
            "or give each as its own prompt"
        )
    ids = []
    for j, t in enumerate(x):
        ids.append(token_id(t, Loc(loc.where, f"{loc.what} token {j}", loc.json), PromptError))
    return tuple(ids)


def answer(x: object, loc: Loc) -> str | int:
    """An answer frozen: a non-empty string or a non-negative token id.

    Whitespace answers (``" "``, ``"\\n"``) are allowed: they are tokens in most vocabularies.

    Raises:
        AnswerTokenError: ``x`` is a boolean, a negative id, empty, or not a string or an integer.
    """
    x = plain(x)
    if isinstance(x, str):
        if not x:
            raise AnswerTokenError(
                f"{loc} is an empty string; an answer is one token: a string such as ' Paris', "
                "or a token id"
            )
        return text(x, loc, AnswerTokenError)
    if isinstance(x, bool):
        raise AnswerTokenError(
            f"{loc} is {loc.show(x)} (a boolean), not an answer: it would be read as token id "
            f"{int(x)}; write the answer as a string such as {loc.show(str(x).lower())} or "
            f"{loc.show(' yes')}, or as a token id"
        )
    if isinstance(x, (Integral, float)):
        return token_id(x, loc, AnswerTokenError)
    raise AnswerTokenError(
        f"{loc} is {what_is(x, loc)}; an answer is one token: a string such as "
        f"{loc.show(' Paris')}, or a token id"
    )


def answer_pair(a: str | int, w: str | int, where: str, what_a: str, what_w: str) -> None:
    """Refuse an answer equal to its wrong answer (written the same way).

    Raises:
        AnswerTokenError: ``a == w`` (same string, or same token id).
    """
    if type(a) is type(w) and a == w:
        raise AnswerTokenError(
            f"{where}{what_a} and {what_w} are both {a!r}: an answer must differ from its wrong "
            "answer (their logit difference is 0 by construction); fix or remove the row"
        )


def same_kind(clean: object, corrupted: object, loc: Loc) -> None:
    """Refuse a corrupted prompt of another kind than its clean prompt.

    Raises:
        PromptError: one is a string and the other token ids or a chat, or similar.
    """
    k, c = kind(clean), kind(corrupted)
    if k != c:
        raise PromptError(
            f"{loc} is {KIND_WORDS[c]} but its clean prompt is {KIND_WORDS[k]}; a corrupted "
            "prompt must be of the same kind as its clean prompt (they are patched token for token)"
        )


def name(x: object, error: type[Exception] = OptionError, where: str = "") -> str:
    """A task's name: a non-blank string.

    Raises:
        OptionError (or ``error``): ``x`` is not a string or is blank.
    """
    if not isinstance(x, str):
        raise error(
            f"{where}name is {x!r:.40} ({type_words(x)}); a task's name is a string such as "
            "'capitals'"
        )
    if not x.strip():
        raise error(f"{where}name is blank; a task's name is a string such as 'capitals'")
    return text(x, Loc(where, "name"), error)


def flag(x: object, what: str, error: type[Exception] = OptionError, where: str = "") -> bool:
    """A boolean option (``prepend_bos``).

    Raises:
        OptionError (or ``error``): ``x`` is not ``True`` or ``False``.
    """
    if not isinstance(x, bool):
        raise error(f"{where}{what} is {type_words(x)} ({x!r}); give true or false")
    return x
