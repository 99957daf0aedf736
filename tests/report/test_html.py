"""The HTML report, read statically (runs everywhere): self-contained (nothing loaded from the
network: no remote src, href or import; circuitsvis' bundle inlined exactly once), its numbers
those of the saved results, every result found, and folders it cannot read shown, never fatal."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from jaxtyping import Float
from torch import Tensor

from mechdiff.errors import OptionError
from mechdiff.pipeline import PairAnalysis
from mechdiff.report import fmt, sections
from mechdiff.report import html as report_html
from mechdiff.report.html import write_report
from mechdiff.results import Provenance, SavableResult
from mechdiff.views import PairViews
from mechdiff.viz.views import bundle_js

LIMIT = 5_000_000
"""The issue's bound on a demo report's size (bytes)."""
REMOTE = re.compile(r"^\s*(?:https?:)?//", re.I)


class _Page(HTMLParser):
    """Every tag's attributes, every script's text and type, every element id."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.scripts: list[tuple[dict[str, str], str]] = []
        self.styles: list[str] = []
        self._in: tuple[str, dict[str, str]] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag in ("script", "style"):
            self._in, self._text = (tag, a), []

    def handle_startendtag(self, tag, attrs):  # noqa: ANN001
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):  # noqa: ANN001
        if self._in is not None:
            self._text.append(data)

    def handle_endtag(self, tag):  # noqa: ANN001
        if self._in is not None and tag == self._in[0]:
            text = "".join(self._text)
            if tag == "script":
                self.scripts.append((self._in[1], text))
            else:
                self.styles.append(text)
            self._in = None


def parse(path: Path) -> tuple[str, _Page]:
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return text, page


def assert_offline(text: str, page: _Page) -> None:
    """Nothing on the page is fetched from elsewhere: no remote src/href/srcset/action, no remote
    import or fetch in any script, no remote url() in any style."""
    for tag, attrs in page.tags:
        for key in ("src", "href", "srcset", "action", "data", "poster"):
            value = attrs.get(key, "")
            assert not REMOTE.match(value), f"<{tag} {key}={value!r}> loads from the network"
        if tag == "link":
            assert attrs.get("href", "").startswith(("#", "data:")) or not attrs.get("href")
        assert tag not in ("iframe", "object", "embed", "base"), tag
    for attrs, code in page.scripts:
        assert not attrs.get("src"), "a script loads its code from a file"
        assert not re.search(r"""\bimport\s*(?:[\w{}*,\s]+\bfrom\s*)?\(?\s*["'](?:https?:)?//""",
                             code), "a script imports from the network"
        assert not re.search(r"""\bfetch\s*\(\s*["'](?:https?:)?//""", code)
    for css in page.styles:
        assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", css), "a style loads a url"
        assert "@import" not in css


@pytest.fixture(scope="module")
def report(results_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report(results_dir, tmp_path_factory.mktemp("report") / "report.html", top=5)


def test_report_is_self_contained(report: Path) -> None:
    text, page = parse(report)
    assert_offline(text, page)
    size = report.stat().st_size
    assert size < LIMIT, f"report is {size} bytes"
    assert text.count("var CircuitsVis=") == 1  # the bundle, once
    assert len(bundle_js()) > 1_000_000 and bundle_js()[:200] in text
    assert "sourceMappingURL" not in text
    # No other copy of circuitsvis' markup (its CDN import or its per-view inlined bundle).
    assert "unpkg.com" not in text and "CircuitsVis.render(\n" not in text


def test_every_view_has_its_data_and_ids_are_unique(report: Path) -> None:
    text, page = parse(report)
    (data,) = [json.loads(code) for attrs, code in page.scripts
               if attrs.get("id") == "mechdiff-views-data"]
    elements = {a["id"]: a for tag, a in page.tags if "cv-view" in a.get("class", "")}
    assert elements and set(elements) == set(data["views"])
    for vid, attrs in elements.items():
        view = data["views"][vid]
        assert attrs["data-component"] == view["component"]
        assert view["tokens"] in data["tokens"]
    ids = [a["id"] for _, a in page.tags if "id" in a]
    assert len(ids) == len(set(ids)), "duplicate element ids (inlined SVGs must not clash)"
    kinds = {v["component"] for v in data["views"].values()}
    assert kinds == {"AttentionPattern", "ColoredTokens", "ColoredTokensMulti"}


def test_numbers_on_the_page_are_the_saved_results(report: Path, results_dir: Path) -> None:
    text, _ = parse(report)
    for name, planted in (("head_last", "L2H2"), ("mlp_last", "MLP2")):
        a = PairAnalysis.load(results_dir / name)
        lo, hi = a.gap.gap_interval()
        assert f"<b>{a.gap.gap:+.3f}</b> [{lo:+.2f}, {hi:+.2f}]" in text
        assert a.gap.provenance.prompts_hash in text
        top = a.ranking()[0]
        assert top.component == planted
        section = text[text.index(f'id="{name}'):]
        assert len(top.scores) == 4  # exact and attribution, both directions
        for s, low, high in top.scores.values():
            assert f'{fmt.score(s)}</span> <span class="ci">{fmt.interval(low, high)}' in section
        assert "<th>exact</th><th>attribution</th>" in section  # side by side
        if a.interaction is not None:
            assert a.interaction.reading().words in section
    assert text.count("<svg") >= 2 * 6 + 3  # pairs: gap, 2 kinds x 2 methods, ranked; resid: 3


def test_views_go_inside_their_pairs(report: Path, results_dir: Path) -> None:
    text, _ = parse(report)
    views = PairViews.load(results_dir / "views" / "head_last")
    section = text[text.index('id="head_last'):text.index('id="mlp_last')]
    for head in views.heads:
        assert f'<div class="head-label">{head}' in section
    assert "Views:" not in text  # every saved views folder matched its pair
    grid = text[text.index('id="resid_each'):]
    assert grid.count('<table class="grid">') == 2  # the two kept prompts
    n_layers = int(PairAnalysis.load(results_dir / "resid_each").exact[
        "resid_ft_to_base"].scores.shape[0])
    start = grid.index('<table class="grid">')
    table = grid[start:grid.index("</table>", start)]
    assert table.count("<tr>") == n_layers + 1


def test_default_report_path_and_title(results_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(results_dir, copy)
    path = write_report(copy)
    assert path == copy / "report.html"
    text, _ = parse(path)
    assert "<title>tiny run</title>" in text and "Planted changes." in text


def test_bad_arguments(results_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="not a folder"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OptionError, match="no saved mechdiff results"):
        write_report(tmp_path / "empty")
    with pytest.raises(OptionError, match="top"):
        write_report(results_dir, tmp_path / "r.html", top=0)
    with pytest.raises(OptionError, match="is a folder"):
        write_report(results_dir, tmp_path)


def test_a_failed_page_leaves_the_old_report(results_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "report.html"
    out.write_text("old report")

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(report_html, "render_page", broken)
    with pytest.raises(RuntimeError):
        write_report(results_dir, out)
    assert out.read_text() == "old report"


@dataclasses.dataclass(frozen=True)
class Unregistered(SavableResult, name="test_report_unregistered"):
    """A result type no report section knows."""

    values: Float[Tensor, " n"]
    note: str
    provenance: Provenance


def test_unknown_and_unreadable_results_never_fail_the_page(
        results_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "run"
    shutil.copytree(results_dir, root)
    prov = PairAnalysis.load(root / "head_last").gap.provenance
    Unregistered(torch.tensor([1.0, 2.0, 4.0]), "hello", prov).save(root / "custom")
    # A result saved by a newer mechdiff, of a type this one does not know.
    future = root / "future"
    shutil.copytree(root / "custom", future)
    meta = json.loads((future / "result.json").read_text())
    meta["type"] = "FutureThing"
    (future / "result.json").write_text(json.dumps(meta))
    # A result whose tensors were damaged.
    data = bytearray((root / "views" / "mlp_last" / "tensors.safetensors").read_bytes())
    data[-8:] = b"\x00" * 8
    (root / "views" / "mlp_last" / "tensors.safetensors").write_bytes(bytes(data))
    text, page = parse(write_report(root))
    assert_offline(text, page)
    custom = text[text.index('id="unregistered'):]
    assert "no report section is registered" in custom
    assert "float32 [3]: min 1, mean 2.333, max 4" in custom and "hello" in custom
    assert prov.prompts_hash in custom
    assert "FutureThing (future)" in text and "did not load" in text
    assert "views/mlp_last" in text and "hash" in text.lower()
    # A renderer that fails gives its error and the generic section instead.
    monkeypatch.setitem(sections._SECTIONS, Unregistered,
                        sections.Section(html=lambda r, p: 1 / 0))
    text, _ = parse(write_report(root))
    assert "could not be drawn (ZeroDivisionError" in text and "hello" in text


def test_text_from_results_is_escaped(results_dir: Path, tmp_path: Path) -> None:
    """Labels, descriptions and tokens come from users' files: they never become markup."""
    evil = "</script><script>alert(1)</script><b>"
    a = PairAnalysis.load(results_dir / "head_last")
    dataclasses.replace(a, label=evil, description=evil, mechanism=evil).save(tmp_path / "r" / "a")
    text, page = parse(write_report(tmp_path / "r"))
    assert len(page.scripts) == 0  # no views saved here, so no script at all
    assert evil not in text and "<script>alert" not in text
    assert text.count("&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;") >= 3
