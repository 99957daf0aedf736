"""``mechdiff patch`` end to end on tiny checkpoints with planted changes (the planted component must
come out on top, in the printed table and in the saved results), and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import (
    assert_one_line_error,
    check_figure,
    run_cli,
    run_python,
    table_rows,
    write_jsonl,
)
from transformer_lens.model_bridge import TransformerBridge

from mechdiff import PatchResult
from mechdiff.gap import GapResult
from mechdiff.pipeline import PairAnalysis


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any model is loaded (errors must come before loading)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", refuse)


@pytest.fixture(scope="module")
def patch_run(ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("cli-patch")
    prompts = write_jsonl(tmp / "planted.jsonl")
    out = tmp / "out"
    code, stdout, stderr = run_cli([
        "patch", "--base", str(ckpts["base"]), "--finetuned", str(ckpts["head_last"]),
        "--prompts", str(prompts), "--out", str(out), "--quiet",
    ])
    return code, stdout, stderr, out


def test_patch_ranks_the_planted_head_first(patch_run, ckpts: dict[str, Path]) -> None:
    code, stdout, stderr, out = patch_run
    assert code == 0, stderr
    rows = table_rows(stdout)
    assert rows[0][:2] == ["1", "L2H2"], stdout
    assert float(rows[0][2]) == pytest.approx(1.0, abs=1e-3)  # FT->base closes the whole gap
    assert float(rows[0][3]) == pytest.approx(1.0, abs=1e-3)  # and base->FT too
    # Only W_O of L2H2 changed: no other head moves the metric (MLP2 reads L2H2's output).
    others = [r for r in rows[1:] if r[1].startswith("L")]
    assert others and all(abs(float(v)) < 1e-3 for r in others for v in r[2:])
    analysis = PairAnalysis.load(out / "analysis")
    for direction in ("ft_to_base", "base_to_ft"):
        heads = PatchResult.load(out / "analysis" / "exact" / f"heads_{direction}")
        assert heads.top(1)[0].label == "L2H2"
        assert heads.dims == ("layer", "head") and heads.provenance.n_prompts == 8
        assert analysis.exact[f"mlp_{direction}"].dims == ("layer",)
    gap = GapResult.load(out / "analysis" / "gap")
    assert gap.provenance.finetuned == str(ckpts["head_last"])
    summary = json.loads((out / "summary.json").read_text())
    (pair,) = summary["pairs"].values()
    assert pair["ranking"][0]["component"] == "L2H2"
    top = pair["ranking"][0]["exact"]["ft->base"]
    assert top["low"] <= top["score"] <= top["high"]
    assert "| 1 | L2H2 |" in (out / "summary.md").read_text()


def test_patch_writes_pdf_and_png_figures(patch_run) -> None:
    *_, out = patch_run
    for name in ("gap", "heads", "mlp", "ranked"):
        for suffix in (".pdf", ".png"):
            check_figure(out / "figures" / f"{name}{suffix}")


def test_patch_options_one_direction_each_position(ckpts, tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", n=4)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli([
        "patch", "--base", str(ckpts["base"]), "--finetuned", str(ckpts["head_mid"]),
        "--prompts", str(prompts), "--sites", "heads", "--direction", "ft-to-base",
        "--positions", "each", "--metric", "logprob", "--top", "3", "--out", str(out), "--quiet",
    ])
    assert code == 0, stderr
    analysis = PairAnalysis.load(out / "analysis")
    assert set(analysis.exact) == {"heads_ft_to_base"} and not analysis.estimates
    result = analysis.exact["heads_ft_to_base"]
    assert result.dims == ("layer", "head", "pos") and result.provenance.metric == "logprob"
    rows = table_rows(stdout)
    assert len(rows) == 3 and rows[0][1].startswith("L1H1@")  # the planted head, at some position
    check_figure(out / "figures" / "heads_ft_to_base.png")


# ---------------------------------------------------------------- errors: one line, status 2


def test_missing_checkpoint_exits_2_naming_the_path(
    ckpts, tmp_path: Path, no_model_loading: None
) -> None:
    missing = tmp_path / "no_such_model"
    code, stdout, stderr = run_cli([
        "patch", "--base", str(ckpts["base"]), "--finetuned", str(missing),
        "--prompts", str(write_jsonl(tmp_path / "p.jsonl")), "--out", str(tmp_path / "out"),
    ])
    assert_one_line_error(code, stderr, str(missing), "does not exist")
    assert stdout == "" and not (tmp_path / "out").exists()


def test_empty_prompt_file_exits_2_with_the_prompt_error(
    ckpts, tmp_path: Path, no_model_loading: None
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    code, _, stderr = run_cli([
        "patch", "--base", str(ckpts["base"]), "--finetuned", str(ckpts["head_last"]),
        "--prompts", str(empty), "--out", str(tmp_path / "out"),
    ])
    assert_one_line_error(code, stderr, str(empty))


def test_multi_token_answer_exits_2(ckpts, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "t1 t2", "answer": "t3 t4", "wrong_answer": "t5"}) + "\n")
    code, _, stderr = run_cli([
        "patch", "--base", str(ckpts["base"]), "--finetuned", str(ckpts["head_last"]),
        "--prompts", str(bad), "--out", str(tmp_path / "out"), "--quiet",
    ])
    assert_one_line_error(code, stderr, "not one")
    assert not (tmp_path / "out").exists()


def test_identical_models_exit_2_with_zero_gap_and_write_nothing(ckpts, tmp_path: Path) -> None:
    out = tmp_path / "o"
    code, _, stderr = run_cli([
        "patch", "--base", str(ckpts["base"]), "--finetuned", str(ckpts["base"]),
        "--prompts", str(write_jsonl(tmp_path / "p.jsonl", n=3)), "--out", str(out), "--quiet",
    ])
    assert_one_line_error(code, stderr, "nothing to attribute")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "mechdiff-work" in p.name]


def test_usage_errors_exit_2(tmp_path: Path, no_model_loading: None) -> None:
    code, _, stderr = run_cli(["patch", "--base", "a", "--finetuned", "b", "--prompts",
                               "p.jsonl", "--sites", "neurons"])
    assert code == 2 and "invalid choice" in stderr
    code, _, stderr = run_cli(["patch", "--base", "a", "--finetuned", "b", "--prompts",
                               "p.jsonl", "--direction", "sideways"])
    assert code == 2 and "invalid direction" in stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, stderr = run_cli(["demo", "--out", str(a_file)])
    assert_one_line_error(code, stderr, str(a_file))
    assert a_file.read_text() == "x"
    assert run_cli([])[0] == 2
    assert run_cli(["--help"])[0] == 0


def test_help_and_bad_options_are_answered_before_the_heavy_imports() -> None:
    """The parser reads only light modules: ``--help`` and a bad option come back without
    importing torch, transformers or TransformerLens (seconds of start-up)."""
    code = ("import sys\n"
            "from mechdiff.cli import main\n"
            "assert main(['circuits', '--help']) == 0\n"
            "assert main(['circuits', '--method', 'acdc']) == 2\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'transformer_lens', 'matplotlib')]\n"
            "assert not heavy, heavy[:5]\n")
    out = run_python(code, timeout=120)
    assert "--method" in out.stdout and "invalid choice: 'acdc'" in out.stderr
    as_module = subprocess.run([sys.executable, "-m", "mechdiff", "--help"], capture_output=True,
                               text=True, timeout=120)  # python -m mechdiff is the command too
    assert as_module.returncode == 0 and "circuits" in as_module.stdout, as_module.stderr
