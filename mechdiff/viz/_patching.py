"""Figures of patching results (:class:`~mechdiff.patching.PatchResult`), drawn from saved scores.

Layouts by ``result.dims``:

* ``("layer", "head")``: a layer x head heatmap (layers on y, layer 0 at the top).
* ``("layer",)`` (attn / mlp / resid patched at all positions): one bar per layer. The y range
  always holds 0 and 1 (1 = the donor's behaviour fully reproduced, drawn as a dotted line).
* ``("layer", "pos")``: a layer x position heatmap; ``token_labels`` name the positions.
* ``("layer", "head", "pos")``: a layer x position heatmap in which each cell shows the head with
  the largest ``|score|`` at that layer and position (its signed score); the title says so.
  One panel keeps the figure readable at column width; the full tensor stays in the result.

Heatmaps use a diverging colormap with limits symmetric about 0, so white means "no effect", and
small grids (at most 16 x 16 cells) get each cell's value printed in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure

from mechdiff.errors import ResultError
from mechdiff.patching import PatchResult
from mechdiff.viz import _style as st

#: Largest grid (rows and columns) whose cells get their value printed in them.
ANNOTATE_MAX = 16
_CELL_IN = 0.2  # preferred cell size in inches when mechdiff sizes the figure
_KNOWN_DIMS = {("layer", "head"), ("layer",), ("layer", "pos"), ("layer", "head", "pos")}


@dataclass(frozen=True)
class _Panel:
    """What one result draws: a 2-D grid (rows = layers) or one bar per layer."""

    values: np.ndarray  # [layer] for bars, [layer, column] for heatmaps
    xlabel: str
    xticklabels: list[str] | None  # None: integer ticks
    note: str  # extra subtitle text ("" if none)
    low: np.ndarray | None = None  # the 95% interval over prompts, same shape as values
    high: np.ndarray | None = None

    @property
    def is_bars(self) -> bool:
        return self.values.ndim == 1


def plot_patch(
    result: PatchResult,
    *,
    ax: Axes | None = None,
    title: str | None = None,
    cmap: str | Colormap = st.DIVERGING,
    vmax: float | None = None,
    token_labels: Sequence[str] | None = None,
    annotate: bool | None = None,
) -> Figure:
    """Draw one patching result: a heatmap, or bars over layers (see the module docstring).

    Args:
        result: a patching result, e.g. ``PatchResult.load(folder)``.
        ax: axes to draw into; by default a new figure sized for the grid is made. When given,
            the title goes into the axes title and the colour bar steals space from it.
        title: main title; defaults to the site kind, direction and task.
        cmap: a diverging colormap (name or object); centred at 0 with symmetric limits.
        vmax: half-width of the colour scale (bars: y limits ``±vmax``); defaults to the largest
            ``|score|``. Pass the same value to several figures to compare them.
        token_labels: one label per position (the prompt's tokens) for per-position results.
        annotate: print each cell's value; by default only for grids of at most 16 x 16 cells.

    Returns:
        The figure (a :class:`matplotlib.figure.Figure` not registered with pyplot).

    Raises:
        ResultError: the result has dimensions mechdiff does not know how to draw.
        ValueError: ``token_labels`` do not match the result's positions, or ``vmax <= 0``.
    """
    panel = _panel(result, token_labels)
    limit = st.symmetric_limit(panel.values, vmax)
    colormap = st.diverging_cmap(cmap)
    heading = "\n".join(_titles(result, title, panel.note))
    if ax is None:
        fig = st.new_figure(*_figsize(panel, n_panels=1))
        ax = fig.add_subplot()
        fig.suptitle(heading, fontsize=st.TITLE_PT)
    else:
        fig = st.root_figure(ax)
        ax.set_title(heading, fontsize=st.LABEL_PT)
    if panel.is_bars:
        _draw_bars(ax, panel, colormap, _bar_limits(_extent([panel]), vmax), annotate)
    else:
        mappable = _draw_heatmap(ax, panel, colormap, limit)
        _colourbar(fig, mappable, ax)
        _annotate(ax, panel.values, mappable, annotate)
    return fig


def plot_directions(
    ft_to_base: PatchResult,
    base_to_ft: PatchResult,
    *,
    title: str | None = None,
    cmap: str | Colormap = st.DIVERGING,
    vmax: float | None = None,
    token_labels: Sequence[str] | None = None,
    annotate: bool | None = None,
) -> Figure:
    """Both patching directions side by side on one colour scale: sufficiency | necessity.

    Left: fine-tuned activations patched into the base model (a site that closes the gap is
    sufficient for the fine-tuned behaviour). Right: base activations patched into the
    fine-tuned model (a site that closes the gap is necessary for it).

    Args:
        ft_to_base: the ``direction="ft->base"`` result.
        base_to_ft: the ``direction="base->ft"`` result of the same models, task and sites.
        title: main title; defaults to the site kind, task, metric and number of prompts.
        cmap: a diverging colormap, centred at 0.
        vmax: half-width of the shared colour scale; defaults to the largest ``|score|`` of both.
        token_labels: one label per position, for per-position results.
        annotate: print cell values; by default only for grids of at most 16 x 16 cells.

    Returns:
        The figure, with one colour bar shared by both heatmaps (or a shared y axis for bars).

    Raises:
        ResultError: the results are not the two directions of the same analysis.
    """
    _check_pair(ft_to_base, base_to_ft)
    panels = [_panel(r, token_labels) for r in (ft_to_base, base_to_ft)]
    both = np.concatenate([p.values.ravel() for p in panels])
    limit = st.symmetric_limit(both, vmax)
    colormap = st.diverging_cmap(cmap)
    width, height = _figsize(panels[0], n_panels=2)
    fig = st.new_figure(width, height)
    axes = fig.subplots(1, 2, sharey=True)
    p = ft_to_base.provenance
    lines = [
        title or f"{st.SITE_NAMES.get(ft_to_base.sites, ft_to_base.sites)} \u00b7 task: "
        f"{st.plain_text(p.task)}",
        f"metric: {st.plain_text(p.metric)} \u00b7 {p.n_prompts} prompts",
    ]
    fig.suptitle("\n".join(lines + ([panels[0].note] if panels[0].note else [])),
                 fontsize=st.TITLE_PT)
    mappable = None
    for ax, result, panel in zip(axes, (ft_to_base, base_to_ft), panels, strict=True):
        role = st.DIRECTION_ROLES[result.direction]
        ax.set_title(
            f"{role}: {st.DIRECTION_NAMES[result.direction]}\ngap {st.fmt_signed(result.gap)}",
            fontsize=st.LABEL_PT,
        )
        if panel.is_bars:
            limits = _bar_limits(_extent(panels), vmax)
            _draw_bars(ax, panel, colormap, limits, annotate)
        else:
            mappable = _draw_heatmap(ax, panel, colormap, limit)
    axes[1].set_ylabel("")
    axes[1].tick_params(labelleft=False)
    if not panels[0].is_bars:
        _colourbar(fig, mappable, list(axes))
        for ax, panel in zip(axes, panels, strict=True):
            _annotate(ax, panel.values, mappable, annotate)
    return fig


def _check_pair(ft_to_base: PatchResult, base_to_ft: PatchResult) -> None:
    if (ft_to_base.direction, base_to_ft.direction) != ("ft->base", "base->ft"):
        raise ResultError(
            f"plot_directions needs the 'ft->base' result first and the 'base->ft' result second, "
            f"got {ft_to_base.direction!r} and {base_to_ft.direction!r}"
        )
    a, b = ft_to_base, base_to_ft
    if (a.sites, a.dims, a.positions, tuple(a.scores.shape)) != (
        b.sites, b.dims, b.positions, tuple(b.scores.shape)
    ):
        raise ResultError(
            f"the two results patch different sites: {a.sites} {a.dims} {tuple(a.scores.shape)} "
            f"vs {b.sites} {b.dims} {tuple(b.scores.shape)}; run both directions with the same "
            "sites and positions"
        )
    keys = ("base", "finetuned", "task", "prompts_hash", "metric")
    differ = [k for k in keys if getattr(a.provenance, k) != getattr(b.provenance, k)]
    if differ:
        raise ResultError(
            f"the two results come from different analyses (they differ in {', '.join(differ)}); "
            "pass the two directions of the same models, task and metric"
        )


def _panel(result: PatchResult, token_labels: Sequence[str] | None) -> _Panel:
    dims = tuple(result.dims)
    if dims not in _KNOWN_DIMS:
        raise ResultError(f"cannot draw a result with dims {dims}; expected one of {_KNOWN_DIMS}")
    scores = result.scores.detach().float().cpu().numpy()
    low, high = (t.detach().float().cpu().numpy() for t in result.interval())
    if result.receiver.shape[0] < 2:  # one prompt: no spread to show
        low = high = None
    if "pos" not in dims and token_labels is not None:
        raise ValueError(
            "token_labels name positions, but this result was patched at all positions at once "
            f"(dims {dims}); drop token_labels or patch with positions='each'"
        )
    if dims == ("layer",):
        return _Panel(scores, "layer", None, "", low, high)
    if dims == ("layer", "head"):
        note = "; ".join(x for x in (_dot_note(low), _grey_note(scores)) if x)
        return _Panel(scores, "head", None, note, low, high)
    note = ""
    if dims == ("layer", "head", "pos"):
        strongest = np.abs(np.nan_to_num(scores, nan=0.0)).argmax(axis=1)[:, None, :]
        scores = np.take_along_axis(scores, strongest, axis=1)[:, 0, :]
        if low is not None and high is not None:
            low = np.take_along_axis(low, strongest, axis=1)[:, 0, :]
            high = np.take_along_axis(high, strongest, axis=1)[:, 0, :]
        note = "each cell: the head with the largest |score|"
    labels = None
    if token_labels is not None:
        labels = [str(t) for t in token_labels]
        if len(labels) != scores.shape[1]:
            raise ValueError(
                f"got {len(labels)} token_labels for {scores.shape[1]} positions; pass one label "
                "per position (the tokens of the prompt, padded to the longest prompt)"
            )
        labels = [st.token_text(t) for t in labels]
    dots = _dot_note(low)
    note = "; ".join(x for x in (note, dots, _grey_note(scores)) if x)
    return _Panel(scores, "position", labels, note, low, high)


def _dot_note(low: np.ndarray | None) -> str:
    return "" if low is None else "\u00b7 = 95% interval over prompts includes 0"


def _grey_note(scores: np.ndarray) -> str:
    """What grey cells are, where there are any (sites left unscored, e.g. not among the
    candidates patched exactly): the figure must say it without its HTML caption."""
    return "grey: not scored" if bool(np.isnan(scores).any()) else ""


def _mark_uncertain(ax: Axes, panel: _Panel) -> None:
    """A small grey dot in the upper right corner of every heatmap cell whose interval over
    prompts includes 0 (clear of a printed value)."""
    if panel.low is None or panel.high is None:
        return
    rows, cols = np.nonzero((panel.low <= 0) & (panel.high >= 0))
    if rows.size:
        ax.scatter(cols + 0.34, rows - 0.3, s=1.2, c="0.4", marker="o", linewidths=0, zorder=3)


def _titles(result: PatchResult, title: str | None, note: str) -> list[str]:
    """Title lines: what was patched and on which task; metric, prompts and gap; a note."""
    p = result.provenance
    direction = st.DIRECTION_NAMES.get(result.direction, result.direction)
    role = st.DIRECTION_ROLES.get(result.direction)
    if role:
        direction = f"{direction} ({role})"
    site = st.SITE_NAMES.get(result.sites, result.sites)
    main = title or f"{site} \u00b7 {direction} \u00b7 task: {st.plain_text(p.task)}"
    sub = (
        f"metric: {st.plain_text(p.metric)} \u00b7 {p.n_prompts} prompts \u00b7 "
        f"gap {st.fmt_signed(result.gap)}"
    )
    return [main, sub] + ([note] if note else [])


def _figsize(panel: _Panel, n_panels: int) -> tuple[float, float]:
    """A size that gives cells of about 0.2 in, from one column (3.3 in) to two (7 in) wide."""
    if panel.is_bars:
        n = panel.values.shape[0]
        width = st.clamp(0.9 + 0.16 * n, 3.3, 7.0 / (1 if n_panels == 1 else 1.6))
        return width * n_panels * (0.85 if n_panels > 1 else 1.0), 2.4
    rows, cols = panel.values.shape
    label_space = 0.0
    if panel.xticklabels is not None:
        longest = max((len(t) for t in panel.xticklabels), default=1)
        label_space = min(1.2, 0.06 * longest)
    width = st.clamp(0.55 + 0.95 / n_panels + cols * _CELL_IN, 3.3 / n_panels, 7.0 / n_panels)
    height = st.clamp(1.0 + label_space + rows * _CELL_IN, 2.3, 9.0)
    return width * n_panels + (0.5 if n_panels > 1 else 0.0), height


def _draw_heatmap(ax: Axes, panel: _Panel, cmap: Colormap, limit: float) -> ScalarMappable:
    rows, cols = panel.values.shape
    image = ax.imshow(
        panel.values,
        cmap=cmap,
        norm=st.symmetric_norm(limit),
        aspect="auto",
        interpolation="nearest",
    )
    _mark_uncertain(ax, panel)
    st.style_axes(ax)
    ax.set_ylabel("layer", fontsize=st.LABEL_PT)
    ax.set_xlabel(panel.xlabel, fontsize=st.LABEL_PT)
    layer_ticks = st.integer_ticks(rows)
    ax.set_yticks(layer_ticks, [str(i) for i in layer_ticks])
    if panel.xticklabels is not None:
        ax.set_xticks(range(cols), panel.xticklabels, rotation=90, fontsize=st.TICK_PT)
    else:
        col_ticks = st.integer_ticks(cols)
        ax.set_xticks(col_ticks, [str(i) for i in col_ticks])
    if max(rows, cols) <= 48:  # thin white lines between cells; at larger sizes they'd dominate
        ax.set_xticks(np.arange(-0.5, cols, 1.0), minor=True)
        ax.set_yticks(np.arange(-0.5, rows, 1.0), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return image


def _colourbar(fig: Figure, mappable: ScalarMappable, ax: Axes | list[Axes]) -> None:
    bar = fig.colorbar(mappable, ax=ax, fraction=0.08, pad=0.03, aspect=25)
    bar.set_label(st.SCORE_LABEL, fontsize=st.LABEL_PT)
    bar.ax.tick_params(labelsize=st.TICK_PT, length=2, width=0.6)
    bar.outline.set_linewidth(0.6)


def _annotate(
    ax: Axes, values: np.ndarray, mappable: ScalarMappable, annotate: bool | None
) -> None:
    """Print each cell's value, in black or white by the cell's colour, at a size that fits."""
    rows, cols = values.shape
    if annotate is None:
        annotate = rows <= ANNOTATE_MAX and cols <= ANNOTATE_MAX
    if not annotate:
        return
    width_pt, height_pt = st.axes_size_pt(ax)
    labels = [st.fmt_score(float(v)) for v in values.ravel()]
    widest = max((len(t) for t in labels), default=1)
    # A digit is about 0.6 em wide; leave a margin of ~15% of the cell on each side.
    size = min(width_pt / cols * 0.7 / (0.6 * max(widest, 2)), height_pt / rows * 0.6, 7.0)
    if size < st.MIN_ANNOT_PT:
        return
    norm: Normalize = mappable.norm
    cmap = mappable.get_cmap()
    for (i, j), text in zip(np.ndindex(rows, cols), labels, strict=True):
        if not text:
            continue
        colour = st.text_colour(cmap(norm(values[i, j])))
        ax.text(j, i, text, ha="center", va="center", fontsize=size, color=colour)


def _extent(panels: Sequence[_Panel]) -> list[np.ndarray]:
    """Every value a bar panel draws: the bars and their error bars' ends."""
    out = []
    for p in panels:
        out += [p.values] + [x for x in (p.low, p.high) if x is not None]
    return out


def _bar_limits(values: list[np.ndarray], vmax: float | None) -> tuple[float, float]:
    """y limits: ``±vmax`` if given, else a range holding 0, 1 (the donor) and every bar."""
    if vmax is not None:
        limit = st.symmetric_limit(values[0], vmax)
        return -limit, limit
    finite = np.nan_to_num(np.concatenate([v.ravel() for v in values]), nan=0.0)
    lo, hi = min(0.0, float(finite.min())), max(1.0, float(finite.max()))
    pad = 0.12 * (hi - lo)
    return lo - (pad if lo < 0 else 0.02 * (hi - lo)), hi + pad


def _draw_bars(
    ax: Axes, panel: _Panel, cmap: Colormap, ylim: tuple[float, float], annotate: bool | None
) -> None:
    values = panel.values
    layers = np.arange(values.shape[0])
    finite = np.nan_to_num(values, nan=0.0)
    bars = ax.bar(
        layers, finite, width=0.75, color=st.sign_colours(finite, cmap), edgecolor="0.2",
        linewidth=0.4, zorder=2,
    )
    if panel.low is not None and panel.high is not None:  # 95% interval over prompts
        err = np.stack([finite - np.nan_to_num(panel.low, nan=0.0),
                        np.nan_to_num(panel.high, nan=0.0) - finite]).clip(min=0.0)
        ax.errorbar(layers, finite, yerr=err, fmt="none", ecolor="0.15", elinewidth=0.6,
                    capsize=1.2, capthick=0.6, zorder=5)
    st.style_axes(ax)
    ax.axhline(0.0, color="0.2", linewidth=0.6, zorder=3)
    ax.axhline(1.0, color="0.45", linewidth=0.7, linestyle=":", zorder=1)
    ax.set_xlabel("layer", fontsize=st.LABEL_PT)
    ax.set_ylabel(st.SCORE_LABEL, fontsize=st.LABEL_PT)
    ticks = st.integer_ticks(len(layers))
    ax.set_xticks(ticks, [str(i) for i in ticks])
    ax.set_xlim(-0.6, len(layers) - 0.4)
    ax.set_ylim(*ylim)
    ax.spines[["top", "right"]].set_visible(False)
    if annotate is None:
        annotate = len(layers) <= ANNOTATE_MAX
    if annotate:
        # A white box keeps a label legible where it crosses the dotted line at 1.
        ax.bar_label(
            bars, labels=[st.fmt_score(float(v)) for v in values], padding=1.5,
            fontsize=st.TICK_PT - 1, color=st.NOTE_COLOUR, zorder=4,
            bbox={"boxstyle": "square,pad=0.05", "facecolor": "white", "edgecolor": "none"},
        )
