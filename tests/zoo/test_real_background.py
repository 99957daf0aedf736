"""Building the real zoo on two cores while it is used (:mod:`mechdiff.zoo.real.background`): who
builds what, waiting for the second process, building here what it did not, and stopping it (and
removing its temporary directory) when the caller fails. The builds are stand-ins that make empty
model directories; the second process is a real process running a stand-in script."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mechdiff._runtime import usable_cpus
from mechdiff.errors import OptionError
from mechdiff.zoo.real import background
from mechdiff.zoo.real.cache import real_dir

# The second process: each named model after a pause, written as the store writes one (a
# temporary directory named with its pid, renamed into place). argv: cache, pause, names...
SIDE = """import os, sys, time
from mechdiff.zoo.real.cache import real_dir
root = real_dir(sys.argv[1]); pause = float(sys.argv[2])
for name in sys.argv[3:]:
    tmp = root / f".tmp-{name}-{os.getpid()}-0000"
    tmp.mkdir(parents=True)
    time.sleep(pause)
    tmp.rename(root / name)
time.sleep(pause)  # after its last model: its check and index
"""


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, list]:
    """In-process builds recorded and made as empty directories; checks always pass."""
    built: dict[str, list] = {"here": [], "checked": []}

    def ensure(names, cache_dir, progress):  # noqa: ANN001, ANN202
        root = real_dir(cache_dir)
        for name in ["base", *names]:
            if not (root / name).exists():
                built["here"].append(name)
                (root / name).mkdir(parents=True)
        return {n: root / n for n in names}

    monkeypatch.setattr(background, "ensure", ensure)
    monkeypatch.setattr(background, "check", lambda path, name: built["checked"].append(name))
    monkeypatch.setattr(background, "usable_cpus", lambda: 2)
    monkeypatch.setattr(background, "POLL_S", 0.02)
    return built


DIES = """import os, sys
from mechdiff.zoo.real.cache import real_dir
root = real_dir(sys.argv[1])
(root / f".tmp-{sys.argv[3]}-{os.getpid()}-0000").mkdir(parents=True)
(root / f".real.json.{os.getpid()}-0000").write_text("{")
os._exit(9)
"""
"""A second process killed mid-build: a temporary model directory and index file left."""


def side(monkeypatch: pytest.MonkeyPatch, pause: float, *, fail: bool = False,
         script: str | None = None) -> None:
    script = script or ("import sys; sys.exit(3)" if fail else SIDE)
    orig = background.subprocess.Popen

    def popen(args, **kw):  # noqa: ANN001, ANN202  (pause inserted after the cache argument)
        return orig([*args[:2], script, args[3], str(pause), *args[4:]], **kw)

    monkeypatch.setattr(background.subprocess, "Popen", popen)


def test_the_first_fine_tune_is_built_here_and_the_rest_waited_for(
    stand_in: dict[str, list], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    side(monkeypatch, 0.4)
    cache = tmp_path / "cache"
    order = ["distilled", "trigger", "distilled_lora"]
    with background.building(cache, order=order, here=1, progress=False) as job:
        assert stand_in["here"] == ["base"]  # the base before anything else
        assert job.here == ("distilled",) and job.side == ("trigger", "distilled_lora")
        assert job.busy()
        assert job.get("distilled") == real_dir(cache) / "distilled"
        assert stand_in["here"] == ["base", "distilled"]
        start = time.perf_counter()
        trig = job.get("trigger")  # waits for the second process
        assert trig.is_dir() and time.perf_counter() - start > 0.1
        assert job.get("trigger") == trig and stand_in["checked"].count("trigger") == 1
        assert job.busy()  # distilled_lora is still being built
        job.get("distilled_lora")  # its last model: waited for until the process ended
        assert not job.busy()  # (so that the caller uses every core again)
    assert (real_dir(cache) / "distilled_lora").is_dir()
    assert stand_in["here"] == ["base", "distilled"]  # nothing built twice
    assert not list(real_dir(cache).glob(".tmp-*"))


def test_defaults_build_all_but_the_last_here_and_everything_with_one_core(
    stand_in: dict[str, list], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    side(monkeypatch, 0.0)
    with background.building(tmp_path / "a", progress=False) as job:
        assert job.here == ("distilled", "distilled_lora") and job.side == ("trigger",)
    monkeypatch.setattr(background, "usable_cpus", lambda: 1)
    with background.building(tmp_path / "b", progress=False) as job:
        assert job.side == () and not job.busy()
        for name in background.FINETUNED:
            job.get(name)
    assert stand_in["here"][-4:] == ["base", "distilled", "distilled_lora", "trigger"]
    # What is cached is neither built nor given to a second process; it was checked on entry.
    monkeypatch.setattr(background, "usable_cpus", lambda: 2)
    with background.building(tmp_path / "b", progress=False) as job:
        assert job.here == () and job.side == ()
        job.get("trigger")
    assert "trigger" not in stand_in["checked"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_a_process_limited_to_one_cpu_builds_everything_here(
    stand_in: dict[str, list], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One CPU by affinity (``taskset``, a container's cpuset) counts as one core, whatever
    ``os.cpu_count()`` says of the machine."""
    side(monkeypatch, 0.0)
    monkeypatch.setattr(background, "usable_cpus", usable_cpus)  # the stand-in fixture's: 2
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        with background.building(tmp_path / "one", progress=False) as job:
            assert job.side == ()
    finally:
        os.sched_setaffinity(0, before)


def test_what_the_second_process_did_not_build_is_built_here(
    stand_in: dict[str, list], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    side(monkeypatch, 0.0, fail=True)  # the second process exits 3 at once
    with background.building(tmp_path / "c", here=0, progress=False) as job:
        assert job.side == ("distilled", "distilled_lora", "trigger")
        assert job.get("distilled_lora").is_dir()
    assert stand_in["here"] == ["base", "distilled_lora"]
    # killed mid-build (OOM, SIGKILL): what it left half-written is removed, built here instead
    side(monkeypatch, 0.0, script=DIES)
    root = real_dir(tmp_path / "k")
    with background.building(tmp_path / "k", here=0, progress=False) as job:
        assert job.get("distilled").is_dir()
        assert not list(root.glob(".tmp-*")) and not list(root.glob(".real.json.*"))
    assert json.loads((root / "real.json").read_text())["real_version"]  # indexed once more


def test_an_error_in_the_block_stops_the_second_process_and_removes_its_temporary_directory(
    stand_in: dict[str, list], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    side(monkeypatch, 60.0)  # would take a minute per model
    cache = tmp_path / "d"
    with pytest.raises(KeyboardInterrupt), background.building(
            cache, order=["trigger", "distilled"], here=1, progress=False) as job:
        while not list(real_dir(cache).glob(".tmp-distilled-*")):
            time.sleep(0.02)
        proc = job._proc
        raise KeyboardInterrupt
    assert proc is not None and proc.poll() is not None  # terminated, not waited a minute for
    assert not list(real_dir(cache).glob(".tmp-*")) and not (real_dir(cache) / "distilled").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)


@pytest.mark.parametrize("kw", [{"order": ["distilled", "distilled"]}, {"order": ["base"]},
                                {"order": ["nope"]}, {"here": -1}])
def test_bad_options_are_typed_errors_before_any_work(
    stand_in: dict[str, list], tmp_path: Path, kw: dict
) -> None:
    with pytest.raises(OptionError), background.building(tmp_path / "e", progress=False, **kw):
        pass
    assert stand_in["here"] == [] and not (tmp_path / "e").exists()
    with background.building(tmp_path / "f", order=[], progress=False) as job, \
            pytest.raises(OptionError, match="unknown real-zoo model"):
        job.get("tokenizer")  # type: ignore[arg-type]
