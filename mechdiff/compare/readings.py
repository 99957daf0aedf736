"""Readings: a measured number, its interval over prompts, and the words stated thresholds give it.

A reading is never fixed in advance: the wording comes from where the point estimate falls among
named thresholds, and the reading says so when the interval straddles a threshold (the words could
change with other prompts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Band:
    """Values at or above ``at_least`` (and below the next band's) read as ``words``."""

    at_least: float
    words: str


@dataclass(frozen=True)
class Reading:
    """What a number says, given bands of thresholds.

    Attributes:
        value: the point estimate.
        low / high: its interval over prompts (NaN when unknown).
        words: the words of the band the point estimate falls in.
        straddles: the thresholds the interval crosses (empty when the reading is firm).
    """

    value: float
    low: float
    high: float
    words: str
    straddles: tuple[float, ...]

    @property
    def firm(self) -> bool:
        return not self.straddles

    def note(self) -> str:
        """``""`` when firm, else a clause saying which threshold the interval crosses."""
        if self.firm:
            return ""
        cuts = ", ".join(f"{t:+.2f}" for t in self.straddles)
        return (f"the interval [{self.low:+.2f}, {self.high:+.2f}] straddles the threshold "
                f"{cuts}, so this reading could change with other prompts")


def read(value: float, bands: Sequence[Band], *, low: float = math.nan,
         high: float = math.nan, otherwise: str = "undefined") -> Reading:
    """Read ``value`` against ``bands`` (sorted by ``at_least``, descending, or any order).

    Args:
        value: the point estimate (NaN reads as ``otherwise``).
        bands: thresholds and their words; the lowest band's threshold should be ``-inf`` to
            cover every value.
        low / high: the value's interval, if known.
        otherwise: the words for a NaN value.
    """
    ordered = sorted(bands, key=lambda b: b.at_least, reverse=True)
    words = otherwise
    if math.isfinite(value):
        words = next((b.words for b in ordered if value >= b.at_least), otherwise)
    cuts = tuple(b.at_least for b in ordered if math.isfinite(b.at_least)
                 and math.isfinite(low) and math.isfinite(high) and low < b.at_least <= high)
    return Reading(value, low, high, words, cuts)
