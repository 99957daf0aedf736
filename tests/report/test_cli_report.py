"""``mechdiff report``, and the report ``mechdiff demo`` and ``mechdiff patch`` end with."""

from __future__ import annotations

import shutil
from pathlib import Path

from support import assert_one_line_error, run_cli, write_jsonl


def test_report_command_writes_the_page(results_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(results_dir, copy)
    code, out, err = run_cli(["report", str(copy)])
    assert code == 0, err
    page = copy / "report.html"
    assert f"report: {page}" in out and page.stat().st_size > 1_000_000
    assert "var CircuitsVis=" in page.read_text()
    code, out, err = run_cli(["report", str(copy), "-o", str(tmp_path / "elsewhere.html"),
                              "--top", "3"])
    assert code == 0, err
    assert (tmp_path / "elsewhere.html").is_file()


def test_report_command_errors_are_one_line(tmp_path: Path) -> None:
    code, _, err = run_cli(["report", str(tmp_path / "missing")])
    assert_one_line_error(code, err, "is not a folder")
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["report", str(tmp_path / "empty")])
    assert_one_line_error(code, err, "no saved mechdiff results")


def test_patch_ends_with_a_report(ckpts, tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", n=4)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["patch", "--base", str(ckpts["base"]), "--finetuned",
                                 str(ckpts["head_last"]), "--prompts", str(prompts), "--out",
                                 str(out), "--quiet"])
    assert code == 0, err
    assert f"report: {(out / 'report.html').resolve()}" in stdout
    page = (out / "report.html").read_text()
    assert '<div class="head-label">L2H2' in page  # the planted head's patterns, both models
    # written inside the run's temporary folder, the page names the folder it ends up in
    # (it named the temporary one, gone after the commit), and renders the intro's `code`
    assert f"Results folder <code>{out.resolve()}</code>" in page
    assert f"<code>mechdiff report {out.resolve()}</code>" in page
    assert "mechdiff-work" not in page and "Base `" not in page and "Base <code>" in page
