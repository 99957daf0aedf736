"""Agreement of two scorings of the same sites: exact patching against its gradient estimate, or one
fine-tune's components against another's (a LoRA against a full fine-tune of the same behaviour).

Spearman's rho over all sites (and over a chosen set of layers, e.g. the layers the fine-tune
changed), the overlap of the ``k`` strongest sites, and a bootstrap interval for each rho: the
prompts are resampled (jointly when both results scored the same prompts), both score grids are
recomputed on each resample, and rho is taken again (:mod:`mechdiff.stats`). Sites one side did
not score (NaN: e.g. exact patching of the top candidates only) are left out, and the number of
sites compared is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from mechdiff import stats
from mechdiff.errors import ResultError
from mechdiff.patching import PatchResult
from mechdiff.results import Provenance, SavableResult

TOP_K = 10
"""How many of each side's strongest sites the overlap counts."""


@dataclass(frozen=True)
class Agreement(SavableResult):
    """How two scorings of the same sites agree.

    Attributes:
        a_name / b_name: what was compared (``"attribution"`` vs ``"exact"``, or two fine-tunes).
        sites: the site kind; direction: the patching direction of both.
        labels: site labels, aligned with ``a_scores`` / ``b_scores``.
        a_scores / b_scores: the two score grids, flattened (``[site]``).
        layers: the restricted comparison's layers (empty: none).
        rho / rho_low / rho_high: Spearman's rho over all sites and its interval over prompts.
        rho_layers / rho_layers_low / rho_layers_high: the same over the sites of ``layers``
            (NaN when no restriction).
        top_k / top_shared: how many of the ``top_k`` strongest ``|score|`` sites are shared.
        joint: whether both scored the same prompts (resampled jointly) or not (independently).
        n_compared: how many sites both sides scored (the correlations' sample).
        seed: the bootstrap seed.
        provenance: the provenance of ``a`` (models, task, metric).
    """

    a_name: str
    b_name: str
    sites: str
    direction: str
    labels: tuple[str, ...]
    a_scores: Float[Tensor, " site"]
    b_scores: Float[Tensor, " site"]
    layers: tuple[int, ...]
    rho: float
    rho_low: float
    rho_high: float
    rho_layers: float
    rho_layers_low: float
    rho_layers_high: float
    top_k: int
    top_shared: int
    joint: bool
    seed: int
    provenance: Provenance
    n_compared: int = -1

    def validate(self) -> None:
        n = len(self.labels)
        if tuple(self.a_scores.shape) != (n,) or tuple(self.b_scores.shape) != (n,):
            raise ResultError(
                f"agreement scores have shapes {tuple(self.a_scores.shape)} and "
                f"{tuple(self.b_scores.shape)} for {n} site labels"
            )


def _layer_mask(result: PatchResult, layers: Sequence[int]) -> Tensor:
    n_layers = int(result.scores.shape[0])
    mask = torch.zeros(result.scores.shape, dtype=torch.bool)
    mask[[layer for layer in layers if 0 <= layer < n_layers]] = True
    return mask.flatten()


def agreement(
    a: PatchResult,
    b: PatchResult,
    *,
    a_name: str,
    b_name: str,
    layers: Sequence[int] = (),
    top_k: int = TOP_K,
    samples: int = stats.BOOTSTRAP_SAMPLES,
    seed: int = stats.BOOTSTRAP_SEED,
) -> Agreement:
    """Compare two scorings of the same sites (same kind, direction and grid).

    Args:
        a / b: the two results.
        a_name / b_name: what they are, for tables.
        layers: also compare over the sites of these layers alone (e.g. the changed layers);
            ignored when empty or covering every layer.
        top_k: size of the strongest-site overlap.
        samples / seed: bootstrap resamples and seed of the intervals.

    Raises:
        ResultError: the results score different sites.
    """
    if (a.sites, a.dims, tuple(a.scores.shape)) != (b.sites, b.dims, tuple(b.scores.shape)):
        raise ResultError(
            f"cannot compare {a.sites} {tuple(a.scores.shape)} with {b.sites} "
            f"{tuple(b.scores.shape)}: the two results must score the same sites"
        )
    if top_k < 1:
        raise ResultError(f"top_k must be positive, got {top_k}")
    n_layers = int(a.scores.shape[0])
    layers = tuple(sorted({int(x) for x in layers if 0 <= int(x) < n_layers}))
    if len(layers) == n_layers:
        layers = ()
    na, nb = int(a.receiver.shape[0]), int(b.receiver.shape[0])
    joint = na == nb and a.provenance.prompts_hash == b.provenance.prompts_hash
    wa = stats.bootstrap_weights(na, samples=samples, seed=seed)
    wb = wa if joint else stats.bootstrap_weights(nb, samples=samples, seed=seed + 1)
    sa = stats.fraction_samples(a.patched, a.receiver, a.donor, wa).reshape(-1, samples)
    sb = stats.fraction_samples(b.patched, b.receiver, b.donor, wb).reshape(-1, samples)
    flat_a, flat_b = a.scores.flatten(), b.scores.flatten()
    scored = torch.isfinite(flat_a) & torch.isfinite(flat_b)
    if int(scored.sum()) < 2:
        raise ResultError(f"{a_name} and {b_name} score fewer than two sites in common")
    rho_s = stats.spearman_samples(sa[scored], sb[scored])
    lo, hi = stats.percentile_interval(rho_s)
    rho_l = lo_l = hi_l = float("nan")
    if layers:
        mask = _layer_mask(a, layers) & scored
        if int(mask.sum()) >= 2:
            rho_l = stats.spearman(flat_a[mask], flat_b[mask])
            lo_l_t, hi_l_t = stats.percentile_interval(stats.spearman_samples(sa[mask],
                                                                              sb[mask]))
            lo_l, hi_l = float(lo_l_t), float(hi_l_t)
    k = min(top_k, int(scored.sum()))
    return Agreement(
        a_name=a_name, b_name=b_name, sites=a.sites, direction=a.direction,
        labels=tuple(a.labels()), a_scores=flat_a.clone(), b_scores=flat_b.clone(),
        layers=layers, rho=stats.spearman(flat_a[scored], flat_b[scored]), rho_low=float(lo),
        rho_high=float(hi), rho_layers=rho_l, rho_layers_low=lo_l, rho_layers_high=hi_l,
        top_k=k, top_shared=stats.top_overlap(flat_a[scored], flat_b[scored], k), joint=joint,
        seed=seed, provenance=a.provenance, n_compared=int(scored.sum()),
    )
