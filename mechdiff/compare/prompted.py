"""The prompted base as a third model: where a system prompt acts inside the base, set beside where
a fine-tune that distilled that prompt acts.

The seed question behind context distillation (Askell et al. 2021; Snell et al. 2022) is whether
fine-tuning builds something new or re-weights what a prompt already elicits. Two per-layer
profiles answer it side by side:

* **the system prompt in the base**: single-model patching of the base, persona-prompted (clean)
  into unprompted (corrupted) runs of the same questions, per attention layer and MLP
  (:func:`mechdiff.activation_patch`);
* **the fine-tune in the base**: cross-model patching of the distilled model into the base on the
  unprompted questions (:func:`mechdiff.cross_patch`, ``ft->base``).

Their Pearson correlation across layers (all layers, and the layers the fine-tune changed) is read
against named thresholds (:data:`BANDS`) with a bootstrap interval over the questions, resampled
jointly (the same questions in the same order on both sides).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mechdiff import stats
from mechdiff.compare.readings import Band, Reading, read
from mechdiff.errors import ResultError
from mechdiff.patching import PatchResult
from mechdiff.results import SavableResult

BANDS: tuple[Band, ...] = (
    Band(0.7, "the fine-tune acts where the system prompt acts in the base"),
    Band(0.3, "the fine-tune acts partly where the system prompt acts in the base"),
    Band(-0.3, "the fine-tune's layer profile does not follow where the system prompt acts in "
               "the base"),
    Band(-math.inf, "the fine-tune acts most where the system prompt acts least"),
)
"""Readings of the mean per-layer correlation (thresholds 0.7, 0.3, -0.3)."""


@dataclass(frozen=True)
class PromptedBaseComparison(SavableResult):
    """Where the system prompt acts in the base, beside where the fine-tune acts.

    Attributes:
        prompted: by site kind (``attn``, ``mlp``), the base patched prompted -> unprompted.
        finetuned: by site kind, the fine-tune patched into the base (``ft->base``).
        changed_layers: the layers whose weights the fine-tune changed.
        correlation: by site kind, Pearson's r of the two per-layer profiles: ``all`` layers,
            ``changed`` layers (when a strict subset), each with ``_low`` / ``_high`` bounds.
        thresholds: the reading's thresholds (:data:`BANDS`), highest first.
        seed: the bootstrap seed.
    """

    prompted: dict[str, PatchResult]
    finetuned: dict[str, PatchResult]
    changed_layers: tuple[int, ...]
    correlation: dict[str, dict[str, float]]
    thresholds: tuple[float, ...]
    seed: int

    def validate(self) -> None:
        if set(self.prompted) != set(self.finetuned):
            raise ResultError(f"profiles of different site kinds: {sorted(self.prompted)} vs "
                              f"{sorted(self.finetuned)}")

    @property
    def metrics(self) -> dict[str, float]:
        """Mean metric of the base, the prompted base and the fine-tuned model (same questions)."""
        p, f = next(iter(self.prompted.values())), next(iter(self.finetuned.values()))
        return {"base": float(f.receiver.mean()), "prompted base": float(p.donor.mean()),
                "fine-tuned": float(f.donor.mean())}

    @property
    def restricted(self) -> bool:
        n_layers = int(next(iter(self.prompted.values())).scores.shape[0])
        return 0 < len(self.changed_layers) < n_layers

    def reading(self) -> Reading:
        """The mean correlation over site kinds (over the changed layers when the fine-tune
        changed a subset), read against :data:`BANDS`, with its interval."""
        key = "changed" if self.restricted else "all"
        vals = [(c[key], c[f"{key}_low"], c[f"{key}_high"]) for c in self.correlation.values()
                if math.isfinite(c.get(key, math.nan))]
        if not vals:
            return read(math.nan, BANDS, otherwise="a profile is flat, so no correlation is "
                        "defined")
        n = len(vals)
        return read(sum(v[0] for v in vals) / n, BANDS, low=sum(v[1] for v in vals) / n,
                    high=sum(v[2] for v in vals) / n)


def _pearson_interval(a: PatchResult, b: PatchResult, layers: Sequence[int] | None,
                      weights: torch.Tensor) -> tuple[float, float, float]:
    sa = stats.fraction_samples(a.patched, a.receiver, a.donor, weights)
    sb = stats.fraction_samples(b.patched, b.receiver, b.donor, weights)
    x, y = a.scores, b.scores
    if layers is not None:
        idx = torch.tensor(list(layers))
        sa, sb, x, y = sa[idx], sb[idx], x[idx], y[idx]
    samples = torch.tensor([stats.pearson(sa[:, s], sb[:, s]) for s in range(sa.shape[1])])
    lo, hi = stats.percentile_interval(samples)
    return stats.pearson(x, y), float(lo), float(hi)


def compare_prompted_base(
    prompted: dict[str, PatchResult],
    finetuned: dict[str, PatchResult],
    *,
    changed_layers: Sequence[int] = (),
    samples: int = stats.BOOTSTRAP_SAMPLES,
    seed: int = stats.BOOTSTRAP_SEED,
) -> PromptedBaseComparison:
    """Correlate the base's prompted->unprompted profile with the fine-tune's ft->base profile.

    Args:
        prompted: by site kind, ``activation_patch(base, prompted_task, positions="all")``.
        finetuned: by the same site kinds, ``cross_patch(pair, task, direction="ft->base")`` on
            the same questions (unprompted), in the same order.
        changed_layers: the layers the fine-tune changed (the restricted correlation's layers).
        samples / seed: bootstrap resamples of the questions.

    Raises:
        ResultError: the profiles cover different site kinds, layers or numbers of questions.
    """
    if set(prompted) != set(finetuned) or not prompted:
        raise ResultError("give the prompted and fine-tuned profiles of the same site kinds")
    n = {int(r.receiver.shape[0]) for r in [*prompted.values(), *finetuned.values()]}
    shapes = {tuple(r.scores.shape) for r in [*prompted.values(), *finetuned.values()]}
    if len(n) != 1 or len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ResultError(
            "the profiles must be per-layer results ([layer]) of the same questions: got "
            f"{sorted(shapes)} over {sorted(n)} prompts"
        )
    n_layers = next(iter(shapes))[0]
    layers = tuple(sorted({int(x) for x in changed_layers if 0 <= int(x) < n_layers}))
    weights = stats.bootstrap_weights(next(iter(n)), samples=samples, seed=seed)
    correlation: dict[str, dict[str, float]] = {}
    for kind in prompted:
        r, lo, hi = _pearson_interval(prompted[kind], finetuned[kind], None, weights)
        c = {"all": r, "all_low": lo, "all_high": hi}
        if 0 < len(layers) < n_layers:
            r, lo, hi = _pearson_interval(prompted[kind], finetuned[kind], layers, weights)
            c |= {"changed": r, "changed_low": lo, "changed_high": hi}
        correlation[kind] = c
    return PromptedBaseComparison(
        prompted=dict(prompted), finetuned=dict(finetuned), changed_layers=layers,
        correlation=correlation,
        thresholds=tuple(b.at_least for b in BANDS if math.isfinite(b.at_least)), seed=seed,
    )
