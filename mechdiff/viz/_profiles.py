"""Per-layer profiles of several patching results on shared axes.

Each panel is one site kind (e.g. attention layers, MLP layers); each line is one result with
scores over layers (``dims == ("layer",)``): for instance, where a system prompt acts inside the
base model (single-model patching, prompted into unprompted) beside where a fine-tune acts
(cross-model patching, fine-tuned into base). A note under a panel title can carry the
correlation of the lines. Each line carries its 95% bootstrap interval over prompts as a band.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mechdiff.errors import ResultError
from mechdiff.patching import PatchResult
from mechdiff.viz import _style as st

_LINE_STYLES = ((st.OKABE_ITO[5], "o", "-"), (st.OKABE_ITO[6], "s", "--"),
                (st.OKABE_ITO[3], "^", ":"), (st.OKABE_ITO[7], "D", "-."))
"""Colour (Okabe-Ito), marker and line style of each line: lines differ in all three."""


def plot_layer_profiles(
    panels: Mapping[str, Mapping[str, PatchResult]],
    *,
    title: str | None = None,
    notes: Mapping[str, str] | None = None,
) -> Figure:
    """Draw per-layer scores of several results, one panel per key of ``panels``.

    Args:
        panels: panel title -> (line label -> result with ``dims == ("layer",)``). Every result
            of a panel must have the same number of layers.
        title: the figure's title.
        notes: panel title -> a line of text drawn under that panel's title (e.g. ``r = 0.8``).

    Returns:
        The figure (not registered with pyplot).

    Raises:
        ResultError: a result is not a per-layer result, or layer counts differ within a panel.
    """
    if not panels or any(not lines for lines in panels.values()):
        raise ResultError("plot_layer_profiles needs at least one panel with at least one result")
    for name, lines in panels.items():
        shapes = {tuple(r.scores.shape) for r in lines.values()}
        if any(tuple(r.dims) != ("layer",) for r in lines.values()) or len(shapes) != 1:
            raise ResultError(
                f"panel {name!r}: every result must be patched per layer at all positions "
                f"(dims ('layer',)) with the same number of layers, got "
                f"{[(tuple(r.dims), tuple(r.scores.shape)) for r in lines.values()]}"
            )
    n_layers = max(int(next(iter(lines.values())).scores.shape[0]) for lines in panels.values())
    width = st.clamp(1.2 + 0.13 * n_layers, 3.3, 7.0)
    fig = st.new_figure(width, 1.0 + 1.9 * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    if title:
        fig.suptitle(st.plain_text(title), fontsize=st.TITLE_PT)
    for ax, (name, lines) in zip(axes, panels.items(), strict=True):
        note = (notes or {}).get(name)
        ax.set_title(st.plain_text(name) + (f"\n{note}" if note else ""), fontsize=st.LABEL_PT)
        for (label, result), (colour, marker, style) in zip(
            lines.items(), _LINE_STYLES * len(lines), strict=False
        ):
            values = result.scores.detach().float().cpu().numpy()
            x = np.arange(values.shape[0])
            if result.receiver.shape[0] > 1:  # the 95% interval over prompts, as a band
                low, high = (t.float().cpu().numpy() for t in result.interval())
                ax.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0, gid="band")
            ax.plot(x, values, color=colour, marker=marker,
                    linestyle=style, linewidth=1.0, markersize=2.5, label=st.plain_text(label))
        st.style_axes(ax)
        ax.axhline(0.0, color="0.2", linewidth=0.6, zorder=1)
        ax.set_ylabel(st.SCORE_LABEL, fontsize=st.LABEL_PT)
        ax.spines[["top", "right"]].set_visible(False)
    ticks = st.integer_ticks(n_layers)
    axes[-1].set_xticks(ticks, [str(i) for i in ticks])
    axes[-1].set_xlabel("layer", fontsize=st.LABEL_PT)
    handles, labels = axes[0].get_legend_handles_labels()  # one legend, below, covering no data
    if any(coll.get_gid() == "band" for ax in axes for coll in ax.collections):
        handles.append(Patch(color="0.5", alpha=0.3, linewidth=0))
        labels.append("shaded: 95% interval over prompts")
    fig.legend(handles, labels, loc="outside lower center", fontsize=st.NOTE_PT, frameon=False)
    return fig
