"""Paper-ready figures from saved mechdiff results.

Figures are rebuilt from results on disk, without loading a model::

    from mechdiff import PatchResult
    from mechdiff.viz import plot_patch, save_figure

    fig = plot_patch(PatchResult.load("out/heads_ft_to_base"))
    save_figure(fig, "figures/heads_ft_to_base")  # writes .pdf and .png

Figures are built as :class:`matplotlib.figure.Figure` objects outside pyplot, with every font
size and colour set on the artists themselves: drawing never switches the backend, registers
figures globally or changes ``matplotlib.rcParams``.
"""

from mechdiff.viz._gap import plot_gap
from mechdiff.viz._pair import pair_figures, prompted_figure
from mechdiff.viz._patching import plot_directions, plot_patch
from mechdiff.viz._profiles import plot_layer_profiles
from mechdiff.viz._ranked import plot_ranked
from mechdiff.viz._save import save_figure

__all__ = [
    "pair_figures",
    "plot_directions",
    "plot_gap",
    "plot_layer_profiles",
    "plot_patch",
    "plot_ranked",
    "prompted_figure",
    "save_figure",
]
