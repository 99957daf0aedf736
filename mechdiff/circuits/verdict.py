"""The verdict: did fine-tuning re-use (and strengthen) the base model's circuit, or build a new one?

Overlap alone is not a verdict: EAP-IG's own measurements (Hanna et al. 2024) found circuits with
edge IoU 0.37 that are 0.91 faithful on each other's task. The verdict rests on what the circuits
*do*, measured by intervention, and on how the edge scores moved:

* ``base_in_ft``: **cross-faithfulness** of the base model's circuit inside the fine-tuned model,
  normalized within the fine-tuned model (Prakash et al. 2024, "Fine-Tuning Enhances Existing
  Mechanisms": the base circuit stays faithful inside the fine-tune when fine-tuning enhanced it
  rather than replaced it).
* ``score_rank``: Spearman's rank correlation of every edge's score in the two models (Wang et al.
  2025: fine-tuning can keep nodes but change edges; a low correlation says the importance of the
  paths was rearranged).
* ``carried``: the share of the behaviour gap that flows through the base circuit's paths, by
  cross-model edge patching: in the base model's run, every edge of the base circuit receives the
  fine-tuned model's upstream output, ``(m_base(C_base <- ft) - m_base) / (m_ft - m_base)``.
  "Strengthened" when the fine-tuned behaviour is reproduced by what flows along the base
  circuit; near 0 when the change lives on other paths. No ablation baseline enters it.
* ``new_mass``: the share of the fine-tuned circuit's total ``|score|`` on edges outside the base
  circuit (reported; not a rule: it depends on the circuit size).

Cross-faithfulness alone is not enough either: it is normalized by the fine-tuned model's own
behaviour against its ablated baseline, which can be small or carry part of a new mechanism (a
counterfactual prompt on which a new head still fires); ``carried`` looks at the change itself.

Rules, with the named thresholds below (stored in every :class:`Verdict`):

* **"new mechanism"**: ``carried < NEW_CARRIED`` or ``base_in_ft < NEW_FAITHFULNESS`` or
  ``score_rank < NEW_RANK``;
* **"re-used and strengthened"**: otherwise, if ``carried >= STRENGTHENED`` and
  ``base_in_ft >= REUSE_FAITHFULNESS`` and ``score_rank >= REUSE_RANK``;
* **"mixed"**: anything else (e.g. the base circuit carries part of the change, or the scores
  were partly rearranged);
* ``base_in_ft`` **left out** when it has no scale: the fine-tuned model's full-minus-empty
  difference, which normalizes it, has a 95% interval over prompts containing 0 (the ablated
  baseline does not remove the behaviour; mean ablation keeps what every prompt shows). It is
  then no evidence either way: ``carried`` or ``score_rank`` can still give "new mechanism"; if
  neither does, the label is "undetermined" (re-use needs all three). A note gives the
  difference and its interval;
* **"undetermined"**: first of all, when one of the three deciding numbers is not defined (NaN:
  no behaviour gap between the models, a model whose full and empty-circuit values are equal,
  constant edge scores), when the base circuit is empty (no path survives pruning) or is the
  whole graph (no smaller base circuit is faithful: ``base_in_ft`` is then 1 and ``carried`` is
  every edge patched at once *by construction*, so they test nothing), and when the prompts do not
  settle the label: fewer than ``MIN_PROMPTS`` prompts (the label on them is given as a
  preview), or fewer than ``MIN_SHARE`` of the prompt resamples give the label the full sample
  gives. The reasons say which case and why.

``carried`` counts every change that flows along the base circuit's edges, a base path switched
off or reversed included; it is evidence of re-use only beside the other two numbers (a
"new mechanism" verdict lists the numbers that point the other way as well).

**Uncertainty**: every number is recomputed on ``n_boot`` resamples of the prompts (with
replacement; a seeded ``torch.Generator``, seed recorded), with the circuits held at their
full-sample selection (the intervals are conditional on the selected circuits: they do not
include the uncertainty of selecting them); the verdict is re-derived on each resample and its
frequency reported. A number whose 95% interval contains a threshold it is compared with, or
that lies within :data:`NEAR` of it, gets a sensitivity note, when moving it across that
threshold would change the label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from mechdiff.errors import OptionError
from mechdiff.results import SavableResult

Label: TypeAlias = Literal["re-used and strengthened", "new mechanism", "mixed", "undetermined"]
LABELS: tuple[Label, ...] = ("re-used and strengthened", "new mechanism", "mixed",
                             "undetermined")

REUSE_FAITHFULNESS = 0.7
"""The base circuit inside the fine-tuned model keeps at least this normalized faithfulness."""
NEW_FAITHFULNESS = 0.4
"""Below this cross-faithfulness, the base circuit does not carry the fine-tuned behaviour."""
REUSE_RANK = 0.5
"""Edge scores of the two models rank-correlate at least this much for re-use."""
NEW_RANK = 0.2
"""Below this rank correlation, the paths' importance was rearranged: a new mechanism."""
STRENGTHENED = 0.5
"""The base circuit alone carries at least this share of the behaviour gap (re-use)."""
NEW_CARRIED = 0.25
"""Below this share of the gap carried by the base circuit, the change happened elsewhere."""
NEAR = 0.1
"""A number this close to a threshold it is compared with gets a sensitivity note."""
MIN_SHARE = 0.5
"""At least this share of the prompt resamples must give the full sample's label; below it the
verdict is "undetermined" (the prompts do not settle it) and the reasons give the split."""
MIN_PROMPTS = 8
"""Below this many prompts the verdict is "undetermined", the label on those prompts given as a
preview. Resampling a handful of prompts cannot show how the label depends on which prompts were
drawn (4 prompts have 35 distinct resamples): on the real distillation pair, three draws of 4
prompts of one length gave "new mechanism" in 93% of resamples, "undetermined" (54% / 46%) and
"mixed" in 95.5%; three draws of 8 gave "mixed" (76%, 98.5%, 94%), as 24 prompts do (99.5%)."""

THRESHOLDS: dict[str, float] = {
    "REUSE_FAITHFULNESS": REUSE_FAITHFULNESS,
    "NEW_FAITHFULNESS": NEW_FAITHFULNESS,
    "REUSE_RANK": REUSE_RANK,
    "NEW_RANK": NEW_RANK,
    "STRENGTHENED": STRENGTHENED,
    "NEW_CARRIED": NEW_CARRIED,
    "NEAR": NEAR,
    "MIN_SHARE": MIN_SHARE,
    "MIN_PROMPTS": MIN_PROMPTS,
}
"""Every threshold of the rules, by name (the defaults of :func:`decide`)."""

_USES: dict[str, tuple[str, ...]] = {
    "base_in_ft": ("REUSE_FAITHFULNESS", "NEW_FAITHFULNESS"),
    "score_rank": ("REUSE_RANK", "NEW_RANK"),
    "carried": ("STRENGTHENED", "NEW_CARRIED"),
}
"""Which thresholds each number is compared with."""

NUMBERS: tuple[str, ...] = ("base_in_ft", "ft_in_base", "score_rank", "carried", "new_mass",
                            "edge_iou", "node_iou")
"""The numbers a verdict records (the first three decide it, with ``carried``)."""


UNDEFINED: dict[str, str] = {
    "base_in_ft": "the fine-tuned model's full and empty-circuit values are equal on these "
                  "prompts, so faithfulness inside it has no scale",
    "score_rank": "the edge scores are constant in one of the models (all zero when nothing "
                  "was ablated, e.g. mean ablation over a single prompt)",
    "carried": "the two models' mean metric on the task is the same (no behaviour gap to carry; "
               "a 'kl' metric compares each model with itself, so its gap is always 0: use a "
               "task with answers)",
}
"""Why each deciding number can be undefined (NaN), for the "undetermined" reasons."""


def fixed(x: float, digits: int = 3, *, sign: bool = False) -> str:
    """``x`` with ``digits`` decimals (and its sign, with ``sign``); a value that rounds to zero
    reads ``0.000`` (Python writes a tiny negative number as ``-0.000``)."""
    r = round(x, digits) + 0.0 if math.isfinite(x) else x
    return f"{r:{'+' if sign else ''}.{digits}f}"


def signed(x: float, digits: int = 3) -> str:
    """``x`` with its sign and ``digits`` decimals (:func:`fixed`): ``+0.000``, never ``-0.000``."""
    return fixed(x, digits, sign=True)


_ORDERED = (("NEW_FAITHFULNESS", "REUSE_FAITHFULNESS"), ("NEW_RANK", "REUSE_RANK"),
            ("NEW_CARRIED", "STRENGTHENED"))
"""Pairs (new-mechanism bound, re-use bound): the first may not exceed the second."""


def checked_thresholds(thresholds: dict[str, Any] | None) -> dict[str, float]:
    """Every threshold, the defaults overridden by ``thresholds``.

    Raises:
        OptionError: an unknown name, a value that is not a finite number, a negative ``NEAR``,
            or a new-mechanism bound above its re-use bound (``NEW_RANK`` > ``REUSE_RANK``, ...),
            which would make the rules contradict each other.
    """
    given = dict(thresholds or {})
    unknown = set(given) - set(THRESHOLDS)
    if unknown:
        raise OptionError(f"unknown thresholds {sorted(unknown)}; known: {sorted(THRESHOLDS)}")
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value):
            raise OptionError(f"threshold {name} must be a finite number, got {value!r}")
    t = {**THRESHOLDS, **{k: float(v) for k, v in given.items()}}
    if t["NEAR"] < 0:
        raise OptionError(f"threshold NEAR must be >= 0, got {t['NEAR']:g}")
    if t["MIN_PROMPTS"] < 1 or t["MIN_PROMPTS"] != int(t["MIN_PROMPTS"]):
        raise OptionError(f"threshold MIN_PROMPTS is a count of prompts, at least 1; got "
                          f"{t['MIN_PROMPTS']:g}")
    if not 0 <= t["MIN_SHARE"] <= 1:
        raise OptionError(f"threshold MIN_SHARE is a share of resamples, from 0 to 1; got "
                          f"{t['MIN_SHARE']:g}")
    for low, high in _ORDERED:
        if t[low] > t[high]:
            raise OptionError(
                f"threshold {low} = {t[low]:g} is above {high} = {t[high]:g}: a number between "
                f"them would be both a new mechanism and re-used; keep {low} <= {high}")
    return t


def decide(numbers: dict[str, float], thresholds: dict[str, float] | None = None, *,
           unscaled: bool = False) -> tuple[Label, tuple[str, ...]]:
    """The label and the reasons (one line each) from the numbers and the thresholds.

    ``unscaled``: ``base_in_ft`` has no scale (the fine-tuned model's every-edge-ablated
    baseline is not separated from its full model over the prompts) and is left out: it is no
    evidence either way. ``carried`` or ``score_rank`` can still show a new mechanism; re-use,
    which needs all three, cannot be shown ("undetermined").

    Raises:
        OptionError: bad thresholds (:func:`checked_thresholds`) or a deciding number missing
            from ``numbers``.
    """
    absent = [k for k in _USES if k not in numbers]
    if absent:
        raise OptionError(f"numbers lack {absent}: the verdict needs {sorted(_USES)}")
    return label_of(numbers, checked_thresholds(thresholds), unscaled=unscaled)


UNSCALED = ("base_in_ft has no scale (the fine-tuned model's every-edge-ablated baseline is not "
            "separated from its full model over the prompts; see the notes): without it the "
            "rules cannot tell re-use or a mix from a new mechanism, and carried and score_rank "
            "alone do not show a new mechanism")
"""The "undetermined" reason of :func:`decide` with ``unscaled`` when nothing shows a new
mechanism."""


def label_of(numbers: dict[str, float], t: dict[str, float], *, unscaled: bool = False
             ) -> tuple[Label, tuple[str, ...]]:
    """:func:`decide` for numbers and thresholds already checked (every threshold in ``t``):
    the bootstrap re-derives the label on each resample without checking them again."""
    f, rank, carried = numbers["base_in_ft"], numbers["score_rank"], numbers["carried"]
    if unscaled:
        f = math.nan  # no evidence: neither rule below nor the "although" lines read it
    missing = [k for k in _USES if not math.isfinite(numbers[k])
               and not (unscaled and k == "base_in_ft")]
    if missing:
        return "undetermined", tuple(f"{k} is not defined: {UNDEFINED[k]}" for k in missing)
    new = []
    if carried < t["NEW_CARRIED"]:
        new.append(f"the base circuit alone carries only {fixed(carried, 2)} of the gap "
                   f"(< NEW_CARRIED {t['NEW_CARRIED']:g}): the change happened outside it")
    if math.isfinite(f) and f < t["NEW_FAITHFULNESS"]:
        new.append(f"the base circuit inside the fine-tuned model keeps only {fixed(f, 2)} of its "
                   f"behaviour (< NEW_FAITHFULNESS {t['NEW_FAITHFULNESS']:g})")
    if rank < t["NEW_RANK"]:
        new.append(f"edge scores of the two models rank-correlate at {signed(rank, 2)} "
                   f"(< NEW_RANK {t['NEW_RANK']:g}): the paths' importance was rearranged")
    if new:
        # the numbers that point the other way, so a reader sees the whole evidence
        against = []
        if carried >= t["STRENGTHENED"]:
            against.append(f"although the base circuit carries {fixed(carried, 2)} of the gap "
                           f"(>= STRENGTHENED {t['STRENGTHENED']:g}): the change flows along its "
                           "edges (switching a base path off or reversing it counts too)")
        if math.isfinite(f) and f >= t["REUSE_FAITHFULNESS"]:
            against.append(f"although the base circuit inside the fine-tuned model keeps "
                           f"{fixed(f, 2)} of its behaviour (>= REUSE_FAITHFULNESS "
                           f"{t['REUSE_FAITHFULNESS']:g})")
        if rank >= t["REUSE_RANK"]:
            against.append(f"although edge scores rank-correlate at {signed(rank, 2)} "
                           f"(>= REUSE_RANK {t['REUSE_RANK']:g})")
        return "new mechanism", tuple(new + against)
    reuse = [
        (f >= t["REUSE_FAITHFULNESS"],
         f"the base circuit inside the fine-tuned model keeps {fixed(f, 2)} of its behaviour "
         f"({'>=' if f >= t['REUSE_FAITHFULNESS'] else '<'} REUSE_FAITHFULNESS "
         f"{t['REUSE_FAITHFULNESS']:g})"),
        (rank >= t["REUSE_RANK"],
         f"edge scores rank-correlate at {signed(rank, 2)} "
         f"({'>=' if rank >= t['REUSE_RANK'] else '<'} REUSE_RANK {t['REUSE_RANK']:g})"),
        (carried >= t["STRENGTHENED"],
         f"the base circuit alone carries {fixed(carried, 2)} of the gap "
         f"({'>=' if carried >= t['STRENGTHENED'] else '<'} STRENGTHENED "
         f"{t['STRENGTHENED']:g})"),
    ]
    if unscaled:
        return "undetermined", (UNSCALED, *(text for _, text in reuse[1:]))
    reasons = tuple(text for _, text in reuse)
    if all(ok for ok, _ in reuse):
        return "re-used and strengthened", reasons
    return "mixed", reasons


@dataclass(frozen=True)
class Verdict(SavableResult, name="circuits.Verdict"):
    """What fine-tuning did to the circuit, with the numbers, thresholds and uncertainty.

    Attributes:
        label: ``"re-used and strengthened"``, ``"new mechanism"``, ``"mixed"`` or
            ``"undetermined"``.
        reasons: one line per number the rules used, with the threshold.
        numbers: the full-sample numbers (:data:`NUMBERS`).
        intervals: 95% bootstrap percentile interval of each number.
        thresholds: the thresholds used, by name.
        frequency: share of bootstrap resamples giving each label.
        notes: sensitivity notes (numbers near a threshold) and caveats.
        n_boot: bootstrap resamples.
        seed: the bootstrap's seed.
    """

    label: str
    reasons: tuple[str, ...]
    numbers: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    thresholds: dict[str, float]
    frequency: dict[str, float]
    notes: tuple[str, ...]
    n_boot: int
    seed: int
    extra: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        """The verdict, its reasons, the numbers with intervals, and the notes."""
        own = self.frequency.get(self.label, 0)
        if own > 0:
            lines = [f"verdict: {self.label} (in {share(own)} of {self.n_boot} prompt "
                     f"resamples, seed {self.seed})"]
        else:
            lines = [f"verdict: {self.label} ({self.n_boot} prompt resamples, seed {self.seed})"]
        lines += [f"  {r}" if r.startswith("although ") else f"  because {r}"
                  for r in self.reasons]
        if own < 1:
            lines.append("  resamples: " + split_text(self.frequency))
        nums = []
        for k in NUMBERS:
            if k in self.numbers:
                lo, hi = self.intervals.get(k, (math.nan, math.nan))
                left = " (left out: no scale)" if self.extra.get("left_out") == k else ""
                nums.append(f"{k} {number_and_interval(k, self.numbers[k], lo, hi)}{left}")
        lines.append("  numbers (95% interval over prompt resamples, circuits held at their "
                     "selection): " + "; ".join(nums))
        lines.append("  thresholds: " + ", ".join(f"{k} {v:g}" for k, v in self.thresholds.items()))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text()


FIXED: tuple[str, ...] = ("edge_iou", "node_iou")
"""Numbers of the two circuits alone: the circuits are held at their full-sample selection, so
resampling prompts cannot move them and they have no interval."""


def share(frequency: float) -> str:
    """A share of resamples as a percentage that never rounds a split to ``100%`` or ``0%``
    (199 of 200 is ``99.5%``)."""
    p = 100 * frequency
    if p == round(p):
        return f"{p:.0f}%"
    shown = math.floor(p * 10) / 10 if p > 50 else math.ceil(p * 10) / 10
    return f"{shown:g}%"


def split_text(frequency: dict[str, float]) -> str:
    """The labels the resamples gave, most frequent first: ``mixed 54.5%, new mechanism
    45.5%``."""
    return ", ".join(f"{k} {share(v)}" for k, v in sorted(frequency.items(),
                                                          key=lambda kv: -kv[1]) if v > 0)


def number_and_interval(key: str, value: float, lo: float, hi: float) -> str:
    """``+0.998 [+0.981, +1.000]``; ``n/a`` for a number that is not defined; no interval for
    the circuits' own numbers (:data:`FIXED`)."""
    if not math.isfinite(value):
        return "n/a (not defined)"
    if key in FIXED:
        return f"{signed(value)} (circuits held fixed)"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{signed(value)} [interval n/a]"
    return f"{signed(value)} [{signed(lo)}, {signed(hi)}]"


def sensitivity(numbers: dict[str, float], intervals: dict[str, tuple[float, float]],
                thresholds: dict[str, float], *, unscaled: bool = False) -> list[str]:
    """Notes for numbers near, or with an interval across, a threshold they are compared with,
    where that threshold decides the label: the number just below and just above it, the
    other numbers as they are, give different labels (a number that sits near a threshold
    while another rule fixes the label gets no note)."""
    t = {**THRESHOLDS, **thresholds}
    near = t["NEAR"]
    notes = []
    for key, names in _USES.items():
        if unscaled and key == "base_in_ft":
            continue  # left out of the rules (decide)
        value = numbers.get(key, math.nan)
        lo, hi = intervals.get(key, (math.nan, math.nan))
        for name in names:
            th = t[name]
            eps = 1e-9 * max(1.0, abs(th))
            if label_of({**numbers, key: th - eps}, t, unscaled=unscaled)[0] == \
                    label_of({**numbers, key: th + eps}, t, unscaled=unscaled)[0]:
                continue  # this threshold does not decide the label here
            if abs(value - th) <= near:
                notes.append(f"{key} = {fixed(value)} lies within {near:g} of {name} = {th:g}: "
                             "the verdict is sensitive to it")
            elif lo <= th <= hi:
                notes.append(f"{key}'s 95% interval [{fixed(lo, 2)}, {fixed(hi, 2)}] contains "
                             f"{name} = {th:g}: more prompts would settle it")
    return notes


RATIOS: tuple[str, ...] = ("base_in_ft", "ft_in_base", "carried")
"""The numbers that are ratios to a difference of means (a gap, a full-vs-empty difference)."""


def undetermined(numbers: dict[str, float], intervals: dict[str, tuple[float, float]]
                 ) -> list[str]:
    """Notes for numbers whose full-sample value lies outside their own bootstrap interval: a
    ratio whose denominator nears 0 on some resamples (not determined by these prompts), or the
    rank correlation, which resampling biases (a repeated prompt's noise enters both models'
    mean scores alike)."""
    notes = []
    for key in (*RATIOS, "score_rank"):
        value = numbers.get(key, math.nan)
        lo, hi = intervals.get(key, (math.nan, math.nan))
        if math.isfinite(value) and math.isfinite(lo) and math.isfinite(hi) \
                and not lo <= value <= hi:
            if key == "score_rank":
                notes.append(
                    f"score_rank = {fixed(value)} lies outside its own 95% interval "
                    f"[{fixed(lo)}, {fixed(hi)}]: resampling prompts with replacement biases a "
                    "rank correlation of mean scores (a repeated prompt's noise enters both "
                    "models' means alike); read the full-sample value, and the interval as its "
                    "rough spread")
                continue
            notes.append(f"{key} = {value:.3g} lies outside its own 95% interval [{fixed(lo, 2)}, "
                         f"{fixed(hi, 2)}]: a ratio whose denominator nears 0 on some resamples; "
                         "read it as undetermined")
    return notes
