"""``analyse_pair``: the composite result of one pair (gap, both methods, agreements, series index)
saves and reloads as one, a zero gap is refused before any patching, and ``exact_top`` patches
exactly the candidates attribution ranks strongest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import random_prompts

import mechdiff
from mechdiff import Task
from mechdiff.errors import OptionError, ZeroGapError
from mechdiff.pipeline import PairAnalysis, analyse_pair
from mechdiff.pipeline import pair as pipeline_pair


def _task(n: int = 6) -> Task:
    return Task(random_prompts(n), answers=["t1"] * n, wrong_answers=["t2"] * n, name="t")


@pytest.fixture(scope="module")
def planted(ckpts):
    return mechdiff.load_pair(ckpts["base"], ckpts["head_last"], device="cpu")


def test_both_methods_save_and_reload_whole(planted, tmp_path: Path) -> None:
    a = analyse_pair(planted, _task(), label="planted", methods=("exact", "attribution"),
                     progress=False)
    assert set(a.exact) == set(a.estimates) == set(a.agreements) == {
        "heads_ft_to_base", "heads_base_to_ft", "mlp_ft_to_base", "mlp_base_to_ft"}
    assert a.ranking()[0].component == "L2H2" and a.interaction is not None
    assert a.changed_layers == (2,)
    back = PairAnalysis.load(a.save(tmp_path / "a"))
    for key in a.exact:
        assert torch.equal(back.exact[key].patched, a.exact[key].patched)
        assert torch.equal(back.estimates[key].scores, a.estimates[key].scores)
        assert back.agreements[key].rho == a.agreements[key].rho
    assert back.interaction.index == a.interaction.index
    assert [r.component for r in back.ranking()] == [r.component for r in a.ranking()]


def test_zero_gap_is_refused_before_any_patching(ckpts, monkeypatch) -> None:
    same = mechdiff.load_pair(ckpts["base"], ckpts["base"], device="cpu")

    def no_patching(*a, **k):
        raise AssertionError("patching ran although there is no gap")

    monkeypatch.setattr(pipeline_pair, "cross_patch", no_patching)
    monkeypatch.setattr(pipeline_pair, "attribute", no_patching)
    with pytest.raises(ZeroGapError, match="nothing to attribute"):
        analyse_pair(same, _task(), label="same", progress=False)


def test_exact_top_patches_the_strongest_estimates_only(planted) -> None:
    a = analyse_pair(planted, _task(), label="planted", methods=("exact", "attribution"),
                     exact_top=3, progress=False)
    heads = a.exact["heads_ft_to_base"]
    assert int(torch.isfinite(heads.scores).sum()) == 3
    assert float(heads.scores[2, 2]) == pytest.approx(1.0, abs=1e-3)  # the planted head is one
    est = a.estimates["heads_ft_to_base"].scores.abs().flatten()
    patched = torch.isfinite(heads.scores).flatten()
    assert est[patched].min() >= est[~patched].max()  # the three strongest (ties either way)
    assert torch.isfinite(a.exact["mlp_ft_to_base"].scores).all()  # 3 MLPs: all patched
    assert a.agreements["heads_ft_to_base"].n_compared == 3
    assert a.interaction is not None and a.interaction.sites == ("mlp",)
    with pytest.raises(OptionError, match="exact_top"):
        analyse_pair(planted, _task(), label="x", exact_top=3, progress=False)


def test_exact_top_per_kind_limits_only_the_kinds_it_names(planted) -> None:
    """``exact_top={"mlp": 1}``: one MLP exactly (the strongest estimate), every head exactly,
    and the series index over the complete kind only; a kind that does not exist is refused."""
    from mechdiff.errors import SiteError

    a = analyse_pair(planted, _task(), label="planted", methods=("exact", "attribution"),
                     exact_top={"mlp": 1}, progress=False)
    for direction in ("ft_to_base", "base_to_ft"):
        assert torch.isfinite(a.exact[f"heads_{direction}"].scores).all()
        mlp = a.exact[f"mlp_{direction}"]
        assert int(torch.isfinite(mlp.scores).sum()) == 1
        est = a.estimates[f"mlp_{direction}"].scores.abs()
        assert torch.isfinite(mlp.scores[est.argmax()])
    assert a.interaction is not None and a.interaction.sites == ("heads",)
    # One exactly patched MLP: no rank agreement to measure (it needs two sites), no crash.
    assert "mlp_ft_to_base" not in a.agreements and "heads_ft_to_base" in a.agreements
    with pytest.raises(SiteError):
        analyse_pair(planted, _task(), label="x", methods=("exact", "attribution"),
                     exact_top={"head": 3}, progress=False)
    with pytest.raises(OptionError, match="exact_top"):
        analyse_pair(planted, _task(), label="x", methods=("exact", "attribution"),
                     exact_top={"heads": 0}, progress=False)


def test_residual_stream_alone_has_no_series_index(planted) -> None:
    """The series index never sums the residual stream: patching only ``resid`` in both
    directions analyses the pair and leaves the index out (the CLI's ``--sites resid``)."""
    a = analyse_pair(planted, _task(), label="planted", sites=("resid",), progress=False)
    assert set(a.exact) == {"resid_ft_to_base", "resid_base_to_ft"}
    assert a.interaction is None
    assert torch.isfinite(a.exact["resid_ft_to_base"].scores).all()
