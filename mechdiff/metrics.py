"""Metrics: per-prompt scores of behaviour read from logits.

Every metric maps the logits a model produced on a batch of prompts to one number per prompt.
Final-position metrics read each prompt's own last real position; ``kl_all`` reads every real
position. The task-free metrics compare with a reference distribution (the donor model's):
``kl`` is ``-KL(ref || model)`` so that, like the task metrics, higher means "more like the donor"
and the donor itself scores 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from mechdiff.errors import MetricError, ZeroGapError
from mechdiff.stats import GAP_TOLERANCE
from mechdiff.tasks import MetricName, Tokens


def read_logits(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Tokens, metric: MetricName
) -> Tensor:
    """Logits at the positions ``metric`` reads: ``[batch, d_vocab]`` or ``[batch, pos, d_vocab]``."""
    if metric == "kl_all":
        return logits
    return logits[torch.arange(logits.shape[0], device=logits.device), tokens.read_pos]


def metric_values(
    metric: MetricName,
    read: Tensor,
    tokens: Tokens,
    ref_logprobs: Tensor | None = None,
    *,
    keep_float64: bool = False,
) -> Float[Tensor, " batch"]:
    """One value per prompt.

    Args:
        metric: the metric name.
        read: logits at the read positions (see :func:`read_logits`), float.
        tokens: the tokenized task (answers, lengths).
        ref_logprobs: log-probabilities of the reference (donor) model at the same positions;
            needed by ``kl`` and ``kl_all``.
        keep_float64: compute in float64 when ``read`` is float64 (default: float32 always).
    """
    dtype = torch.float64 if keep_float64 and read.dtype == torch.float64 else torch.float32
    read = read.to(dtype)
    if metric == "logit_diff":
        idx = torch.arange(read.shape[0], device=read.device)
        return read[idx, tokens.answer_ids] - read[idx, tokens.wrong_ids]
    if metric == "logprob":
        idx = torch.arange(read.shape[0], device=read.device)
        return read.log_softmax(-1)[idx, tokens.answer_ids]
    if ref_logprobs is None:
        raise MetricError(f"metric {metric!r} needs the reference model's log-probabilities")
    kl = kl_div(ref_logprobs, read.log_softmax(-1), dtype=dtype)
    if metric == "kl":
        return -kl
    mask = tokens.position_mask()[:, : kl.shape[1]].to(kl.dtype)
    return -(kl * mask).sum(-1) / mask.sum(-1)


def kl_div(ref_logprobs: Tensor, logprobs: Tensor, *,
           dtype: torch.dtype = torch.float32) -> Tensor:
    """KL(ref || model) over the last axis, from log-probabilities (``F.kl_div`` with a log
    target; clamped at 0 against rounding), computed in ``dtype``."""
    kl = F.kl_div(logprobs.to(dtype), ref_logprobs.to(dtype), reduction="none", log_target=True)
    return kl.sum(-1).clamp_min(0.0)


def check_finite(values: Tensor, what: str, *, prompt_dim: int = 0) -> None:
    """Raise MetricError if ``values`` (prompts along ``prompt_dim``) hold NaN or inf, naming
    the first prompts that do."""
    bad_mask = ~torch.isfinite(values)
    if bad_mask.any():
        if values.ndim > 1:
            dim = prompt_dim % values.ndim
            bad_mask = bad_mask.movedim(dim, 0).reshape(values.shape[dim], -1).any(1)
        bad = bad_mask.nonzero().flatten().tolist()
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise MetricError(
            f"NaN/inf in {what} (prompts {bad[:8]}{more}); check the model's dtype (fp16 "
            "overflow?), its weights and the answers, then run again"
        )


def negligible(difference: float, *values: float) -> bool:
    """Whether ``difference`` is within rounding of zero next to ``values`` (:data:`GAP_TOLERANCE`
    times the largest magnitude, at least 1)."""
    return abs(difference) <= GAP_TOLERANCE * max(1.0, *(abs(v) for v in values))


def checked_gap(receiver: Tensor, donor: Tensor, metric: str, task_name: str) -> float:
    """Mean donor metric minus mean receiver metric, after checking both are finite.

    Raises:
        MetricError: a metric value is NaN or infinite.
        ZeroGapError: the gap is zero (to float precision), so no fraction of it is defined.
    """
    check_finite(receiver, "the receiving model")
    check_finite(donor, "the donor model")
    gap = float(donor.mean() - receiver.mean())
    if negligible(gap, float(donor.abs().mean()), float(receiver.abs().mean())):
        raise ZeroGapError(
            f"the donor and receiving runs give the same mean {metric} ({float(donor.mean()):.6g}) "
            f"on task {task_name!r}: there is no gap to attribute. Are the two checkpoints "
            "identical, or is the task one on which fine-tuning changed nothing? "
            "behaviour_gap() shows per-prompt values and KL."
        )
    return gap
