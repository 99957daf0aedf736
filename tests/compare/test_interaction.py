"""The series index: a hand computation on constructed results, and the project's key claim: on the
synthetic zoo, mechdiff's numbers tell the re-weighting fine-tunes from the new-skill fine-tune."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mechdiff
from mechdiff import PatchResult, zoo
from mechdiff.compare import SERIES_THRESHOLD, Interaction, interaction
from mechdiff.errors import ResultError
from mechdiff.pipeline import analyse_pair
from mechdiff.results import Provenance

MARGIN = 0.5
"""How far from :data:`SERIES_THRESHOLD` each zoo fine-tune's whole interval must lie."""


def _result(direction: str, effects: list[float], n: int = 6, sites: str = "mlp") -> PatchResult:
    """A per-layer result whose patches move every prompt's metric by ``effects[layer]`` of a gap
    of 2 (receiver 0, donor 2), with prompt-to-prompt noise that averages out exactly."""
    noise = torch.linspace(-0.1, 0.1, n)
    patched = torch.stack([2 * e + noise for e in effects])
    prov = Provenance(base="b", finetuned="f", processing="none", task="t", prompts_hash="h",
                      n_prompts=n, metric="logit_diff")
    scores = torch.tensor(effects)
    if sites == "heads":  # one layer of len(effects) heads
        scores, patched = scores[None], patched[None]
    return PatchResult(scores=scores, patched=patched, receiver=torch.zeros(n),
                       donor=torch.full((n,), 2.0), sites=sites,
                       dims=("layer", "head") if sites == "heads" else ("layer",),
                       direction=direction, positions="all", provenance=prov)


def test_additive_and_serial_effects_by_hand() -> None:
    additive = interaction({"mlp_ft_to_base": _result("ft->base", [0.5, 0.3, 0.2]),
                            "mlp_base_to_ft": _result("base->ft", [0.5, 0.3, 0.2])})
    assert additive.sufficiency == pytest.approx(1.0) and additive.index == pytest.approx(0.0)
    serial = interaction({"mlp_ft_to_base": _result("ft->base", [0.1, 0.0, 0.1]),
                          "mlp_base_to_ft": _result("base->ft", [1.0, 0.9, 1.0])})
    assert serial.index == pytest.approx(2.7)
    assert serial.index_low - 1e-5 <= serial.index <= serial.index_high + 1e-5
    assert "in series" in serial.reading().words and "add up" in additive.reading().words
    redundant = interaction({"mlp_ft_to_base": _result("ft->base", [0.8, 0.8, 0.7]),
                             "mlp_base_to_ft": _result("base->ft", [0.1, 0.1, 0.0])})
    assert redundant.index == pytest.approx(-2.1) and "redundant" in redundant.reading().words


def test_attention_is_counted_once() -> None:
    """Heads and whole attention layers both present: the heads are summed, not the layers too."""
    heads = {f"heads {d}": _result(d, [0.2, 0.3], sites="heads") for d in ("ft->base", "base->ft")}
    layers = {f"attn {d}": _result(d, [0.5], sites="attn") for d in ("ft->base", "base->ft")}
    x = interaction({**heads, **layers})
    assert x.sites == ("heads",) and x.sufficiency == pytest.approx(0.5)


def test_one_direction_or_estimates_are_refused() -> None:
    with pytest.raises(ResultError, match="both directions"):
        interaction({"mlp_ft_to_base": _result("ft->base", [0.5])})
    est = _result("base->ft", [0.5])
    est = PatchResult(**{**est.__dict__, "method": "attribution"})
    with pytest.raises(ResultError, match="exact"):
        interaction({"a": _result("ft->base", [0.5]), "b": est})


@pytest.mark.slow
def test_series_index_separates_reweight_from_newskill_on_the_zoo(
    zoo: dict[str, Path], tmp_path: Path
) -> None:
    """The key claim: with stated margins, every re-weighting fine-tune reads as additive and the
    new skill as serial, each on its whole 95% interval over 64 prompts (and the result reloads)."""
    found: dict[str, Interaction] = {}
    for name, spec in mechdiff.zoo.FINETUNES.items():
        pair = mechdiff.load_pair(zoo["base"], zoo[name], device="cpu")
        a = analyse_pair(pair, zoo_task(spec.task), label=name, progress=False)
        assert a.interaction is not None
        found[name] = type(a.interaction).load(a.interaction.save(tmp_path / name))
    for name, x in found.items():
        if mechdiff.zoo.FINETUNES[name].mechanism == "reweight":
            assert x.index_high < SERIES_THRESHOLD - MARGIN, (name, x)
        else:
            assert x.index_low > SERIES_THRESHOLD + MARGIN, (name, x)
    assert {zoo_spec.mechanism for zoo_spec in mechdiff.zoo.FINETUNES.values()} == {
        "reweight", "new_skill"}


def zoo_task(name: str) -> mechdiff.Task:
    return zoo.task(name, n=64, seed=0)
