"""Fixtures for the tests of results and output folders: a small disk, a read-only folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # toy_results, driver


def _mount(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                       capture_output=True, check=False)
    return r.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (a real full disk); skipped where this process cannot mount one."""
    where = tmp_path / "disk"
    if not _mount(where, "size=256k"):
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN); the simulated "
                    "ENOSPC tests cover the same code path")
    yield where
    _umount(where)


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder this process cannot write in: chmod 555 as a user, a read-only tmpfs as root."""
    where = tmp_path / "readonly"
    if os.geteuid() != 0:
        where.mkdir()
        where.chmod(0o555)
        yield where
        where.chmod(0o755)
        return
    if not _mount(where, "ro,size=64k"):
        pytest.skip("running as root without permission to mount: root writes anywhere")
    yield where
    _umount(where)
