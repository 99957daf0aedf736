"""Saved results: round trips (nested, comparisons, provenance), the registry, and every way a
saved result can be wrong on disk, each refused as a ResultError naming the file."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from support import run_python, unchecked
from toy_results import (
    Comparison,
    Pair,
    Scores,
    edit,
    pair,
    provenance,
    rehash,
    same_scores,
    scores,
)

import mechdiff
from mechdiff.errors import OptionError, ResultError
from mechdiff.results import (
    OutputError,
    Provenance,
    ResultWarning,
    SavableResult,
    load_result,
)
from mechdiff.results.registry import registered
from mechdiff.results.store import save_result


def test_round_trip_keeps_every_value_and_type(tmp_path: Path) -> None:
    r = scores(3)
    back = Scores.load(r.save(tmp_path / "r"))
    assert same_scores(r, back)
    assert isinstance(back.labels, tuple) and isinstance(back.meta["gap"], float)
    assert back.load_notes == ()


def test_provenance_loads_equal_to_the_saved_one(tmp_path: Path) -> None:
    r = scores(0)
    back = Scores.load(r.save(tmp_path / "r")).provenance
    assert back == r.provenance  # tuples stay tuples, dicts stay dicts
    assert back.processing_skipped == ("center_unembed", "fold_ln")
    assert back.versions == {"mechdiff": "0.1.0", "torch": "2.13.0"}


def test_save_returns_the_absolute_folder_and_files_on_disk(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = scores().save("rel/r")
    assert out == tmp_path / "rel" / "r"
    assert sorted(p.name for p in out.iterdir()) == ["result.json", "tensors.safetensors"]


def test_nested_results_save_and_load_as_one(tmp_path: Path) -> None:
    p = pair(0)
    back = load_result(p.save(tmp_path / "pair"))
    assert isinstance(back, Pair) and back.label == "pair0"
    assert same_scores(back.gap, p.gap)
    assert list(back.patches) == ["ft->base", "base_to_ft"]
    assert all(same_scores(back.patches[k], p.patches[k]) for k in p.patches)
    assert isinstance(back.runs, tuple) and all(map(same_scores, back.runs, p.runs))
    # keys that are not plain names get an index folder; their key lives in result.json
    assert (tmp_path / "pair" / "patches" / "base_to_ft" / "result.json").is_file()
    assert (tmp_path / "pair" / "patches" / "_0" / "result.json").is_file()


def test_a_comparison_of_two_results_is_savable(tmp_path: Path) -> None:
    c = Comparison(a=scores(1), b=scores(2), rho=0.5)
    back = Comparison.load(c.save(tmp_path / "cmp"))
    assert same_scores(back.a, c.a) and same_scores(back.b, c.b) and back.rho == 0.5


def test_load_result_loads_by_recorded_type_and_load_refuses_another(tmp_path: Path) -> None:
    path = scores().save(tmp_path / "r")
    assert isinstance(load_result(path), Scores)
    assert isinstance(SavableResult.load(path), Scores)
    with pytest.raises(ResultError, match=r"holds a tests\.Scores, not a Pair"):
        Pair.load(path)
    with pytest.raises(ResultError, match="not a PatchResult"):
        mechdiff.PatchResult.load(path)


def test_unknown_type_name_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    path = scores().save(tmp_path / "r")
    meta = json.loads((path / "result.json").read_text())
    meta["type"] = "FutureResult"
    (path / "result.json").write_text(json.dumps(meta))
    with pytest.raises(ResultError, match=r"type 'FutureResult', which this mechdiff does not "
                                          r"know \(known: .*tests\.Scores"):
        load_result(path, check_hash=False)


def test_load_result_loads_every_mechdiff_type_after_a_bare_import(tmp_path: Path) -> None:
    """``import mechdiff`` does not import the circuit modules; loading a circuit result in a
    fresh process must still work (the registry imports mechdiff's result modules on demand)."""
    from mechdiff.circuits.verdict import Verdict

    path = Verdict(label="mixed", reasons=("r",), numbers={"carried": 0.5}, intervals={},
                   thresholds={}, frequency={"mixed": 1.0}, notes=(), n_boot=1,
                   seed=0).save(tmp_path / "verdict")
    code = ("import sys, mechdiff; assert 'mechdiff.circuits' not in sys.modules; "
            f"print(type(mechdiff.load_result({str(path)!r})).__name__)")
    assert run_python(code).stdout.strip() == "Verdict"


def test_every_result_type_is_in_a_builtin_module() -> None:
    """Every result type mechdiff defines lives under one of the modules the registry imports
    on demand (a new analysis family must be added to ``BUILTIN_MODULES``)."""
    import importlib
    import pkgutil

    from mechdiff.results.registry import BUILTIN_MODULES

    for info in pkgutil.walk_packages(mechdiff.__path__, "mechdiff."):
        importlib.import_module(info.name)
    ours = [c for c in registered().values() if c.__module__.startswith("mechdiff.")
            and not c.__module__.startswith("mechdiff.results")]
    assert len(ours) >= 15  # 16 when this test was written
    for cls in ours:
        assert any(cls.__module__ == m or cls.__module__.startswith(m + ".")
                   for m in BUILTIN_MODULES), cls


def test_a_name_is_taken_by_one_class_only() -> None:
    with pytest.raises(TypeError, match="already used by toy_results.Scores"):
        @dataclass(frozen=True)
        class Scores2(SavableResult, name="tests.Scores"):
            x: int


def test_patch_result_made_by_hand_round_trips_by_type(tmp_path: Path) -> None:
    r = mechdiff.PatchResult(
        scores=torch.rand(3, 4), patched=torch.rand(3, 4, 5), receiver=torch.rand(5),
        donor=torch.rand(5), sites="heads", dims=("layer", "head"), direction="ft->base",
        positions="all", provenance=provenance(n_prompts=5), method="attribution",
    )
    back = load_result(r.save(tmp_path / "p"))
    assert isinstance(back, mechdiff.PatchResult)
    assert torch.equal(back.patched, r.patched) and back.dims == ("layer", "head")
    assert back.provenance == r.provenance and back.method == "attribution"


def test_patch_tensors_that_no_longer_fit_each_other_are_refused(tmp_path: Path) -> None:
    """The issue's case: a tensors file swapped for one of other prompts loaded as valid."""
    r = mechdiff.PatchResult(
        scores=torch.rand(3, 4), patched=torch.rand(3, 4, 5), receiver=torch.rand(5),
        donor=torch.rand(5), sites="heads", dims=("layer", "head"), direction="ft->base",
        positions="all", provenance=provenance(n_prompts=5),
    )
    path = r.save(tmp_path / "p")
    edit(path, tensors={"scores": r.scores, "patched": r.patched, "receiver": torch.rand(7),
                        "donor": torch.rand(7)})
    with pytest.raises(ResultError, match=str(path)):
        mechdiff.PatchResult.load(path)


# --- damaged and tampered files ------------------------------------------------------------


def test_truncated_tensors_file(tmp_path: Path) -> None:
    path = scores().save(tmp_path / "r")
    f = path / "tensors.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ResultError, match=r"tensors\.safetensors does not match the hash.*"
                                          r"truncated"):
        Scores.load(path)
    with pytest.raises(ResultError, match=r"tensors\.safetensors cannot be read as safetensors"):
        Scores.load(path, check_hash=False)


def test_tampered_tensor_byte_is_caught_by_the_hash(tmp_path: Path) -> None:
    r = scores()
    path = r.save(tmp_path / "r")
    f = path / "tensors.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x40  # the last byte of the last tensor's data
    f.write_bytes(bytes(data))
    with pytest.raises(ResultError, match=r"tensors\.safetensors does not match"):
        Scores.load(path)
    unchecked_back = Scores.load(path, check_hash=False)  # the change is real: only the hash sees it
    assert not (torch.equal(unchecked_back.scores, r.scores)
                and torch.equal(unchecked_back.per_prompt, r.per_prompt))


def test_tampered_json_value_is_caught_by_the_hash(tmp_path: Path) -> None:
    path = scores().save(tmp_path / "r")
    edit(path, fields={"note": "edited"}, hashed=False)
    with pytest.raises(ResultError, match=r"result\.json does not match its content hash"):
        Scores.load(path)


def test_reformatted_json_still_loads(tmp_path: Path) -> None:
    r = scores()
    path = r.save(tmp_path / "r")
    meta = json.loads((path / "result.json").read_text())
    (path / "result.json").write_text(json.dumps(meta, indent=7, sort_keys=True))
    assert same_scores(Scores.load(path), r)


@pytest.mark.parametrize("content, words", [
    (b'{"mechdiff_result": 1, "type": "tests.Sco', "is not valid JSON"),
    (b"\xff\xfe not utf-8", "is not valid JSON"),
    (b"[1, 2]", "must hold a JSON object"),
    (b'{"type": "tests.Scores"}', "not a mechdiff result file"),
    (b'{"mechdiff_result": 99, "type": "tests.Scores"}', "newer mechdiff.*upgrade"),
])
def test_broken_result_json(tmp_path: Path, content: bytes, words: str) -> None:
    path = scores().save(tmp_path / "r")
    (path / "result.json").write_bytes(content)
    with pytest.raises(ResultError, match=words) as info:
        Scores.load(path)
    assert "result.json" in str(info.value)


def test_missing_files_and_wrong_paths(tmp_path: Path) -> None:
    path = scores().save(tmp_path / "r")
    (path / "tensors.safetensors").unlink()
    with pytest.raises(ResultError, match=r"not a saved mechdiff result: tensors\.safetensors "
                                          "missing"):
        Scores.load(path)
    with pytest.raises(ResultError, match="does not exist"):
        Scores.load(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultError, match="is a file, not a saved result"):
        Scores.load(tmp_path / "file")


def test_missing_field_is_a_result_error_not_a_type_error(tmp_path: Path) -> None:
    path = scores().save(tmp_path / "r")
    edit(path, drop=("labels",))
    with pytest.raises(ResultError, match=r"result\.json: required field\(s\) 'labels' of "
                                          r"Scores missing"):
        Scores.load(path)


def test_missing_provenance_key_is_a_result_error(tmp_path: Path) -> None:
    path = scores().save(tmp_path / "r")
    meta = json.loads((path / "result.json").read_text())
    prov = meta["fields"]["provenance"]
    del prov["task"]
    edit(path, fields={"provenance": prov})
    with pytest.raises(ResultError, match=r"field 'provenance' lacks required keys \['task'\]"):
        Scores.load(path)


def test_unknown_fields_are_tolerated_with_a_warning_and_recorded(tmp_path: Path) -> None:
    r = scores()
    path = r.save(tmp_path / "r")
    prov = json.loads((path / "result.json").read_text())["fields"]["provenance"]
    edit(path, fields={"calibration": 1.5, "provenance": prov | {"gpu": "H100"}})
    with pytest.warns(ResultWarning) as caught:
        back = Scores.load(path)
    said = " | ".join(str(w.message) for w in caught)
    assert "'calibration'" in said and "'gpu'" in said and "newer mechdiff" in said
    assert str(path / "result.json") in said
    assert len(back.load_notes) == 2 and same_scores(back, r)


@pytest.mark.parametrize("field, value, words", [
    ("labels", 3, r"field 'labels' must be tuple\[str, \.\.\.\], but result\.json holds a number"),
    ("labels", ["a", 2, "c", "d"], r"field 'labels'\[1\] must be str"),
    ("meta", {"gap": "high"}, r"field 'meta'\['gap'\] must be float"),
    ("seed", 1.5, "field 'seed' must be int"),
    ("seed", True, "field 'seed' must be int"),
    ("note", ["x"], r"field 'note' must be str \| None"),
])
def test_json_values_of_the_wrong_type(tmp_path: Path, field: str, value: object,
                                       words: str) -> None:
    path = scores().save(tmp_path / "r")
    edit(path, fields={field: value})
    with pytest.raises(ResultError, match=words):
        Scores.load(path)


def test_tensor_of_the_wrong_dtype(tmp_path: Path) -> None:
    r = scores()
    path = r.save(tmp_path / "r")
    edit(path, tensors={"scores": r.scores.to(torch.int64), "per_prompt": r.per_prompt})
    with pytest.raises(ResultError, match="field 'scores' has dtype int64"):
        Scores.load(path)


def test_tensor_missing_from_the_file(tmp_path: Path) -> None:
    r = scores()
    path = r.save(tmp_path / "r")
    edit(path, tensors={"scores": r.scores})
    with pytest.raises(ResultError, match=r"required field\(s\) 'per_prompt'"):
        Scores.load(path)


def test_validate_hook_runs_when_made_and_when_loaded(tmp_path: Path) -> None:
    r = scores(n=4)
    with pytest.raises(ResultError, match="3 labels for 4 scores"):
        Scores(**{**r.__dict__, "labels": r.labels[:3]})
    path = r.save(tmp_path / "r")
    edit(path, fields={"labels": list(r.labels[:3])})
    with pytest.raises(ResultError, match=f"{path}: 3 labels for 4 scores"):
        Scores.load(path)


def test_tensor_shapes_must_agree_with_each_other(tmp_path: Path) -> None:
    r = scores(n=4, batch=3)
    with pytest.raises(ResultError, match="disagree on a shared dimension"):
        Scores(**{**r.__dict__, "per_prompt": torch.zeros(5, 3)})
    path = r.save(tmp_path / "r")
    edit(path, tensors={"scores": r.scores, "per_prompt": torch.zeros(4)})
    with pytest.raises(ResultError, match=r"'per_prompt' has shape \(4,\), which does not fit "
                                          "its annotation 'site batch'"):
        Scores.load(path)


def test_a_swapped_nested_result_is_caught(tmp_path: Path) -> None:
    path = pair(0).save(tmp_path / "pair")
    other = scores(50).save(tmp_path / "other")
    for name in ("result.json", "tensors.safetensors"):
        (path / "gap" / name).write_bytes((other / name).read_bytes())
    with pytest.raises(ResultError, match="not the result that was saved with the result "
                                          "containing it"):
        Pair.load(path)


def test_a_nested_result_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    """Even with every hash made to match, a field annotated Scores does not load a Pair."""
    path = pair(0).save(tmp_path / "pair")
    shutil.rmtree(path / "gap")
    pair(9).save(path / "gap")
    meta = json.loads((path / "result.json").read_text())
    child = json.loads((path / "gap" / "result.json").read_text())["hash"]["content"]
    meta["results"]["gap"] |= {"type": "tests.Pair", "hash": child}
    (path / "result.json").write_text(json.dumps(meta))
    rehash(path)
    with pytest.raises(ResultError, match=r"pair/gap holds a tests\.Pair, not a Scores"):
        Pair.load(path)


def test_legacy_results_without_a_hash_load_only_unchecked(tmp_path: Path) -> None:
    r = scores()
    folder = tmp_path / "old"
    folder.mkdir()
    from safetensors.torch import save_file
    save_file({"scores": r.scores, "per_prompt": r.per_prompt},
              str(folder / "tensors.safetensors"))
    meta = {"__type__": "tests.Scores", "labels": list(r.labels), "meta": r.meta, "note": r.note,
            "provenance": json.loads(json.dumps(r.provenance.__dict__)), "seed": r.seed}
    (folder / "result.json").write_text(json.dumps(meta))
    with pytest.raises(ResultError, match="without a content hash.*check_hash=False"):
        Scores.load(folder)
    assert same_scores(Scores.load(folder, check_hash=False), r)


# --- saving: what it refuses ----------------------------------------------------------------


def test_save_refuses_a_file_and_a_folder_that_is_not_a_result(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("mine")
    with pytest.raises(OutputError, match="exists and is a file"):
        scores().save(tmp_path / "f")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"is not a saved result \(it holds notes\.txt\)"):
        scores().save(tmp_path / "d")
    assert (tmp_path / "f").read_text() == "mine" and (tmp_path / "d" / "notes.txt").exists()


def test_save_replaces_a_result_whole(tmp_path: Path) -> None:
    path = pair(0).save(tmp_path / "r")
    scores(5).save(path)  # a plain result replaces the composite: no nested folders remain
    assert sorted(p.name for p in path.iterdir()) == ["result.json", "tensors.safetensors"]
    assert same_scores(Scores.load(path), scores(5))
    assert [p.name for p in tmp_path.iterdir()] == ["r"]


def test_save_and_load_validate_their_options(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="must be a str or a pathlib.Path"):
        unchecked(save_result)(scores(), 3)
    with pytest.raises(OptionError, match="must not be empty"):
        scores().save("")
    with pytest.raises(OptionError, match="check_hash must be True or False"):
        unchecked(load_result)(tmp_path, check_hash="yes")
    with pytest.raises(ResultError, match="tensor inside a container"):
        _Bad(values=(torch.zeros(2),)).save(tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@dataclass(frozen=True)
class _Bad(SavableResult, name="tests._Bad"):
    values: tuple


def test_provenance_of_still_builds_from_a_task() -> None:
    task = mechdiff.Task(prompts=["t1 t2"], answers=["t3"], wrong_answers=["t4"], name="toy")
    p = Provenance.of(task, base="b", finetuned="f", processing="none")
    assert (p.task, p.n_prompts, p.prompts_hash) == ("toy", 1, task.fingerprint())


def test_loading_warns_nothing_on_a_clean_result(tmp_path: Path) -> None:
    path = pair(1).save(tmp_path / "p")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_result(path)
