"""``mechdiff circuits`` end to end on tiny checkpoints with a planted head: the edges out of the
planted head carry the gap (by real cross-model edge patching), everything printed is what was
saved, the output folder rebuilds its figures and report from disk, and bad input is one line with
nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import assert_one_line_error, check_figure, run_cli, write_jsonl

import mechdiff
from mechdiff.circuits import CircuitComparison
from mechdiff.pipeline import CircuitAnalysis
from mechdiff.report.summary import json_ready


def _strict_json(path: Path):
    """Parse as a strict JSON reader does: NaN and Infinity are not JSON."""
    def refuse(name: str):
        raise ValueError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


@pytest.fixture(scope="module")
def circuits_run(ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("cli-circuits")
    prompts = write_jsonl(tmp / "planted.jsonl", n=8)
    out = tmp / "out"
    code, stdout, stderr = run_cli([
        "circuits", "--base", str(ckpts["base"]), "--finetuned", str(ckpts["head_last"]),
        "--prompts", str(prompts), "--out", str(out), "--method", "eap", "--cross-top", "10",
        "--quiet",
    ])
    return code, stdout, stderr, out, prompts


def test_planted_head_carries_the_gap_and_output_is_what_was_printed(circuits_run) -> None:
    code, stdout, stderr, out, _ = circuits_run
    assert code == 0, stderr
    analysis = CircuitAnalysis.load(out / "circuits")
    cross, cmp = analysis.cross, analysis.comparison
    # Only W_O of L2H2 changed: the edge carrying most of the gap, patched for real, leaves it.
    best = cross.top(1, by="exact")[0]
    assert best.writer == "L2H2", cross.table(5)
    assert best.score > 0.5
    # Every edge at once: the planted change is the head's output, which the edges carry whole.
    assert cross.all_edges == pytest.approx(1.0, abs=1e-3)
    verdict = cmp.verdict
    assert f"verdict: {verdict.label}" in stdout
    summary = _strict_json(out / "summary.json")
    assert summary["circuits"]["verdict"]["label"] == verdict.label
    assert summary["circuits"]["verdict"]["numbers"] == json_ready(verdict.numbers)
    assert summary["circuits"]["gap_edges"]["top"][0]["edge"] == cross.top(1)[0].label
    assert summary["circuits"]["edges"]["shared"] == cmp.n_shared_edges
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert verdict.label in md
    for stem in ("faithfulness", "circuit_graph"):
        for suffix in (".pdf", ".png", ".svg"):
            check_figure(out / "figures" / f"{stem}{suffix}")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert verdict.label in html and "<svg" in html
    run = json.loads((out / "mechdiff_run.json").read_text(encoding="utf-8"))
    assert run["command"] == "circuits" and run["options"]["method"] == "eap"
    assert run["options"]["cross_curves"] is True
    assert cmp.base_in_ft_curve is not None and cmp.ft_in_base_curve is not None


def test_fixed_edges_and_the_saved_comparison_loads_alone(ckpts, circuits_run,
                                                          tmp_path: Path) -> None:
    *_, prompts = circuits_run
    out = tmp_path / "out"
    code, _, stderr = run_cli([
        "circuits", "--base", str(ckpts["base"]), "--finetuned", str(ckpts["head_last"]),
        "--prompts", str(prompts), "--out", str(out), "--method", "eap", "--edges", "12",
        "--cross-top", "0", "--no-cross-curves", "--quiet",
    ])
    assert code == 0, stderr
    analysis = CircuitAnalysis.load(out / "circuits")
    assert analysis.comparison.base_circuit.requested == 12
    assert analysis.comparison.ft_circuit.requested == 12
    assert analysis.comparison.base_in_ft_curve is None  # --no-cross-curves
    assert json.loads((out / "mechdiff_run.json").read_text())["options"]["cross_curves"] is False
    assert analysis.cross is not None and int(analysis.cross.exact_edges.numel()) == 0
    # Nothing patched for real: the summary ranks the edges by their estimates, not by nothing.
    summary = _strict_json(out / "summary.json")
    top = summary["circuits"]["gap_edges"]["top"]
    assert len(top) == 10 and all(row["exact"] is None for row in top)
    assert top[0]["edge"] == analysis.cross.top(1, by="estimate")[0].label
    alone = CircuitComparison.load(out / "circuits" / "comparison")
    assert alone.verdict.numbers == analysis.comparison.verdict.numbers


@pytest.mark.parametrize(("extra", "needles"), [
    (["--ablation", "corrupted"], ("corrupted",)),
    (["--edges", "100000000"], ("edges", "100000000")),
    (["--cross-top", "-1"], ("--cross-top",)),
    (["--method", "eap", "--steps", "3"], ("--steps is for --method eap_ig",)),
])
def test_bad_input_is_one_line_and_writes_nothing(ckpts, circuits_run, tmp_path: Path, extra,
                                                  needles) -> None:
    *_, prompts = circuits_run
    out = tmp_path / "out"
    code, _, stderr = run_cli([
        "circuits", "--base", str(ckpts["base"]), "--finetuned", str(ckpts["head_last"]),
        "--prompts", str(prompts), "--out", str(out), "--quiet", *extra,
    ])
    assert_one_line_error(code, stderr, *needles)
    assert not out.exists()


@pytest.mark.parametrize(("rows", "extra", "needles"), [
    (8, ["--ablation", "corrupted"], ("corrupted", "--ablation mean")),
    (1, [], ("at least 2 prompts",)),
])
def test_prompts_that_cannot_be_ablated_are_refused_before_loading(tmp_path: Path, rows, extra,
                                                                   needles) -> None:
    """Checked on the prompt file alone: the models are not even looked at (here they do not
    exist, and the error is still about the prompts)."""
    prompts = write_jsonl(tmp_path / "p.jsonl", n=rows)
    out = tmp_path / "out"
    code, _, stderr = run_cli([
        "circuits", "--base", str(tmp_path / "no_base"), "--finetuned", str(tmp_path / "no_ft"),
        "--prompts", str(prompts), "--out", str(out), "--quiet", *extra,
    ])
    assert_one_line_error(code, stderr, *needles)
    assert "no_base" not in stderr and not out.exists()


def test_more_edges_than_the_graph_has_are_refused_before_loading(ckpts, tmp_path: Path) -> None:
    """The graph's size is read from the base's config.json: --edges beyond it fails before any
    model is loaded (it took 13 s on SmolLM2, and named 'edges', not '--edges'). The fine-tune
    here does not exist: the error is still about --edges."""
    from mechdiff.circuits import graph_of

    prompts = write_jsonl(tmp_path / "p.jsonl", n=4)
    n = graph_of(mechdiff.load_pair(ckpts["base"], ckpts["base"], device="cpu").base).n_edges
    out = tmp_path / "out"
    code, _, stderr = run_cli([
        "circuits", "--base", str(ckpts["base"]), "--finetuned", str(tmp_path / "no_ft"),
        "--prompts", str(prompts), "--out", str(out), "--quiet", "--edges", str(n + 1),
    ])
    assert_one_line_error(code, stderr, f"--edges {n + 1} is more than the {n} edges",
                          "config.json")
    assert not out.exists()


@pytest.mark.parametrize(("command", "change", "needles"), [
    ("circuits", "corrupted", ("has 5 tokens but its clean prompt has 4", "p.jsonl:2")),
    ("circuits", "unknown", ("zzz", "p.jsonl:1")),
    ("patch", "unknown", ("zzz", "p.jsonl:1")),
])
def test_token_errors_are_refused_before_loading(ckpts, tmp_path: Path, command, change,
                                                 needles) -> None:
    """Token errors need only the base's tokenizer: they are reported before any model is loaded
    (here the fine-tune does not exist, and the error is still about the prompt file's line)."""
    import json

    rows = [{"prompt": "t1 t2 t3", "answer": "t1", "wrong_answer": "t2",
             "corrupted": "t4 t5 t6"} for _ in range(4)]
    if change == "corrupted":
        rows[1]["corrupted"] = "t4 t5 t6 t7"
    else:
        rows[0]["prompt"] = "t1 zzz t3"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    extra = ["--ablation", "corrupted"] if command == "circuits" else []
    code, _, stderr = run_cli([
        command, "--base", str(ckpts["base"]), "--finetuned", str(tmp_path / "no_ft"),
        "--prompts", str(prompts), "--out", str(out), "--quiet", *extra,
    ])
    assert_one_line_error(code, stderr, *needles)
    assert "no_ft" not in stderr and not out.exists()


def test_a_prompt_file_without_answers_is_refused_before_loading(tmp_path: Path) -> None:
    """No answers means the 'kl' metric: each model compared with itself, no gap between the
    models, so a comparison could only end 'undetermined' (with EAP it also scored nothing but
    float noise, a review found, and reported circuits built from it)."""
    import json

    from support import random_prompts

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in random_prompts(6)),
                       encoding="utf-8")
    for method in ("eap", "eap_ig"):
        out = tmp_path / f"out_{method}"
        code, _, stderr = run_cli([
            "circuits", "--base", str(tmp_path / "no_base"), "--finetuned",
            str(tmp_path / "no_ft"), "--prompts", str(prompts), "--out", str(out), "--quiet",
            "--method", method,
        ])
        assert_one_line_error(code, stderr, "metric 'kl' compares each model with itself",
                              "answers")
        assert not out.exists()


def test_zero_gap_is_refused_before_the_comparison(ckpts, circuits_run, tmp_path: Path) -> None:
    *_, prompts = circuits_run
    out = tmp_path / "out"
    code, _, stderr = run_cli([
        "circuits", "--base", str(ckpts["base"]), "--finetuned", str(ckpts["base"]),
        "--prompts", str(prompts), "--out", str(out), "--quiet",
    ])
    assert_one_line_error(code, stderr, "gap")
    assert not out.exists()


@pytest.mark.parametrize(("rows", "extra", "needles"), [
    ([{"prompt": "t3 t4 t5", "answer": "t1", "wrong_answer": "t2"}] * 6, [],
     ("all 6 prompts are the same", "nothing would be ablated")),
    ([{"prompt": f"t3 t{i + 4} t5", "answer": "t1", "wrong_answer": "t2",
       "corrupted": f"t3 t{i + 4} t5"} for i in range(4)], ["--ablation", "corrupted"],
     ("every corrupted prompt equals its clean prompt",)),
])
def test_ablations_that_remove_nothing_are_refused_before_loading(tmp_path: Path, rows, extra,
                                                                  needles) -> None:
    """A review ran both to the end: edge scores of 1e-7 ranked as 'strengthened', a CPR of
    0/0, and an 'undetermined' verdict with a wrong reason."""
    import json

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, _, stderr = run_cli([
        "circuits", "--base", str(tmp_path / "no_base"), "--finetuned", str(tmp_path / "no_ft"),
        "--prompts", str(prompts), "--out", str(tmp_path / "out"), "--quiet", *extra,
    ])
    assert_one_line_error(code, stderr, *needles)


@pytest.mark.parametrize(("argv", "needles"), [
    (["--seed", str(2**64)], ("--seed", "from 0 to 2**63 - 1", "see mechdiff circuits --help")),
    (["--edges", "0"], ("--edges", "positive integer")),
    (["--method", "foo"], ("--method", "invalid choice")),
])
def test_usage_errors_are_one_line(tmp_path: Path, argv, needles) -> None:
    """argparse printed its usage block above the error (and a seed of 2**64 crashed with a
    traceback after all the computation)."""
    prompts = write_jsonl(tmp_path / "p.jsonl", n=4)
    code, _, stderr = run_cli(["circuits", "--base", "b", "--finetuned", "f", "--prompts",
                               str(prompts), *argv])
    assert_one_line_error(code, stderr, *needles)


def test_paths_that_are_the_wrong_kind_are_named(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", n=4)
    code, _, stderr = run_cli(["circuits", "--base", str(prompts), "--finetuned", "f",
                               "--prompts", str(prompts), "--out", str(tmp_path / "o")])
    assert_one_line_error(code, stderr, "is a file, not a checkpoint directory")
    code, _, stderr = run_cli(["circuits", "--base", "b", "--finetuned", "f", "--prompts",
                               str(tmp_path), "--out", str(tmp_path / "o")])
    assert_one_line_error(code, stderr, "is a folder, not a prompt file")


def test_mean_ablation_warns_about_a_read_position_only_one_prompt_reaches(ckpts) -> None:
    """The mean at a position only one prompt reaches is that prompt: its read position is not
    ablated (a review found the longest prompt's metric unchanged with every edge ablated)."""
    from mechdiff.errors import AblationWarning

    base = mechdiff.load_pair(ckpts["base"], ckpts["base"], device="cpu").base
    words = ["t3 t4", "t5 t6 t7", "t8 t9", "t10 " * 9]
    task = mechdiff.Task(words, answers=["t1"] * 4, wrong_answers=["t2"] * 4)
    with pytest.warns(AblationWarning, match=r"prompt 3 \(10 tokens\): read at a position no "
                                              r"other prompt reaches \(the longest is 10 tokens, "
                                              r"the next 4\)"):
        mechdiff.circuits.edge_attribution(base, task, method="eap", progress=False)


def test_model_folders_and_prompts_are_recorded_as_absolute_paths(tmp_path: Path,
                                                                  monkeypatch) -> None:
    """Relative names made a run from another folder, with other models, the 'same run' (its
    output silently replaced the first's) and left provenance reading 'base'."""
    import argparse

    from mechdiff._cli import _resolve_inputs

    (tmp_path / "base").mkdir()
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(base="base", finetuned="org/hub-model", prompts=Path("p.jsonl"))
    _resolve_inputs(args)
    assert args.base == str(tmp_path / "base") and args.prompts == tmp_path / "p.jsonl"
    assert args.finetuned == "org/hub-model"  # a hub name stays a name


@pytest.mark.parametrize(("config", "needle"), [
    ({"model_type": "gpt_neox"}, "use_parallel_residual is true"),
    ({"model_type": "gptj"}, "model_type 'gptj' runs attention and MLP in parallel"),
])
def test_parallel_blocks_are_refused_from_the_config(tmp_path: Path, config, needle) -> None:
    """Read from config.json before loading (it was refused only after both models loaded)."""
    import json

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(config), encoding="utf-8")
    prompts = write_jsonl(tmp_path / "p.jsonl", n=4)
    code, _, stderr = run_cli(["circuits", "--base", str(base), "--finetuned", "f",
                               "--prompts", str(prompts), "--out", str(tmp_path / "o")])
    assert_one_line_error(code, stderr, needle, "sequential")


def test_sequential_neox_is_not_refused_from_the_config(tmp_path: Path) -> None:
    from mechdiff.circuits.graph import parallel_in_config

    (tmp_path / "config.json").write_text('{"model_type": "gpt_neox", '
                                          '"use_parallel_residual": false}', encoding="utf-8")
    assert parallel_in_config(tmp_path) is None
    (tmp_path / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    assert parallel_in_config(tmp_path) is None
