"""circuitsvis views of saved results, for a self-contained HTML page that works offline.

circuitsvis' own markup either imports its JavaScript from a CDN (``str(html)``: breaks offline
and in saved reports) or inlines its 1.3 MB bundle once per view (``html.local_src``). A
:class:`ViewSet` instead collects every view of a page as data, and :meth:`ViewSet.scripts`
emits the bundle **once** (``CircuitsVis`` from circuitsvis' ``dist/cdn/iife.js``), one JSON block
holding every view's data, and a small script that draws each view with
``CircuitsVis.render(id, CircuitsVis.<Component>, props)`` when it becomes visible (views inside a
closed ``<details>`` are drawn when it is opened; ``window.mechdiffDrawAll()`` draws them all).

Views of a :class:`~mechdiff.views.PairViews` (saved; no model needed):

* :func:`attention_html`: per head, ``AttentionPattern`` of the base, of the fine-tuned model and
  of their difference (fine-tuned minus base; diverging colours, symmetric scale) on the same
  prompt, side by side. Patterns travel as integer per-mille lower triangles; the difference is
  formed in the browser from the same numbers.
* :func:`tokens_html`: ``ColoredTokens`` of the per-token KL(fine-tuned || base) (sequential
  colour from 0), of the change of the task quantity and of the next token's log-probability
  (diverging colours, symmetric about 0).
* :func:`position_grid_html`: for a per-position patching result, the layer x position grid over
  one prompt's own tokens (an HTML table, and ``ColoredTokensMulti`` with one series per layer).

Colours are those of the figures (:mod:`mechdiff.viz._style`): blue for negative, red for
positive (ColorBrewer RdBu, colour-blind safe), purple for magnitudes.
"""

from __future__ import annotations

import functools
import html
import json
import math
from pathlib import Path
from typing import Any

import torch

from mechdiff.errors import ResultError
from mechdiff.patching import PatchResult
from mechdiff.viz import _style as st

PER_MILLE = 1000
"""Attention weights travel as integers in thousandths (their precision on the page)."""
MIN_DIFF_SCALE = 0.05
"""Smallest half-width of a difference pattern's colour scale (smaller differences stay pale)."""


@functools.lru_cache(maxsize=1)
def bundle_js() -> str:
    """circuitsvis' browser bundle (defines ``CircuitsVis``), safe to inline in a ``<script>``.

    Raises:
        ResultError: the installed circuitsvis has no bundle (a broken installation).
    """
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    try:
        js = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ResultError(f"circuitsvis' bundle {path} cannot be read ({e.strerror}); reinstall "
                          "circuitsvis (pip install --force-reinstall circuitsvis)") from None
    lines = [line for line in js.splitlines() if not line.startswith("//# sourceMappingURL")]
    return _script_safe("\n".join(lines))


def _script_safe(text: str) -> str:
    """Text that cannot end the ``<script>`` element holding it (``</script`` and ``<!--`` are
    written with an escaped slash / bang, which JavaScript strings and JSON read the same)."""
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def _json(data: Any) -> str:
    return _script_safe(json.dumps(data, separators=(",", ":"), allow_nan=False))


def _finite(values: torch.Tensor, digits: int = 4) -> list[float]:
    """Values as JSON numbers (non-finite -> 0), rounded to ``digits`` significant decimals."""
    out = []
    for v in values.detach().float().cpu().tolist():
        out.append(round(v, digits) if math.isfinite(v) else 0.0)
    return out


def _lower_rows(pattern: torch.Tensor) -> list[list[int]]:
    """A causal ``[query, key]`` pattern as lower-triangle rows of per-mille integers."""
    p = pattern.detach().float().cpu().nan_to_num(0.0)
    return [[int(round(float(x) * PER_MILLE)) for x in p[q, : q + 1].tolist()]
            for q in range(p.shape[0])]


class ViewSet:
    """The circuitsvis views of one page, drawn from one inlined copy of the bundle.

    Each ``add`` method returns the HTML of the view's element (an empty ``div`` the script
    fills); :meth:`scripts` returns what must follow every view on the page.
    """

    def __init__(self, prefix: str = "cv") -> None:
        self._prefix = prefix
        self._views: dict[str, dict[str, Any]] = {}
        self._tokens: dict[str, list[str]] = {}
        self._token_ids: dict[tuple[str, ...], str] = {}
        self._patterns: dict[str, dict[str, list[list[int]]]] = {}

    def __len__(self) -> int:
        return len(self._views)

    def _element(self, view: dict[str, Any], cls: str) -> str:
        vid = f"{self._prefix}-{len(self._views) + 1}"
        self._views[vid] = view
        return (f'<div class="cv-view {cls}" id="{vid}" data-component="{view["component"]}">'
                "</div>")

    def _token_ref(self, tokens: tuple[str, ...] | list[str]) -> str:
        key = tuple(tokens)
        if key not in self._token_ids:
            tid = f"t{len(self._token_ids) + 1}"
            self._token_ids[key] = tid
            self._tokens[tid] = [shown_token(t) for t in key]
        return self._token_ids[key]

    def attention(self, tokens: tuple[str, ...], base: torch.Tensor,
                  finetuned: torch.Tensor) -> tuple[str, str, str, float]:
        """Three views of one head on one prompt: base, fine-tuned, fine-tuned minus base.

        Args:
            tokens: the prompt's tokens (decoded).
            base / finetuned: ``[query, key]`` patterns cut to the prompt's length.

        Returns:
            The three elements' HTML and the half-width of the difference's colour scale.
        """
        n = len(tokens)
        if tuple(base.shape) != (n, n) or tuple(finetuned.shape) != (n, n):
            raise ResultError(f"patterns of shape {tuple(base.shape)} and "
                              f"{tuple(finetuned.shape)} for {n} tokens")
        pid = f"p{len(self._patterns) + 1}"
        rows_b, rows_f = _lower_rows(base), _lower_rows(finetuned)
        self._patterns[pid] = {"base": rows_b, "finetuned": rows_f}
        diff = max((abs(a - b) for rb, rf in zip(rows_b, rows_f, strict=True)
                    for a, b in zip(rb, rf, strict=True)), default=0) / PER_MILLE
        scale = max(diff, MIN_DIFF_SCALE)
        tid = self._token_ref(tokens)
        common = {"component": "AttentionPattern", "tokens": tid, "pattern": pid}
        return (
            self._element({**common, "which": "base", "min": 0.0, "max": 1.0,
                           "positive": st.MAGNITUDE_HEX}, "cv-pattern"),
            self._element({**common, "which": "finetuned", "min": 0.0, "max": 1.0,
                           "positive": st.MAGNITUDE_HEX}, "cv-pattern"),
            self._element({**common, "which": "diff", "min": -scale, "max": scale,
                           "positive": st.POSITIVE_HEX, "negative": st.NEGATIVE_HEX},
                          "cv-pattern"),
            scale,
        )

    def tokens(self, tokens: tuple[str, ...], values: torch.Tensor, *, signed: bool,
               scale: float | None = None) -> str:
        """``ColoredTokens``: each token coloured by its value.

        Args:
            tokens: the tokens (decoded).
            values: one value per token (non-finite values are drawn as 0).
            signed: diverging colours symmetric about 0 (else sequential from 0).
            scale: the colour scale's end (``|value|`` that gets the full colour); default the
                largest finite ``|value|``.
        """
        if int(values.shape[0]) != len(tokens):
            raise ResultError(f"{int(values.shape[0])} values for {len(tokens)} tokens")
        top = scale if scale is not None else _largest(values)
        view = {"component": "ColoredTokens", "tokens": self._token_ref(tokens),
                "values": _finite(values), "min": -top if signed else 0.0, "max": top,
                "positive": st.POSITIVE_HEX if signed else st.MAGNITUDE_HEX}
        if signed:
            view["negative"] = st.NEGATIVE_HEX
        return self._element(view, "cv-tokens")

    def tokens_multi(self, tokens: tuple[str, ...], values: torch.Tensor,
                     labels: list[str]) -> str:
        """``ColoredTokensMulti``: tokens coloured by one of several series (``[token, series]``),
        chosen by the reader; hovering a token lists every series' value."""
        if tuple(values.shape) != (len(tokens), len(labels)):
            raise ResultError(f"values of shape {tuple(values.shape)} for {len(tokens)} tokens "
                              f"and {len(labels)} series")
        rows = [_finite(row) for row in values]
        return self._element({"component": "ColoredTokensMulti",
                              "tokens": self._token_ref(tokens), "values": rows,
                              "labels": labels}, "cv-tokens-multi")

    def scripts(self) -> str:
        """The bundle (once), the views' data and the drawing script; ``""`` without views."""
        if not self._views:
            return ""
        data = {"tokens": self._tokens, "patterns": self._patterns, "views": self._views,
                "perMille": PER_MILLE}
        return ("<script>/* circuitsvis " + _version() + " (MIT licence), inlined once */\n"
                + bundle_js() + "\n</script>\n"
                + '<script type="application/json" id="mechdiff-views-data">' + _json(data)
                + "</script>\n<script>\n" + _DRAW_JS + "\n</script>\n")


def _version() -> str:
    from importlib.metadata import version

    return version("circuitsvis")


def _largest(values: torch.Tensor) -> float:
    v = values.detach().float().abs()
    v = v[torch.isfinite(v)]
    top = float(v.max()) if v.numel() else 0.0
    return top if top > 0 else 1.0


def shown_token(token: str) -> str:
    """A decoded token with visible whitespace (``␣cat``), as every view shows it."""
    from mechdiff.views import shown

    return shown(token)


_DRAW_JS = r"""
(function () {
  var data = JSON.parse(document.getElementById("mechdiff-views-data").textContent);
  var scale = data.perMille;
  function square(rows) {
    var n = rows.length, out = [];
    for (var q = 0; q < n; q++) {
      var row = new Array(n).fill(0);
      for (var k = 0; k < rows[q].length; k++) row[k] = rows[q][k] / scale;
      out.push(row);
    }
    return out;
  }
  function escape(t) {
    return t.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }
  function props(v) {
    var tokens = data.tokens[v.tokens];
    if (v.component === "AttentionPattern") {
      var p = data.patterns[v.pattern], m;
      if (v.which === "diff") {
        var b = square(p.base), f = square(p.finetuned);
        m = f.map(function (row, q) { return row.map(function (x, k) { return x - b[q][k]; }); });
      } else {
        m = square(p[v.which]);
      }
      return {tokens: tokens, attention: m, minValue: v.min, maxValue: v.max,
              positiveColor: v.positive, negativeColor: v.negative || v.positive,
              showAxisLabels: true, maskUpperTri: true};
    }
    var shown = tokens.map(escape);  /* these components write tokens as HTML */
    if (v.component === "ColoredTokens") {
      return {tokens: shown, values: v.values, minValue: v.min, maxValue: v.max,
              positiveColor: v.positive, negativeColor: v.negative || v.positive};
    }
    return {tokens: shown, values: v.values, labels: v.labels};
  }
  function draw(el) {
    if (el.dataset.rendered) return;
    var v = data.views[el.id];
    try {
      CircuitsVis.render(el.id, CircuitsVis[v.component], props(v));
      el.dataset.rendered = "1";
    } catch (e) {
      el.dataset.rendered = "error";
      el.textContent = "this view could not be drawn: " + e;
    }
  }
  function visible(el) {
    var d = el.closest("details");
    while (d) {
      if (!d.open) return false;
      d = d.parentElement ? d.parentElement.closest("details") : null;
    }
    return true;
  }
  function drawVisible() {
    document.querySelectorAll(".cv-view").forEach(function (el) { if (visible(el)) draw(el); });
  }
  document.querySelectorAll("details").forEach(function (d) {
    d.addEventListener("toggle", drawVisible);
  });
  window.mechdiffDrawAll = function () { document.querySelectorAll(".cv-view").forEach(draw); };
  drawVisible();
})();
"""


# ---------------------------------------------------------------- views of saved results


def attention_html(views: Any, vs: ViewSet, prompt: int) -> str:
    """Per head of ``views`` (a :class:`~mechdiff.views.PairViews`), its base, fine-tuned and
    difference patterns on kept prompt ``prompt``, side by side, with the head's score."""
    if not views.heads:
        return ""
    tokens = views.tokens[prompt]
    rows = [f'<p class="note">Attention patterns (rows: query position, columns: key position; '
            f"{html.escape(views.heads_source or 'heads given by hand')}). Left: base; middle: "
            "fine-tuned; right: fine-tuned \u2212 base (red: the fine-tuned model attends more, "
            "blue: less). Hover a cell for its value.</p>"]
    for h, label in enumerate(views.heads):
        base = views.pattern(prompt, h, "base")
        ft = views.pattern(prompt, h, "finetuned")
        b, f, d, scale = vs.attention(tokens, base, ft)
        score = views.head_scores[h]
        what = f" \u00b7 score {score:+.3f}" if math.isfinite(score) else ""
        rows.append(
            f'<div class="head-row"><div class="head-label">{html.escape(label)}{what}</div>'
            f'<div class="triple"><figure>{b}<figcaption>base</figcaption></figure>'
            f"<figure>{f}<figcaption>fine-tuned</figcaption></figure>"
            f"<figure>{d}<figcaption>fine-tuned \u2212 base (scale \u00b1{scale:.2f})"
            "</figcaption></figure></div></div>")
    return "\n".join(rows)


def tokens_html(views: Any, vs: ViewSet, prompt: int) -> str:
    """The per-token views of kept prompt ``prompt``: KL, the task quantity's change, the next
    token's log-probability change; colour scales shared by all kept prompts."""
    n = int(views.lengths[prompt])
    tokens = views.tokens[prompt]
    kl_top = _largest(views.kl)
    parts = [_token_row(
        "KL(fine-tuned \u2016 base) of the next-token distributions read at each token "
        f"(0 to {kl_top:.3g} nats)", vs.tokens(tokens, views.kl[prompt, :n], signed=False,
                                              scale=kl_top))]
    if views.task_diff is not None:
        top = _largest(views.task_diff)
        parts.append(_token_row(
            f"change of {html.escape(views.task_quantity)} read at each token (fine-tuned "
            f"\u2212 base, \u00b1{top:.3g}); at the last token it is this prompt's gap",
            vs.tokens(tokens, views.task_diff[prompt, :n], signed=True, scale=top)))
    top = _largest(views.next_logprob_diff)
    parts.append(_token_row(
        "change of the log-probability of the token that follows (fine-tuned \u2212 base, "
        f"\u00b1{top:.3g}; the last token has none)",
        vs.tokens(tokens, views.next_logprob_diff[prompt, :n], signed=True, scale=top)))
    return "\n".join(parts)


def _token_row(caption: str, element: str) -> str:
    return f'<div class="token-row"><div class="note">{caption}</div>{element}</div>'


def views_html(views: Any, vs: ViewSet, *, open_first: bool = True) -> str:
    """Every kept prompt of ``views``: token views, then attention views; the first prompt open,
    the others in closed ``<details>`` (drawn when opened)."""
    out = [f'<p class="note">Prompts shown: {html.escape(views.chosen_by)}. Tokens are decoded; '
           "\u2423 marks a leading space, \u21b5 a newline.</p>"]
    for i, index in enumerate(views.prompt_indices):
        opened = " open" if (open_first and i == 0) else ""
        text = html.escape("".join(views.tokens[i]))
        if len(text) > 120:
            text = text[:119] + "\u2026"
        out.append(f'<details class="prompt"{opened}><summary>prompt {index}: '
                   f'<span class="prompt-text">{text}</span></summary>'
                   + tokens_html(views, vs, i) + attention_html(views, vs, i) + "</details>")
    return "\n".join(out)


def position_scores(result: PatchResult, prompt: int) -> torch.Tensor:
    """One prompt's per-position scores, ``[layer, pos]``: its own patch effect as a fraction of
    the mean gap, ``(patched - receiver) / (mean donor - mean receiver)``, so that the mean over
    prompts is the result's score. For ``(layer, head, pos)`` results, each cell holds the head of
    largest ``|value|``.

    Raises:
        ResultError: the result is not per position, or ``prompt`` is not one of its prompts.
    """
    if "pos" not in result.dims:
        raise ResultError(f"a result patched at all positions at once (dims {result.dims}) has "
                          "no per-position grid")
    n = int(result.receiver.shape[0])
    if not 0 <= prompt < n:
        raise ResultError(f"prompt {prompt} is not one of the result's {n} prompts")
    gap = float(result.donor.mean() - result.receiver.mean())
    values = (result.patched[..., prompt] - result.receiver[prompt]) / gap
    if values.ndim == 3:  # layer head pos
        idx = values.abs().nan_to_num(-1.0).argmax(1, keepdim=True)
        values = values.gather(1, idx)[:, 0]
    return values


def position_grid_html(result: PatchResult, views: Any, vs: ViewSet) -> str:
    """The layer x position grid of a per-position result over each kept prompt's own tokens
    (``views`` must be of the same task): an HTML table coloured on the diverging scale, and a
    ``ColoredTokensMulti`` view (one series per layer)."""
    out = []
    for i, index in enumerate(views.prompt_indices):
        n = int(views.lengths[i])
        grid = position_scores(result, index)[:, :n].detach().float().cpu()
        tokens = views.tokens[i]
        top = _largest(grid)
        cmap = st.diverging_cmap(st.DIVERGING)
        head = "".join(f"<th>{html.escape(shown_token(t))}</th>" for t in tokens)
        rows = []
        for layer in range(grid.shape[0]):
            cells = []
            for p in range(n):
                v = float(grid[layer, p])
                colour = st.hex_colour(cmap(0.5 + 0.5 * v / top)) if math.isfinite(v) else "#ddd"
                cells.append(f'<td style="background:{colour}" title="layer {layer}, '
                             f'{html.escape(shown_token(tokens[p]), quote=True)}@{p}: '
                             f'{v:+.3f}"></td>')
            rows.append(f"<tr><th>{layer}</th>{''.join(cells)}</tr>")
        labels = [f"layer {layer}" for layer in range(grid.shape[0])]
        multi = vs.tokens_multi(tokens, grid.T.contiguous(), labels)
        out.append(
            f'<details class="prompt"{" open" if i == 0 else ""}><summary>prompt {index}: '
            f"per-position {html.escape(result.sites)} patching over its tokens</summary>"
            f'<p class="note">Each cell: this prompt\'s effect of patching that layer at that '
            f"position, as a fraction of the mean gap (the mean over prompts is the score); "
            f"colour scale \u00b1{top:.3g}, red positive. Hover a cell for its value.</p>"
            f'<div class="grid-wrap"><table class="grid"><tr><th>layer</th>{head}</tr>'
            f"{''.join(rows)}</table></div>"
            f'<p class="note">The same values on the prompt\'s tokens; choose a layer:</p>{multi}'
            "</details>")
    return "\n".join(out)
