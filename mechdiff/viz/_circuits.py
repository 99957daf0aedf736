"""Figures of a circuit comparison (:class:`~mechdiff.circuits.CircuitComparison`), drawn from the
saved result alone (no model).

* :func:`plot_faithfulness`: MIB's normalized faithfulness ``f`` of each model's own circuits
  against the fraction of edges they keep (log axis, the MIB fractions 0.1% .. 100%), with 95%
  bootstrap intervals over prompts (:func:`mechdiff.stats.fraction_interval`: ``f`` is the
  fraction of the full-vs-empty gap a circuit keeps), CPR and CMD in the legend; the two
  cross-evaluated circuits (the base circuit run inside the fine-tuned model, the fine-tuned
  circuit inside the base) as separate markers at their circuit's size, with the verdict's
  intervals; where the comparison has them (``compare_circuits(cross_curves=True)``, the
  default), each model's circuits at every fraction run inside the other model as thin dotted
  lines in that model's colour; each model's chosen circuit size as a vertical line.
* :func:`plot_circuit_graph`: both circuits in one layered drawing: the input at the bottom,
  each layer's heads on a row with its MLP to the right and a little above, the logits on top;
  a node per component in either circuit; edges coloured **shared** (both circuits, black),
  **new** (fine-tuned only, vermillion) and **dropped** (base only, blue, dashed), their width
  proportional to ``|score|`` (the fine-tuned model's score for shared and new edges, the base
  model's for dropped ones). Edges into a head end at its query (left), key (middle) or value
  (right) input; with grouped-query attention a key or value input sits between the query heads
  that share it. At most ``max_edges`` edges are drawn (an equal share per kind, each kind's
  largest ``|score|``; :func:`drawn_edges`), and the title and legend say how many of how many.

Colours are Okabe-Ito throughout (:mod:`._style`): base = blue, fine-tuned = vermillion, in both
figures; line styles and markers differ as well, so nothing depends on hue alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from mechdiff.circuits import CircuitComparison
from mechdiff.circuits.faithfulness import Faithfulness, FaithfulnessCurve
from mechdiff.stats import fraction_interval
from mechdiff.viz import _style as st
from mechdiff.viz._save import FORMATS, Format, save_figure

BASE_COLOUR = st.OKABE_ITO[5]  # blue
FT_COLOUR = st.OKABE_ITO[6]  # vermillion
EDGE_COLOURS = {"shared": st.OKABE_ITO[0], "new": FT_COLOUR, "dropped": BASE_COLOUR}
"""Edge (and node) colour of each kind."""
EDGE_STYLES = {"shared": "solid", "new": "solid", "dropped": (0, (3.0, 1.6))}
EDGE_NAMES = {"shared": "shared (both circuits)", "new": "new (fine-tuned only)",
              "dropped": "dropped (base only)"}
KINDS = ("shared", "dropped", "new")
"""Drawing order of the edge kinds (later on top)."""
MAX_EDGES = 150
"""Edges drawn by default by :func:`plot_circuit_graph` (the largest ``|score|``)."""
Y_LIMITS = (-1.5, 2.5)
"""Widest y range of :func:`plot_faithfulness`; points beyond it are marked at the edge."""
CROSS_OFFSET = 1.13
"""The cross-evaluated markers sit this factor right of their circuit's size (log axis), so
they do not hide the curve's point at the same size."""
CLOSE_DEFAULT = 0.2
"""``|1 - f|`` of a faithful circuit when the verdict does not record it (compare.CLOSE)."""
NODE_PT = 6.5
"""Font size of node labels."""
_LAYER_IN = 0.62  # inches per layer row of the graph
_HEAD_IN = 0.62  # inches per head column
_MLP_DY = 0.42  # an MLP sits this far above its layer's heads (in layer units)
_PORT_DX = 0.2  # q / k / v inputs: this far left / right of a head's centre (in head units)


# ---------------------------------------------------------------- faithfulness


def _model_name(name: str) -> str:
    """A local path's last part (zoo folders, checkpoints), a hub id as it is."""
    if name.startswith(("/", ".", "~")):
        return PurePosixPath(name).name or name
    return name


def _curve_interval(curve: FaithfulnessCurve) -> tuple[np.ndarray, np.ndarray] | None:
    """95% bootstrap interval over prompts of ``f`` at each fraction (None for one prompt)."""
    if curve.full.shape[0] < 2:
        return None
    lo, hi = curve.intervals()["values"]
    return lo.double().numpy(), hi.double().numpy()


def _cross_interval(c: CircuitComparison, key: str, faith: Faithfulness) -> tuple[float, float]:
    """The verdict's interval of a cross-faithfulness (the numbers the verdict states), else a
    bootstrap interval from the per-prompt values."""
    lo, hi = c.verdict.intervals.get(key, (math.nan, math.nan))
    if math.isfinite(lo) and math.isfinite(hi):
        return float(lo), float(hi)
    if faith.full.shape[0] < 2:
        return math.nan, math.nan
    lo_t, hi_t = fraction_interval(faith.circuit, faith.empty, faith.full)
    return float(lo_t), float(hi_t)


def _limits(points: list[float], spans: list[float]) -> tuple[float, float]:
    finite = [v for v in [*points, *spans] if math.isfinite(v)]
    lo, hi = min([0.0, *finite]), max([1.0, *finite])
    pad = 0.06 * (hi - lo)
    return max(lo - pad, Y_LIMITS[0]), min(hi + pad, Y_LIMITS[1])


def _err(value: float, lo: float, hi: float) -> np.ndarray:
    if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(value)):
        return np.zeros((2, 1))
    return np.array([[max(value - lo, 0.0)], [max(hi - value, 0.0)]])


def _mark_outside(ax: Axes, x: float, y: float, limits: tuple[float, float], colour: str,
                  taken: dict[tuple[float, bool], int]) -> None:
    """A point beyond the y range: a triangle at the edge with its value. Points already marked
    at the same ``x`` and edge (``taken`` counts them) push this one's triangle right and its
    value further in, so that two curves leaving the axis at one fraction both stay readable;
    successive marks along an edge alternate between two rows of values (neighbouring
    fractions are closer than a value is wide)."""
    if not math.isfinite(y) or limits[0] <= y <= limits[1]:
        return
    top = y > limits[1]
    edge = limits[1] if top else limits[0]
    k = taken.get((x, top), 0)
    taken[(x, top)] = k + 1
    row = taken.get((-1.0, top), 0)  # marks along this edge so far (fractions are > 0)
    taken[(-1.0, top)] = row + 1
    depth = 9 * k + 9 * (row % 2)
    x_at = x * OUTSIDE_STEP ** k  # the x axis is logarithmic
    ax.plot([x_at], [edge], marker="^" if top else "v", color=colour, markersize=5,
            clip_on=False, zorder=6, gid="outside")
    ax.annotate(st.fmt_signed(y), (x_at, edge), xytext=(3, -7 - depth if top else 3 + depth),
                textcoords="offset points", fontsize=st.NOTE_PT, color=colour,
                annotation_clip=False, zorder=7,
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.85})


def _mark_cut_bars(ax: Axes, x: np.ndarray, iv: tuple[np.ndarray, np.ndarray],
                   limits: tuple[float, float], colour: str) -> int:
    """An arrow at the axis edge for each interval bar that runs beyond the y range (the
    axis cuts it: without a mark a bar to -40 looked like one to the axis); how many."""
    n = 0
    for xi, lo, hi in zip(x.tolist(), iv[0].tolist(), iv[1].tolist(), strict=True):
        for cut, edge, mark in ((hi > limits[1], limits[1], "\u2191"),
                                (lo < limits[0], limits[0], "\u2193")):
            if cut:  # (comparisons with a NaN end are False)
                n += 1
                ax.annotate(mark, (xi, edge), ha="center", va="top" if edge == limits[1]
                            else "bottom", fontsize=st.NOTE_PT, color=colour, zorder=6,
                            annotation_clip=False, gid="cut_bar")
    return n


OUTSIDE_STEP = 1.12
"""Factor between the x of points marked beyond the y range at the same fraction."""


def plot_faithfulness(comparison: CircuitComparison, *, title: str | None = None) -> Figure:
    """Faithfulness of each model's own circuits against their size, and of each model's chosen
    circuit inside the other model (see the module docstring).

    Args:
        comparison: e.g. ``CircuitComparison.load(folder)``.
        title: main title; defaults to the two models and the task.

    Returns:
        The figure. Its curves are the lines with gid ``"base_curve"`` / ``"ft_curve"`` (x: the
        fractions, y: the curves' values), their error bars the containers labelled
        ``"_base_curve_interval"`` / ``"_ft_curve_interval"``; the cross-evaluated markers have
        gid ``"base_in_ft"`` / ``"ft_in_base"``, and where the comparison has them, each model's
        circuits at every fraction inside the other model are the dotted lines with gid
        ``"base_in_ft_curve"`` / ``"ft_in_base_curve"``.
    """
    c = comparison
    p = c.provenance
    close = float(c.verdict.extra.get("close", CLOSE_DEFAULT))
    fig = st.new_figure(4.6, 4.2)
    ax = fig.add_subplot()
    curves = (("base", c.base_curve, BASE_COLOUR, "o", "-"),
              ("fine-tuned", c.ft_curve, FT_COLOUR, "s", "--"))
    crosses = (("base_in_ft", "base circuit in the fine-tuned model", c.base_in_ft, c.base_size,
                BASE_COLOUR, "D"),
               ("ft_in_base", "fine-tuned circuit in the base model", c.ft_in_base, c.ft_size,
                FT_COLOUR, "^"))
    crossed = [(key, words, curve, colour, marker) for key, words, curve, colour, marker in (
        ("base_in_ft_curve", "base circuits in the fine-tuned model", c.base_in_ft_curve,
         BASE_COLOUR, "D"),
        ("ft_in_base_curve", "fine-tuned circuits in the base model", c.ft_in_base_curve,
         FT_COLOUR, "^")) if curve is not None]
    intervals = {name: _curve_interval(curve) for name, curve, *_ in curves}
    cross_ci = {key: _cross_interval(c, key, faith) for key, _, faith, *_ in crosses}
    points = [float(v) for _, curve, *_ in curves for v in curve.values.tolist()]
    points += [faith.value for _, _, faith, *_ in crosses]
    points += [float(v) for _, _, curve, *_ in crossed for v in curve.values.tolist()]
    spans = [float(v) for iv in intervals.values() if iv is not None for a in iv for v in a]
    spans += [v for ci in cross_ci.values() for v in ci]
    limits = _limits(points, spans)
    taken: dict[tuple[float, bool], int] = {}
    cut = 0  # interval bars cut by the y range

    ax.axhspan(1 - close, 1 + close, color="0.93", zorder=0, linewidth=0,
               label=f"faithful: |1 \u2212 f| \u2264 {close:g}")
    ax.axhline(1.0, color="0.35", linewidth=0.7, zorder=1)
    ax.axhline(0.0, color="0.35", linewidth=0.7, linestyle=(0, (1, 1.5)), zorder=1)
    # what f = 1 and f = 0 mean, as ticks of a right-hand axis: outside the plot, where no
    # curve or bar can run through them (inside, they were overdrawn)
    right = ax.secondary_yaxis("right")
    right.set_yticks([y for y in (0.0, 1.0) if limits[0] <= y <= limits[1]],
                     [w for y, w in ((0.0, "every edge\nablated"), (1.0, "full model"))
                      if limits[0] <= y <= limits[1]])
    right.tick_params(labelsize=st.NOTE_PT - 0.5, labelcolor=st.NOTE_COLOUR, length=0)
    right.spines["right"].set_visible(False)
    for name, curve, colour, marker, style in curves:
        x = np.asarray(curve.fractions, dtype=float)
        y = curve.values.double().numpy()
        gid = "base_curve" if name == "base" else "ft_curve"
        ax.plot(x, y, color=colour, linestyle=style, linewidth=1.2, marker=marker, markersize=3.6,
                zorder=4, gid=gid,
                label=f"{name}: own circuits (CPR {curve.cpr:.2f}, CMD {curve.cmd:.2f})")
        iv = intervals[name]
        if iv is not None:
            err = np.stack([np.clip(y - iv[0], 0, None), np.clip(iv[1] - y, 0, None)])
            err = np.nan_to_num(err, nan=0.0)
            ax.errorbar(x, y, yerr=err, fmt="none", ecolor=colour, elinewidth=0.7, capsize=1.8,
                        capthick=0.7, zorder=3, label=f"_{gid}_interval")
            cut += _mark_cut_bars(ax, x, iv, limits, colour)
        for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
            _mark_outside(ax, xi, yi, limits, colour, taken)
        empty = np.asarray(curve.kept) == 0  # nothing left after pruning: f = 0, no measurement
        if empty.any():
            ax.plot(x[empty], y[empty], linestyle="none", marker="x", color=colour,
                    markersize=6.5, markeredgewidth=1.3, zorder=6, gid=f"{gid}_empty",
                    label=f"{name}: empty circuit (no input-to-logits path after pruning; "
                          "f = 0 by definition)")
    for key, words, curve, colour, marker in crossed:  # thin, dotted, no interval bars
        x = np.asarray(curve.fractions, dtype=float)
        y = curve.values.double().numpy()
        ax.plot(x, y, color=colour, linestyle=":", linewidth=1.0, marker=marker,
                markersize=2.8, markerfacecolor="white", markeredgewidth=0.8, zorder=3.5,
                gid=key, label=f"{words} (CPR {curve.cpr:.2f}, CMD {curve.cmd:.2f})")
        for xi, yi in zip(x.tolist(), y.tolist(), strict=True):
            _mark_outside(ax, xi, yi, limits, colour, taken)
    for key, words, faith, size, colour, marker in crosses:
        x = size * CROSS_OFFSET
        lo, hi = cross_ci[key]
        ax.errorbar([x], [faith.value], yerr=_err(faith.value, lo, hi), fmt=marker, color=colour,
                    markerfacecolor="white", markeredgewidth=1.2, markersize=5.5, elinewidth=0.9,
                    capsize=2.2, capthick=0.9, zorder=5, gid=key,
                    label=f"{words}: f = {st.fmt_signed(faith.value)}")
        _mark_outside(ax, x, faith.value, limits, colour, taken)
        cut += _mark_cut_bars(ax, np.array([x]), (np.array([lo]), np.array([hi])), limits,
                              colour)
    # the chosen sizes: wide pale bands behind everything, so that they cannot be read as
    # another interval bar (thin lines of the curves' colours were)
    band = {"linewidth": 5.0, "alpha": 0.22, "zorder": 0.5, "solid_capstyle": "butt"}
    if c.base_size == c.ft_size:
        ax.axvline(c.base_size, color="0.25", gid="size", **band,
                   label=f"both circuits: {100 * c.base_size:.3g}% of edges (base "
                         f"{c.base_circuit.n_edges}, fine-tuned {c.ft_circuit.n_edges} kept)")
    else:
        for name, size, circuit, colour in (
                ("base", c.base_size, c.base_circuit, BASE_COLOUR),
                ("fine-tuned", c.ft_size, c.ft_circuit, FT_COLOUR)):
            ax.axvline(size, color=colour, gid="base_size" if name == "base" else "ft_size",
                       **band, label=f"{name} circuit chosen: {100 * size:.3g}% of edges "
                                     f"({circuit.n_edges} kept)")
    fractions = list(c.base_curve.fractions)
    left = min([*fractions, c.base_size, c.ft_size])
    ax.set_xscale("log")
    ax.set_xlim(left / 1.6, max(fractions) * 1.6)
    ax.set_xticks(fractions, [f"{100 * f:g}%" for f in fractions])
    ax.minorticks_off()
    ax.set_ylim(*limits)
    ax.set_xlabel("circuit size: fraction of edges selected, then pruned (log scale)",
                  fontsize=st.LABEL_PT)
    ax.set_ylabel("normalized faithfulness f", fontsize=st.LABEL_PT)
    st.style_axes(ax)
    ax.tick_params(axis="x", labelsize=st.TICK_PT - 0.5)
    ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(title or (
        f"{st.plain_text(_model_name(p.base))} \u2192 {st.plain_text(_model_name(p.finetuned))}"
        f" \u00b7 task {st.plain_text(p.task)} ({p.n_prompts} prompts)\ncircuits from "
        f"{c.base_curve.method} scores, {c.base_curve.ablation} ablation; bars: 95% interval "
        "over prompts" + (" (\u2191 \u2193: cut at the axis)" if cut else "")),
        fontsize=st.TITLE_PT)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=st.NOTE_PT, frameon=False,
               ncols=1, handlelength=2.6)
    return fig


# ---------------------------------------------------------------- circuit graph


@dataclass(frozen=True)
class _Drawn:
    """What the graph figure draws: edges by kind (flat edge indices, largest weight first),
    their weights, and how many edges the two circuits hold together."""

    edges: dict[str, list[int]]
    weight: dict[int, float]
    n_union: int


def drawn_edges(comparison: CircuitComparison, max_edges: int | None = MAX_EDGES) -> _Drawn:
    """The edges :func:`plot_circuit_graph` draws, by kind, each kind's largest ``|score|``
    first (fine-tuned score for shared and new edges, base score for dropped).

    With ``max_edges``, each kind present gets an equal share of them (its strongest edges) and
    what a kind cannot fill goes to the strongest remaining edges of any kind: large circuits
    share most of their strongest edges, and a cut by ``|score|`` alone drew no new or dropped
    edge at all, hiding what the figure is for."""
    c = comparison
    eb, ef = c.base_circuit.edges.bool(), c.ft_circuit.edges.bool()
    kinds = {"shared": eb & ef, "new": ef & ~eb, "dropped": eb & ~ef}
    weight = torch.where(kinds["dropped"], c.base_scores.scores.abs().float(),
                         c.ft_scores.scores.abs().float()).nan_to_num(0.0)

    def strongest(mask: torch.Tensor) -> list[int]:
        idx = mask.nonzero().flatten()
        return idx[weight[idx].argsort(descending=True, stable=True)].tolist()

    order = {k: strongest(kinds[k]) for k in KINDS}
    n_union = sum(len(v) for v in order.values())
    if max_edges is None or max_edges >= n_union:
        out = order
    else:
        present = [k for k in KINDS if order[k]]
        share = max_edges // len(present)
        out = {k: order[k][:share] for k in KINDS}
        rest = sorted((e for k in present for e in order[k][share:]),
                      key=lambda e: -float(weight[e]))[:max_edges - sum(map(len, out.values()))]
        for k in KINDS:
            extra = [e for e in rest if bool(kinds[k][e])]
            out[k] = sorted(out[k] + extra, key=lambda e: -float(weight[e]))
    kept = [e for k in KINDS for e in out[k]]
    return _Drawn(out, {e: float(weight[e]) for e in kept}, n_union)


def _node_label(label: str) -> str:
    return f"MLP {label[3:]}" if label.startswith("MLP") else label


def _bezier(a: tuple[float, float], b: tuple[float, float], bend: float, n: int = 24
            ) -> np.ndarray:
    """Points of a quadratic curve from ``a`` to ``b`` bowed sideways by ``bend`` x its length."""
    (x0, y0), (x1, y1) = a, b
    dx, dy = x1 - x0, y1 - y0
    ctrl = ((x0 + x1) / 2 - bend * dy, (y0 + y1) / 2 + bend * dx)
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = np.array(a), np.array(ctrl), np.array(b)
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def plot_circuit_graph(comparison: CircuitComparison, *, max_edges: int | None = MAX_EDGES,
                       title: str | None = None) -> Figure:
    """Both models' circuits in one layered drawing: shared, new and dropped edges and nodes
    (see the module docstring).

    Args:
        comparison: e.g. ``CircuitComparison.load(folder)``.
        max_edges: draw at most this many edges, an equal share of each kind with its largest
            ``|score|`` (None: all; :func:`drawn_edges`); nodes without a drawn edge are then
            left out, and the title says so.
        title: main title; defaults to the models, the task and the edge counts.

    Returns:
        The figure. Edges of each kind are one :class:`~matplotlib.collections.LineCollection`
        with gid ``"shared"``, ``"new"`` or ``"dropped"`` (one path per edge); node labels are
        texts with gid ``"node"``.

    Raises:
        ValueError: ``max_edges`` is not positive.
    """
    if max_edges is not None and max_edges < 1:
        raise ValueError(f"max_edges must be positive (or None for all), got {max_edges}")
    c = comparison
    g, p = c.graph, c.provenance
    drawn = drawn_edges(c, max_edges)
    kept = [e for k in KINDS for e in drawn.edges[k]]
    capped = len(kept) < drawn.n_union
    nb, nf = c.base_circuit.nodes, c.ft_circuit.nodes
    in_either = (nb | nf).clone()
    writer_of = g.edge_writer.tolist()
    reader_of = g.edge_reader.tolist()
    owners = g.reader_owners

    def ends(reader: int) -> list[int]:
        """Writer nodes a reader's input enters, among the circuits' nodes (all if none is)."""
        own = [w for w in owners[reader] if bool(in_either[w])]
        return own or list(owners[reader])

    if capped:
        shown = {writer_of[e] for e in kept} | {w for e in kept for w in ends(reader_of[e])}
    else:
        shown = set(in_either.nonzero().flatten().tolist())
        shown |= {w for e in kept for w in ends(reader_of[e])}

    # Rows: the input, then per layer its heads and (a little above) its MLP, then the logits.
    layers = sorted({g.writer_layer(w) for w in shown if w != 0})
    row = {layer: i + 1 for i, layer in enumerate(layers)}
    top = len(layers) + 1
    n_cols = g.n_heads
    compact = n_cols > 16
    pos: dict[int, tuple[float, float]] = {}
    for layer in layers:
        heads = [h for h in range(g.n_heads) if g.head(layer, h) in shown]
        for i, h in enumerate(heads):
            x = (i - (len(heads) - 1) / 2) if compact else (h - (g.n_heads - 1) / 2)
            pos[g.head(layer, h)] = (x, float(row[layer]))
        if g.mlp(layer) in shown:
            pos[g.mlp(layer)] = ((min(n_cols, 16) - 1) / 2 + 1.0, row[layer] + _MLP_DY)
    pos[0] = (0.0, 0.0)
    logits = -1
    pos[logits] = (0.0, float(top))

    width = st.clamp(_HEAD_IN * (min(n_cols, 16) + 2.2) + 0.8, 4.2, 7.5)
    height = st.clamp(_LAYER_IN * (top + 0.6) + 1.7, 3.0, 11.0)
    fig = st.new_figure(width, height)
    ax = fig.add_subplot()
    xs = [x for x, _ in pos.values()]
    ax.set_xlim(min(xs) - 0.7, max(xs) + 0.7)
    ax.set_ylim(-0.45, top + 0.45)
    # a layer with no drawn node has no row: a gap between rows gets a mark, so that layers
    # 25 and 27 on adjacent rows are not read as neighbours
    ends_at = [-1, *layers, g.n_layers]
    gaps = [(k + 0.5, ends_at[k] + 1, ends_at[k + 1] - 1) for k in range(len(ends_at) - 1)
            if ends_at[k + 1] - ends_at[k] > 1]
    ticks = sorted([(0.0, "input"), *((float(r), f"layer {la}") for la, r in row.items()),
                    (float(top), "logits"),
                    *((y, f"\u22ee layer {a}" if a == b else f"\u22ee layers {a}-{b}")
                      for y, a, b in gaps)])
    ax.set_yticks([y for y, _ in ticks], [t for _, t in ticks])
    for label in ax.get_yticklabels():
        if label.get_text().startswith("\u22ee"):
            label.set_color(st.NOTE_COLOUR)
            label.set_fontsize(st.NOTE_PT - 0.5)
    ax.set_xticks([])
    st.style_axes(ax)
    ax.tick_params(axis="y", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    status = {w: ("shared" if bool(nb[w]) and bool(nf[w]) else "new" if bool(nf[w])
                  else "dropped" if bool(nb[w]) else "shared") for w in shown}
    counts = {"shared": c.n_shared_edges, "new": c.n_new_edges, "dropped": c.n_dropped_edges}
    nodes = {"shared": len(c.shared_nodes), "new": len(c.new_nodes),
             "dropped": len(c.dropped_nodes)}
    handles = [Line2D([], [], color=EDGE_COLOURS[k], linestyle=EDGE_STYLES[k], linewidth=1.6,
                      marker="s", markersize=6, markerfacecolor="white" if k == "shared"
                      else _pale(EDGE_COLOURS[k]), markeredgecolor=EDGE_COLOURS[k],
                      label=f"{EDGE_NAMES[k]}: {counts[k]} edges"
                      + (f" ({len(drawn.edges[k])} drawn)" if capped else "")
                      + f", {nodes[k]} node{'' if nodes[k] == 1 else 's'}")
               for k in ("shared", "new", "dropped")]
    fig.legend(handles=handles, loc="outside lower center", fontsize=st.NOTE_PT, frameon=False,
               ncols=1, handlelength=3.0)
    drawn_words = (f"{len(kept)} of {drawn.n_union} edges drawn (each kind's largest |score|; "
                   "nodes without a drawn edge left out)" if capped
                   else f"all {drawn.n_union} edges drawn")
    fig.suptitle(title or (
        f"{st.plain_text(_model_name(p.base))} \u2192 {st.plain_text(_model_name(p.finetuned))}"
        f" \u00b7 task {st.plain_text(p.task)} \u00b7 circuits of {100 * c.base_size:.3g}% (base)"
        f" and {100 * c.ft_size:.3g}% (fine-tuned) of {g.n_edges} edges\n{drawn_words}; into a "
        "head: q left, k middle, v right\nwidth grows with |score|: the fine-tuned model's, the "
        "base's for dropped edges"), fontsize=st.TITLE_PT)

    # Node boxes are sized in points: their half height in data units, after the layout.
    _, height_pt = st.axes_size_pt(ax)
    box_half = (0.87 * NODE_PT + 0.6) * (top + 0.9) / height_pt

    def port(edge: int) -> tuple[float, float]:
        """Where an edge ends: below its reader's node (q / k / v inputs side by side)."""
        r = reader_of[edge]
        if r == g.logits_reader:
            x, y = pos[logits]
            return x, y - box_half
        i = r % g.per_layer_readers
        kind = ("q" if i < g.n_heads else "k" if i < g.n_heads + g.n_kv_heads
                else "v" if i < g.n_heads + 2 * g.n_kv_heads else "mlp")
        targets = [pos[w] for w in ends(r) if w in pos]
        x = float(np.mean([t[0] for t in targets]))
        x += {"q": -_PORT_DX, "k": 0.0, "v": _PORT_DX, "mlp": 0.0}[kind]
        return x, targets[0][1] - box_half

    max_w = max(drawn.weight.values(), default=0.0) or 1.0
    for z, kind in enumerate(KINDS):
        segs, widths = [], []
        for e in drawn.edges[kind]:
            wx, wy = pos[writer_of[e]]
            segs.append(_bezier((wx, wy + box_half), port(e), 0.1))
            widths.append(0.35 + 2.6 * drawn.weight[e] / max_w)
        colour = to_rgba(EDGE_COLOURS[kind], 0.55 if kind == "shared" else 0.85)
        ax.add_collection(LineCollection(
            segs, colors=[colour] * len(segs), linewidths=widths, linestyles=EDGE_STYLES[kind],
            capstyle="round", zorder=2 + z, gid=kind))
    for w, (x, y) in pos.items():
        if w != logits and w not in shown:
            continue
        kind = "shared" if w == logits else status[w]
        colour = EDGE_COLOURS[kind]
        fill = "white" if kind == "shared" else _pale(colour)
        text = "logits" if w == logits else _node_label(g.writer_labels[w])
        ax.text(x, y, text, ha="center", va="center", fontsize=NODE_PT, zorder=10, gid="node",
                color="black", bbox={"boxstyle": "round,pad=0.28", "fc": fill, "ec": colour,
                                     "lw": 0.9, "ls": "--" if kind == "dropped" else "-"})
    return fig


def _pale(colour: str) -> tuple[float, float, float, float]:
    r, g, b, _ = to_rgba(colour)
    return (0.78 + 0.22 * r, 0.78 + 0.22 * g, 0.78 + 0.22 * b, 1.0)


def circuit_figures(result: CircuitComparison | object, folder: str | Path, *,
                    max_edges: int | None = MAX_EDGES,
                    formats: Sequence[Format] = FORMATS) -> list[Path]:
    """Write the figures of a circuit comparison into ``folder``: ``faithfulness`` and
    ``circuit_graph``, each in every one of ``formats`` (default PDF, PNG and SVG).

    Args:
        result: a :class:`~mechdiff.circuits.CircuitComparison`, or anything holding one as
            ``comparison`` (a :class:`~mechdiff.pipeline.CircuitAnalysis`).
        folder: where to write.
        max_edges: edges drawn in the graph (the largest ``|score|``); None for all.
        formats: file formats to write (:func:`~mechdiff.viz.save_figure`).

    Returns:
        The written files.
    """
    comparison = getattr(result, "comparison", result)
    folder = Path(folder)
    return [*save_figure(plot_faithfulness(comparison), folder / "faithfulness",
                         formats=formats),
            *save_figure(plot_circuit_graph(comparison, max_edges=max_edges),
                         folder / "circuit_graph", formats=formats)]
