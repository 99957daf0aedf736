"""circuitsvis views and the shared style, from saved values (no model): one bundle per page, data
that survives ``</script>`` in a token, per-prompt position grids whose mean is the result's score,
inline SVGs that never share an id, colour-blind-safe colours, tokens shown decoded."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex

from mechdiff.errors import ResultError
from mechdiff.gap import GapResult
from mechdiff.patching import PatchResult
from mechdiff.results import Provenance
from mechdiff.views import PairViews
from mechdiff.viz import _style as st
from mechdiff.viz import plot_gap, plot_layer_profiles, plot_patch
from mechdiff.viz._save import figure_svg
from mechdiff.viz.views import (
    MIN_DIFF_SCALE,
    ViewSet,
    attention_html,
    position_scores,
    tokens_html,
    views_html,
)

PROV = Provenance(base="b", finetuned="f", processing="compat", task="t", prompts_hash="h",
                  n_prompts=3, metric="logit_diff")


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[dict, str]] = []
        self._open: dict | None = None

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        if tag == "script":
            self._open, self._text = dict(attrs), []

    def handle_data(self, data):  # noqa: ANN001
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag):  # noqa: ANN001
        if tag == "script" and self._open is not None:
            self.scripts.append((self._open, "".join(self._text)))
            self._open = None


def _views(n_heads: int = 2) -> PairViews:
    tokens = (("<bos>", " The", "</script>"), ("<bos>", " cat"))
    lengths = torch.tensor([3, 2])
    g = torch.Generator().manual_seed(0)
    pattern = torch.rand(2, n_heads, 3, 3, generator=g).tril()
    pattern = pattern / pattern.sum(-1, keepdim=True)
    pattern[1, :, 2, :] = pattern[1, :, :, 2] = float("nan")
    nan = torch.tensor(float("nan"))
    kl = torch.tensor([[0.1, 0.5, 2.0], [0.0, 0.3, nan]])
    return PairViews(
        label="toy", prompt_indices=(2, 0), chosen_by="given", tokens=tokens, lengths=lengths,
        kl=kl, next_logprob_diff=torch.tensor([[0.2, -0.4, nan], [1.0, nan, nan]]),
        task_diff=torch.tensor([[0.0, -1.0, 3.0], [0.5, 0.25, nan]]),
        task_quantity="logit(answer) - logit(wrong answer)",
        heads=tuple(f"L0H{h}" for h in range(n_heads)), head_layers=(0,) * n_heads,
        head_indices=tuple(range(n_heads)), head_scores=(0.5,) + (float("nan"),) * (n_heads - 1),
        heads_source="exact patching", base_pattern=pattern,
        finetuned_pattern=pattern.flip(-1).tril().nan_to_num(0.0) * (pattern == pattern),
        provenance=PROV,
    )


def test_one_bundle_for_many_views_and_data_that_survives_a_script_tag() -> None:
    vs = ViewSet()
    assert vs.scripts() == ""
    views = _views()
    page = views_html(views, vs)
    assert len(vs) == 2 * (3 + 2 * 3)  # per prompt: 3 token views, 3 patterns per head
    scripts = vs.scripts()
    assert scripts.count("var CircuitsVis=") == 1
    parser = _Scripts()
    parser.feed(page + scripts)
    assert len(parser.scripts) == 3  # bundle, data, drawing: "</script>" in a token ended none
    data = json.loads(next(t for a, t in parser.scripts if a.get("id") == "mechdiff-views-data"))
    assert ["<bos>", "\u2423The", "</script>"] in data["tokens"].values()
    ids = re.findall(r'class="cv-view[^"]*" id="([^"]+)"', page)
    assert set(ids) == set(data["views"])
    kl = next(v for v in data["views"].values() if v["component"] == "ColoredTokens")
    assert kl["values"] == [0.1, 0.5, 2.0] and (kl["min"], kl["max"]) == (0.0, 2.0)


def test_attention_views_send_each_pattern_once_as_per_mille_rows() -> None:
    vs = ViewSet()
    views = _views(1)
    html = attention_html(views, vs, 0)
    assert html.count('class="cv-view cv-pattern"') == 3
    data = json.loads(vs.scripts().split('id="mechdiff-views-data">')[1].split("</script>")[0])
    (pattern,) = data["patterns"].values()
    base = views.pattern(0, 0, "base")
    assert pattern["base"] == [[round(float(x) * 1000) for x in base[q, : q + 1]]
                               for q in range(3)]
    diff = next(v for v in data["views"].values() if v.get("which") == "diff")
    ft = views.pattern(0, 0, "finetuned")
    expected = max(float((ft - base).abs().max()), MIN_DIFF_SCALE)
    assert diff["max"] == pytest.approx(expected, abs=1e-3) and diff["min"] == -diff["max"]
    assert diff["positive"] == st.POSITIVE_HEX and diff["negative"] == st.NEGATIVE_HEX
    assert "L0H0 \u00b7 score +0.500" in html


def test_token_views_share_one_scale_across_prompts() -> None:
    vs = ViewSet()
    views = _views()
    tokens_html(views, vs, 1)
    kl, task, nxt = (v for v in vs._views.values())
    assert kl["max"] == 2.0 and kl["values"] == [0.0, 0.3]  # the scale of both prompts
    assert (task["min"], task["max"]) == (-3.0, 3.0) and nxt["values"] == [1.0, 0.0]  # NaN -> 0


def _per_position(dims: tuple[str, ...], shape: tuple[int, ...]) -> PatchResult:
    g = torch.Generator().manual_seed(1)
    receiver = torch.tensor([0.0, 1.0, -0.5])
    donor = receiver + torch.tensor([2.0, 1.0, 3.0])
    patched = receiver + torch.randn(*shape, 3, generator=g)
    gap = float(donor.mean() - receiver.mean())
    scores = (patched.mean(-1) - receiver.mean()) / gap
    return PatchResult(scores=scores, patched=patched, receiver=receiver, donor=donor,
                       sites="resid" if "head" not in dims else "heads", dims=dims,
                       direction="ft->base", positions="each", provenance=PROV)


def test_position_grid_values_average_to_the_score() -> None:
    result = _per_position(("layer", "pos"), (2, 3))
    per_prompt = torch.stack([position_scores(result, i) for i in range(3)])
    torch.testing.assert_close(per_prompt.mean(0), result.scores)
    heads = _per_position(("layer", "head", "pos"), (2, 4, 3))
    grid = position_scores(heads, 1)
    gap = float(heads.donor.mean() - heads.receiver.mean())
    for layer in range(2):  # slow reference: the head of largest |value| in each cell
        for pos in range(3):
            values = [float(heads.patched[layer, h, pos, 1] - heads.receiver[1]) / gap
                      for h in range(4)]
            assert float(grid[layer, pos]) == pytest.approx(max(values, key=abs))
    with pytest.raises(ResultError, match="no per-position grid"):
        position_scores(PatchResult(
            scores=torch.zeros(2), patched=torch.zeros(2, 3), receiver=torch.zeros(3),
            donor=torch.ones(3), sites="mlp", dims=("layer",), direction="ft->base",
            positions="all", provenance=PROV), 0)
    with pytest.raises(ResultError, match="not one of"):
        position_scores(result, 3)


def test_inline_svgs_never_share_an_id_and_leave_settings_alone() -> None:
    before = dict(matplotlib.rcParams)
    scores = torch.tensor([[0.2, -0.1], [0.0, 0.4]])
    result = PatchResult(scores=scores, patched=scores[..., None].expand(2, 2, 3).clone(),
                         receiver=torch.zeros(3), donor=torch.ones(3), sites="heads",
                         dims=("layer", "head"), direction="ft->base", positions="all",
                         provenance=PROV)
    a, b = (figure_svg(plot_patch(result), prefix=p) for p in ("f1", "f2"))
    assert a.startswith("<svg") and "<?xml" not in a
    ids = [re.findall(r'\bid="([^"]+)"', s) for s in (a, b)]
    assert all(i.startswith("f1-") for i in ids[0]) and all(i.startswith("f2-") for i in ids[1])
    assert len(set(ids[0])) == len(ids[0]) and not set(ids[0]) & set(ids[1])
    refs = re.findall(r'url\(#([^)]+)\)', a) + re.findall(r'href="#([^"]+)"', a)
    assert refs and set(refs) <= set(ids[0])  # every reference still points inside its figure
    assert "<text" in a  # text kept as text
    assert dict(matplotlib.rcParams) == before


def test_style_is_colour_blind_safe_and_tokens_are_decoded() -> None:
    scores = torch.tensor([[0.2, -0.1], [0.0, 0.4]])
    result = PatchResult(scores=scores, patched=scores[..., None].expand(2, 2, 3).clone(),
                         receiver=torch.zeros(3), donor=torch.ones(3), sites="heads",
                         dims=("layer", "head"), direction="ft->base", positions="all",
                         provenance=PROV)
    image = plot_patch(result).axes[0].images[0]
    assert image.get_cmap().name.startswith(st.DIVERGING) and image.norm(0.0) == 0.5
    assert to_hex(image.get_cmap()(1.0)) == to_hex(matplotlib.colormaps[st.DIVERGING](1.0))
    layers = PatchResult(scores=torch.tensor([0.1, 0.5, 0.2]), patched=torch.zeros(3, 3),
                         receiver=torch.zeros(3), donor=torch.ones(3), sites="attn",
                         dims=("layer",), direction="ft->base", positions="all", provenance=PROV)
    fig = plot_layer_profiles({"attn": {"a": layers, "b": layers}})
    lines = [line for line in fig.axes[0].lines if line.get_label() in ("a", "b")]
    assert [to_hex(line.get_color()) for line in lines] == [
        to_hex(st.OKABE_ITO[5]), to_hex(st.OKABE_ITO[6])]
    assert len({line.get_marker() for line in lines}) == 2  # not by colour alone
    assert len({line.get_linestyle() for line in lines}) == 2
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["a", "b", "shaded: 95% interval over prompts"]  # 3 prompts: bands drawn
    gap = GapResult(
        base_metric=torch.zeros(3), finetuned_metric=torch.ones(3), kl_final=torch.ones(3),
        kl_mean=torch.ones(3), rose_tokens=("\u0120yes", "\u010a"),
        rose_delta=torch.tensor([0.3, 0.1]), fell_tokens=("\u2581no", "t9"),
        fell_delta=torch.tensor([-0.2, -0.1]), message="", provenance=PROV)
    labels = [t.get_text() for t in plot_gap(gap).axes[1].get_yticklabels()]
    assert labels == ["\u2423yes", "\u21b5", "t9", "\u2423no"]
    assert st.hex_colour((1.0, 0.5, 0.0, 1.0)) == "#ff8000"
    assert np.isclose(matplotlib.colors.to_rgba(st.POSITIVE_HEX),
                      matplotlib.colors.to_rgba(st.POSITIVE_HEX)).all()


def test_views_refuse_mismatched_values() -> None:
    vs = ViewSet()
    with pytest.raises(ResultError, match="3 values for 2 tokens"):
        vs.tokens(("a", "b"), torch.zeros(3), signed=False)
    with pytest.raises(ResultError, match="patterns of shape"):
        vs.attention(("a", "b"), torch.zeros(3, 3), torch.zeros(3, 3))
    with pytest.raises(ResultError, match="series"):
        vs.tokens_multi(("a",), torch.zeros(1, 2), ["L0"])


def test_attention_figure_draws_both_patterns_and_their_difference() -> None:
    from mechdiff.viz import plot_attention

    views = _views()
    fig = plot_attention(views, "L0H1", 0)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    base, ft = views.pattern(0, 1, "base").numpy(), views.pattern(0, 1, "finetuned").numpy()
    lower = np.tril(np.ones((3, 3), dtype=bool))
    for image, expected in zip(images, (base, ft, ft - base), strict=True):
        drawn = image.get_array()
        np.testing.assert_allclose(drawn.data[lower], expected[lower], rtol=1e-6)
        assert drawn.mask[~lower].all()  # keys after the query are not drawn
    assert images[0].get_cmap().name.startswith(st.SEQUENTIAL)
    assert images[0].get_clim() == images[1].get_clim() and images[0].get_clim()[0] == 0.0
    lo, hi = images[2].get_clim()
    assert images[2].get_cmap().name.startswith(st.DIVERGING) and lo == -hi
    assert hi == pytest.approx(float(np.abs(ft - base)[lower].max()))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["<bos>", "\u2423The",
                                                                      "</script>"]
    with pytest.raises(ResultError, match="not among the views' heads"):
        plot_attention(views, "L9H9")
    with pytest.raises(ResultError, match="kept prompts"):
        plot_attention(views, 0, 2)
