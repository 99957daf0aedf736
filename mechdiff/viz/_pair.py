"""Every figure of a pair analysis and of the comparisons, written to a folder: the figures the
commands and demos save, rebuilt from saved results alone."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from mechdiff.compare import PromptedBaseComparison
from mechdiff.pipeline.pair import PairAnalysis, result_key
from mechdiff.viz import _style as st
from mechdiff.viz._gap import plot_gap
from mechdiff.viz._patching import plot_directions, plot_patch
from mechdiff.viz._profiles import plot_layer_profiles
from mechdiff.viz._ranked import plot_ranked
from mechdiff.viz._save import FORMATS, Format, save_figure


def pair_figure_set(analysis: PairAnalysis, *, top: int = 12) -> Iterator[tuple[str, Figure]]:
    """Every figure of one pair, by file name, drawn one at a time from the saved analysis:
    ``gap``; per site kind and method, both directions side by side (``heads``, ``mlp``,
    ``attribution_heads`` ...; one direction alone, ``heads_ft_to_base``, when only one was run);
    ``ranked`` (the strongest components with error bars over prompts)."""
    task = analysis.gap.provenance.task
    about = analysis.label if analysis.label == task else f"{analysis.label} \u00b7 task: {task}"
    yield "gap", plot_gap(analysis.gap, title=f"Behaviour gap \u00b7 {about}")
    for method in ("exact", "attribution"):
        results = analysis.results(method)
        prefix = "" if method == "exact" else "attribution_"
        what = "" if method == "exact" else " \u00b7 attribution patching (gradient estimate)"
        for kind in analysis.sites:
            keys = [result_key(kind, d) for d in analysis.directions]
            found = [results[key] for key in keys if key in results]
            if not found:
                continue
            name = st.SITE_NAMES.get(kind, kind)
            if len(found) == 2 and [r.direction for r in found] == ["ft->base", "base->ft"]:
                yield f"{prefix}{kind}", plot_directions(
                    *found, title=f"{name}{what} \u00b7 {about}")
            else:
                for r in found:
                    yield f"{prefix}{kind}_{r.direction.replace('->', '_to_')}", plot_patch(r)
    yield "ranked", plot_ranked(analysis, top)


def pair_figures(analysis: PairAnalysis, folder: str | Path, *, top: int = 12,
                 formats: Sequence[Format] = FORMATS) -> list[Path]:
    """Write the figures of one pair (:func:`pair_figure_set`) into ``folder``, each in every
    one of ``formats`` (default PDF, PNG and SVG).

    Returns:
        The written files.
    """
    folder = Path(folder)
    written: list[Path] = []
    for name, fig in pair_figure_set(analysis, top=top):
        written += save_figure(fig, folder / name, formats=formats)
    return written


def prompted_profiles(c: PromptedBaseComparison, *, title: str | None = None) -> Figure:
    """The base's prompted->unprompted profile beside the fine-tune's ft->base profile, per site
    kind, with their correlations (drawn from the saved comparison)."""
    notes = {}
    for kind, r in c.correlation.items():
        text = f"r = {r['all']:+.2f} [{r['all_low']:+.2f}, {r['all_high']:+.2f}]"
        if "changed" in r:
            text += f" (changed layers: {r['changed']:+.2f})"
        notes[st.SITE_NAMES.get(kind, kind)] = text
    return plot_layer_profiles(
        {st.SITE_NAMES.get(k, k): {
            "system prompt in the base (prompted \u2192 unprompted)": c.prompted[k],
            "fine-tune \u2192 base (FT \u2192 base)": c.finetuned[k]} for k in c.prompted},
        title=title or "Where the system prompt acts vs where the fine-tune acts",
        notes=notes,
    )


def prompted_figure(c: PromptedBaseComparison, folder: str | Path, *, title: str | None = None,
                    formats: Sequence[Format] = FORMATS) -> list[Path]:
    """Write ``profiles`` (:func:`prompted_profiles`) into ``folder``."""
    return save_figure(prompted_profiles(c, title=title), Path(folder) / "profiles",
                       formats=formats)
