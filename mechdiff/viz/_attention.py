"""Paper figure of one head's attention in both models on one prompt, from saved views.

Three panels on the prompt's own tokens (queries down, keys across): the base model's pattern, the
fine-tuned model's pattern (both on one sequential scale from 0 to the larger maximum) and their
difference, fine-tuned minus base (diverging, centred at 0, symmetric limits). Drawn from a saved
:class:`~mechdiff.views.PairViews` alone; the interactive version is
:func:`mechdiff.viz.views.attention_html`.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from mechdiff.errors import ResultError
from mechdiff.views import PairViews
from mechdiff.viz import _style as st


def plot_attention(views: PairViews, head: int | str = 0, prompt: int = 0, *,
                   title: str | None = None) -> Figure:
    """Base, fine-tuned and difference patterns of one head on one kept prompt.

    Args:
        views: saved views (:func:`mechdiff.views.pair_views`).
        head: the head's index among ``views.heads`` or its label (``"L3H7"``).
        prompt: the prompt's index among the kept prompts.
        title: main title; defaults to the head, pair and prompt.

    Raises:
        ResultError: the views hold no patterns, or ``head`` / ``prompt`` is not among them.
    """
    if not views.heads:
        raise ResultError("these views hold no attention patterns (computed without heads)")
    h = views.heads.index(head) if isinstance(head, str) and head in views.heads else head
    if not isinstance(h, int) or not 0 <= h < len(views.heads):
        raise ResultError(f"head {head!r} is not among the views' heads {views.heads}")
    if not 0 <= prompt < len(views.prompt_indices):
        raise ResultError(f"prompt {prompt} is not among the {len(views.prompt_indices)} kept "
                          "prompts")
    base = views.pattern(prompt, h, "base").float().numpy()
    ft = views.pattern(prompt, h, "finetuned").float().numpy()
    diff = ft - base
    n = base.shape[0]
    labels = [st.token_text(t) for t in views.tokens[prompt]]
    side = st.clamp(1.2 + 0.16 * n, 2.2, 4.2)
    fig = st.new_figure(3 * side + 1.0, side + 0.9)
    axes = fig.subplots(1, 3, sharey=True)
    top = float(np.nanmax(np.maximum(base, ft))) or 1.0
    lim = st.symmetric_limit(diff)
    mask = np.triu(np.ones((n, n), dtype=bool), 1)  # causal: keys after the query are unseen
    score = views.head_scores[h]
    fig.suptitle(title or f"{views.heads[h]} \u00b7 {st.plain_text(views.label)} \u00b7 prompt "
                 f"{views.prompt_indices[prompt]}"
                 + (f" \u00b7 score {st.fmt_signed(score)}" if np.isfinite(score) else ""),
                 fontsize=st.TITLE_PT)
    panels = (("base", base, st.SEQUENTIAL, 0.0, top), ("fine-tuned", ft, st.SEQUENTIAL, 0.0, top),
              ("fine-tuned \u2212 base", diff, st.DIVERGING, -lim, lim))
    for ax, (name, values, cmap, lo, hi) in zip(axes, panels, strict=True):
        image = ax.imshow(np.ma.masked_array(values, mask), cmap=st.diverging_cmap(cmap),
                          vmin=lo, vmax=hi, interpolation="nearest")
        st.style_axes(ax)
        ax.set_title(name, fontsize=st.LABEL_PT)
        ax.set_xticks(range(n), labels, rotation=90, fontsize=st.TICK_PT - 1)
        ax.set_yticks(range(n), labels, fontsize=st.TICK_PT - 1)
        ax.set_xlabel("key (attended to)", fontsize=st.LABEL_PT)
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
        bar.ax.tick_params(labelsize=st.TICK_PT, length=2, width=0.6)
        bar.set_label("attention weight" if cmap == st.SEQUENTIAL else "\u0394 attention weight",
                      fontsize=st.NOTE_PT)
    axes[0].set_ylabel("query (attending)", fontsize=st.LABEL_PT)
    return fig
