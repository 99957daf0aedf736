"""Chat prompts: conversations rendered with the tokenizer's own chat template.

A prompt may be a list of ``{"role", "content"}`` messages with roles ``system``, ``user`` and
``assistant``. It is rendered with ``tokenizer.apply_chat_template(messages,
add_generation_prompt=True, tokenize=False)`` (:func:`render_chat`); the rendered prompt ends with
the template's assistant header, so the logits at its last token predict the first token of the
assistant's reply. Chat prompts are stored frozen as :class:`ChatPrompt`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from mechdiff.errors import PromptError

ROLES: tuple[str, ...] = ("system", "user", "assistant")
"""Message roles a chat prompt may use."""

Message: TypeAlias = Mapping[str, str]
"""One ``{"role": ..., "content": ...}`` message."""


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation to be rendered with the tokenizer's chat template.

    Attributes:
        messages: ``(role, content)`` pairs in order; roles are ``system``, ``user`` or
            ``assistant``.
    """

    messages: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, messages: ChatPrompt | Sequence[Mapping[str, str]]) -> ChatPrompt:
        """Validate and freeze a list of ``{"role": ..., "content": ...}`` messages.

        Raises:
            PromptError: the list is empty, a message is not a mapping with a known ``role`` and a
                string ``content``.
        """
        if isinstance(messages, ChatPrompt):
            return messages
        if not messages:
            raise PromptError(
                "a chat prompt has no messages; give at least one {'role', 'content'} dict"
            )
        out = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or set(m) != {"role", "content"}:
                raise PromptError(
                    f"chat message {i} is {m!r}; each message must be a dict with exactly the keys "
                    "'role' and 'content'"
                )
            if m["role"] not in ROLES or not isinstance(m["content"], str):
                raise PromptError(
                    f"chat message {i} has role {m['role']!r} and content of type "
                    f"{type(m['content']).__name__}; roles are {ROLES} and content is a string"
                )
            out.append((str(m["role"]), m["content"]))
        return cls(tuple(out))

    def as_dicts(self) -> list[dict[str, str]]:
        """The messages as ``[{"role": ..., "content": ...}, ...]``."""
        return [{"role": r, "content": c} for r, c in self.messages]


def is_chat(x: Any) -> bool:
    if isinstance(x, ChatPrompt):
        return True
    return (
        not isinstance(x, (str, bytes))
        and isinstance(x, Sequence)
        and len(x) > 0
        and any(isinstance(m, Mapping) for m in x)
    )


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
    """
    chat = ChatPrompt.of(messages)
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError(
            "chat prompts need a tokenizer with a chat template (tokenizer.chat_template is "
            "empty); give the prompts as plain strings, or use the chat model's own tokenizer"
        )
    return tokenizer.apply_chat_template(
        chat.as_dicts(), add_generation_prompt=add_generation_prompt, tokenize=False
    )
