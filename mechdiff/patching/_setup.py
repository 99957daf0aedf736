"""What every patching method does before its first forward: check the options, tokenize the task,
name the receiving and donor runs, and build the provenance. One path for exact patching and its
gradient estimates, across models and within one model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechdiff.directions import SINGLE_MODEL, parse_direction, receiver_and_donor
from mechdiff.errors import OptionError, PromptError
from mechdiff.loading import ModelPair, model_device, model_provenance
from mechdiff.results import Provenance
from mechdiff.sites import SiteFamily, family
from mechdiff.tasks import Task, Tokens

Positions: TypeAlias = Literal["all", "each"]
POSITIONS: tuple[Positions, ...] = ("all", "each")


@dataclass(frozen=True)
class Setup:
    """Everything a patching sweep needs, checked.

    Attributes:
        receiver: the model whose run is patched.
        donor: the model whose activations are patched in (the receiver itself within one model).
        tokens: the tokenized task.
        receiver_ids: token ids of the receiving run (the corrupted prompts within one model).
        donor_ids: token ids of the donor run.
        family: the site kind being patched.
        direction: ``ft->base``, ``base->ft`` or ``clean->corrupted``.
        provenance: models, task, metric, processing.
    """

    receiver: TransformerBridge
    donor: TransformerBridge
    tokens: Tokens
    receiver_ids: Tensor
    donor_ids: Tensor
    family: SiteFamily
    direction: str
    provenance: Provenance


def positive(**values: int) -> None:
    """Raise :class:`OptionError` unless every value is a positive integer."""
    bad = {k: v for k, v in values.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
    if bad:
        raise OptionError(
            ", ".join(f"{k} must be a positive integer, got {v!r}" for k, v in bad.items())
        )


def check_positions(positions: str) -> None:
    if positions not in POSITIONS:
        raise OptionError(f"positions must be one of {POSITIONS}, got {positions!r}")


def across_models(
    pair: ModelPair, task: Task, *, sites: str, direction: str, positions: str,
    **sizes: int,
) -> Setup:
    """Check the options of a cross-model sweep and tokenize its task (before any forward)."""
    fam = family(sites)
    direction = parse_direction(direction)
    check_positions(positions)
    positive(**sizes)
    receiver, donor = receiver_and_donor(pair, direction)
    tokens = task.tokenize(pair.tokenizer, n_ctx=pair.n_ctx, device=pair.device)
    return Setup(receiver, donor, tokens, tokens.tokens, tokens.tokens, fam, direction,
                 pair.provenance(task))


def within_model(
    model: TransformerBridge, task: Task, *, sites: str, positions: str, model_id: str,
    what: str, **sizes: int,
) -> Setup:
    """Check the options of a single-model sweep (clean donor, corrupted receiver) and tokenize."""
    if task.corrupted is None:
        raise PromptError(f"{what} needs a task with corrupted prompts (Task(corrupted=...))")
    fam = family(sites)
    check_positions(positions)
    positive(**sizes)
    tokens = task.tokenize(model.tokenizer, n_ctx=int(model.cfg.n_ctx), device=model_device(model))
    assert tokens.corrupted_tokens is not None
    return Setup(model, model, tokens, tokens.corrupted_tokens, tokens.tokens, fam, SINGLE_MODEL,
                 model_provenance(model, task, model_id=model_id))
