"""A results folder as mechdiff commands write it, from tiny checkpoints with planted changes
(seconds): two pairs (exact and attribution, heads and MLPs, both directions), a per-position
residual analysis, saved views of each, and ``summary.json``."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import random_prompts

from mechdiff import Task, load_pair
from mechdiff.pipeline import analyse_pair
from mechdiff.report.summary import write_summary
from mechdiff.views import pair_views

N_PROMPTS = 6
PAIRS = {"head_last": "L2H2", "mlp_last": "MLP2"}


def task(n: int = N_PROMPTS) -> Task:
    return Task(random_prompts(n, seed=7), answers=["t1"] * n, wrong_answers=["t2"] * n,
                name="toy")


@pytest.fixture(scope="session")
def results_dir(ckpts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("results") / "run"
    analyses = []
    for name in PAIRS:
        pair = load_pair(ckpts["base"], ckpts[name])
        a = analyse_pair(pair, task(), label=name, methods=("exact", "attribution"),
                         progress=False, mechanism=f"planted {PAIRS[name]}")
        a.save(out / name)
        pair_views(pair, task(), label=name, heads=a, k=3).save(out / "views" / name)
        analyses.append(a)
    pair = load_pair(ckpts["base"], ckpts["head_last"])
    positions = analyse_pair(pair, task(3), label="resid_each", sites=("resid",),
                             directions=("ft->base",), positions="each", progress=False)
    positions.save(out / "resid_each")
    pair_views(pair, task(3), label="resid_each", prompts=[0, 2]).save(out / "views" / "resid")
    write_summary(out, analyses, top=5, meta={"title": "tiny run", "intro": "Planted changes."})
    return out
