"""Figures of a circuit comparison, drawn from the saved result: the faithfulness figure plots the
saved curves, their intervals over prompts and the cross-evaluated circuits where they are; the
graph figure draws exactly the circuits' shared, new and dropped edges (or the strongest ones),
from the nodes they join, in their colours."""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from support import check_figure, plant_head

sys.path.insert(0, str(Path(__file__).parents[1] / "circuits"))
from circuit_models import gpt2, random_task, save_dir  # noqa: E402

import mechdiff  # noqa: E402
from mechdiff.circuits import CircuitComparison, compare_circuits  # noqa: E402
from mechdiff.stats import fraction_interval  # noqa: E402
from mechdiff.viz import _circuits as vc  # noqa: E402
from mechdiff.viz import plot_circuit_graph, plot_faithfulness, save_figure  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[CircuitComparison, CircuitComparison]:
    """A tiny GPT-2 and the same model with one head's W_O changed (about 12 s): the circuits
    share edges, and each has edges of its own. Returned as computed and as loaded from disk."""
    root = tmp_path_factory.mktemp("circuit_figs")
    pair = mechdiff.load_pair(save_dir(gpt2(0), root / "base"),
                              save_dir(plant_head(gpt2(0), 2, 1), root / "ft"), device="cpu")
    c = compare_circuits(pair, random_task(8), method="eap", n_boot=20, progress=False)
    c.save(root / "comparison")
    return c, CircuitComparison.load(root / "comparison")


@pytest.fixture(scope="module")
def comparison(built) -> CircuitComparison:
    return built[1]


def _by_gid(fig, gid: str):
    return [a for a in fig.axes[0].get_children() if a.get_gid() == gid]


def _container(fig, gid: str):
    (found,) = [ct for ct in fig.axes[0].containers
                if ct.get_label() == f"_{gid}_interval"
                or (ct.lines[0] is not None and ct.lines[0].get_gid() == gid)]
    return found


def _bar_ends(container) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper ends of each error bar of an errorbar container."""
    (bars,) = container.lines[2]
    segs = bars.get_segments()
    return np.array([s[0][1] for s in segs]), np.array([s[1][1] for s in segs])


def test_the_curves_are_the_saved_curves_with_intervals_over_prompts(comparison) -> None:
    c = comparison
    fig = plot_faithfulness(c)
    for gid, curve in (("base_curve", c.base_curve), ("ft_curve", c.ft_curve)):
        (line,) = _by_gid(fig, gid)
        np.testing.assert_allclose(line.get_xdata(), curve.fractions)
        np.testing.assert_allclose(line.get_ydata(), curve.values.double().numpy())
        bars = _container(fig, gid)
        low, high = _bar_ends(bars)
        lo, hi = fraction_interval(curve.circuit, curve.empty, curve.full)
        np.testing.assert_allclose(low, np.minimum(lo.numpy(), curve.values.numpy()), atol=1e-6)
        np.testing.assert_allclose(high, np.maximum(hi.numpy(), curve.values.numpy()), atol=1e-6)
        # Oracles: the whole graph is the model (f = 1 on every resample), the empty circuit
        # is the ablated model (f = 0).
        assert curve.values[-1] == pytest.approx(1.0) and (low[-1], high[-1]) == pytest.approx(
            (1.0, 1.0))
        empty = [i for i, k in enumerate(curve.kept) if k == 0]
        assert empty, "the smallest circuits of a 262-edge graph keep no edge"
        for i in empty:
            assert (line.get_ydata()[i], low[i], high[i]) == pytest.approx((0.0, 0.0, 0.0))
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(f"CPR {c.base_curve.cpr:.2f}, CMD {c.base_curve.cmd:.2f}" in t for t in legend)
    assert any(f"CPR {c.ft_curve.cpr:.2f}, CMD {c.ft_curve.cmd:.2f}" in t for t in legend)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()][:1] == ["0.1%"]
    assert sorted(round(line.get_ydata()[0], 6) for line in ax.lines
                  if line.get_linewidth() > 0 and len(line.get_xdata()) == 2
                  and line.get_ydata()[0] == line.get_ydata()[1]
                  and list(line.get_xdata()) == [0, 1])[:2] == [0.0, 1.0]


def test_cross_evaluated_circuits_sit_at_their_value_size_and_interval(comparison) -> None:
    c = comparison
    fig = plot_faithfulness(c)
    for gid, faith, size in (("base_in_ft", c.base_in_ft, c.base_size),
                             ("ft_in_base", c.ft_in_base, c.ft_size)):
        ct = _container(fig, gid)
        marker = ct.lines[0]
        assert marker.get_ydata()[0] == pytest.approx(faith.value)
        assert marker.get_xdata()[0] == pytest.approx(size * vc.CROSS_OFFSET)
        low, high = _bar_ends(ct)
        assert (low[0], high[0]) == pytest.approx(c.verdict.intervals[gid])
    # The chosen sizes are marked (one line when both circuits have the same size).
    sizes = _by_gid(fig, "size") or [*_by_gid(fig, "base_size"), *_by_gid(fig, "ft_size")]
    assert {round(float(line.get_xdata()[0]), 9) for line in sizes} == {
        round(c.base_size, 9), round(c.ft_size, 9)}


def test_values_beyond_the_range_are_marked_at_its_edge(comparison) -> None:
    far = dataclasses.replace(comparison.base_in_ft, value=-7.5)
    fig = plot_faithfulness(dataclasses.replace(comparison, base_in_ft=far))
    lo, hi = fig.axes[0].get_ylim()
    assert lo >= vc.Y_LIMITS[0] and hi <= vc.Y_LIMITS[1]
    (mark,) = _by_gid(fig, "outside")
    assert mark.get_ydata()[0] == pytest.approx(lo) and mark.get_marker() == "v"
    assert "\u22127.50" in [t.get_text() for t in fig.axes[0].texts]


def test_two_curves_beyond_the_range_at_one_fraction_are_both_readable(comparison) -> None:
    # Found in the real demo's trigger figure: both curves below the axis at 5% drew their
    # triangles and values at the same spot, the second hiding the first.
    c = comparison
    i = 3
    curves = {}
    for name, value in (("base_curve", -7.5), ("ft_curve", -9.25)):
        curve = getattr(c, name)
        values = curve.values.clone()
        values[i] = value
        curves[name] = dataclasses.replace(curve, values=values)
    fig = plot_faithfulness(dataclasses.replace(c, **curves))
    lo = fig.axes[0].get_ylim()[0]
    f = c.base_curve.fractions[i]
    marks = [m for m in _by_gid(fig, "outside") if f <= m.get_xdata()[0] < f * vc.OUTSIDE_STEP ** 2]
    assert len(marks) == 2
    xs = sorted(float(m.get_xdata()[0]) for m in marks)
    assert xs == pytest.approx([f, f * vc.OUTSIDE_STEP])
    assert all(m.get_ydata()[0] == pytest.approx(lo) for m in marks)
    labels = {t.get_text(): t for t in fig.axes[0].texts}
    assert {"\u22127.50", "\u22129.25"} <= set(labels)
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [labels[t].get_window_extent(renderer) for t in ("\u22127.50", "\u22129.25")]
    assert not boxes[0].overlaps(boxes[1])


def test_interval_bars_cut_by_the_axis_end_in_arrows(comparison) -> None:
    """A bar to -40 drawn to the axis edge looked like a bar to the edge (a review of the real
    demo's figures): bars the y range cuts get an arrow there, and the title explains them."""
    c = comparison
    i = 4
    curve = c.base_curve
    n = curve.circuit.shape[1]
    # every prompt of every fraction at the curve's value (no spread), but fraction i: +-40
    gap = (curve.full - curve.empty).double()
    values = torch.full_like(curve.values, 0.5)
    spread = torch.tensor([40.0 if k % 2 else -40.0 for k in range(n)], dtype=torch.float64)
    per = values.double()[:, None].expand(-1, n).clone()
    per[i] = spread
    values[i] = float((gap * spread).mean() / gap.mean())
    circuit = (curve.empty.double() + gap * per).to(curve.circuit.dtype)
    wide = dataclasses.replace(curve, circuit=circuit, values=values)
    fig = plot_faithfulness(dataclasses.replace(c, base_curve=wide))
    base = to_rgba(vc.BASE_COLOUR)
    arrows = [t for t in fig.axes[0].texts
              if t.get_gid() == "cut_bar" and to_rgba(t.get_color()) == base
              and t.xy[0] in curve.fractions]  # (not the cross-evaluated marker's, right of it)
    lo, hi = fig.axes[0].get_ylim()
    at = sorted((t.get_text(), t.xy[0], t.xy[1]) for t in arrows)
    f = curve.fractions[i]
    assert at == [("\u2191", f, pytest.approx(hi)), ("\u2193", f, pytest.approx(lo))]
    assert "\u2191 \u2193: cut at the axis" in fig.get_suptitle()


def test_graph_marks_layers_it_leaves_out(comparison) -> None:
    """Rows exist only for layers with a drawn node; skipped layers are named between the rows
    (a review read layer 27 right above layer 25 as its neighbour)."""
    c = comparison
    fig = plot_circuit_graph(c, max_edges=1)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    shown = [int(t.split()[1]) for t in labels if t.startswith("layer ")]
    assert labels[0] == "input" and labels[-1] == "logits"
    missing = [la for la in range(c.graph.n_layers) if la not in shown]
    assert missing  # one edge: some layer has no node
    named = set()
    for t in labels:
        if t.startswith("\u22ee"):
            span = t.split()[-1].split("-")
            named |= set(range(int(span[0]), int(span[-1]) + 1))
    assert named == set(missing)
    ys = [float(y) for y in ax.get_yticks()]
    assert ys == sorted(ys)  # the gap marks sit between their neighbours' rows


def _nodes(fig) -> dict[str, tuple[float, float]]:
    return {t.get_text(): t.get_position() for t in fig.axes[0].texts if t.get_gid() == "node"}


def _writer_text(label: str) -> str:
    return vc._node_label(label)


def test_graph_draws_every_edge_of_both_circuits_by_kind(comparison) -> None:
    c = comparison
    counts = {"shared": c.n_shared_edges, "new": c.n_new_edges, "dropped": c.n_dropped_edges}
    assert all(counts.values()) and sum(counts.values()) < vc.MAX_EDGES, counts
    fig = plot_circuit_graph(c)
    for kind, n in counts.items():
        (lines,) = _by_gid(fig, kind)
        assert len(lines.get_segments()) == n
        assert all(tuple(rgba[:3]) == pytest.approx(to_rgba(vc.EDGE_COLOURS[kind])[:3])
                   for rgba in lines.get_colors())
    nodes = _nodes(fig)
    expected = {_writer_text(n) for n in (*c.shared_nodes, *c.new_nodes, *c.dropped_nodes)}
    assert set(nodes) == expected | {"logits"}
    # Each edge leaves its writer's node, and the widest edge is the largest |score|.
    g = c.graph
    drawn = vc.drawn_edges(c, None)
    for kind in vc.KINDS:
        (lines,) = _by_gid(fig, kind)
        for e, seg in zip(drawn.edges[kind], lines.get_segments(), strict=True):
            x, y = nodes[_writer_text(g.writer_labels[int(g.edge_writer[e])])]
            assert seg[0][0] == pytest.approx(x) and seg[0][1] > y
            if int(g.edge_reader[e]) == g.logits_reader:
                assert seg[-1][0] == pytest.approx(nodes["logits"][0])
    eb, ef = c.base_circuit.edges, c.ft_circuit.edges
    weight = torch.where(eb & ~ef, c.base_scores.scores.abs(), c.ft_scores.scores.abs())
    strongest = int(torch.where(eb | ef, weight, -1.0).argmax())
    widest = max(((float(w), e) for kind in vc.KINDS
                  for e, w in zip(drawn.edges[kind], _by_gid(fig, kind)[0].get_linewidths(),
                                  strict=True)))
    assert widest[1] == strongest
    assert f"all {sum(counts.values())} edges drawn" in fig._suptitle.get_text()


def test_graph_caps_the_edges_with_a_share_for_each_kind(comparison) -> None:
    """A cap by |score| alone drew no new or dropped edge of two large circuits (a review:
    'new: 8616 edges (0 drawn)'): each kind gets an equal share of its strongest edges, the
    rest goes to the strongest remaining ones of any kind."""
    c = comparison
    fig = plot_circuit_graph(c, max_edges=10)
    eb, ef = c.base_circuit.edges, c.ft_circuit.edges
    weight = torch.where(eb & ~ef, c.base_scores.scores.abs(), c.ft_scores.scores.abs())
    masks = {"shared": eb & ef, "new": ef & ~eb, "dropped": eb & ~ef}
    ranked = {k: torch.where(m, weight, -1.0).argsort(descending=True)[:int(m.sum())].tolist()
              for k, m in masks.items()}
    expected = {e for k in ranked for e in ranked[k][:10 // 3]}  # 3 kinds present: 3 each
    leftover = sorted((e for k in ranked for e in ranked[k][10 // 3:]),
                      key=lambda e: -float(weight[e]))
    expected |= set(leftover[:10 - len(expected)])
    drawn = vc.drawn_edges(c, 10)
    assert {e for k in vc.KINDS for e in drawn.edges[k]} == expected
    assert all(len(drawn.edges[k]) >= min(3, len(ranked[k])) for k in vc.KINDS)
    assert sum(len(_by_gid(fig, k)[0].get_segments()) for k in vc.KINDS) == 10
    top = expected
    union = int((eb | ef).sum())
    assert f"10 of {union} edges drawn" in fig._suptitle.get_text()
    g = c.graph
    ends = {_writer_text(g.writer_labels[int(g.edge_writer[e])]) for e in top}
    assert ends <= set(_nodes(fig))
    with pytest.raises(ValueError, match="max_edges"):
        plot_circuit_graph(c, max_edges=0)


def test_figures_from_disk_are_the_figures_of_the_result(built, tmp_path: Path) -> None:
    live, loaded = built
    before = dict(matplotlib.rcParams)
    a, b = plot_faithfulness(live), plot_faithfulness(loaded)
    for gid in ("base_curve", "ft_curve"):
        np.testing.assert_allclose(_by_gid(a, gid)[0].get_ydata(), _by_gid(b, gid)[0].get_ydata())
    a, b = plot_circuit_graph(live), plot_circuit_graph(loaded)
    for kind in vc.KINDS:
        sa, sb = (_by_gid(f, kind)[0].get_segments() for f in (a, b))
        assert len(sa) == len(sb) and all(np.allclose(x, y) for x, y in zip(sa, sb, strict=True))
    for name, fig in (("faithfulness", plot_faithfulness(loaded)),
                      ("graph", plot_circuit_graph(loaded))):
        for path in save_figure(fig, tmp_path / name):
            check_figure(path)
    after = dict(matplotlib.rcParams)
    assert {k for k in before if before[k] != after[k] and not (
        isinstance(before[k], float) and math.isnan(before[k]))} == set()
