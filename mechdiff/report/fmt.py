"""Number and name formatting shared by the text and Markdown renderers."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mechdiff.directions import ROLES

HEADINGS = {"ft->base": "FT->base (suff.)", "base->ft": "base->FT (nec.)"}
MD_DIRECTIONS = {"ft->base": "FT\u2192base", "base->ft": "base\u2192FT"}
KIND_NAMES = {"heads": "heads", "attn": "attention layers", "mlp": "MLPs", "resid": "residual"}


def score(value: float) -> str:
    """A score with 3 decimals; ``-0.000`` is shown as ``0.000``, a missing one as ``-``."""
    if not math.isfinite(value):
        return "-"
    return _no_negative_zero(f"{value:.3f}")


def interval(low: float, high: float, digits: int = 2) -> str:
    """``[0.30, 0.58]``; ``""`` when unknown."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return ""
    return f"[{_no_negative_zero(f'{low:.{digits}f}')}, {_no_negative_zero(f'{high:.{digits}f}')}]"


def _no_negative_zero(text: str) -> str:
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def score_ci(value: float, low: float, high: float) -> str:
    """``0.441 [0.30, 0.58]`` (a score and its interval over prompts)."""
    ci = interval(low, high)
    return f"{score(value)} {ci}" if ci and math.isfinite(value) else score(value)


def rho(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "n/a"


def rho_ci(value: float, low: float, high: float) -> str:
    ci = f" [{low:+.2f}, {high:+.2f}]" if math.isfinite(low) and math.isfinite(high) else ""
    return rho(value) + ci


def span(layers: Sequence[int]) -> str:
    """``15-29`` for a contiguous run, ``3, 7-9`` otherwise."""
    layers = sorted(layers)
    if not layers:
        return "(none)"
    runs, start = [], layers[0]
    for prev, cur in zip(layers, [*layers[1:], None], strict=True):
        if cur != prev + 1:
            runs.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(runs)


def role(direction: str) -> str:
    return ROLES.get(direction, direction)
