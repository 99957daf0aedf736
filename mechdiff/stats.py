"""Agreement between two scorings of the same sites: rank and linear correlation, top-k overlap.

Used to compare attribution estimates with exact patching (do they rank heads alike?), one
fine-tune's components with another's (a LoRA against a full fine-tune of the same behaviour),
and per-layer profiles (where a system prompt acts in the base against where a fine-tune acts).

**Spearman's rho** is Pearson's correlation of the ranks, with tied values given the mean of the
ranks they span (the textbook definition, e.g. Zar 1972, "Significance Testing of the Spearman
Rank Correlation Coefficient"), so a block of sites scored exactly 0 by both methods counts as one
tie, not as an arbitrary order. Both statistics are NaN when either input is constant (no order
to compare) or has fewer than two values. Computed with torch in float64; no scipy.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor


def ranks(x: Float[Tensor, "*dims"]) -> Float[Tensor, " n"]:
    """1-based ranks of the flattened ``x``, ties sharing the mean of their ranks (float64)."""
    flat = x.detach().flatten().double()
    order = flat.argsort(stable=True)
    _, inverse, counts = torch.unique_consecutive(flat[order], return_inverse=True,
                                                  return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    out = torch.empty_like(flat)
    out[order] = mean_rank[inverse]
    return out


def pearson(a: Float[Tensor, "*a_dims"], b: Float[Tensor, "*b_dims"]) -> float:
    """Pearson's correlation of the flattened ``a`` and ``b`` (NaN if either is constant)."""
    x, y = a.detach().flatten().double(), b.detach().flatten().double()
    if x.shape != y.shape:
        raise ValueError(f"cannot correlate {tuple(a.shape)} with {tuple(b.shape)} values")
    if x.numel() < 2 or not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    return float(x @ y) / denom if denom > 0 else math.nan


def spearman(a: Float[Tensor, "*a_dims"], b: Float[Tensor, "*b_dims"]) -> float:
    """Spearman's rank correlation of the flattened ``a`` and ``b`` (ties: mean ranks)."""
    if a.shape != b.shape:
        raise ValueError(f"cannot correlate {tuple(a.shape)} with {tuple(b.shape)} values")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.nan
    return pearson(ranks(a), ranks(b))


def top_overlap(a: Float[Tensor, "*a_dims"], b: Float[Tensor, "*b_dims"], k: int) -> int:
    """How many of the ``k`` largest ``|a|`` are also among the ``k`` largest ``|b|``."""
    if a.shape != b.shape:
        raise ValueError(f"cannot compare {tuple(a.shape)} with {tuple(b.shape)} values")
    k = min(k, a.numel())
    top_a = set(a.detach().flatten().abs().topk(k).indices.tolist())
    top_b = set(b.detach().flatten().abs().topk(k).indices.tolist())
    return len(top_a & top_b)
