"""Faults injected into real writes: signals to a running process (SIGINT, SIGTERM, SIGKILL), two
runs at once, a full disk (a real tmpfs where it can be mounted, else a simulated ENOSPC), a
save interrupted between its two files, and the rename dance used where RENAME_EXCHANGE is not.

Each asserts the exit status or error type, the message's key words, and that what the output
held before is byte-identical after (every file hashed). A subprocess says when it is mid-write
on its stdout and waits on its stdin, so no test sleeps."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import driver
import pytest
import torch
from support import unchecked
from toy_results import Scores, same_scores, scores, snapshot, temporaries

from mechdiff.errors import ResultError
from mechdiff.results import (
    MANIFEST,
    DiskFullError,
    OutputError,
    OutputFolder,
    OutputLockedError,
    RunSpec,
    atomic,
    atomic_file,
    atomic_write_text,
    load_result,
    store,
)

DRIVER = Path(__file__).with_name("driver.py")


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(DRIVER), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen[str], line: str) -> None:
    got = proc.stdout.readline().strip()
    if got != line:
        proc.kill()
        raise AssertionError(f"driver said {got!r}, not {line!r}: {proc.stderr.read()}")


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate("go\n", timeout=120)
    return proc.returncode, err


def earlier_output(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An output folder holding a complete run of the driver (model ft-a)."""
    out = tmp_path / "out"
    driver.run(str(out), "ft-a", replace=False, pause=lambda: None)  # in process: the same code
    return out, snapshot(out)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("sig, code, words", [
    (signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated"),
])
def test_a_signal_mid_run_leaves_the_output_byte_identical(tmp_path: Path, sig: int, code: int,
                                                          words: str) -> None:
    out, before = earlier_output(tmp_path)
    proc = start("run", str(out), "ft-a")  # the same run: it would replace the output
    wait_for(proc, "MID-WRITE")
    proc.send_signal(sig)
    rc, err = finish(proc)
    assert (rc, err.strip()) == (code, f"mechdiff: {words}")
    assert snapshot(out) == before
    assert temporaries(tmp_path) == []


def test_a_killed_run_leaves_the_output_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    out, before = earlier_output(tmp_path)
    proc = start("run", str(out), "ft-a")
    wait_for(proc, "MID-WRITE")
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait(timeout=60)
    assert snapshot(out) == before
    left = temporaries(tmp_path)
    assert len(left) == 1 and ".mechdiff-work-" in left[0]
    driver.run(str(out), "ft-b", replace=True, pause=lambda: None)
    assert temporaries(tmp_path) == []
    assert (out / "summary.md").read_text() == "# toy run of ft-b\n"


def test_a_second_run_into_the_same_folder_is_refused_at_once(tmp_path: Path) -> None:
    out, before = earlier_output(tmp_path)
    first = start("run", str(out), "ft-a")
    wait_for(first, "MID-WRITE")
    second = start("run", str(out), "ft-a")
    rc, err = finish(second)  # returns while the first still waits for its "go"
    assert first.poll() is None
    assert rc == 1 and err.count("\n") == 1
    assert f"another mechdiff run (pid {first.pid}, command 'toy'" in err and str(out) in err
    with pytest.raises(OutputLockedError, match=f"pid {first.pid}"):
        OutputFolder(out, run=RunSpec("toy")).__enter__()
    assert snapshot(out) == before
    assert finish(first)[0] == 0


def test_a_save_killed_between_its_two_files_leaves_the_earlier_result(tmp_path: Path) -> None:
    target = scores(1).save(tmp_path / "r")
    before = snapshot(target)
    proc = start("save-kill", str(target))
    wait_for(proc, "BETWEEN")  # tensors.safetensors written, result.json not yet
    proc.kill()
    proc.wait(timeout=60)
    assert snapshot(target) == before and same_scores(Scores.load(target), scores(1))
    assert len(temporaries(tmp_path)) == 1
    scores(2).save(target)  # the next save removes the dead writer's temporary
    assert temporaries(tmp_path) == [] and same_scores(Scores.load(target), scores(2))


def test_a_save_interrupted_between_its_two_files(tmp_path: Path, monkeypatch) -> None:
    target = scores(1).save(tmp_path / "r")
    before = snapshot(target)
    real = store.write_durable

    def interrupted(path: Path, data: bytes) -> None:
        if path.name == store.RESULT_JSON:
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(store, "write_durable", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scores(2).save(target)
    with pytest.raises(KeyboardInterrupt):
        scores(2).save(tmp_path / "new")
    assert snapshot(target) == before and temporaries(tmp_path) == []
    assert not (tmp_path / "new").exists()


def test_files_of_two_saves_mixed_by_hand_do_not_load(tmp_path: Path) -> None:
    """What a non-atomic save cut between its files produced: one save's tensors, another's JSON."""
    a, b = scores(1).save(tmp_path / "a"), scores(2).save(tmp_path / "b")
    (a / "result.json").write_bytes((b / "result.json").read_bytes())
    with pytest.raises(ResultError, match=r"tensors\.safetensors does not match the hash"):
        load_result(a)


def test_a_simulated_full_disk_during_a_save(tmp_path: Path, monkeypatch) -> None:
    target = scores(1).save(tmp_path / "r")
    before = snapshot(target)

    def full(path: Path, data: bytes) -> None:
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(store, "write_durable", full)
    with pytest.raises(DiskFullError) as info:
        scores(2).save(target)
    msg = str(info.value)
    assert f"no space left on the device while writing {target}" in msg and "\n" not in msg
    assert info.value.path == target
    assert snapshot(target) == before and temporaries(tmp_path) == []


def test_a_real_full_disk_during_a_save(small_disk: Path) -> None:
    target = scores(1).save(small_disk / "r")
    before = snapshot(target)
    big = Scores(scores=torch.zeros(4), per_prompt=torch.zeros(4, 100_000), labels=("a",) * 4,
                 meta={}, note=None, provenance=scores().provenance)
    with pytest.raises(DiskFullError, match=f"no space left on the device while writing {target}"):
        big.save(target)
    assert snapshot(target) == before and temporaries(small_disk) == []
    with pytest.raises(DiskFullError, match="nothing was written"):
        big.save(small_disk / "new")
    assert sorted(p.name for p in small_disk.iterdir()) == ["r"]


def test_a_simulated_full_disk_during_a_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputFolder(out, run=RunSpec("toy")) as work:
        scores().save(work / "gap")
    before = snapshot(out)
    with pytest.raises(DiskFullError) as info, OutputFolder(out, run=RunSpec("toy")) as work:
        (work / "figures").mkdir()
        raise OSError(errno.ENOSPC, "No space left on device", str(work / "figures" / "gap.pdf"))
    msg = str(info.value)
    assert f"while writing {out}/figures/gap.pdf" in msg and "left as it was" in msg
    assert "\n" not in msg
    assert snapshot(out) == before and temporaries(tmp_path) == []


def test_a_real_full_disk_during_a_run(small_disk: Path) -> None:
    out = small_disk / "out"
    with OutputFolder(out, run=RunSpec("toy")) as work:
        scores().save(work / "gap")
    before = snapshot(out)
    # the OSError of a write() does not say which file: the message names the output folder
    with pytest.raises(DiskFullError, match=f"while writing {out}: the run was discarded"), \
            OutputFolder(out, run=RunSpec("toy")) as work:
        (work / "figures").mkdir()
        (work / "figures" / "big.pdf").write_bytes(b"x" * 1_000_000)
    assert snapshot(out) == before and temporaries(small_disk) == []


def test_the_rename_dance_replaces_and_can_be_undone(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(atomic, "USE_EXCHANGE", False)
    target = scores(1).save(tmp_path / "r")
    scores(2).save(target)  # replaced by the dance
    assert same_scores(Scores.load(target), scores(2)) and temporaries(tmp_path) == []
    before = snapshot(target)
    # a writer killed inside the dance: the old folder moved aside, the new one not yet in place
    pid = dead_pid()
    aside = tmp_path / f".r.mechdiff-old-{pid}-0123abcd"
    staged = tmp_path / f".r.mechdiff-tmp-{pid}-4567abcd"
    os.rename(target, aside)
    scores(3).save(tmp_path / "elsewhere")
    os.rename(tmp_path / "elsewhere", staged)
    with pytest.raises(ResultError, match="interrupted save moved the earlier result aside"):
        Scores.load(target)
    atomic.recover(target)
    assert snapshot(target) == before and temporaries(tmp_path) == []


def test_rename_exchange_is_used_where_available(tmp_path: Path, monkeypatch) -> None:
    if atomic._renameat2() is None:
        pytest.skip("this libc has no renameat2: the rename dance is used (tested above)")
    calls = []
    real = atomic._exchange
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: calls.append(b) or real(a, b))
    target = scores(1).save(tmp_path / "r")
    scores(2).save(target)
    assert calls == [target] and same_scores(Scores.load(target), scores(2))


def test_a_temporary_of_a_live_writer_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "r"
    mine = tmp_path / f".r.mechdiff-tmp-{os.getpid()}-89abcdef"
    mine.mkdir()
    scores().save(target)
    assert mine.exists()


def test_atomic_text_and_file_writes(tmp_path: Path) -> None:
    path = tmp_path / "figs" / "summary.md"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".md"
        tmp.write_text("half")
        raise RuntimeError
    assert path.read_text() == "two" and temporaries(path.parent) == []
    with pytest.raises(DiskFullError, match=f"while writing {path}: summary.md was left"), \
            atomic_file(path) as tmp:
        tmp.write_text("x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_text() == "two" and temporaries(path.parent) == []


def test_a_writers_own_error_after_a_full_disk_or_a_size_limit_is_said_in_one_line(
        tmp_path: Path) -> None:
    """matplotlib's PDF writer, hitting ENOSPC, raises a zlib error while cleaning up (the
    OSError only its __context__): a 60-line traceback reached the user. And EFBIG (a FAT32
    drive, ulimit -f) printed '[Errno 27] File too large' with no file named. Both are now one
    line naming the destination under the output folder, which is left as it was."""
    out = tmp_path / "out"
    with OutputFolder(out, run=RunSpec("toy")) as work:
        scores().save(work / "gap")
    before = snapshot(out)
    with pytest.raises(DiskFullError) as info, OutputFolder(out, run=RunSpec("toy")) as work, \
            atomic_file(work / "figures" / "gap.pdf") as tmp:
        tmp.write_bytes(b"%PDF")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("Error -2 while flushing: inconsistent stream state")  # noqa: B904
    assert f"while writing {out}/figures/gap.pdf" in str(info.value)
    assert snapshot(out) == before
    with pytest.raises(OutputError) as info, OutputFolder(out, run=RunSpec("toy")) as work, \
            atomic_file(work / "figures" / "gap.png") as tmp:
        tmp.write_bytes(b"PNG")
        raise OSError(errno.EFBIG, "File too large")
    msg = str(info.value)
    assert msg.startswith(f"the file is larger than allowed while writing {out}/figures/gap.png")
    assert "the run was discarded" in msg
    assert "ulimit -f" in msg and "mechdiff-work" not in msg and "\n" not in msg
    assert snapshot(out) == before and temporaries(tmp_path) == []


def test_atomic_file_refusals(tmp_path: Path) -> None:
    from mechdiff.errors import OptionError
    from mechdiff.results import OutputError

    with pytest.raises(OutputError, match="nothing was written"), atomic_file(tmp_path / "a"):
        pass
    with pytest.raises(OutputError, match="is a folder, not a file"), atomic_file(tmp_path):
        pass
    with pytest.raises(OptionError, match="text must be a str"):
        unchecked(atomic_write_text)(tmp_path / "b", b"bytes")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_output_folder_with_a_killed_runs_leftovers_and_manifest_is_clean(tmp_path) -> None:
    """Leftovers of any writer of ``out`` are removed once a run holds the lock."""
    out = tmp_path / "out"
    with OutputFolder(out, run=RunSpec("toy")) as work:
        (work / "a").write_text("a")
    stale = tmp_path / f".out.mechdiff-work-{os.getpid()}-00000000"  # even a live pid: locked
    stale.mkdir()
    (stale / MANIFEST).write_text('{"status": "running"}')
    with OutputFolder(out, run=RunSpec("toy")) as work:
        (work / "b").write_text("b")
    assert temporaries(tmp_path) == [] and sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "b"])
