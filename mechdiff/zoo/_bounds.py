"""Stated bounds on a model's measured behaviour, shared by the synthetic and the real zoo."""

from __future__ import annotations


class Bounded:
    """Mixin for threshold dataclasses with ``low``, ``high`` (inclusive) and ``why`` fields."""

    low: float
    high: float

    def passes(self, value: float) -> bool:
        """Whether ``value`` lies within the bounds."""
        return self.low <= value <= self.high

    @property
    def bound(self) -> str:
        """The bounds as text: ``>= 0.90``, ``<= 0.20`` or ``in [0.10, 0.60]``."""
        if self.high >= 1.0:
            return f">= {self.low:.2f}"
        if self.low <= 0.0:
            return f"<= {self.high:.2f}"
        return f"in [{self.low:.2f}, {self.high:.2f}]"
