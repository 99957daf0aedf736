"""One fine-tune against its base on one task: the behaviour gap, then every site of the requested
kinds patched in both directions, exactly and/or by gradient estimates, and how the two agree.

:func:`analyse_pair` is what ``mechdiff patch`` and both demos run per pair. It only computes: the
result, :class:`PairAnalysis`, saves and reloads as one folder; figures
(:mod:`mechdiff.viz`) and tables (:mod:`mechdiff.report`) are drawn from it, also after reloading.
A zero behaviour gap is reported (:class:`~mechdiff.errors.ZeroGapError`) before any patching.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import torch

from mechdiff.compare import Agreement, Interaction, agreement, interaction
from mechdiff.compare.interaction import SUMMABLE
from mechdiff.directions import DIRECTIONS, Direction, parse_direction, slug
from mechdiff.errors import OptionError, ZeroGapError
from mechdiff.gap import GapResult, behaviour_gap
from mechdiff.loading import ModelPair
from mechdiff.patching import PatchResult, Positions, attribute, cross_patch
from mechdiff.patching._setup import check_positions, positive
from mechdiff.results import SavableResult
from mechdiff.sites import Site, SiteKind, family
from mechdiff.tasks import Task
from mechdiff.weights import changed_blocks

PairMethod: TypeAlias = Literal["exact", "attribution"]
PAIR_METHODS: tuple[PairMethod, ...] = ("exact", "attribution")


def result_key(kind: str, direction: str) -> str:
    """The key (and folder name) of one kind and direction: ``heads_ft_to_base``."""
    return f"{kind}_{slug(direction)}"


@dataclass(frozen=True)
class ComponentRow:
    """One component and its scores, by ``(method, direction)``: ``(score, low, high)``."""

    component: str
    sites: str
    scores: dict[tuple[str, str], tuple[float, float, float]]

    def score(self, method: str, direction: str) -> float:
        return self.scores.get((method, direction), (math.nan,) * 3)[0]

    @property
    def strength(self) -> float:
        """The largest finite ``|score|`` of the ranking method's directions."""
        return max((abs(v[0]) for v in self.scores.values() if math.isfinite(v[0])), default=0.0)


@dataclass(frozen=True)
class PairAnalysis(SavableResult):
    """Everything :func:`analyse_pair` computed for one pair.

    Attributes:
        label: the pair's name in tables and folders (e.g. the fine-tune's name).
        gap: the behaviour gap.
        exact: exact patching results, keyed by :func:`result_key` (may be empty).
        estimates: attribution-patching results, same keys (may be empty).
        agreements: where both exist, how attribution ranks the sites against exact patching.
        interaction: where exact results of both directions exist, sufficiency against
            necessity summed over components (:func:`mechdiff.compare.interaction`).
        directions: the patching directions run, in order.
        changed_layers: blocks whose weights differ between the two models (as processed).
        mechanism: the fine-tune's known mechanism, where one is known (the zoos').
        description: a longer statement of the fine-tune, where known.
    """

    label: str
    gap: GapResult
    exact: dict[str, PatchResult]
    estimates: dict[str, PatchResult]
    agreements: dict[str, Agreement]
    directions: tuple[str, ...]
    changed_layers: tuple[int, ...]
    interaction: Interaction | None = None
    mechanism: str | None = None
    description: str | None = None

    @property
    def ranked_by(self) -> str:
        """``exact`` when exact results exist, else ``attribution``."""
        return "exact" if self.exact else "attribution"

    @property
    def sites(self) -> tuple[str, ...]:
        """The site kinds analysed, in order."""
        return tuple(dict.fromkeys(r.sites for r in [*self.exact.values(),
                                                      *self.estimates.values()]))

    def results(self, method: str) -> dict[str, PatchResult]:
        """The results of one method (``exact`` or ``attribution``)."""
        return self.exact if method == "exact" else self.estimates

    def ranking(self) -> list[ComponentRow]:
        """Every component with its scores and intervals, strongest first by :attr:`ranked_by`
        (the largest ``|score|`` over directions); components only the other method scored
        follow."""
        rows: dict[str, ComponentRow] = {}
        for method in PAIR_METHODS:
            for result in self.results(method).values():
                lo, hi = (t.flatten().tolist() for t in result.interval())
                for i, (label, s) in enumerate(zip(result.labels(),
                                                   result.scores.flatten().tolist(), strict=True)):
                    row = rows.setdefault(label, ComponentRow(label, result.sites, {}))
                    row.scores[(method, result.direction)] = (float(s), lo[i], hi[i])

        def strength(row: ComponentRow) -> float:
            vals = [abs(v[0]) for (m, _), v in row.scores.items()
                    if m == self.ranked_by and math.isfinite(v[0])]
            return max(vals, default=-1.0)

        return sorted(rows.values(), key=strength, reverse=True)


def _strongest(estimate: PatchResult, k: int) -> list[Site]:
    """The ``k`` sites with the largest estimated ``|score|`` (over positions, if per position)."""
    strength = estimate.scores.abs()
    if "pos" in estimate.dims:
        strength = strength.amax(-1)
    flat = strength.flatten()
    fam = family(estimate.sites)
    per_layer = flat.numel() // strength.shape[0]
    return [fam.site(int(i) // per_layer, int(i) % per_layer)
            for i in flat.argsort(descending=True, stable=True)[:k].tolist()]


def analyse_pair(
    pair: ModelPair,
    task: Task,
    *,
    label: str,
    sites: Sequence[SiteKind] = ("heads", "mlp"),
    directions: Sequence[Direction] = DIRECTIONS,
    methods: Sequence[PairMethod] = ("exact",),
    positions: Positions = "all",
    batch_size: int = 64,
    prompt_batch_size: int = 32,
    progress: bool = True,
    mechanism: str | None = None,
    description: str | None = None,
    exact_top: int | Mapping[str, int] | None = None,
) -> PairAnalysis:
    """Behaviour gap, then patching of every site kind in every direction by every method.

    Args:
        pair: the base and fine-tuned models.
        task: prompts and metric.
        label: the pair's name in titles and tables.
        sites: site kinds to patch (``heads``, ``attn``, ``mlp``, ``resid``).
        directions: ``"ft->base"`` (sufficiency) and/or ``"base->ft"`` (necessity).
        methods: ``"exact"`` (:func:`mechdiff.cross_patch`) and/or ``"attribution"``
            (:func:`mechdiff.attribute`); with both, their agreement is measured.
        positions: ``"all"`` (every position at once) or ``"each"`` (one position at a time).
        batch_size: sequences per patched forward (exact patching).
        prompt_batch_size: prompts captured at once.
        progress: show progress bars.
        mechanism: the fine-tune's known mechanism, if any.
        description: a longer statement of the fine-tune, if any.
        exact_top: with both methods, patch exactly only the ``exact_top`` sites of each kind
            and direction that attribution estimates strongest (kinds with more sites than
            that; the others score NaN in the exact result). A mapping limits only the kinds
            it names (``{"heads": 20}``: the 20 strongest heads, every attention layer and
            MLP). ``None``: every site.

    Raises:
        ZeroGapError: the two models behave the same on the task (before any patching).
        MechdiffError: any other bad input, before any forward.
    """
    directions = tuple(dict.fromkeys(parse_direction(d) for d in directions))
    sites = tuple(dict.fromkeys(sites))
    methods = tuple(dict.fromkeys(methods))
    if not directions or not sites or not methods:
        raise OptionError("give at least one direction, one site kind and one method")
    for kind in sites:
        family(kind)
    bad = [m for m in methods if m not in PAIR_METHODS]
    if bad:
        raise OptionError(f"methods must be among {PAIR_METHODS}, got {bad}")
    check_positions(positions)
    positive(batch_size=batch_size, prompt_batch_size=prompt_batch_size)
    tops = dict.fromkeys(sites, exact_top) if not isinstance(exact_top, Mapping) else {
        k: exact_top.get(k) for k in sites}
    if isinstance(exact_top, Mapping):
        for kind in exact_top:
            family(kind)  # a kind that does not exist is a SiteError, not ignored
    for kind, k in tops.items():
        if k is not None:
            positive(**{f"exact_top[{kind!r}]" if isinstance(exact_top, Mapping)
                        else "exact_top": k})
    if any(k is not None for k in tops.values()):
        if set(methods) != set(PAIR_METHODS):
            raise OptionError("exact_top picks exact patching's sites from attribution's "
                              "estimates: give methods=('exact', 'attribution')")
    if not isinstance(label, str) or not label:
        raise OptionError(f"label must be a non-empty string, got {label!r}")
    gap = behaviour_gap(pair, task, prompt_batch_size=prompt_batch_size)
    if gap.is_zero:
        raise ZeroGapError(gap.message + "; mechdiff has nothing to attribute (are the two "
                           "checkpoints identical, or did fine-tuning not change this task?)")
    exact: dict[str, PatchResult] = {}
    estimates: dict[str, PatchResult] = {}
    for kind in sites:
        for direction in directions:
            key = result_key(kind, direction)
            if "attribution" in methods:
                estimates[key] = attribute(pair, task, sites=kind, direction=direction,
                                           positions=positions,
                                           prompt_batch_size=prompt_batch_size, progress=progress)
            if "exact" in methods:
                only = None
                est = estimates.get(key)
                n_sites = 0 if est is None else est.scores.numel() // (
                    est.scores.shape[-1] if "pos" in est.dims else 1)
                top = tops[kind]
                if top is not None and est is not None and n_sites > top:
                    only = _strongest(est, top)
                exact[key] = cross_patch(pair, task, sites=kind, direction=direction,
                                         positions=positions, batch_size=batch_size,
                                         prompt_batch_size=prompt_batch_size, progress=progress,
                                         only=only)
    changed = changed_blocks(pair)
    agreements = {key: agreement(estimates[key], exact[key], a_name="attribution",
                                 b_name="exact", layers=changed)
                  for key in exact if key in estimates
                  and int(torch.isfinite(exact[key].scores).sum()) >= 2}  # a rank needs two
    complete = {k: r for k, r in exact.items() if bool(torch.isfinite(r.scores).all())}
    both = {r.sites for r in complete.values() if r.direction == "ft->base"} & {
        r.sites for r in complete.values() if r.direction == "base->ft"} & set(SUMMABLE)
    return PairAnalysis(
        label=label, gap=gap, exact=exact, estimates=estimates, agreements=agreements,
        directions=directions, changed_layers=changed,
        interaction=interaction(complete) if both else None, mechanism=mechanism,
        description=description,
    )

