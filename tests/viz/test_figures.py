"""Figures drawn from saved results: what is drawn is the data, on the promised scale and labels,
written to disk as PDF and PNG, without touching matplotlib's global state."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from PIL import Image
from support import unchecked

from mechdiff.errors import ResultError
from mechdiff.gap import GapResult
from mechdiff.patching import PatchResult
from mechdiff.results import Provenance
from mechdiff.viz import plot_directions, plot_gap, plot_patch, save_figure

N_PROMPTS = 4
RECEIVER = torch.tensor([0.0, 0.5, 1.0, 1.5])
GAP = 2.0


def _prov(**kw) -> Provenance:
    fields = dict(base="b", finetuned="f", processing="compat", task="t", prompts_hash="x",
                  n_prompts=N_PROMPTS, metric="logit_diff")
    return Provenance(**(fields | kw))


def _result(scores: torch.Tensor, dims: tuple[str, ...], sites: str, *,
            direction: str = "ft->base", **prov) -> PatchResult:
    """A result whose per-prompt numbers are consistent with ``scores`` (gap 2, as cross_patch)."""
    patched = RECEIVER.mean() + GAP * scores[..., None] + torch.zeros(*scores.shape, N_PROMPTS)
    return PatchResult(
        scores=scores, patched=patched, receiver=RECEIVER, donor=RECEIVER + GAP, sites=sites,
        dims=dims, direction=direction, positions="each" if "pos" in dims else "all",
        provenance=_prov(**prov),
    )


def _round_trip(result, tmp_path: Path):
    """Figures are drawn from results on disk: save, then load back."""
    return type(result).load(result.save(tmp_path / "result"))


def _colourbar_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


HEADS = torch.tensor([[0.1, -0.2, 0.0, 0.05],
                      [0.9, 0.3, -0.6, 0.0],
                      [0.0, 0.02, 0.4, -0.1]])  # [layer=3, head=4]


@pytest.fixture
def heads(tmp_path: Path) -> PatchResult:
    return _round_trip(_result(HEADS.clone(), ("layer", "head"), "heads"), tmp_path)


def test_round_trip_keeps_what_the_figure_reads(heads: PatchResult) -> None:
    assert heads.dims == ("layer", "head")
    assert (heads.provenance.task, heads.provenance.n_prompts) == ("t", N_PROMPTS)
    torch.testing.assert_close(heads.scores, HEADS)
    assert heads.gap == pytest.approx(GAP)


def test_heads_heatmap_shows_the_scores_on_a_symmetric_scale(heads: PatchResult) -> None:
    fig = plot_patch(heads)
    ax = fig.axes[0]
    image = ax.images[0]
    np.testing.assert_array_equal(np.asarray(image.get_array()), HEADS.numpy())
    assert image.get_clim() == pytest.approx((-0.9, 0.9))
    assert image.norm(0.0) == pytest.approx(0.5)  # 0 sits at the diverging colormap's centre
    assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2"]
    (bar,) = _colourbar_axes(fig)
    assert bar.get_ylabel() == "fraction of gap closed"
    heading = fig.get_suptitle()
    assert "FT \u2192 base" in heading and "sufficiency" in heading and "task: t" in heading
    assert "logit_diff" in heading and "4 prompts" in heading and "gap +2.00" in heading


def test_grey_cells_are_explained_in_the_figure_itself(tmp_path: Path) -> None:
    """Unscored sites (NaN: not among the candidates patched exactly) are grey; the figure says
    so in its own heading (only the HTML caption did)."""
    scores = HEADS.clone()
    scores[0, 1] = float("nan")
    partial = _round_trip(_result(scores, ("layer", "head"), "heads"), tmp_path)
    assert "grey: not scored" in plot_patch(partial).get_suptitle()
    assert "grey" not in plot_patch(_result(HEADS.clone(), ("layer", "head"),
                                            "heads")).get_suptitle()


def test_small_grids_are_annotated_in_a_legible_colour(heads: PatchResult) -> None:
    ax = plot_patch(heads).axes[0]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in ax.texts}
    assert len(cells) == HEADS.numel()
    assert cells[(1, 0)].get_text() == ".90"
    assert cells[(1, 2)].get_text() == "\u2212.60"
    assert cells[(0, 2)].get_text() == "0"
    # The darkest cells (|score| = max) get white text, the white ones (score 0) black text.
    assert to_rgba(cells[(1, 0)].get_color()) == to_rgba("white")
    assert to_rgba(cells[(0, 2)].get_color()) == to_rgba("black")
    assert all(t.get_fontsize() >= 4.5 for t in ax.texts)


def test_large_grids_are_not_annotated(tmp_path: Path) -> None:
    scores = torch.linspace(-1, 1, 17 * 12).reshape(17, 12)
    fig = plot_patch(_round_trip(_result(scores, ("layer", "head"), "heads"), tmp_path))
    assert len(fig.axes[0].texts) == 0
    ticks = [int(t.get_text()) for t in fig.axes[0].get_yticklabels()]
    assert ticks == list(range(0, 17, 2))  # integer ticks, thinned to at most 16


def test_vmax_fixes_the_colour_scale(heads: PatchResult) -> None:
    image = plot_patch(heads, vmax=2.5).axes[0].images[0]
    assert image.get_clim() == pytest.approx((-2.5, 2.5))
    with pytest.raises(ValueError, match="vmax"):
        plot_patch(heads, vmax=0.0)


def test_layer_results_are_bars_one_per_layer(tmp_path: Path) -> None:
    scores = torch.tensor([0.05, -0.3, 0.8, 0.1, 0.0, 1.2])
    result = _round_trip(_result(scores, ("layer",), "mlp"), tmp_path)
    fig = plot_patch(result)
    ax = fig.axes[0]
    bars = ax.containers[0]
    assert len(bars) == scores.numel()
    np.testing.assert_allclose([b.get_height() for b in bars], scores.numpy(), atol=1e-7)
    assert [b.get_x() + b.get_width() / 2 for b in bars] == pytest.approx(range(6))
    assert ax.get_xlabel() == "layer" and ax.get_ylabel() == "fraction of gap closed"
    lo, hi = ax.get_ylim()
    assert lo < -0.3 and hi > 1.2  # every bar and the donor level (1) are in view
    assert _colourbar_axes(fig) == [] and len(ax.images) == 0
    # Positive bars and negative bars take the two ends of the diverging colormap.
    assert bars[2].get_facecolor() != bars[1].get_facecolor()
    assert "MLP" in fig.get_suptitle()


def test_per_position_heatmap_labels_positions_with_tokens(tmp_path: Path) -> None:
    scores = torch.tensor([[0.0, 0.5, -0.25], [0.1, 0.7, 0.0]])
    result = _round_trip(_result(scores, ("layer", "pos"), "resid"), tmp_path)
    tokens = ["<bos>", " Mary", "$5"]
    fig = plot_patch(result, token_labels=tokens)
    ax = fig.axes[0]
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), scores.numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["<bos>", "\u2423Mary", r"\$5"]
    assert ax.get_xlabel() == "position" and ax.get_ylabel() == "layer"
    save_figure(fig, tmp_path / "pos")  # "$" must not start mathtext (would fail to render)
    with pytest.raises(ValueError, match="2 token_labels for 3 positions"):
        plot_patch(result, token_labels=tokens[:2])


def test_token_labels_need_a_per_position_result(heads: PatchResult) -> None:
    with pytest.raises(ValueError, match="positions='each'"):
        plot_patch(heads, token_labels=["a", "b", "c", "d"])


def test_head_by_position_shows_the_strongest_head(tmp_path: Path) -> None:
    scores = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    result = _round_trip(_result(scores, ("layer", "head", "pos"), "heads"), tmp_path)
    fig = plot_patch(result)
    expected = np.empty((3, 5), dtype=np.float32)
    for layer in range(3):  # slow, obvious reference
        for pos in range(5):
            column = [float(scores[layer, h, pos]) for h in range(4)]
            expected[layer, pos] = max(column, key=abs)
    np.testing.assert_array_equal(np.asarray(fig.axes[0].images[0].get_array()), expected)
    assert "largest |score|" in fig.get_suptitle()


def test_unknown_dims_are_refused(tmp_path: Path) -> None:
    result = _result(torch.zeros(2, 3), ("head", "layer"), "heads")
    with pytest.raises(ResultError, match="dims"):
        plot_patch(result)


def test_plot_into_given_axes(heads: PatchResult) -> None:
    from matplotlib.figure import Figure

    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    assert plot_patch(heads, ax=ax, title="My heads") is fig
    assert ax.get_title().startswith("My heads\n")
    assert len(_colourbar_axes(fig)) == 1
    sub = Figure().subfigures(1, 2)[1]
    assert isinstance(plot_patch(heads, ax=sub.add_subplot()), Figure)


def test_directions_share_one_colour_scale(tmp_path: Path) -> None:
    other = torch.tensor([[0.0, 0.1, 0.0, 0.0], [-1.5, 0.2, 0.0, 0.3], [0.0, 0.0, 0.0, 0.0]])
    ft_base = _round_trip(_result(HEADS.clone(), ("layer", "head"), "heads"), tmp_path / "a")
    base_ft = _round_trip(_result(other, ("layer", "head"), "heads", direction="base->ft"),
                          tmp_path / "b")
    fig = plot_directions(ft_base, base_ft)
    left, right = (ax for ax in fig.axes if ax.images)
    np.testing.assert_array_equal(np.asarray(left.images[0].get_array()), HEADS.numpy())
    np.testing.assert_array_equal(np.asarray(right.images[0].get_array()), other.numpy())
    assert left.images[0].get_clim() == pytest.approx((-1.5, 1.5))
    assert right.images[0].get_clim() == pytest.approx((-1.5, 1.5))
    (bar,) = _colourbar_axes(fig)
    assert bar.get_ylabel() == "fraction of gap closed"
    assert left.get_title().startswith("sufficiency") and right.get_title().startswith("necessity")
    paths = save_figure(fig, tmp_path / "directions")
    assert all(p.stat().st_size > 0 for p in paths)


def test_directions_of_layer_results_share_the_y_axis(tmp_path: Path) -> None:
    a = _result(torch.tensor([0.2, 0.9, -0.1]), ("layer",), "attn")
    b = _result(torch.tensor([0.1, 1.6, -0.8]), ("layer",), "attn", direction="base->ft")
    fig = plot_directions(a, b)
    left, right = fig.axes
    assert len(left.containers[0]) == 3 and len(right.containers[0]) == 3
    assert left.get_ylim() == right.get_ylim()
    lo, hi = left.get_ylim()
    assert lo < -0.8 and hi > 1.6


def test_directions_refuse_mismatched_results(heads: PatchResult) -> None:
    base_ft = _result(HEADS.clone(), ("layer", "head"), "heads", direction="base->ft")
    with pytest.raises(ResultError, match="'ft->base' result first"):
        plot_directions(base_ft, heads)
    other_task = _result(HEADS.clone(), ("layer", "head"), "heads", direction="base->ft",
                         task="other")
    with pytest.raises(ResultError, match="task"):
        plot_directions(heads, other_task)
    other_sites = _result(torch.zeros(3), ("layer",), "mlp", direction="base->ft")
    with pytest.raises(ResultError, match="different sites"):
        plot_directions(heads, other_sites)


def _gap_result(metric: str = "logit_diff") -> GapResult:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(N_PROMPTS, generator=g)
    kl = torch.rand(N_PROMPTS, generator=g)
    return GapResult(
        base_metric=-kl if metric == "kl" else base,
        finetuned_metric=torch.zeros(N_PROMPTS) if metric == "kl" else base + 1.0,
        kl_final=kl, kl_mean=kl / 2,
        rose_tokens=(" yes", "\n"), rose_delta=torch.tensor([0.3, 0.1]),
        fell_tokens=(" no", "$"), fell_delta=torch.tensor([-0.2, -0.05]),
        message="gap", provenance=_prov(metric=metric),
    )


def test_gap_figure_plots_every_prompt_and_the_moved_tokens(tmp_path: Path) -> None:
    result = _round_trip(_gap_result(), tmp_path)
    fig = plot_gap(result)
    scatter_ax, token_ax = fig.axes
    prompts = scatter_ax.collections[0].get_offsets()
    np.testing.assert_allclose(prompts, torch.stack([result.base_metric,
                                                     result.finetuned_metric], 1).numpy())
    (diagonal,) = scatter_ax.lines
    x, y = diagonal.get_data()
    np.testing.assert_allclose(x, y)  # the y = x reference line
    assert "base" in scatter_ax.get_xlabel() and "fine-tuned" in scatter_ax.get_ylabel()
    widths = [b.get_width() for b in token_ax.containers[0]]
    assert widths == pytest.approx([0.3, 0.1, -0.05, -0.2])  # sorted, rising on top
    assert [t.get_text() for t in token_ax.get_yticklabels()] == [
        "\u2423yes", "\u21b5", r"\$", "\u2423no"]
    assert "gap (FT \u2212 base) +1.00" in fig.get_suptitle()
    paths = save_figure(fig, tmp_path / "gap")
    assert [p.suffix for p in paths] == [".pdf", ".png", ".svg"]


def test_gap_figure_for_task_free_metrics_shows_kl(tmp_path: Path) -> None:
    result = _round_trip(_gap_result("kl"), tmp_path)
    kl_ax = plot_gap(result).axes[0]
    assert "KL" in kl_ax.get_ylabel()
    final = kl_ax.lines[0].get_ydata()
    np.testing.assert_allclose(final, np.sort(result.kl_final.numpy())[::-1])


def test_save_figure_writes_pdf_png_and_svg(heads: PatchResult, tmp_path: Path) -> None:
    paths = save_figure(plot_patch(heads), tmp_path / "figs" / "heads.pdf")
    assert paths == [tmp_path / "figs" / f"heads.{x}" for x in ("pdf", "png", "svg")]
    pdf, png, svg = (p.read_bytes() for p in paths)
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert svg.startswith(b"<?xml") and b"<svg" in svg and len(svg) > 1000
    with Image.open(paths[1]) as image:
        assert min(image.info["dpi"]) >= 200
        assert image.width > 3.0 * 200  # at least column width at print resolution
    # Saving again gives the same files (no timestamp, no random SVG ids), so figures can be
    # versioned.
    again = save_figure(plot_patch(heads), tmp_path / "again" / "heads")
    assert [p.read_bytes() for p in again] == [pdf, png, svg]
    assert save_figure(plot_patch(heads), tmp_path / "one", formats=("svg",)) == [
        tmp_path / "one.svg"]
    with pytest.raises(ValueError, match="dpi"):
        save_figure(plot_patch(heads), tmp_path / "low", dpi=72)
    with pytest.raises(ValueError, match="formats"):
        unchecked(save_figure)(plot_patch(heads), tmp_path / "bad", formats=("jpg",))


def test_plotting_leaves_global_state_alone(heads: PatchResult, tmp_path: Path) -> None:
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    layers = _result(torch.tensor([0.1, 0.5]), ("layer",), "resid")
    for fig in (plot_patch(heads), plot_patch(layers),
                plot_directions(heads, dataclasses.replace(heads, direction="base->ft")),
                plot_gap(_gap_result())):
        save_figure(fig, tmp_path / "fig")
    assert dict(matplotlib.rcParams) == before
    assert matplotlib.get_backend() == backend


def test_viz_works_without_pyplot_and_compute_never_imports_matplotlib(tmp_path: Path) -> None:
    script = f"""
import sys
import torch
import mechdiff
assert "matplotlib" not in sys.modules, "compute code imported matplotlib"
from mechdiff.viz import plot_patch, save_figure
from mechdiff.results import Provenance
prov = Provenance(base="b", finetuned="f", processing="compat", task="t", prompts_hash="x",
                  n_prompts=2, metric="logit_diff")
result = mechdiff.PatchResult(scores=torch.eye(2), patched=torch.zeros(2, 2, 2),
    receiver=torch.zeros(2), donor=torch.ones(2), sites="heads", dims=("layer", "head"),
    direction="ft->base", positions="all", provenance=prov)
save_figure(plot_patch(result), {str(tmp_path / "sub")!r})
assert "matplotlib.pyplot" not in sys.modules, "viz imported pyplot"
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "sub.pdf").stat().st_size > 0
