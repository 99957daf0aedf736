"""``python -m mechdiff.zoo``: on a built cache ``all`` only checks (both zoos intact, exit 0,
nothing rebuilt); bad model names are refused before any work. (The full parallel build is what
``make test`` runs on a fresh machine.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _zoo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mechdiff.zoo", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_all_on_a_built_cache_rebuilds_nothing(zoo, real_zoo) -> None:
    cache = real_zoo["base"].parent.parent.parent
    if zoo["base"].parent.parent.parent != cache:
        pytest.skip("the two zoos are not under one cache root (set MECHDIFF_CACHE, as make "
                    "test does)")
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("zoo_model.json")}
    done = _zoo("all", "--cache", str(cache))
    assert done.returncode == 0, done.stderr
    assert "zoo builds done" in done.stderr and "building" not in done.stderr
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("zoo_model.json")} == before


def test_unknown_models_are_refused(tmp_path: Path) -> None:
    bad = _zoo("real", "--cache", str(tmp_path), "--models", "nope", "--quiet")
    assert bad.returncode == 2 and "unknown real-zoo model 'nope'" in bad.stderr
    assert not any(tmp_path.iterdir())  # nothing written
    wrong = _zoo("synthetic", "--cache", str(tmp_path), "--models", "trigger")
    assert wrong.returncode == 2 and "--models" in wrong.stderr
