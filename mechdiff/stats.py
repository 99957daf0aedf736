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


# ------------------------------------------------------------------ intervals over prompts

GAP_TOLERANCE = 1e-6
"""A difference of two mean metrics at most this times their scale (at least 1) is rounding, not
a gap: ratios to it (a share of the gap, normalized faithfulness) are not defined
(:func:`mechdiff.metrics.negligible`, :func:`fraction_samples`)."""

CI_LEVEL = 0.95
"""Coverage of every interval mechdiff reports (two-sided, percentile bootstrap)."""
BOOTSTRAP_SAMPLES = 2000
"""Bootstrap resamples of the prompts behind every interval."""
BOOTSTRAP_SEED = 0
"""Seed of the resampling (a local generator; the global RNG is never touched)."""


def bootstrap_weights(
    n: int, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED
) -> Float[Tensor, "sample n"]:
    """Resampling weights: row ``b`` counts how often each of ``n`` prompts is drawn (with
    replacement, ``n`` draws), divided by ``n``. ``weights @ values`` is each resample's mean."""
    if n < 1 or samples < 1:
        raise ValueError(f"need at least one prompt and one resample, got n={n}, samples={samples}")
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (samples, n), generator=gen)
    counts = torch.zeros(samples, n, dtype=torch.float64)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    return counts / n


def percentile_interval(
    samples: Float[Tensor, "*dims sample"], level: float = CI_LEVEL
) -> tuple[Float[Tensor, "*dims"], Float[Tensor, "*dims"]]:
    """The central ``level`` interval of bootstrap samples along the last axis (NaNs ignored)."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    alpha = (1 - level) / 2
    q = torch.tensor([alpha, 1 - alpha], dtype=samples.dtype)
    lo_hi = torch.nanquantile(samples, q, dim=-1)
    return lo_hi[0], lo_hi[1]


def fraction_samples(
    patched: Float[Tensor, "*dims n"],
    receiver: Float[Tensor, " n"],
    donor: Float[Tensor, " n"],
    weights: Float[Tensor, "sample n"],
) -> Float[Tensor, "*dims sample"]:
    """Fraction of the gap closed, ``(mean patched - mean receiver) / (mean donor - mean
    receiver)``, on every resample of the prompts (the means weighted by ``weights``)."""
    dims = patched.shape[:-1]
    w = weights.double()
    p = patched.double().reshape(-1, patched.shape[-1]) @ w.T  # [sites, sample]
    r, d = w @ receiver.double(), w @ donor.double()
    gap = d - r
    # a resample whose gap is rounding noise has no fraction (NaN, left out of the interval), by
    # the test the point value uses (metrics.negligible): a ratio to noise would widen the interval
    scale = torch.maximum(w @ receiver.double().abs(), w @ donor.double().abs()).clamp(min=1.0)
    frac = (p - r) / torch.where(gap.abs() <= GAP_TOLERANCE * scale, torch.nan, gap)
    return frac.reshape(*dims, w.shape[0]).float()


def fraction_interval(
    patched: Float[Tensor, "*dims n"],
    receiver: Float[Tensor, " n"],
    donor: Float[Tensor, " n"],
    *,
    level: float = CI_LEVEL,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[Float[Tensor, "*dims"], Float[Tensor, "*dims"]]:
    """Bootstrap interval over prompts of the fraction of the gap each patch closes."""
    weights = bootstrap_weights(int(receiver.shape[0]), samples=samples, seed=seed)
    return percentile_interval(fraction_samples(patched, receiver, donor, weights), level)


def mean_interval(
    values: Float[Tensor, " n"],
    *,
    level: float = CI_LEVEL,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Bootstrap interval over prompts of the mean of per-prompt ``values``."""
    weights = bootstrap_weights(int(values.shape[0]), samples=samples, seed=seed)
    lo, hi = percentile_interval((weights @ values.double()).float(), level)
    return float(lo), float(hi)


def spearman_samples(
    a: Float[Tensor, "sites sample"], b: Float[Tensor, "sites sample"]
) -> Float[Tensor, " sample"]:
    """Spearman's rho between ``a[:, s]`` and ``b[:, s]`` for every sample ``s`` (mean ranks for
    ties; NaN where a column is constant or not finite), all columns at once: :func:`spearman`
    column by column cost 2,000 Python-level calls per interval (half of a demo's patching
    analysis)."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"cannot correlate {tuple(a.shape)} with {tuple(b.shape)} samples")
    x, y = a.detach().double(), b.detach().double()
    ok = torch.isfinite(x).all(0) & torch.isfinite(y).all(0)
    x, y = _column_ranks(x.nan_to_num(0.0, 0.0, 0.0)), _column_ranks(y.nan_to_num(0.0, 0.0, 0.0))
    x, y = x - x.mean(0), y - y.mean(0)
    denom = x.norm(dim=0) * y.norm(dim=0)
    rho = (x * y).sum(0) / denom
    ok &= (denom > 0) & (x.shape[0] >= 2)
    return torch.where(ok, rho, torch.nan).float()


def _column_ranks(x: Float[Tensor, "n cols"]) -> Float[Tensor, "n cols"]:
    """Ranks within each column (1-based, mean ranks for ties), as :func:`ranks` per column."""
    n, cols = x.shape
    order = x.argsort(dim=0, stable=True)
    sorted_x = x.gather(0, order)
    new = torch.ones_like(sorted_x, dtype=torch.bool)
    new[1:] = sorted_x[1:] != sorted_x[:-1]
    group = new.long().cumsum(0) - 1 + n * torch.arange(cols)[None, :]  # unique per column
    position = torch.arange(1, n + 1, dtype=x.dtype)[:, None].expand(n, cols)
    total = torch.zeros(n * cols, dtype=x.dtype).scatter_add_(0, group.flatten(),
                                                              position.flatten())
    count = torch.zeros(n * cols, dtype=x.dtype).scatter_add_(
        0, group.flatten(), torch.ones(n * cols, dtype=x.dtype))
    mean_rank = (total / count.clamp_min(1))[group]
    return torch.empty_like(x).scatter_(0, order, mean_rank)
