"""The verdict: its rules on numbers, and ground truth: fine-tunes made in the tests whose mechanism
is known by construction, and the synthetic zoo's re-weighting and new-skill fine-tunes."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
from circuit_models import new_head, rescaled, save_dir, successor_task
from support import unchecked

import mechdiff
from mechdiff.circuits import CircuitComparison, Verdict, compare_circuits, decide
from mechdiff.circuits.verdict import THRESHOLDS, sensitivity, share
from mechdiff.errors import OptionError

REUSED, NEW, MIXED = "re-used and strengthened", "new mechanism", "mixed"


def _numbers(**kw: float) -> dict[str, float]:
    return {"base_in_ft": 0.95, "score_rank": 0.9, "carried": 0.9, **kw}


def test_rules() -> None:
    assert decide(_numbers())[0] == REUSED
    assert decide(_numbers(base_in_ft=0.3))[0] == NEW
    assert decide(_numbers(score_rank=0.1))[0] == NEW
    assert decide(_numbers(carried=0.1))[0] == NEW
    assert decide(_numbers(base_in_ft=0.6))[0] == MIXED
    assert decide(_numbers(score_rank=0.4))[0] == MIXED
    assert decide(_numbers(carried=0.4))[0] == MIXED
    # an undefined deciding number is no evidence either way
    label, reasons = decide(_numbers(carried=float("nan"), score_rank=0.1))
    assert label == "undetermined" and len(reasons) == 1
    assert reasons[0].startswith("carried is not defined") and "gap" in reasons[0]
    label, reasons = decide(_numbers(score_rank=0.1, carried=0.0))
    # the two rules that fired, then the number that points the other way (a review found a
    # "new mechanism" whose carried share of 0.87 was never mentioned)
    assert len(reasons) == 3 and all("<" in r for r in reasons[:2])
    assert reasons[2].startswith("although the base circuit inside the fine-tuned model keeps "
                                 "0.95") and "(>= REUSE_FAITHFULNESS 0.7)" in reasons[2]
    label, reasons = decide(_numbers(base_in_ft=0.1))
    assert label == NEW and [r.split()[0] for r in reasons] == ["the", "although", "although"]
    assert "carries 0.90 of the gap (>= STRENGTHENED 0.5)" in reasons[1]
    # Thresholds are arguments: the same numbers, a stricter rule.
    assert decide(_numbers(), {"REUSE_RANK": 0.95})[0] == MIXED
    notes = sensitivity(_numbers(score_rank=0.55), {"score_rank": (0.3, 0.8)}, THRESHOLDS)
    assert any("REUSE_RANK" in n and "sensitive" in n for n in notes)
    notes = sensitivity(_numbers(carried=0.9), {"carried": (0.2, 1.0)}, THRESHOLDS)
    assert any("interval" in n and "NEW_CARRIED" in n for n in notes)
    # a number near a threshold that does not decide the label gets no note: carried 0.1 makes
    # it "new mechanism" whatever base_in_ft (0.45, near NEW_FAITHFULNESS 0.4) is
    notes = sensitivity(_numbers(carried=0.1, base_in_ft=0.45),
                        {"base_in_ft": (0.2, 0.9), "carried": (0.05, 0.15)}, THRESHOLDS)
    assert notes == []
    notes = sensitivity(_numbers(base_in_ft=0.45), {"base_in_ft": (0.2, 0.9)}, THRESHOLDS)
    assert any(n.startswith("base_in_ft = 0.450 lies within 0.1 of NEW_FAITHFULNESS")
               for n in notes)


@pytest.mark.parametrize(("thresholds", "message"), [
    ({"NEW_RANK": float("nan")}, "NEW_RANK must be a finite number, got nan"),
    ({"NEW_RANK": "0.2"}, "NEW_RANK must be a finite number, got '0.2'"),
    ({"STRENGTHENED": True}, "STRENGTHENED must be a finite number"),
    ({"NEAR": -0.1}, "NEAR must be >= 0"),
    ({"REUSE_RANK": 0.1, "NEW_RANK": 0.9}, "NEW_RANK = 0.9 is above REUSE_RANK = 0.1"),
    ({"NEW_FAITHFULNESS": 0.8}, "NEW_FAITHFULNESS = 0.8 is above REUSE_FAITHFULNESS = 0.7"),
    ({"REUSE_FAITH": 0.5}, "unknown thresholds"),
])
def test_thresholds_that_cannot_decide_are_refused(thresholds, message) -> None:
    """NaN would make every comparison false (the label silently 'mixed'), a string fails only
    after the whole computation, and a new-mechanism bound above its re-use bound contradicts
    the rules: each is refused by name, by decide() as by compare_circuits (before any
    forward: test_bad_options)."""
    with pytest.raises(OptionError, match=re.escape(message)):
        unchecked(decide)(_numbers(), thresholds)


def test_decide_names_a_missing_number() -> None:
    with pytest.raises(OptionError, match=r"numbers lack \['carried'\]"):
        decide({"base_in_ft": 0.9, "score_rank": 0.9})


@pytest.fixture(scope="module")
def constructed(induction_dir, tmp_path_factory) -> dict[str, Path]:
    """The trained induction model and two fine-tunes of it whose mechanism is known: one that
    only rescales the induction heads' outputs (x2) and every MLP's output (x1.2), one that writes
    new value/output maps into key-value head 0 of layer 1 (heads L1H0/L1H1, which the base barely
    uses: exact ablation effects 0.24 and 0.17 against 1.87 for L1H2) so that L1H0 writes the
    successor of the token it attends to."""
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("constructed")
    base = LlamaForCausalLM.from_pretrained(induction_dir).eval()
    return {
        "base": induction_dir,
        "rescaled": save_dir(rescaled(base, [(1, 2), (1, 3)], factor=2.0), root / "rescaled"),
        "new_head": save_dir(new_head(base, 1, 0, strength=8.0), root / "new_head"),
    }


# Measured (24 prompts, EAP-IG, corrupted ablation, seed 0):
#   rescaled: base_in_ft 0.918, score_rank 0.945, carried 0.936 -> re-used (100% of resamples)
#   new_head: carried 0.000, base_in_ft -4.6 -> new mechanism (100% of resamples); on the AMD
#     EPYC's model its corrupted prompts leave the new head writing the answer, the fine-tuned
#     model's baseline is not separated from its full model (+0.37 [-2.4, +3.1]) and base_in_ft
#     (-8.3) is left out: carried 0.000 and score_rank 0.05 decide
# With mean ablation the 82-edge graph's smallest faithful base circuit is half the graph (it
# contains the new head's edges), and the new-head verdict is unstable (68%): the corrupted
# prompts give the base circuit its 4-edge induction core.
@pytest.mark.parametrize(("name", "expected"), [("rescaled", REUSED), ("new_head", NEW)])
def test_constructed_fine_tunes(constructed, name, expected, tmp_path) -> None:
    pair = mechdiff.load_pair(constructed["base"], constructed[name], device="cpu")
    task = successor_task(24)
    c = compare_circuits(pair, task, ablation="corrupted", n_boot=100, progress=False)
    v = c.verdict
    assert v.label == expected, c.summary()
    assert v.frequency[expected] >= 0.9
    if name == "new_head":
        assert v.numbers["carried"] < 0.05
        assert "L1H0" not in c.base_circuit.node_labels()
    else:
        assert v.numbers["carried"] > 0.8 and v.numbers["score_rank"] > 0.8
    text = c.summary()
    assert f"verdict: {expected}" in text and "REUSE_FAITHFULNESS 0.7" in text
    loaded = CircuitComparison.load(c.save(tmp_path / "cmp"))
    assert loaded.verdict.label == v.label and loaded.verdict.numbers == v.numbers
    assert loaded.verdict.thresholds == v.thresholds and loaded.verdict.seed == 0
    torch.testing.assert_close(loaded.base_curve.values, c.base_curve.values)
    alone = Verdict.load(v.save(tmp_path / "verdict"))
    assert alone.text() == v.text()


def test_bootstrap_is_seeded(constructed) -> None:
    pair = mechdiff.load_pair(constructed["base"], constructed["rescaled"], device="cpu")
    task = successor_task(12)
    a = compare_circuits(pair, task, ablation="corrupted", n_boot=30, seed=3, progress=False)
    scores = {"base_scores": a.base_scores, "ft_scores": a.ft_scores}
    b = compare_circuits(pair, task, ablation="corrupted", n_boot=30, seed=3, progress=False,
                         **scores)
    c = compare_circuits(pair, task, ablation="corrupted", n_boot=30, seed=4, progress=False,
                         **scores)
    assert a.verdict.intervals == b.verdict.intervals
    assert a.verdict.intervals != c.verdict.intervals
    assert a.provenance.seed == 3


def test_bad_options(constructed) -> None:
    pair = mechdiff.load_pair(constructed["base"], constructed["rescaled"], device="cpu")
    compare = unchecked(compare_circuits)
    task = successor_task(4)
    with pytest.raises(OptionError, match="thresholds"):
        compare(pair, task, thresholds={"REUSE_FAITH": 0.5})
    with pytest.raises(OptionError, match="NEW_RANK = 0.9 is above REUSE_RANK"):
        compare(pair, task, thresholds={"NEW_RANK": 0.9})
    # too few prompts for a verdict: said before any forward (here an option error follows)
    from mechdiff.errors import VerdictWarning

    with pytest.warns(VerdictWarning, match="4 prompts, fewer than MIN_PROMPTS 8: the circuits "
                      "and numbers are computed, but the verdict will be 'undetermined'"), \
            pytest.raises(OptionError, match="edges=100000 is more than"):
        compare(pair, task, edges=100000)
    kl = mechdiff.Task(task.prompts, metric="kl", corrupted=task.corrupted)
    with pytest.raises(OptionError, match="metric 'kl' compares each model with itself"):
        compare(pair, kl, ablation="corrupted")
    with pytest.raises(OptionError, match="pair must be a ModelPair.*got TransformerBridge"):
        compare(pair.base, task)
    with pytest.raises(OptionError, match="rule"):
        compare(pair, task, rule="threshold")
    with pytest.raises(OptionError):
        compare(pair, task, n_boot=0)
    with pytest.raises(OptionError, match="edges"):
        compare(pair, task, edges=10**9)
    with pytest.raises(OptionError, match="edges"):
        compare(pair, task, edges=0)


def test_fixed_number_of_edges(constructed) -> None:
    """``edges=n``: both circuits are the n strongest edges of each model's own scores (pruned),
    not the smallest faithful MIB fraction."""
    from mechdiff.circuits import select_circuit

    pair = mechdiff.load_pair(constructed["base"], constructed["rescaled"], device="cpu")
    c = compare_circuits(pair, successor_task(8), ablation="corrupted", edges=6, n_boot=10,
                         progress=False)
    n_edges = c.base_scores.scores.numel()
    assert c.base_size == c.ft_size == 6 / n_edges
    for circuit, scores in ((c.base_circuit, c.base_scores), (c.ft_circuit, c.ft_scores)):
        assert circuit.requested == 6
        assert torch.equal(circuit.edges, select_circuit(scores, n=6).edges)
    assert c.verdict.extra["size_rule"] == "fixed edges"


def test_a_whole_graph_base_circuit_and_few_prompts_are_said_as_they_are(constructed) -> None:
    """edges=every edge: the base circuit is the model, so base_in_ft is 1 by construction; its
    carried share is every edge patched at once, cross_edge_attribution's ``all_edges``, which
    is 1 only when nothing outside the edges changed (a review found the note calling it 1 when
    it was 16.3 on another pair): the note gives its value, and says what it is. And 4 prompts
    have at most 35 distinct resamples: the verdict says its intervals are rough (a review met
    2-prompt intervals like [-347832, +0.94] with nothing said)."""
    from mechdiff.circuits import cross_edge_attribution
    from mechdiff.circuits.verdict import signed

    pair = mechdiff.load_pair(constructed["base"], constructed["rescaled"], device="cpu")
    task = successor_task(4)
    n_edges = mechdiff.circuits.graph_of(pair.base).n_edges
    c = compare_circuits(pair, task, ablation="corrupted", edges=n_edges, n_boot=50,
                         progress=False)
    v = c.verdict
    assert abs(v.numbers["base_in_ft"] - 1) < 1e-5
    every = cross_edge_attribution(pair, task, method="eap", exact_top=0, progress=False)
    assert abs(v.numbers["carried"] - every.all_edges) < 1e-4
    # 1 by construction: no evidence of re-use (a review met "re-used 100%" resting on them)
    assert v.label == "undetermined" and v.frequency["undetermined"] == 1.0
    assert v.reasons[0].startswith("the base circuit is the whole graph (edges= asked for every "
                                   "edge)") and "compare circuits of a fixed size" in v.reasons[0]
    assert not any("sensitive" in n or "would settle" in n for n in v.notes)
    note = next(n for n in v.notes if "whole graph" in n)
    assert "base_in_ft is 1 by construction" in note
    assert f"carried ({signed(v.numbers['carried'])}) is every edge patched at once" in note
    few = next(n for n in v.notes if n.startswith("only 4 prompts"))
    distinct = int(few.split("(")[1].split()[0])
    assert 1 < distinct <= 35 and "use 8 or more prompts" in few


def test_an_empty_base_circuit_gives_no_verdict(constructed) -> None:
    """edges=1: the strongest edge alone has no path from the input to the logits, so the pruned
    base circuit is empty; an empty circuit inside the fine-tune is no evidence of a new
    mechanism, and the reason says how many edges a circuit with a path needs."""
    from mechdiff.circuits import select_circuit

    pair = mechdiff.load_pair(constructed["base"], constructed["rescaled"], device="cpu")
    c = compare_circuits(pair, successor_task(8), ablation="corrupted", edges=1, n_boot=10,
                         progress=False)
    assert c.base_circuit.n_edges == 0
    v = c.verdict
    assert v.label == "undetermined" and v.frequency["undetermined"] == 1.0
    need = int(v.reasons[0].rsplit("at least ", 1)[1])
    assert select_circuit(c.base_scores, n=need).n_edges > 0
    assert select_circuit(c.base_scores, n=need - 1).n_edges == 0
    assert "verdict: undetermined" in c.summary()
    assert "base 1 edge asked, 0 edges, 0 nodes kept" in c.summary()


# The synthetic zoo (64 prompts, EAP-IG, mean ablation; measured on the cached zoo v1-93d67dd7b3):
#   reweight:       base_in_ft 0.971 [0.95, 0.99], score_rank 0.879 [0.84, 0.92],
#                   carried 0.958 [0.95, 0.97] -> re-used (100% of 200 resamples)
#   reweight_seed1: base_in_ft 0.839 [0.79, 0.88], score_rank 0.739 [0.72, 0.79],
#                   carried 0.965 -> re-used (100%)
#   newskill:       base_in_ft -0.518 [-0.82, -0.35], score_rank -0.040 [-0.12, 0.03] -> new
#                   mechanism (100%), although carried is 0.872: the new skill's change flows
#                   along the base circuit's paths (20% of a 110-edge graph, 9 of 11 nodes), but
#                   the base circuit no longer computes the behaviour inside the fine-tune.
ZOO = [("reweight", "ambiguous", REUSED), ("reweight_seed1", "ambiguous", REUSED),
       ("newskill", "newskill", NEW)]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "task_name", "expected"), ZOO)
def test_zoo_verdicts(zoo, name, task_name, expected) -> None:
    from mechdiff import zoo as zoo_module

    pair = mechdiff.load_pair(zoo["base"], zoo[name], device="cpu")
    c = compare_circuits(pair, zoo_module.task(task_name, n=64), progress=False)
    assert c.verdict.label == expected, c.summary()
    assert c.verdict.frequency[expected] >= 0.9
    assert c.verdict.reasons and c.verdict.reasons[0] in c.summary()


def test_base_side_reused_across_fine_tunes_gives_the_same_comparison(constructed) -> None:
    """Two fine-tunes of one base on one task: the second comparison may reuse the first's base
    scores and curve, and then equals the comparison computed from scratch; a curve of other
    scores is refused."""
    task = successor_task(8)
    kw = {"ablation": "corrupted", "n_boot": 20, "progress": False}
    first = compare_circuits(mechdiff.load_pair(constructed["base"], constructed["rescaled"],
                                                device="cpu"), task, **kw)
    pair = mechdiff.load_pair(constructed["base"], constructed["new_head"], device="cpu")
    fresh = compare_circuits(pair, task, **kw)
    reused = compare_circuits(pair, task, base_scores=first.base_scores,
                              base_curve=first.base_curve, **kw)
    assert reused.verdict.numbers == fresh.verdict.numbers
    assert torch.equal(reused.base_circuit.edges, fresh.base_circuit.edges)
    torch.testing.assert_close(reused.base_curve.values, fresh.base_curve.values)
    with pytest.raises(OptionError, match="base_curve"):
        compare_circuits(pair, task, base_curve=first.base_curve, **kw)  # without its scores
    with pytest.raises(OptionError, match="base_scores cannot be reused here: it has "
                       "model_id .*pass model_id=pair.base_id"):  # another model's
        compare_circuits(pair, task, base_scores=first.ft_scores, base_curve=first.base_curve,
                         **kw)
    scores = first.base_scores
    with pytest.raises(OptionError, match=r"it has steps=1 \(asked: steps=5\)"):
        compare_circuits(pair, task, base_scores=dataclasses.replace(scores, steps=1), **kw)
    other = type(scores)(**{**{f: getattr(scores, f) for f in scores.__dataclass_fields__},
                            "scores": scores.scores.flip(0)})  # the same model, other scores
    with pytest.raises(OptionError, match="base_curve's circuits"):
        compare_circuits(pair, task, base_scores=other, base_curve=first.base_curve, **kw)


def test_a_ratio_outside_its_own_interval_is_read_as_undetermined() -> None:
    """A ratio to a near-zero gap can fall outside its own percentile interval (seen on a random
    tiny pair: carried +26.6, interval [-12.3, +7.6]); the verdict then says it is undetermined,
    and says nothing of ratios inside their intervals or of numbers that are not ratios."""
    from mechdiff.circuits.verdict import undetermined

    numbers = _numbers(carried=26.6, base_in_ft=0.9, edge_iou=5.0)
    intervals = {"carried": (-12.3, 7.6), "base_in_ft": (0.8, 1.0), "edge_iou": (0.1, 0.2)}
    notes = undetermined(numbers, intervals)
    assert len(notes) == 1 and notes[0].startswith("carried = 26.6") and "undetermined" in notes[0]
    assert undetermined(_numbers(carried=float("nan")), {"carried": (0.0, 1.0)}) == []


def test_numbers_that_round_to_zero_read_without_a_minus_sign() -> None:
    from mechdiff.circuits.verdict import signed

    assert signed(-1e-9) == "+0.000" and signed(-0.0) == "+0.000"
    assert signed(-0.0004) == "+0.000" and signed(-0.0006) == "-0.001"
    assert signed(0.25, 2) == "+0.25" and signed(float("nan")) == "+nan"


def test_shares_and_numbers_read_as_measured() -> None:
    """199 of 200 resamples is not '100%'; an undefined number reads n/a, not '+nan'; the
    circuits' own overlap has no interval (the circuits are held fixed), where it printed a
    zero-width '[+0.61, +0.61]'; intervals have the value's decimals ('+0.998 [+1.00, +1.00]'
    looked like a value outside its interval)."""
    from mechdiff.circuits.verdict import number_and_interval, share

    assert [share(f) for f in (1.0, 0.995, 0.005, 0.68, 0.9995, 0.0)] == [
        "100%", "99.5%", "0.5%", "68%", "99.9%", "0%"]
    assert number_and_interval("carried", float("nan"), float("nan"), float("nan")) == \
        "n/a (not defined)"
    assert number_and_interval("edge_iou", 0.608, 0.608, 0.608) == "+0.608 (circuits held fixed)"
    assert number_and_interval("carried", 0.998, 0.9961, 1.0) == "+0.998 [+0.996, +1.000]"
    v = Verdict(label=MIXED, reasons=("r",), numbers={"base_in_ft": 0.5, "carried": math.nan},
                intervals={"base_in_ft": (0.4, 0.6)}, thresholds=dict(THRESHOLDS),
                frequency={MIXED: 0.995, NEW: 0.005}, notes=(), n_boot=200, seed=0)
    text = v.text()
    assert "(in 99.5% of 200 prompt resamples" in text and "nan" not in text
    assert "carried n/a (not defined)" in text


def test_a_label_most_resamples_reject_is_not_the_verdict() -> None:
    """A review met 'new mechanism (in 25.5% of 200 prompt resamples)': the full sample's label
    was the rarest of three. Built here by hand: base_in_ft is the mean of per-prompt values, 0
    on nine prompts and 4.1 on one (0.41, just above NEW_FAITHFULNESS 0.4: 'mixed'); a resample
    without the tenth prompt (probability 0.9^10 = 0.35) reads 'new mechanism', one with it
    twice or more (0.26) 're-used': 'mixed' has about 39%. The verdict is 'undetermined', its
    reasons give the split and the full sample's reasons."""
    from mechdiff.circuits import Circuit
    from mechdiff.circuits.compare import _numbers, _verdict
    from mechdiff.circuits.graph import Graph

    graph = Graph(2, 2, 2)
    half = torch.arange(graph.n_edges) % 2 == 0
    cb = Circuit(half, **graph.dims)
    n = 10
    scores = torch.randn(n, graph.n_edges, generator=torch.Generator().manual_seed(0))
    pp = {"b_full": torch.zeros(n), "f_full": torch.ones(n), "b_empty": torch.zeros(n) - 1,
          "f_empty": torch.zeros(n), "b_patched": torch.full((n,), 0.9),
          "f_cb": torch.tensor([0.0] * 9 + [4.1]), "b_cf": torch.zeros(n),
          "s_b": scores, "s_f": scores}
    numbers = _numbers(pp, cb, cb, None)
    assert numbers["base_in_ft"] == pytest.approx(0.41) and numbers["carried"] == pytest.approx(0.9)
    assert decide(numbers)[0] == MIXED
    v = _verdict(pp, cb, cb, numbers, None, 400, 0, 0.5)
    assert 0.3 < v.frequency[MIXED] < 0.5 and v.frequency[NEW] > 0.25 and v.frequency[REUSED] > 0.15
    assert v.label == "undetermined"
    assert v.reasons[0].startswith("the prompts do not settle it: all prompts give 'mixed', but "
                                   f"only {share(v.frequency[MIXED])} of 400 resamples do")
    assert v.reasons[1:] == decide(numbers)[1]
    text = v.text()
    assert text.startswith("verdict: undetermined (400 prompt resamples, seed 0)")
    assert f"resamples: mixed {share(v.frequency[MIXED])}" in text
    # the same numbers with MIN_SHARE 0.3: the label stands
    assert _verdict(pp, cb, cb, numbers, {"MIN_SHARE": 0.3}, 400, 0, 0.5).label == MIXED


def test_identical_models_are_refused_not_judged(constructed) -> None:
    """No behaviour gap: compare_circuits refused nothing and printed 'undetermined' with a
    reason about 'kl' metrics on a logit_diff task (the command line refused it); now the
    same ZeroGapError as the command line, after the edge scores, before the curves."""
    from mechdiff.errors import ZeroGapError

    pair = mechdiff.load_pair(constructed["base"], constructed["base"], device="cpu")
    with pytest.raises(ZeroGapError, match="same mean logit_diff"):
        compare_circuits(pair, successor_task(8), method="eap", ablation="corrupted",
                         n_boot=10, progress=False)


def test_edges_that_switched_role_are_not_called_strengthened() -> None:
    """|score| growth alone called +0.996 -> -5.462 'strengthened' (the edge switched from
    opposing to supporting) and a supporting edge that lost strength while an opposing one
    grew were ranked together. Hand-made scores: each list keeps its sign, flips are apart."""
    from mechdiff.circuits.compare import _changes
    from mechdiff.circuits.graph import Graph

    graph = Graph(1, 1, 1)
    b = torch.zeros(graph.n_edges)
    f = torch.zeros(graph.n_edges)
    b[0], f[0] = 1.0, -5.0   # flipped, moved 6
    b[1], f[1] = -1.0, -3.0  # grew by 2, same sign
    b[2], f[2] = 2.0, 0.5    # shrank by 1.5
    b[3], f[3] = -0.5, 0.25  # flipped, moved 0.75
    got = _changes(graph, b, f)
    label = graph.edge_label
    assert [e for e, _, _ in got["strengthened"]] == [label(1)]
    assert [e for e, _, _ in got["weakened"]] == [label(2)]
    assert got["flipped"] == ((label(0), 1.0, -5.0), (label(3), -0.5, 0.25))


def test_a_small_full_minus_empty_difference_is_said() -> None:
    """Normalized faithfulness inside a model whose full and every-edge-ablated values nearly
    agree is a ratio to a small difference (a review met a base curve at f = 51.6 over 0.228,
    with nothing said). Hand numbers: base difference 0.2, fine-tuned 2.0."""
    from mechdiff.circuits.compare import _small_scale

    n = 4
    pp = {"b_full": torch.full((n,), 1.2), "b_empty": torch.full((n,), 1.0),
          "f_full": torch.full((n,), 3.0), "f_empty": torch.full((n,), 1.0)}
    notes = _small_scale(pp)
    assert len(notes) == 1 and notes[0].startswith(
        "the base model's full and every-edge-ablated values differ by only 0.200 (the "
        "fine-tuned model's by 2.000)") and "ft_in_base" in notes[0]
    pp["b_full"] = torch.full((n,), 1.6)  # 0.6: not small next to 2.0
    assert _small_scale(pp) == []


def test_the_circuit_size_is_where_the_curve_stays_faithful() -> None:
    """A curve that passes through the band at a small fraction and then swings far (a real
    4-prompt curve: 1.02 at 0.2%, -1.24 at 1%, +3.3 at 20%) does not pick that fraction: the
    size is the smallest fraction faithful at every larger fraction too."""
    from mechdiff.circuits.compare import _smallest
    from mechdiff.circuits.faithfulness import MIB_FRACTIONS

    def curve(*values: float) -> torch.Tensor:
        assert len(values) == len(MIB_FRACTIONS)
        return torch.tensor(values)

    nan = float("nan")
    assert _smallest(curve(0, 1.02, 0.98, -1.24, 1.4, 1.9, 2.7, 3.3, 1.5, 1)) == 1.0
    assert _smallest(curve(0, 1.02, 0.3, 0.5, 0.6, 0.9, 0.95, 1.1, 0.97, 1)) == 0.05
    assert _smallest(curve(0.9, 0.9, 1, 1, 1, 1, 1, 1, 1, 1)) == 0.001
    assert _smallest(curve(nan, 1, 1, 1, 1, 1, 1, nan, 1, 1)) == 0.5


def test_too_few_prompts_give_a_preview_not_a_verdict() -> None:
    """Below MIN_PROMPTS the label on the prompts is a preview under "undetermined": on the real
    distillation pair three draws of 4 prompts gave three labels (new 93%, undetermined, mixed
    95.5%) while 8 and 24 prompts gave "mixed" every time. Hand-built per-prompt values whose
    every resample reads re-used: with 4 prompts undetermined (reasons: why, then the full
    sample's), with MIN_PROMPTS 4 re-used; the same values on 8 prompts are re-used."""
    from mechdiff.circuits import Circuit
    from mechdiff.circuits.compare import _numbers, _verdict
    from mechdiff.circuits.graph import Graph
    from mechdiff.circuits.verdict import checked_thresholds
    from mechdiff.errors import OptionError

    graph = Graph(2, 2, 2)
    cb = Circuit(torch.arange(graph.n_edges) % 2 == 0, **graph.dims)

    def values(n: int) -> dict[str, torch.Tensor]:
        scores = torch.randn(n, graph.n_edges, generator=torch.Generator().manual_seed(1))
        return {"b_full": torch.zeros(n), "f_full": torch.ones(n), "b_empty": torch.zeros(n) - 1,
                "f_empty": torch.zeros(n), "b_patched": torch.full((n,), 0.9),
                "f_cb": torch.full((n,), 0.95), "b_cf": torch.zeros(n), "s_b": scores,
                "s_f": 2 * scores}

    pp = values(4)
    numbers = _numbers(pp, cb, cb, None)
    assert decide(numbers)[0] == REUSED
    v = _verdict(pp, cb, cb, numbers, None, 200, 0, 0.5)
    assert v.label == "undetermined" and v.frequency[REUSED] == 1.0
    assert v.reasons[0].startswith("too few prompts to settle a verdict: 4 (< MIN_PROMPTS 8; "
                                   "its 200 resamples are only ")
    assert v.reasons[0].endswith("on these prompts the rules give 're-used and strengthened' "
                                 "(100% of 200 resamples):")
    assert v.reasons[1:] == decide(numbers)[1] and v.thresholds["MIN_PROMPTS"] == 8
    assert "MIN_PROMPTS 8" in v.text() and any("only 4 prompts" in n for n in v.notes)
    # no resample gives the overriding "undetermined": the page says what they gave, not "in 0%"
    from mechdiff.circuits.sections import verdict_html

    page = verdict_html(v)
    assert "200 resamples of the prompts (seed 0) gave re-used and strengthened 100%" in page
    assert "in 0%" not in page
    assert _verdict(pp, cb, cb, numbers, {"MIN_PROMPTS": 4.0}, 200, 0, 0.5).label == REUSED
    pp8 = values(8)
    assert _verdict(pp8, cb, cb, _numbers(pp8, cb, cb, None), None, 200, 0, 0.5).label == REUSED
    for bad in (2.5, 0, -3):
        with pytest.raises(OptionError, match="MIN_PROMPTS is a count of prompts"):
            checked_thresholds({"MIN_PROMPTS": bad})


def test_a_baseline_not_separated_from_the_full_model_leaves_base_in_ft_out() -> None:
    """On the real distillation pair, mean ablation over 4 prompts left the fine-tuned model
    *more* Spanish than the full model on two prompts and less on two: m(full) - m(empty) =
    -0.67, 95% interval [-4.7, +3.0], and base_in_ft = 2.49 was a ratio to that. Hand-built
    per-prompt values: the fine-tuned model's differences alternate +1.1 / -0.9 (mean 0.1, its
    interval contains 0). base_in_ft is then no evidence: with every other number reading
    re-used the verdict is "undetermined" (re-use needs base_in_ft), and a note says why;
    carried near 0 still shows a new mechanism (the constructed new-head fine-tune is such a
    case: its corrupted prompts do not silence the new head). The same numbers with a constant
    difference of 0.1 are re-used. A base model whose baseline is not separated gets a note."""
    from mechdiff.circuits import Circuit
    from mechdiff.circuits.compare import _numbers, _verdict
    from mechdiff.circuits.graph import Graph
    from mechdiff.circuits.verdict import UNSCALED

    graph = Graph(2, 2, 2)
    cb = Circuit(torch.arange(graph.n_edges) % 2 == 0, **graph.dims)
    n = 8
    scores = torch.randn(n, graph.n_edges, generator=torch.Generator().manual_seed(2))
    flat = torch.tensor([2.1, 0.1] * (n // 2))
    pp = {"b_full": torch.zeros(n), "b_empty": torch.zeros(n) - 1, "f_full": flat,
          "f_empty": torch.ones(n), "b_patched": torch.full((n,), 0.99),
          "f_cb": torch.full((n,), 1.095), "b_cf": torch.zeros(n), "s_b": scores,
          "s_f": 2 * scores}
    numbers = _numbers(pp, cb, cb, None)
    assert numbers["base_in_ft"] == pytest.approx(0.95) and decide(numbers)[0] == REUSED
    v = _verdict(pp, cb, cb, numbers, None, 200, 0, 0.5, ablation="mean")
    assert v.label == "undetermined" and v.frequency["undetermined"] == 1.0
    assert v.reasons[0] == UNSCALED and len(v.reasons) == 3
    assert v.extra["left_out"] == "base_in_ft"
    assert not any("keeps" in r for r in v.reasons)  # base_in_ft is not read
    note = next(x for x in v.notes if x.startswith("the fine-tuned model's every-edge-ablated"))
    assert note.startswith("the fine-tuned model's every-edge-ablated baseline is not separated "
                           "from its full model on these prompts: m(full) - m(empty) = +0.100, "
                           "95% interval [")
    assert "mean ablation keeps what the prompts share" in note
    assert "base_in_ft (+0.95), normalized by it, is left out of the rules" in note
    assert re.search(r"base_in_ft \+0\.950 \[[^]]+\] \(left out: no scale\)", v.text())
    from mechdiff.circuits.sections import verdict_html

    assert "left out: no scale (see the notes)" in verdict_html(v)
    # an unscaled base_in_ft above 1.3 is not read as edges opposing the behaviour either
    big = {**pp, "f_cb": torch.full((n,), 1.2)}  # base_in_ft 2.0
    v2 = _verdict(big, cb, cb, _numbers(big, cb, cb, None), None, 200, 0, 0.5)
    assert not any("overshoots" in x for x in v2.notes)
    corrupted = _verdict(pp, cb, cb, numbers, None, 200, 0, 0.5, ablation="corrupted")
    assert any("the corrupted prompts do not remove the behaviour" in x for x in corrupted.notes)
    # carried near 0 decides without base_in_ft, which is neither a reason nor an "although"
    moved = {**pp, "b_patched": torch.full((n,), 0.01)}
    v = _verdict(moved, cb, cb, _numbers(moved, cb, cb, None), None, 200, 0, 0.5)
    assert v.label == NEW and v.reasons[0].startswith("the base circuit alone carries only 0.01")
    assert not any("inside the fine-tuned model keeps" in r for r in v.reasons)
    steady = {**pp, "f_full": torch.full((n,), 1.1)}  # the same mean difference, every prompt
    v = _verdict(steady, cb, cb, _numbers(steady, cb, cb, None), None, 200, 0, 0.5)
    assert v.label == REUSED and not any("not separated" in x for x in v.notes)
    assert "left_out" not in v.extra
    base_flat = {**steady, "b_full": torch.tensor([1.0, -3.0] * (n // 2)), "b_patched":
                 torch.full((n,), 0.0)}
    v = _verdict(base_flat, cb, cb, _numbers(base_flat, cb, cb, None), None, 200, 0, 0.5)
    assert any(x.startswith("the base model's every-edge-ablated baseline is not separated")
               and "the base circuit's size was read off that curve: carried and base_in_ft "
               "are measured on a circuit whose size rests on no scale" in x for x in v.notes)
    v = _verdict(base_flat, cb, cb, _numbers(base_flat, cb, cb, None), None, 200, 0, 0.5,
                 sizing="edges")
    assert any(x.endswith("have no scale (the base circuit's size was fixed by edges=)")
               for x in v.notes)
    v = _verdict(base_flat, cb, cb, _numbers(base_flat, cb, cb, None), None, 200, 0, 0.5,
                 sizing="given")
    assert any(x.endswith("have no scale (the base circuit's size was fixed by the caller "
                          "(base_circuit=))") for x in v.notes)
    assert v.extra["size_rule"] == "given circuits"
    assert decide(numbers, unscaled=True) == ("undetermined", v_reasons(numbers))


def v_reasons(numbers: dict[str, float]) -> tuple[str, ...]:
    """The reasons decide() gives with base_in_ft left out, for the re-use numbers above."""
    from mechdiff.circuits.verdict import UNSCALED

    return (UNSCALED, f"edge scores rank-correlate at {numbers['score_rank']:+.2f} (>= REUSE_RANK "
            "0.5)", f"the base circuit alone carries {numbers['carried']:.2f} of the gap (>= "
            "STRENGTHENED 0.5)")
