"""Ranked bar chart of a pair's strongest components, with 95% intervals over prompts.

One panel per direction (sufficiency | necessity), the ``k`` strongest components (by the ranking
method) as horizontal bars, one bar per method (exact patching, its attribution estimate) with an
error bar from the bootstrap interval over prompts. Drawn from a saved
:class:`~mechdiff.pipeline.pair.PairAnalysis` alone.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from mechdiff.pipeline.pair import PairAnalysis
from mechdiff.viz import _style as st

_METHOD_STYLE = {"exact": (st.METHOD_COLOURS["exact"], "exact patching"),
                 "attribution": (st.METHOD_COLOURS["attribution"],
                                 "attribution (gradient estimate)")}


def plot_ranked(analysis: PairAnalysis, k: int = 12, *, title: str | None = None) -> Figure:
    """The ``k`` strongest components of a pair, per direction and method, with error bars.

    Args:
        analysis: the pair's analysis (e.g. ``PairAnalysis.load(folder)``).
        k: how many components.
        title: main title; defaults to the pair's label and task.

    Raises:
        ValueError: ``k`` is not positive.
    """
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    rows = analysis.ranking()[:k]
    methods = [m for m in ("exact", "attribution") if analysis.results(m)]
    dirs = analysis.directions
    height = st.clamp(1.1 + 0.19 * len(rows) * len(methods) ** 0.5, 2.2, 8.0)
    fig = st.new_figure(st.clamp(2.6 * len(dirs), 3.3, 7.0), height)
    axes = np.atleast_1d(fig.subplots(1, len(dirs), sharey=True))
    p = analysis.gap.provenance
    about = (st.plain_text(analysis.label) if analysis.label == p.task
             else f"{st.plain_text(analysis.label)} \u00b7 task: {st.plain_text(p.task)}")
    fig.suptitle(title or f"{about}\nstrongest components \u00b7 {p.n_prompts} prompts \u00b7 "
                 "error bars: 95% "
                 "interval over prompts", fontsize=st.TITLE_PT)
    y = np.arange(len(rows))
    bar_h = 0.8 / len(methods)
    for ax, d in zip(axes, dirs, strict=True):
        for j, m in enumerate(methods):
            colour, name = _METHOD_STYLE[m]
            vals = np.array([row.scores.get((m, d), (math.nan,) * 3) for row in rows])
            if not len(vals):
                continue
            s, lo, hi = (np.nan_to_num(vals[:, i], nan=0.0) for i in range(3))
            pos = y - 0.4 + bar_h * (j + 0.5)
            ax.barh(pos, s, height=bar_h * 0.92, color=colour, label=name, zorder=2)
            err = np.stack([s - lo, hi - s]).clip(min=0.0)
            ax.errorbar(s, pos, xerr=err, fmt="none", ecolor="0.1", elinewidth=0.6,
                        capsize=1.2, capthick=0.6, zorder=3)
        ax.axvline(0.0, color="0.2", linewidth=0.6)
        ax.axvline(1.0, color="0.45", linewidth=0.7, linestyle=":")
        ax.set_title(f"{st.DIRECTION_ROLES.get(d, d)}: {st.DIRECTION_NAMES.get(d, d)}",
                     fontsize=st.LABEL_PT)
        ax.set_xlabel(st.SCORE_LABEL, fontsize=st.LABEL_PT)
        st.style_axes(ax)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_yticks(y, [row.component for row in rows], fontsize=st.TICK_PT)
    axes[0].invert_yaxis()
    if len(methods) > 1:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", fontsize=st.NOTE_PT,
                   frameon=False, ncols=len(methods))
    return fig
