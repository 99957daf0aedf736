"""Chat prompts: conversations rendered with the tokenizer's own chat template.

A prompt may be a list of ``{"role", "content"}`` messages with roles ``system``, ``user`` and
``assistant``. It is rendered with ``tokenizer.apply_chat_template(messages,
add_generation_prompt=True, tokenize=False)`` (:func:`render_chat`); the rendered prompt ends with
the template's assistant header, so the logits at its last token predict the first token of the
assistant's reply. Chat prompts are stored frozen as :class:`ChatPrompt`.

Each message must have exactly the keys ``role`` and ``content``; the role is one of
:data:`ROLES` (lower case) and the content a string (it may be empty: the template still writes
the message's header). Anything else is a :class:`~mechdiff.errors.PromptError` naming the message,
with a suggestion for a misspelt key or role.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from mechdiff.errors import OptionError, PromptError
from mechdiff.tasks import checks
from mechdiff.tasks.checks import Loc

ROLES: tuple[str, ...] = ("system", "user", "assistant")
"""Message roles a chat prompt may use."""

KEYS: tuple[str, ...] = ("role", "content")
"""The keys of every message."""

Message: TypeAlias = Mapping[str, str]
"""One ``{"role": ..., "content": ...}`` message."""


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation to be rendered with the tokenizer's chat template.

    Attributes:
        messages: ``(role, content)`` pairs in order; roles are ``system``, ``user`` or
            ``assistant``.

    Raises:
        PromptError: on construction, when ``messages`` is not a non-empty tuple of
            ``(role, content)`` string pairs with known roles.
    """

    messages: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        m = self.messages
        if not isinstance(m, tuple) or not m:
            raise PromptError(
                "ChatPrompt.messages must be a non-empty tuple of (role, content) pairs; build "
                "chat prompts with ChatPrompt.of([{'role': ..., 'content': ...}, ...])"
            )
        for i, pair in enumerate(m):
            ok = isinstance(pair, tuple) and len(pair) == 2
            if not ok or pair[0] not in ROLES or not isinstance(pair[1], str):
                raise PromptError(
                    f"ChatPrompt message {i} is {pair!r}; each is a (role, content) pair of strings "
                    f"with a role in {ROLES}; build chat prompts with ChatPrompt.of([...])"
                )

    @classmethod
    def of(cls, messages: ChatPrompt | Sequence[Mapping[str, str]]) -> ChatPrompt:
        """Validate and freeze a list of ``{"role": ..., "content": ...}`` messages.

        Raises:
            PromptError: the list is empty, a message is not a mapping with a known ``role`` and a
                string ``content``.
        """
        if isinstance(messages, ChatPrompt):
            return messages
        return freeze_chat(messages, Loc("", "chat prompt"))

    def as_dicts(self) -> list[dict[str, str]]:
        """The messages as ``[{"role": ..., "content": ...}, ...]``."""
        return [{"role": r, "content": c} for r, c in self.messages]


def freeze_chat(messages: object, loc: Loc) -> ChatPrompt:
    """Validate a list of messages found at ``loc`` and freeze it.

    Raises:
        PromptError: naming ``loc`` and the message: not a list, empty, a message that is not an
            object/dict, unknown or missing keys, an unknown role, content that is not a string.
    """
    messages = checks.plain(messages)
    if isinstance(messages, ChatPrompt):
        return messages
    if isinstance(messages, Mapping):
        raise PromptError(
            f"{loc} is a single message {loc.show(messages)}; a chat prompt is a list of "
            "messages: wrap it in [...]"
        )
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise PromptError(
            f"{loc} is {checks.type_words(messages, loc.json)}; a chat prompt is a list of "
            '{"role", "content"} messages'
        )
    if not messages:
        raise PromptError(f"{loc} has no messages; give at least one {{'role', 'content'}} message")
    dict_word = "object" if loc.json else "dict"
    out = []
    for i, m in enumerate(messages):
        at = f"{loc} message {i}"
        m = checks.plain(m)
        if not isinstance(m, Mapping):
            raise PromptError(
                f"{at} is {loc.show(m)} ({checks.type_words(m, loc.json)}); each message is a "
                f'{dict_word} {{"role": ..., "content": ...}}'
            )
        for key in m:
            if key not in KEYS:
                raise PromptError(
                    f"{at} has the unknown key {key!r}{checks.suggest(str(key), KEYS)}; a message "
                    "has exactly the keys 'role' and 'content'"
                )
        for key in KEYS:
            if key not in m:
                raise PromptError(
                    f"{at} has no {key!r}; a message has exactly the keys 'role' and 'content'"
                )
        role, content = m["role"], m["content"]
        if not isinstance(role, str) or role not in ROLES:
            hint = checks.suggest(role, ROLES) if isinstance(role, str) else ""
            raise PromptError(
                f"{at} has the role {loc.show(role)}{hint}; roles are {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise PromptError(
                f"{at} has content {loc.show(content)} ({checks.type_words(content, loc.json)}); "
                "a message's content is a string"
            )
        out.append((role, checks.text(content, Loc("", f"{at} content"), PromptError)))
    return ChatPrompt(tuple(out))


def render_chat(
    tokenizer: Any, messages: ChatPrompt | Sequence[Message], *, add_generation_prompt: bool = True
) -> str:
    """Render a conversation with the tokenizer's own chat template.

    Args:
        tokenizer: a Hugging Face tokenizer with a ``chat_template``.
        messages: ``[{"role": ..., "content": ...}, ...]`` or a :class:`ChatPrompt`.
        add_generation_prompt: end with the assistant header, so the next token is the first
            token of the assistant's reply (how :class:`Task` renders chat prompts).

    Raises:
        PromptError: the tokenizer has no chat template, or the messages are malformed.
        OptionError: ``tokenizer`` has no ``apply_chat_template``, or ``add_generation_prompt`` is
            not a boolean.
    """
    checks.flag(add_generation_prompt, "add_generation_prompt")
    chat = ChatPrompt.of(messages)
    if not callable(getattr(tokenizer, "apply_chat_template", None)):
        raise OptionError(
            f"render_chat needs a Hugging Face tokenizer (with apply_chat_template), got "
            f"{type(tokenizer).__name__}"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError(
            "chat prompts need a tokenizer with a chat template (tokenizer.chat_template is "
            "empty); give the prompts as plain strings, or use the chat model's own tokenizer"
        )
    return tokenizer.apply_chat_template(
        chat.as_dicts(), add_generation_prompt=add_generation_prompt, tokenize=False
    )
