"""Output folders as transactions, in process: commit, roll back, refuse, replace, lock."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from toy_results import scores, snapshot, temporaries

from mechdiff.errors import OptionError, ZeroGapError
from mechdiff.results import (
    MANIFEST,
    OutputConflictError,
    OutputError,
    OutputFolder,
    OutputLockedError,
    RunSpec,
)
from mechdiff.results import folder as folder_module


def spec(model: str = "ft-a", sites: tuple[str, ...] = ("heads",), command: str = "patch") -> RunSpec:
    return RunSpec(command=command, inputs={"base": "base-dir", "finetuned": model,
                                            "prompts": "sha:1234"},
                   options={"sites": sites, "positions": "all"})


def write_run(out: Path, run: RunSpec, kinds: tuple[str, ...] = ("heads",), *,
              replace: bool = False) -> OutputFolder:
    """What a command does: results per site kind, a figure, a summary."""
    f = OutputFolder(out, run=run, replace=replace)
    with f as work:
        for i, kind in enumerate(kinds):
            scores(i).save(work / f"{kind}_ft_to_base")
            (work / "figures").mkdir(exist_ok=True)
            (work / "figures" / f"{kind}.pdf").write_bytes(b"%PDF " + kind.encode())
        (work / "summary.json").write_text(json.dumps({"kinds": list(kinds)}))
    return f


def test_a_run_appears_whole_with_its_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = spec()
    f = write_run(out, run)
    assert f.committed and f.replaced is None
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert names == sorted([MANIFEST, "figures/heads.pdf", "heads_ft_to_base/result.json",
                            "heads_ft_to_base/tensors.safetensors", "summary.json"])
    m = json.loads((out / MANIFEST).read_text())
    assert m["status"] == "complete" and m["fingerprint"] == run.fingerprint()
    assert m["command"] == "patch" and m["options"]["sites"] == ["heads"]
    for rel, info in m["files"].items():  # the listing is the files, byte for byte
        data = (out / rel).read_bytes()
        assert info == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert set(m["files"]) == set(names) - {MANIFEST}
    assert temporaries(tmp_path) == []
    assert f.final_path(f.work / "summary.json") == out / "summary.json"


def test_a_failed_run_leaves_the_old_output_byte_identical(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_run(out, spec())
    before = snapshot(out)
    with pytest.raises(RuntimeError, match="boom"), OutputFolder(out, run=spec()) as work:
        scores(7).save(work / "heads_ft_to_base")
        (work / "summary.json").write_text("{}")
        raise RuntimeError("boom")
    assert snapshot(out) == before
    assert temporaries(tmp_path) == []


def test_a_refusal_mid_run_writes_nothing(tmp_path: Path) -> None:
    """A zero-gap refusal after the gap was saved: nothing of the run is visible."""
    out = tmp_path / "new"
    with pytest.raises(ZeroGapError), OutputFolder(out, run=spec()) as work:
        scores().save(work / "gap")
        raise ZeroGapError("no gap")
    assert not out.exists() and temporaries(tmp_path) == []


def test_the_same_run_repeated_replaces_its_own_output(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_run(out, spec(), kinds=("heads", "mlp"))
    f = write_run(out, spec(), kinds=("heads",))  # same spec, fewer files: no mlp_* remains
    assert f.replaced is not None and f.replaced["fingerprint"] == spec().fingerprint()
    assert not (out / "mlp_ft_to_base").exists() and not (out / "figures" / "mlp.pdf").exists()


def test_another_run_is_refused_naming_the_difference_and_the_flag(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_run(out, spec("ft-a"))
    before = snapshot(out)
    with pytest.raises(OutputConflictError) as info:
        write_run(out, spec("ft-b"))
    msg = str(info.value)
    assert "holds the output of another run" in msg and "--replace" in msg
    assert 'finetuned: "ft-a" there, "ft-b" now' in msg and "\n" not in msg
    with pytest.raises(OutputConflictError, match="command 'patch' there, 'demo' now"):
        write_run(out, RunSpec(command="demo"))
    # long values (hashes, paths) are shortened in the middle, quotes balanced
    new_hash = "cd" * 32
    with pytest.raises(OutputConflictError) as info:
        write_run(out, RunSpec(command="patch", inputs={
            "base": "base-dir", "finetuned": "ft-a", "prompts": new_hash},
            options={"sites": ("heads",), "positions": "all"}))
    assert f'prompts: "sha:1234" there, "{new_hash[:20]}\u2026{new_hash[-20:]}" now' in str(
        info.value)
    assert snapshot(out) == before and temporaries(tmp_path) == []

def test_replace_replaces_whole_never_mixed(tmp_path: Path) -> None:
    """The issue's case: other models into the same folder left old heads_* beside new resid_*."""
    out = tmp_path / "out"
    write_run(out, spec("ft-a", ("heads",)), kinds=("heads",))
    f = write_run(out, spec("ft-b", ("resid",)), kinds=("resid",), replace=True)
    assert f.replaced is not None and f.replaced["inputs"]["finetuned"] == "ft-a"
    tops = sorted(p.name for p in out.iterdir())
    assert tops == sorted([MANIFEST, "figures", "resid_ft_to_base", "summary.json"])
    assert [p.name for p in (out / "figures").iterdir()] == ["resid.pdf"]


def test_a_folder_mechdiff_did_not_write_is_refused_even_with_replace(tmp_path: Path) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    before = snapshot(out)
    for replace in (False, True):
        with pytest.raises(OutputConflictError) as info:
            write_run(out, spec(), replace=replace)
        msg = str(info.value)
        assert "was not written by mechdiff" in msg and "even with --replace" in msg
        assert "chapter1.tex" in msg
    assert snapshot(out) == before and temporaries(tmp_path) == []


def test_an_empty_folder_is_used(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    write_run(out, spec())
    assert (out / MANIFEST).is_file()


def test_an_unreadable_manifest_needs_replace(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_run(out, spec())
    (out / MANIFEST).write_text("{ not json")
    before = snapshot(out)
    with pytest.raises(OutputConflictError, match="unreadable.*--replace"):
        write_run(out, spec())
    assert snapshot(out) == before
    write_run(out, spec(), replace=True)
    assert json.loads((out / MANIFEST).read_text())["status"] == "complete"


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(OutputError, match="exists and is a file.*--out"):
        write_run(out, spec())
    assert out.read_text() == "a file" and temporaries(tmp_path) == []


def test_an_unwritable_parent_is_an_output_error(readonly_dir: Path) -> None:
    with pytest.raises(OutputError, match=f"cannot write the output folder {readonly_dir}/out"):
        write_run(readonly_dir / "out", spec())
    assert list(readonly_dir.iterdir()) == []


def test_the_working_directory_is_not_an_output_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OptionError, match="working directory"):
        OutputFolder(".", run=spec())
    with pytest.raises(OptionError, match="working directory"):
        OutputFolder(tmp_path.parent, run=spec())


def test_a_second_run_in_this_process_is_locked_out_at_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputFolder(out, run=spec()) as work:
        with pytest.raises(OutputLockedError) as info:
            write_run(out, spec())
        assert f"pid {os.getpid()}" in str(info.value) and str(out) in str(info.value)
        assert info.value.holder["command"] == "patch"
        (work / "x").write_text("first run")
    assert (out / "x").read_text() == "first run"


def test_run_specs_validate_their_options() -> None:
    with pytest.raises(OptionError, match="non-empty str"):
        RunSpec(command=" ")
    with pytest.raises(OptionError, match=r"inputs\['model'\] must be a str"):
        RunSpec(command="x", inputs={"model": 3})
    with pytest.raises(OptionError, match="holds a object"):
        RunSpec(command="x", options={"thing": object()})
    assert RunSpec("x", options={"a": (1, 2)}).options == {"a": [1, 2]}
    assert RunSpec("x", inputs={"m": Path("rel")}).inputs["m"] == os.path.abspath("rel")
    assert spec().fingerprint() == spec().fingerprint() != spec("ft-b").fingerprint()


def test_output_folder_validates_its_options(tmp_path: Path) -> None:
    from support import unchecked

    with pytest.raises(OptionError, match="run must be a RunSpec"):
        unchecked(OutputFolder.__init__)(object.__new__(OutputFolder), tmp_path, run={"c": 1})
    with pytest.raises(OptionError, match="replace must be True or False"):
        unchecked(OutputFolder.__init__)(object.__new__(OutputFolder), tmp_path / "o",
                                         run=spec(), replace="yes")


def test_an_interrupt_during_the_commit_lands_after_it(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C while the output is being renamed into place: the commit finishes, then it stops."""
    out = tmp_path / "out"
    write_run(out, spec())
    real = folder_module.install_dir

    def interrupted(staged: Path, target: Path) -> None:
        os.kill(os.getpid(), 2)  # SIGINT, delivered while held back
        real(staged, target)

    monkeypatch.setattr(folder_module, "install_dir", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_run(out, spec(), kinds=("mlp",))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST, "figures", "mlp_ft_to_base", "summary.json"])
    assert temporaries(tmp_path) == []
