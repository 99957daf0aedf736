"""Two fine-tunes of the same behaviour: do they use the same components?

A LoRA and a full fine-tune trained on the same data (or two seeds of one recipe) are compared
site by site with :func:`~mechdiff.compare.agreement` on the same estimator and the same prompts,
per site kind and direction; the mean rank correlation over heads is read against :data:`BANDS`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mechdiff import stats
from mechdiff.compare.agreement import TOP_K, Agreement, agreement
from mechdiff.compare.readings import Band, Reading, read
from mechdiff.errors import ResultError
from mechdiff.patching import PatchResult
from mechdiff.results import SavableResult

BANDS: tuple[Band, ...] = (
    Band(0.7, "largely the same components"),
    Band(0.4, "partly the same components"),
    Band(-math.inf, "mostly different components"),
)
"""Readings of the mean Spearman's rho over the head comparisons (thresholds 0.7, 0.4)."""


@dataclass(frozen=True)
class FinetuneComparison(SavableResult):
    """Site-by-site agreement of two fine-tunes of the same behaviour.

    Attributes:
        label: the compared fine-tune (e.g. ``distill_lora``).
        reference: the fine-tune it is compared with (e.g. ``distill``).
        method: which scores are compared (the same estimator on both sides).
        gaps: each fine-tune's behaviour gap on the shared task.
        agreements: by result key (``heads_ft_to_base``, ...), the :class:`Agreement`.
        layers: the reference's changed layers (the restricted comparisons' sites).
        thresholds: the reading's thresholds (:data:`BANDS`), highest first.
    """

    label: str
    reference: str
    method: str
    gaps: dict[str, float]
    agreements: dict[str, Agreement]
    layers: tuple[int, ...]
    thresholds: tuple[float, ...]

    def reading(self) -> Reading:
        """Mean rho over the head comparisons (over ``layers`` where restricted), read against
        :data:`BANDS`, with the mean of the intervals' ends as its interval."""
        heads = [a for a in self.agreements.values() if a.sites == "heads"] or list(
            self.agreements.values())
        restricted = all(math.isfinite(a.rho_layers) for a in heads) and bool(self.layers)
        vals = [(a.rho_layers, a.rho_layers_low, a.rho_layers_high) if restricted
                else (a.rho, a.rho_low, a.rho_high) for a in heads]
        vals = [v for v in vals if math.isfinite(v[0])]
        if not vals:
            return read(math.nan, BANDS, otherwise="no ranking to compare")
        n = len(vals)
        return read(sum(v[0] for v in vals) / n, BANDS, low=sum(v[1] for v in vals) / n,
                    high=sum(v[2] for v in vals) / n)


def compare_finetunes(
    results: Mapping[str, PatchResult],
    reference: Mapping[str, PatchResult],
    *,
    label: str,
    reference_label: str,
    gaps: Mapping[str, float],
    layers: Sequence[int] = (),
    top_k: int = TOP_K,
    samples: int = stats.BOOTSTRAP_SAMPLES,
    seed: int = stats.BOOTSTRAP_SEED,
) -> FinetuneComparison:
    """Agreement of two fine-tunes' results, key by key (the keys both have).

    Raises:
        ResultError: no key in common, or the results were computed by different methods.
    """
    shared = [k for k in results if k in reference]
    if not shared:
        raise ResultError(f"{label} and {reference_label} have no results in common to compare")
    methods = {r.method for k in shared for r in (results[k], reference[k])}
    if len(methods) != 1:
        raise ResultError(f"compare the same estimator on both sides, got {sorted(methods)}")
    agreements = {k: agreement(results[k], reference[k], a_name=label, b_name=reference_label,
                               layers=layers, top_k=top_k, samples=samples, seed=seed)
                  for k in shared}
    return FinetuneComparison(
        label=label, reference=reference_label, method=methods.pop(), gaps=dict(gaps),
        agreements=agreements, layers=tuple(layers),
        thresholds=tuple(b.at_least for b in BANDS if math.isfinite(b.at_least)),
    )
