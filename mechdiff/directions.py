"""Directions of a cross-model patch: which model receives, which one gives.

* ``"ft->base"`` (**sufficiency**): the fine-tuned model's activation enters the base model's run.
  A site that closes the gap is *sufficient* to produce the fine-tuned behaviour.
* ``"base->ft"`` (**necessity**): the base model's activation enters the fine-tuned model's run.
  A site that closes the gap is *necessary* for the fine-tuned behaviour.
* ``"clean->corrupted"``: single-model patching (clean prompts give, corrupted prompts receive).

Every analysis resolves a direction here, and only here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeAlias

from mechdiff.errors import OptionError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from mechdiff.loading import ModelPair

Direction: TypeAlias = Literal["ft->base", "base->ft"]
DIRECTIONS: tuple[Direction, ...] = ("ft->base", "base->ft")
SINGLE_MODEL = "clean->corrupted"
"""The direction recorded by single-model patching (clean donor, corrupted receiver)."""

ROLES: dict[str, str] = {"ft->base": "sufficiency", "base->ft": "necessity"}
ALIASES: dict[str, Direction] = {
    "ft->base": "ft->base",
    "base->ft": "base->ft",
    "ft-to-base": "ft->base",
    "base-to-ft": "base->ft",
}
"""Spellings accepted from users; ``ft-to-base`` / ``base-to-ft`` need no quoting in a shell."""


def parse_direction(text: str) -> Direction:
    """A direction from any accepted spelling (:data:`ALIASES`).

    Raises:
        OptionError: not a direction.
    """
    try:
        return ALIASES[text]
    except (KeyError, TypeError):
        raise OptionError(
            f"invalid direction {text!r}; choose ft->base (sufficiency) or base->ft (necessity) "
            "(shell-safe spellings: ft-to-base, base-to-ft)"
        ) from None


def receiver_and_donor(
    pair: ModelPair, direction: str
) -> tuple[TransformerBridge, TransformerBridge]:
    """The model whose run is patched and the model whose activations are patched in."""
    direction = parse_direction(direction)
    if direction == "ft->base":
        return pair.base, pair.finetuned
    return pair.finetuned, pair.base


def slug(direction: str) -> str:
    """A folder-safe name: ``ft_to_base``, ``base_to_ft``, ``clean_to_corrupted``."""
    return direction.replace("->", "_to_")
