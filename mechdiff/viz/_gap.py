"""Figure of the behaviour gap (:class:`~mechdiff.gap.GapResult`), drawn from saved values.

Left panel: the task metric of every prompt on the base model (x) against the fine-tuned model
(y), with the line y = x (points above it: the fine-tuned model scores higher) and the two means.
For task-free metrics (``kl``, ``kl_all``), whose fine-tuned value is 0 by construction, the left
panel instead shows each prompt's KL(FT || base), sorted, at the final position and averaged over
positions. Right panel: the next tokens whose mean final-position probability rose and fell most.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from mechdiff.gap import GapResult
from mechdiff.viz import _style as st

_TASK_FREE = ("kl", "kl_all")


def plot_gap(
    result: GapResult,
    *,
    title: str | None = None,
    cmap: str | Colormap = st.DIVERGING,
) -> Figure:
    """Draw the behaviour gap: per-prompt metric on both models and the tokens that moved most.

    Args:
        result: a behaviour-gap result, e.g. ``GapResult.load(folder)``.
        title: main title; defaults to the task's name.
        cmap: diverging colormap whose ends colour rising (positive end) and falling tokens.

    Returns:
        The figure (a :class:`matplotlib.figure.Figure` not registered with pyplot).
    """
    p = result.provenance
    n_tokens = len(result.rose_tokens) + len(result.fell_tokens)
    fig = st.new_figure(6.4, st.clamp(1.2 + 0.14 * n_tokens, 2.6, 6.0))
    left, right = fig.subplots(1, 2, width_ratios=(1.0, 1.35))
    task_free = p.metric in _TASK_FREE
    size = (
        f"mean KL(FT \u2016 base) {result.gap:#.3g}" if task_free
        else f"gap (FT \u2212 base) {st.fmt_signed(result.gap)}"
    )
    fig.suptitle(
        (title or f"Behaviour gap \u00b7 task: {st.plain_text(p.task)}")
        + f"\nmetric: {st.plain_text(p.metric)} \u00b7 {p.n_prompts} prompts \u00b7 {size}",
        fontsize=st.TITLE_PT,
    )
    if task_free:
        _draw_kl(left, result)
    else:
        _draw_scatter(left, result)
    _draw_tokens(right, result, st.diverging_cmap(cmap))
    return fig


def _draw_scatter(ax: Axes, result: GapResult) -> None:
    base = result.base_metric.detach().float().cpu().numpy()
    ft = result.finetuned_metric.detach().float().cpu().numpy()
    metric = st.plain_text(result.provenance.metric)
    both = np.concatenate([base, ft])
    lo, hi = float(both.min()), float(both.max())
    pad = 0.06 * (hi - lo) if hi > lo else 1.0
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], color="0.55", linewidth=0.8, linestyle="--", zorder=1,
            label="y = x (no change)")
    ax.scatter(base, ft, s=12, color="0.25", alpha=0.6, linewidths=0, zorder=2, label="prompt")
    ax.scatter([base.mean()], [ft.mean()], s=40, marker="X", color=st.POSITIVE_HEX,
               edgecolors="white",
               linewidths=0.6, zorder=3, label="mean")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal", adjustable="box")
    st.style_axes(ax)
    ax.set_xlabel(f"base model: {metric}", fontsize=st.LABEL_PT)
    ax.set_ylabel(f"fine-tuned model: {metric}", fontsize=st.LABEL_PT)
    ax.set_title("per-prompt metric", fontsize=st.LABEL_PT)
    ax.legend(fontsize=st.NOTE_PT, frameon=True, framealpha=0.85, edgecolor="none", loc="best",
              handletextpad=0.3, borderaxespad=0.2)
    ax.spines[["top", "right"]].set_visible(False)


def _draw_kl(ax: Axes, result: GapResult) -> None:
    final = np.sort(result.kl_final.detach().float().cpu().numpy())[::-1]
    mean = np.sort(result.kl_mean.detach().float().cpu().numpy())[::-1]
    rank = np.arange(1, final.shape[0] + 1)
    marks = final.shape[0] <= 64  # beyond that, markers merge into a thick line
    ax.plot(rank, final, marker="o" if marks else None, markersize=3, linewidth=0.8,
            color=st.OKABE_ITO[6], label="final position")
    ax.plot(rank, mean, marker="s" if marks else None, markersize=3, linewidth=0.8,
            linestyle="--", color=st.OKABE_ITO[5], label="mean over positions")
    st.style_axes(ax)
    ax.set_xlabel("prompt (sorted by KL)", fontsize=st.LABEL_PT)
    ax.set_ylabel("KL(FT \u2016 base) (nats)", fontsize=st.LABEL_PT)
    ax.set_title("per-prompt divergence", fontsize=st.LABEL_PT)
    ax.set_ylim(bottom=0.0)
    ax.legend(fontsize=st.NOTE_PT, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)


def _draw_tokens(ax: Axes, result: GapResult, cmap: Colormap) -> None:
    """Horizontal bars: rising tokens on top (largest first), falling tokens below."""
    rose = result.rose_delta.detach().float().cpu().numpy()
    fell = result.fell_delta.detach().float().cpu().numpy()
    tokens = list(result.rose_tokens) + list(result.fell_tokens)
    deltas = np.concatenate([rose, fell])
    st.style_axes(ax)
    ax.set_title("next tokens that moved most", fontsize=st.LABEL_PT)
    ax.set_xlabel("\u0394 mean probability (FT \u2212 base)", fontsize=st.LABEL_PT)
    if not tokens:
        ax.text(0.5, 0.5, "no token probabilities changed", transform=ax.transAxes,
                ha="center", va="center", fontsize=st.NOTE_PT, color=st.NOTE_COLOUR)
        ax.set_yticks([])
        return
    order = np.argsort(-deltas, kind="stable")
    deltas = deltas[order]
    labels = [st.token_text(tokens[i]) for i in order.tolist()]
    y = np.arange(len(labels))
    ax.barh(y, deltas, height=0.7, color=st.sign_colours(deltas, cmap), edgecolor="0.2",
            linewidth=0.4, zorder=2)
    ax.axvline(0.0, color="0.2", linewidth=0.6, zorder=3)
    ax.set_yticks(y, labels, fontsize=st.TICK_PT, fontfamily="monospace")
    ax.set_ylim(len(labels) - 0.5, -0.5)
    limit = st.symmetric_limit(deltas) * 1.08
    ax.set_xlim(-limit, limit)
    ax.tick_params(axis="y", length=0)
    ax.spines[["top", "right", "left"]].set_visible(False)
