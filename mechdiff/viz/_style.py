"""Shared look of mechdiff figures: font sizes, colours, names and small drawing helpers.

One style for every figure and view: sizes legible at paper column width; colour-blind-safe
colours throughout: signed scores on a diverging map centred at 0 (:data:`DIVERGING`, ColorBrewer
RdBu: blue negative, white 0, red positive), magnitudes on a sequential map from white
(:data:`SEQUENTIAL`, ColorBrewer Purples), categories (methods, lines) in the Okabe-Ito palette
(:data:`OKABE_ITO`) with distinct markers and line styles as well, so nothing depends on hue
alone. The circuitsvis views (:mod:`mechdiff.viz.views`) use the same hues (:data:`POSITIVE_HEX`,
:data:`NEGATIVE_HEX`, :data:`MAGNITUDE_HEX`).

Nothing here touches matplotlib's global state: every size and colour is set on the artist that
uses it, so a user's ``rcParams`` are neither read for our layout decisions nor changed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import Colormap, Normalize, to_rgba
from matplotlib.figure import Figure

#: Font sizes in points, legible when a figure is printed at paper column width (~3.3 in).
TICK_PT = 7.0
LABEL_PT = 8.0
TITLE_PT = 8.5
NOTE_PT = 7.0
#: Smallest annotation font we are willing to print inside a cell; below it cells stay blank.
MIN_ANNOT_PT = 4.5

#: Colour maps: signed values (centred at 0 with symmetric limits) and magnitudes (from 0).
DIVERGING = "RdBu_r"
SEQUENTIAL = "Purples"
#: The same hues as CSS colours, for HTML views.
POSITIVE_HEX = "#b2182b"
NEGATIVE_HEX = "#2166ac"
MAGNITUDE_HEX = "#54278f"
#: Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision
#: deficiency. Black, orange, sky blue, bluish green, yellow, blue, vermillion, reddish purple.
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00",
             "#CC79A7")
#: Colour of each patching method wherever methods are compared.
METHOD_COLOURS = {"exact": "#404040", "attribution": "#E69F00"}

SCORE_LABEL = "fraction of gap closed"
NOTE_COLOUR = "0.3"
BAD_COLOUR = "0.85"

SITE_NAMES = {
    "heads": "Attention heads",
    "attn": "Attention layers",
    "mlp": "MLP layers",
    "resid": "Residual stream",
}
DIRECTION_NAMES = {
    "ft->base": "FT \u2192 base",
    "base->ft": "base \u2192 FT",
    "clean->corrupted": "clean \u2192 corrupted",
}
DIRECTION_ROLES = {"ft->base": "sufficiency", "base->ft": "necessity"}
MINUS = "\u2212"


def new_figure(width: float, height: float) -> Figure:
    """A figure outside pyplot (no global figure registry, no backend switch)."""
    return Figure(figsize=(width, height), layout="constrained")


def clamp(value: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, value))


def diverging_cmap(cmap: str | Colormap) -> Colormap:
    """A copy of ``cmap`` (a name or a colormap) that paints NaN cells light grey."""
    base = colormaps[cmap] if isinstance(cmap, str) else cmap
    return base.with_extremes(bad=BAD_COLOUR)


def symmetric_limit(values: np.ndarray, vmax: float | None = None) -> float:
    """Half-width of the colour scale: ``vmax`` if given, else the largest finite ``|value|``.

    Falls back to 1.0 when every value is 0 or NaN, so the norm is never degenerate.
    """
    if vmax is not None:
        if not vmax > 0:
            raise ValueError(f"vmax must be a positive number, got {vmax!r}")
        return float(vmax)
    finite = np.abs(values[np.isfinite(values)])
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 else 1.0


def symmetric_norm(limit: float) -> Normalize:
    """Colour norm from ``-limit`` to ``+limit``, so 0 is the colormap's midpoint (white)."""
    return Normalize(vmin=-limit, vmax=limit)


def text_colour(rgba: Sequence[float]) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba``."""
    r, g, b, _ = to_rgba(tuple(rgba))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "white" if luminance < 0.5 else "black"


def sign_colours(values: np.ndarray, cmap: Colormap) -> list[tuple[float, float, float, float]]:
    """Bar colours: the colormap's positive end for positive values, its negative end otherwise."""
    pos, neg = cmap(0.82), cmap(0.18)
    return [pos if v >= 0 else neg for v in values.tolist()]


def fmt_score(value: float) -> str:
    """Compact cell label: ``.53``, ``−.12``, ``1.04``, ``12``; ``0`` for values that round to 0."""
    if not math.isfinite(value):
        return ""
    if abs(value) >= 9.995:
        text = f"{value:.0f}"
    else:
        text = f"{value:.2f}"
        if text.lstrip("-") == "0.00":
            return "0"
        text = text.replace("0.", ".", 1) if text.lstrip("-").startswith("0.") else text
    return text.replace("-", MINUS)


def fmt_signed(value: float) -> str:
    """A signed number with 3 significant digits and a typographic minus (``+2.00``, ``−0.512``;
    ``+0.00`` for a negative zero)."""
    return f"{value + 0.0:+#.3g}".replace("-", MINUS)


def plain_text(text: str) -> str:
    """Escape ``$`` so that text from prompts or model ids is never parsed as mathtext."""
    return text.replace("$", r"\$")


def token_text(token: str) -> str:
    """A token as a readable label: decoded (``Ġcat`` and ``▁cat`` read ``␣cat``; see
    :func:`mechdiff.views.readable`), with visible spaces (``␣``), newlines (``↵``) and tabs
    (``⇥``); ``∅`` when empty."""
    from mechdiff.views.tokens import readable, shown

    return plain_text(shown(readable(token)))


def hex_colour(rgba: Sequence[float]) -> str:
    """``#rrggbb`` of an RGBA tuple (for HTML)."""
    r, g, b, _ = to_rgba(tuple(rgba))
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def integer_ticks(n: int, max_ticks: int = 16) -> list[int]:
    """Tick positions ``0, s, 2s, ...`` with a step ``s`` that keeps at most ``max_ticks`` ticks."""
    step = max(1, math.ceil(n / max_ticks))
    return list(range(0, n, step))


def style_axes(ax: Axes) -> None:
    """Tick label sizes and thin spines, set on the axes itself (never through rcParams)."""
    ax.tick_params(labelsize=TICK_PT, length=2.5, width=0.6, pad=2)
    for spine in ax.spines.values():
        spine.set_linewidth(0.6)


def root_figure(ax: Axes) -> Figure:
    """The top-level figure holding ``ax``, also when ``ax`` sits in a sub-figure."""
    fig = ax.figure
    while not isinstance(fig, Figure):  # a SubFigure; its ``figure`` leads to the root
        fig = fig.figure
    return fig


def axes_size_pt(ax: Axes) -> tuple[float, float]:
    """Width and height of ``ax`` in points after the figure's layout engine has run."""
    fig = root_figure(ax)
    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
    box = ax.get_position()
    width_in, height_in = fig.get_size_inches()
    return box.width * width_in * 72.0, box.height * height_in * 72.0
