"""The result of every patching method: :class:`PatchResult`, one score per site.

Exact patching (:func:`~mechdiff.patching.cross_patch`, :func:`~mechdiff.patching.activation_patch`)
and its gradient estimates (:func:`~mechdiff.patching.attribute`) return the same type; ``method``
says how the values were obtained. Per-prompt values are kept (``patched``, ``receiver``,
``donor``), so every score has a bootstrap interval over prompts (:meth:`PatchResult.interval`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from mechdiff import stats
from mechdiff.directions import ROLES
from mechdiff.errors import ResultError, check_count
from mechdiff.results import Provenance, SavableResult
from mechdiff.sites import family

METHOD_NAMES = {"exact": "patching", "attribution": "attribution patching"}


@dataclass(frozen=True)
class RankedSite:
    """One row of a ranking: a site's label, its score (fraction of gap), the score's interval
    over prompts, and the raw change of the mean metric."""

    label: str
    score: float
    effect: float
    low: float = float("nan")
    high: float = float("nan")


@dataclass(frozen=True)
class PatchResult(SavableResult):
    """Scores of every site of one kind.

    Attributes:
        scores: fraction of the gap closed, shape ``dims`` (e.g. ``[layer, head]``,
            ``[layer, pos]``, ``[layer, head, pos]``).
        patched: metric per prompt with the patch applied, shape ``dims + [batch]``.
        receiver: metric per prompt of the unpatched receiving run, ``[batch]``.
        donor: metric per prompt of the donor run, ``[batch]``.
        sites: the site kind (``heads``, ``attn``, ``mlp``, ``resid``).
        dims: axis names of ``scores``.
        direction: ``ft->base``, ``base->ft`` or ``clean->corrupted``.
        positions: ``all`` (patched at every position) or ``each`` (one position at a time).
        provenance: models, task, metric, processing, versions.
        method: how the values were obtained: ``"exact"`` (real interventions), ``"attribution"``
            or ``"integrated_gradients(steps=N)"`` (gradient estimates, :func:`mechdiff.attribute`).
    """

    scores: Float[Tensor, "*site_dims"]
    patched: Float[Tensor, "*site_dims batch"]
    receiver: Float[Tensor, " batch"]
    donor: Float[Tensor, " batch"]
    sites: str
    dims: tuple[str, ...]
    direction: str
    positions: str
    provenance: Provenance
    method: str = "exact"

    def validate(self) -> None:
        """The score grid, its axis names and the per-prompt values fit together."""
        if len(self.dims) != self.scores.ndim:
            raise ResultError(f"dims {self.dims} name {len(self.dims)} axes but scores has shape "
                              f"{tuple(self.scores.shape)}")
        if (self.positions == "each") != ("pos" in self.dims):
            raise ResultError(f"positions={self.positions!r} does not match dims {self.dims}")
        n = int(self.receiver.shape[0])
        if tuple(self.patched.shape) != (*self.scores.shape, n) or self.donor.shape != (n,):
            raise ResultError(
                f"patched {tuple(self.patched.shape)}, receiver {tuple(self.receiver.shape)} and "
                f"donor {tuple(self.donor.shape)} do not fit scores {tuple(self.scores.shape)}"
            )
        if self.provenance.n_prompts != n:
            raise ResultError(f"{n} per-prompt values but provenance records "
                              f"{self.provenance.n_prompts} prompts")
        family(self.sites)

    @property
    def gap(self) -> float:
        """Mean donor metric minus mean receiver metric."""
        return float(self.donor.mean() - self.receiver.mean())

    @property
    def effects(self) -> Tensor:
        """Raw change of the mean metric caused by each patch, shape ``dims``."""
        return self.patched.mean(-1) - self.receiver.mean()

    @property
    def role(self) -> str | None:
        """``sufficiency`` (ft->base), ``necessity`` (base->ft), else None."""
        return ROLES.get(self.direction)

    def interval(
        self,
        level: float = stats.CI_LEVEL,
        *,
        samples: int = stats.BOOTSTRAP_SAMPLES,
        seed: int = stats.BOOTSTRAP_SEED,
    ) -> tuple[Float[Tensor, "*site_dims"], Float[Tensor, "*site_dims"]]:
        """Bootstrap interval over prompts of every score (seeded; the same call gives the same
        interval). With one prompt the interval is the score itself."""
        return stats.fraction_interval(self.patched, self.receiver, self.donor, level=level,
                                       samples=samples, seed=seed)

    def labels(self) -> list[str]:
        """Site labels aligned with ``scores.flatten()`` (``L3H7``, ``MLP3``, ``RESID2@5``...)."""
        fam = family(self.sites)
        names = []
        grid = torch.cartesian_prod(*[torch.arange(n) for n in self.scores.shape])
        for index in grid.reshape(-1, self.scores.ndim).tolist():
            named = dict(zip(self.dims, index, strict=True))
            label = fam.site(named["layer"], named.get("head", 0)).label
            names.append(f"{label}@{named['pos']}" if "pos" in named else label)
        return names

    def top(self, k: int = 10, *, absolute: bool = True) -> list[RankedSite]:
        """The ``k`` sites with the largest scores (largest ``|score|`` if ``absolute``)."""
        check_count("k", k)
        flat, eff = self.scores.flatten(), self.effects.flatten()
        key = (flat.abs() if absolute else flat).nan_to_num(nan=-torch.inf)  # unpatched: last
        order = key.argsort(descending=True, stable=True)[:k]
        order = order[torch.isfinite(flat[order])]
        lo, hi = (t.flatten() for t in self.interval())
        labels = self.labels()
        return [RankedSite(labels[i], float(flat[i]), float(eff[i]), float(lo[i]), float(hi[i]))
                for i in order.tolist()]

    def table(self, k: int = 10) -> str:
        """A plain-text ranking of the top ``k`` sites, with 95% intervals over prompts."""
        p = self.provenance
        lines = [
            f"{self.sites} {METHOD_NAMES.get(self.method, self.method)} {self.direction} on "
            f"{p.task!r} ({p.n_prompts} prompts, metric {p.metric}); donor "
            f"{self.donor.mean():.4f}, receiver {self.receiver.mean():.4f}, gap {self.gap:+.4f}",
            f"{'rank':>4}  {'site':<12} {'fraction of gap':>16} {'95% interval':>17} "
            f"{'metric change':>14}",
        ]
        for r, row in enumerate(self.top(k), 1):
            ci = f"[{row.low:+.3f}, {row.high:+.3f}]"
            lines.append(f"{r:>4}  {row.label:<12} {row.score:>16.3f} {ci:>17} "
                         f"{row.effect:>+14.4f}")
        return "\n".join(lines)
