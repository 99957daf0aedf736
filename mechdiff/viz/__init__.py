"""Paper-ready figures and circuitsvis views from saved mechdiff results.

Figures are rebuilt from results on disk, without loading a model::

    from mechdiff import PatchResult
    from mechdiff.viz import plot_patch, save_figure

    fig = plot_patch(PatchResult.load("out/heads_ft_to_base"))
    save_figure(fig, "figures/heads_ft_to_base")  # writes .pdf, .png and .svg

One style throughout (:mod:`._style`): signed scores on a colour-blind-safe diverging map centred
at 0, magnitudes on a sequential map, categories in the Okabe-Ito palette. The circuitsvis views
of the HTML report are :mod:`mechdiff.viz.views`; the report's sections of mechdiff's own result
types are :mod:`mechdiff.viz.html_sections`.

Figures are built as :class:`matplotlib.figure.Figure` objects outside pyplot, with every font
size and colour set on the artists themselves: drawing never switches the backend, registers
figures globally or changes ``matplotlib.rcParams``.
"""

from mechdiff.viz._attention import plot_attention
from mechdiff.viz._circuits import circuit_figures, plot_circuit_graph, plot_faithfulness
from mechdiff.viz._gap import plot_gap
from mechdiff.viz._pair import pair_figure_set, pair_figures, prompted_figure, prompted_profiles
from mechdiff.viz._patching import plot_directions, plot_patch
from mechdiff.viz._profiles import plot_layer_profiles
from mechdiff.viz._ranked import plot_ranked
from mechdiff.viz._save import figure_svg, save_figure

__all__ = [
    "circuit_figures",
    "figure_svg",
    "pair_figure_set",
    "pair_figures",
    "plot_attention",
    "plot_circuit_graph",
    "plot_directions",
    "plot_faithfulness",
    "plot_gap",
    "plot_layer_profiles",
    "plot_patch",
    "plot_ranked",
    "prompted_figure",
    "prompted_profiles",
    "save_figure",
]
