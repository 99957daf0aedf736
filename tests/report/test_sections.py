"""The registry of report sections: mechdiff's own types render exactly as the text and Markdown
renderers always did; a type registers its sections without touching the report's core (here, in
its package's ``sections`` module, found when first needed); an unknown type gets a generic
section."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from jaxtyping import Float
from support import unchecked
from torch import Tensor

from mechdiff.compare import compare_finetunes
from mechdiff.pipeline import PairAnalysis
from mechdiff.report import markdown, sections, text
from mechdiff.report.html import write_report
from mechdiff.results import Provenance, SavableResult, load_result


@pytest.fixture(scope="module")
def pairs(results_dir: Path) -> dict[str, PairAnalysis]:
    return {name: PairAnalysis.load(results_dir / name) for name in ("head_last", "mlp_last")}


def test_mechdiffs_own_types_render_byte_for_byte_as_before(pairs) -> None:
    a, b = pairs["head_last"], pairs["mlp_last"]
    for top in (None, 3):
        assert sections.render_text(a, top) == text.pair_table(a, top)
        assert sections.render_markdown(a, top) == markdown.pair_section(a, top)
    assert sections.render_text(a.gap) == text.gap_line(a.gap)
    assert sections.render_text(a.interaction) == text.interaction_line(a.interaction)
    x = next(iter(a.agreements.values()))
    assert sections.render_text(x) == text.agreement_text(x)
    r = a.exact["heads_ft_to_base"]
    assert sections.render_text(r, 4) == r.table(4)
    c = compare_finetunes(b.estimates, a.estimates, label="mlp_last", reference_label="head_last",
                          gaps={"mlp_last": b.gap.gap, "head_last": a.gap.gap})
    assert sections.render_text(c) == text.finetunes_text(c)
    assert sections.render_markdown(c) == markdown.finetunes_section(c)
    assert sections.title_of(a) == "head_last: planted L2H2"


@dataclasses.dataclass(frozen=True)
class Plain(SavableResult, name="test_sections_plain"):
    scores: Float[Tensor, " n"]
    label: str
    provenance: Provenance


def test_unknown_types_get_a_generic_section(pairs) -> None:
    prov = pairs["head_last"].gap.provenance
    r = Plain(torch.tensor([0.5, float("nan"), -1.0]), "mine", prov)
    assert sections.section_for(r) is None
    out = sections.render_text(r)
    assert out.splitlines()[0] == "Plain: mine"
    assert "scores: float32 [3]: min -1, mean -0.25, max 0.5 (1 non-finite)" in out
    assert "provenance" not in out  # shown apart, as a provenance block
    md = sections.render_markdown(r)
    assert md.startswith("## Plain: mine") and "| label | mine |" in md
    assert sections.provenance_of(r) is prov
    assert sections.provenance_of(pairs["head_last"]) == prov  # found in a nested result


def test_register_merges_and_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sections, "_SECTIONS", dict(sections._SECTIONS))
    sections.register(Plain, text=lambda r, top: "text", order=5)
    sections.register(Plain, html=lambda r, page: "<p>html</p>")
    found = sections._SECTIONS[Plain]
    assert found.text(None, None) == "text" and found.order == 5 and found.html is not None
    register = unchecked(sections.register)  # mechdiff's own checks, as users without beartype
    with pytest.raises(TypeError, match="SavableResult"):
        register(dict, text=lambda r, top: "")
    with pytest.raises(TypeError, match="callable"):
        register(Plain, text="not a function")


def test_a_package_registers_its_sections_without_editing_the_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pairs) -> None:
    """An analysis package ``pkg`` with ``pkg/results.py`` (a result type) and
    ``pkg/sections.py`` (its renderers): the report finds them when it meets the type."""
    pkg = tmp_path / "plugin_analysis"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "results.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from mechdiff.results import Provenance, SavableResult

        @dataclass(frozen=True)
        class Verdict(SavableResult, name="plugin_analysis_verdict"):
            words: str
            provenance: Provenance
    '''))
    (pkg / "sections.py").write_text(textwrap.dedent('''
        from mechdiff.report.sections import register
        from plugin_analysis.results import Verdict

        register(Verdict, title=lambda v: "Verdict", text=lambda v, top: "verdict: " + v.words,
                 html=lambda v, page: "<p class='verdict'>" + page.esc(v.words) + "</p>"
                 + page.provenance(v))
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sections, "_SECTIONS", dict(sections._SECTIONS))
    monkeypatch.setattr(sections, "_TRIED", set())
    from plugin_analysis.results import Verdict

    assert "plugin_analysis.sections" not in sys.modules
    verdict = Verdict("new mechanism <built>", pairs["head_last"].gap.provenance)
    assert sections.render_text(verdict) == "verdict: new mechanism <built>"
    assert "plugin_analysis.sections" in sys.modules
    root = tmp_path / "run"
    verdict.save(root / "verdict")
    assert isinstance(load_result(root / "verdict"), Verdict)
    page = write_report(root).read_text()
    assert "<p class='verdict'>new mechanism &lt;built&gt;</p>" in page
    assert verdict.provenance.prompts_hash in page
