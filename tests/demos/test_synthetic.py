"""``mechdiff demo --synthetic``: its wiring on a stand-in zoo whose one change per fine-tune is
planted (fast), and the demo on the zoo itself (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import check_figure, random_prompts, run_cli, table_rows

from mechdiff import Task
from mechdiff import zoo as zoo_pkg
from mechdiff.pipeline import CircuitAnalysis, PairAnalysis
from mechdiff.views import DEFAULT_K, PairViews
from mechdiff.zoo.synthetic.recipes import ARCH

FAKE_ZOO = {"reweight": ("head_last", "L2H2"), "reweight_seed1": ("head_mid", "L1H1"),
            "newskill": ("mlp_last", "MLP2")}


def test_demo_on_a_stand_in_zoo(ckpts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's wiring, fast: the zoo replaced by checkpoints whose one change is planted."""
    dirs = {"base": ckpts["base"], **{k: ckpts[v] for k, (v, _) in FAKE_ZOO.items()}}
    seen = {}

    def fake_build(cache_dir=None, *, progress=True):  # noqa: ANN001, ANN202
        seen["cache"] = cache_dir
        return dirs

    def fake_task(name, *, n=32, seed=0):  # noqa: ANN001, ANN202
        return Task(random_prompts(n, seed=seed), answers=["t1"] * n, wrong_answers=["t2"] * n,
                    name=f"stand-in/{name}")

    monkeypatch.setattr(zoo_pkg, "build", fake_build)
    monkeypatch.setattr(zoo_pkg, "task", fake_task)
    out = tmp_path / "demo"
    code, stdout, stderr = run_cli(["demo", "--synthetic", "--out", str(out), "--cache",
                                    str(tmp_path / "c"), "--n-prompts", "4", "--quiet"])
    assert code == 0, stderr
    assert seen["cache"] == tmp_path / "c"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["demo"] == "synthetic"
    assert list(summary["pairs"]) == list(zoo_pkg.FINETUNES)
    page = (out / "report.html").read_text()
    for name, (_, planted) in FAKE_ZOO.items():
        assert summary["pairs"][name]["ranking"][0]["component"] == planted
        assert f"{name}: {summary['pairs'][name]['mechanism']}" in stdout
        analysis = PairAnalysis.load(out / name)
        assert set(analysis.exact) == {"heads_ft_to_base", "heads_base_to_ft", "mlp_ft_to_base",
                                       "mlp_base_to_ft"}
        assert analysis.ranking()[0].component == planted
        for fig in ("gap", "heads", "mlp", "ranked"):
            check_figure(out / "figures" / name / f"{fig}.png")
        # Circuits: the edge carrying most of the gap (real cross-model edge patching) leaves
        # the planted component; saved, drawn, summarised and in the report.
        circuits = CircuitAnalysis.load(out / "circuits" / name)
        assert circuits.cross.top(1)[0].writer == planted
        verdict = circuits.comparison.verdict
        assert summary["circuits"][name]["verdict"]["label"] == verdict.label
        assert f"verdict: {verdict.label}" in stdout
        for fig in ("faithfulness", "circuit_graph"):
            check_figure(out / "figures" / name / "circuits" / f"{fig}.png")
        assert f"Circuits of {name}" in page
    assert "re-weights an existing behaviour" in stdout and "builds a new skill" in stdout
    assert [r[1] for r in table_rows(stdout) if r[0] == "1"] == [p for _, p in FAKE_ZOO.values()]
    assert f"report: {(out / 'report.html').resolve()}" in stdout
    assert page.count("var CircuitsVis=") == 1 and len(page) < 5_000_000
    for name, (_, planted) in FAKE_ZOO.items():
        views = PairViews.load(out / "views" / name)
        assert views.label == name and len(views.heads) == DEFAULT_K
        if planted.startswith("L"):
            assert views.heads[0] == planted  # the planted head is the top head shown
        assert f'id="{name}' in page


@pytest.mark.slow
def test_demo_on_the_zoo(zoo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cache = zoo["base"].parent.parent
    code, stdout, stderr = run_cli(["demo", "--synthetic", "--out", str(out), "--cache",
                                    str(cache), "--quiet", "--n-prompts", "16"])
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["pairs"]) == set(zoo_pkg.FINETUNES)
    components = {f"L{layer}H{h}" for layer in range(ARCH.n_layer) for h in range(ARCH.n_head)}
    components |= {f"MLP{layer}" for layer in range(ARCH.n_layer)}
    for name, spec in zoo_pkg.FINETUNES.items():
        pair = summary["pairs"][name]
        assert pair["gap"]["gap"] > 1.0  # every fine-tune raises its task's logit difference
        assert pair["gap"]["gap_low"] > 0  # ... on every resample of the prompts
        assert pair["task"] == f"zoo/{spec.task}"
        assert {r["component"] for r in pair["ranking"]} == components
        for fig in ("gap", "heads", "mlp", "ranked"):
            for suffix in (".pdf", ".png"):
                check_figure(out / "figures" / name / f"{fig}{suffix}")
        heads = PairAnalysis.load(out / name).exact["heads_ft_to_base"]
        assert heads.scores.shape == (ARCH.n_layer, ARCH.n_head)
    tops = [r[1] for r in table_rows(stdout) if r[0] == "1"]
    assert len(tops) == len(zoo_pkg.FINETUNES) and set(tops) <= components
    assert (out / "summary.md").read_text().count("| 1 |") == len(zoo_pkg.FINETUNES)
    # The verdict of each fine-tune's circuits is its known mechanism (16 prompts here; 64 in
    # tests/circuits/test_verdict.py), firmly: in most prompt resamples.
    expected = {"reweight": "re-used and strengthened", "reweight_seed1": "re-used and strengthened",
                "newskill": "new mechanism"}
    for name, label in expected.items():
        verdict = summary["circuits"][name]["verdict"]
        assert verdict["label"] == label, verdict
        assert verdict["frequency"][label] >= 0.9
