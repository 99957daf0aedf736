"""The report's sections of circuit results: found when the report first meets a circuit type
(without importing matplotlib), the verdict with its numbers, intervals and thresholds, both
figures inline, the nodes and changed edges of the saved comparison, all text escaped."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import plant_head

sys.path.insert(0, str(Path(__file__).parents[1] / "circuits"))
from circuit_models import gpt2, random_task, save_dir  # noqa: E402

import mechdiff  # noqa: E402
from mechdiff.circuits import CircuitComparison, compare_circuits  # noqa: E402
from mechdiff.circuits.verdict import share, signed  # noqa: E402
from mechdiff.report import sections  # noqa: E402
from mechdiff.report.html import write_report  # noqa: E402

EVIL = "</script><script>alert(1)</script><b>"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder holding one saved comparison (a tiny GPT-2 and the same model with one
    head's W_O changed; about 12 s) and the base model's edge scores."""
    root = tmp_path_factory.mktemp("circuit_report")
    pair = mechdiff.load_pair(save_dir(gpt2(0), root / "base"),
                              save_dir(plant_head(gpt2(0), 2, 1), root / "ft"), device="cpu")
    c = compare_circuits(pair, random_task(8), method="eap", n_boot=20, progress=False)
    c.save(root / "run" / "circuits")
    c.base_scores.save(root / "run" / "scores")
    return root / "run"


@pytest.fixture(scope="module")
def comparison(saved: Path) -> CircuitComparison:
    return CircuitComparison.load(saved / "circuits")


def _section(text: str, anchor: str) -> str:
    start = text.index(f'<section id="{anchor}')
    return text[start:text.index("</section>", start)]


def test_the_section_is_found_when_the_report_meets_the_type(saved: Path) -> None:
    """In a fresh interpreter: loading the result and asking for its section imports
    mechdiff.circuits.sections, which registers it without importing matplotlib."""
    code = (
        "import sys\n"
        "from mechdiff.results import load_result\n"
        "from mechdiff.report import sections\n"
        f"c = load_result({str(saved / 'circuits')!r})\n"
        "assert 'mechdiff.circuits.sections' not in sys.modules\n"
        "s = sections.section_for(c)\n"
        "assert s is not None and s.html is not None and s.order == 15, s\n"
        "assert 'mechdiff.circuits.sections' in sys.modules\n"
        "assert not [m for m in sys.modules if m.startswith('matplotlib')]\n"
        "print(sections.title_of(c))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith("Circuits: base \u2192 ft on random")


def test_text_and_markdown_are_the_summary(comparison: CircuitComparison) -> None:
    c = comparison
    assert sections.render_text(c) == c.summary()
    md = sections.render_markdown(c)
    assert md.startswith(f"## {sections.title_of(c)}")
    assert f"**Verdict: {c.verdict.label}**" in md and c.summary() in md
    assert sections.order_of(c) == 15
    text = sections.render_text(c.base_scores, 3)
    assert text == c.base_scores.table(3)


def test_report_shows_the_verdict_figures_nodes_and_edges(saved: Path,
                                                         comparison: CircuitComparison) -> None:
    c, v = comparison, comparison.verdict
    text = write_report(saved).read_text(encoding="utf-8")
    assert "could not be drawn" not in text and "no report section is registered" not in text
    sec = _section(text, "circuits")
    assert f'<div class="words">Verdict: {v.label}</div>' in sec
    if v.frequency[v.label] > 0:
        assert f"in {share(v.frequency[v.label])} of {v.n_boot} resamples" in sec
    else:  # an "undetermined" no resample gives (few prompts): what the resamples gave
        assert f"{v.n_boot} resamples of the prompts (seed {v.seed}) gave " in sec
        assert "in 0%" not in sec
    for reason in v.reasons:
        assert reason.replace("'", "&#x27;").replace("<", "&lt;").replace(">", "&gt;") in sec
    for key in ("base_in_ft", "score_rank", "carried"):
        lo, hi = v.intervals[key]
        row = sec[sec.index(f"<td><code>{key}</code></td>"):]
        row = row[:row.index("</tr>")]
        assert f"<b>{signed(v.numbers[key])}</b>" in row and f"[{signed(lo)}, {signed(hi)}]" in row
    assert "REUSE_FAITHFULNESS 0.7, NEW_FAITHFULNESS 0.4" in sec
    for note in v.notes:
        assert note.split(":")[0].replace("'", "&#x27;") in sec
    assert sec.count("<svg") == 2  # both figures, inline
    nodes = re.search(r"<h3>Nodes</h3>(.*?)</table>", sec, re.S).group(1)
    for kind, names in (("shared", c.shared_nodes), ("new", c.new_nodes),
                        ("dropped", c.dropped_nodes)):
        row = nodes[nodes.index(f"<td>{kind} "):]
        row = row[:row.index("</tr>")]
        assert f"<td>{len(names)}</td>" in row
        assert all(f"<code>{n}</code>" in row for n in names)
    edge, b, f = c.strengthened[0]
    assert (f"<code>{edge.replace('>', '&gt;')}</code></td><td>{b:+.3f}</td><td>{f:+.3f}</td>"
            in sec)
    assert c.provenance.prompts_hash in sec
    assert text.index('id="circuits') < text.index('id="edge-attribution')  # 15 before 16
    scores = _section(text, "edge-attribution")
    assert c.base_scores.top(1)[0].label.replace(">", "&gt;") in scores


def test_text_from_results_is_escaped(comparison: CircuitComparison, tmp_path: Path) -> None:
    c = comparison
    prov = dataclasses.replace(c.provenance, task=EVIL, finetuned=EVIL)
    verdict = dataclasses.replace(c.verdict, reasons=(EVIL,), notes=(EVIL,))
    evil = dataclasses.replace(c, provenance=prov, verdict=verdict, new_nodes=(EVIL,),
                               strengthened=((EVIL, 1.0, 2.0),))
    evil.save(tmp_path / "r" / "circuits")
    text = write_report(tmp_path / "r").read_text(encoding="utf-8")
    assert "could not be drawn" not in text
    assert EVIL not in text and "<script>alert" not in text
    assert text.count("&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;") >= 5
