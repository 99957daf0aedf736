"""Edge attribution against oracles: the hand-computed linear estimate of single edges, central
finite differences of the real edge intervention, EAP-IG's completeness, exact single-edge
ablation (Spearman), TransformerLens 4.3's edge attribution (parity), prompt-batch invariance and
bad inputs."""

from __future__ import annotations

import pytest
import torch
from circuit_models import gpt2, random_task, save_dir
from circuit_reference import capture, reader_grad, writer_value
from support import unchecked
from transformer_lens.tools.analysis.attribution_patching import (
    EdgeAttributionConfig,
    attribution_patch,
)

import mechdiff
from mechdiff.circuits import EdgeScores, _prep, _run, edge_attribution, graph_of
from mechdiff.circuits.ablation import Replacements
from mechdiff.circuits.faithfulness import evaluate
from mechdiff.errors import OptionError, PromptError
from mechdiff.stats import spearman


def _model(tiny, name: str, dtype=torch.float32):
    return mechdiff.load_pair(tiny[name], tiny[name], device="cpu", dtype=dtype).base


def _logit_diff(task_tokens):
    rows = torch.arange(task_tokens.n)

    def metric(read):
        return read[rows, task_tokens.answer_ids] - read[rows, task_tokens.wrong_ids]

    return metric


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_an_edge_scores_its_hand_computed_linear_estimate(tiny, name) -> None:
    model = _model(tiny, name, torch.float64)
    task = random_task(4, seed=3)
    scores = edge_attribution(model, task, method="eap", ablation="corrupted", progress=False)
    graph = graph_of(model)
    _, tokens = _prep.prepare(model, task, "corrupted")
    clean, corr = capture(model, tokens.tokens), capture(model, tokens.corrupted_tokens)
    metric = _logit_diff(tokens)
    last = graph.n_layers - 1
    cases = [(("input",), ("q", 1, 2)), (("head", 0, 3), ("k", last, graph.n_kv_heads - 1)),
             (("mlp", 0), ("v", 1, 0)), (("head", last, 1), ("mlp", last)),
             (("mlp", last), ("logits",)), (("head", 1, 0), ("logits",))]
    for w, r in cases:
        g = reader_grad(model, tokens.tokens, tokens.read_pos, metric, r)
        hand = float(((writer_value(corr, w) - writer_value(clean, w)) * g).sum()) / tokens.n
        from circuit_reference import index_of

        assert float(scores.scores[index_of(graph, (w, r))]) == pytest.approx(hand, rel=1e-6,
                                                                              abs=1e-9)


# float64 models; LLaMA's attention (torch's CPU scaled-dot-product kernel) rounds at about
# float32 precision even in float64, so its differences need a larger step and tolerance.
@pytest.mark.parametrize(("name", "ablation", "eps", "atol"), [
    ("gpt2", "mean", 1e-5, 1e-7), ("gpt2", "corrupted", 1e-5, 1e-7),
    ("llama", "mean", 1e-3, 2e-3), ("llama", "corrupted", 1e-3, 2e-3)])
def test_eap_is_the_derivative_of_the_real_edge_intervention(tiny, name, ablation, eps,
                                                            atol) -> None:
    """d/dc M(edge coefficient c) at c = 0, by central differences of real interventions, is
    the EAP score of every edge."""
    model = _model(tiny, name, torch.float64)
    task = random_task(4, seed=5)
    scores = edge_attribution(model, task, method="eap", ablation=ablation, progress=False)
    graph, tokens = _prep.prepare(model, task, ablation)
    coefs = torch.zeros(2 * graph.n_edges, graph.n_readers, graph.n_writers, dtype=torch.float64)
    e = torch.arange(graph.n_edges)
    coefs[2 * e, graph.edge_reader, graph.edge_writer] = eps
    coefs[2 * e + 1, graph.edge_reader, graph.edge_writer] = -eps
    _, _, vals = evaluate(model, graph, task, tokens, Replacements(ablation), coefs,
                          circuit_batch=64)
    fd = (vals[0::2].mean(1) - vals[1::2].mean(1)) / (2 * eps)
    assert float(fd.abs().max()) > 0.05
    torch.testing.assert_close(scores.scores, fd, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_eap_ig_is_complete_on_the_input(tiny, name, ablation) -> None:
    """Integrated gradients on the input embedding: the scores of the input's edges sum to the
    effect of ablating the input, M(input ablated) - M(clean) (the corrupted run, or the run on
    the mean embedding), as the steps grow (measured: LLaMA, mean ablation, 40 steps 0.6% off,
    160 steps 0.04%; 80 steps here, held to 0.4%)."""
    model = _model(tiny, name, torch.float64)
    task = random_task(6, seed=7)
    scores = edge_attribution(model, task, method="eap_ig", steps=80, ablation=ablation,
                              progress=False)
    graph, tokens = _prep.prepare(model, task, ablation)
    from mechdiff.circuits.ablation import mean_outputs

    if ablation == "corrupted":
        base_in = _run.forward(model, graph, tokens.corrupted_tokens, tokens.read_pos,
                               capture=True).writers[0][:, :, 0]
    else:
        base_in = mean_outputs(model, graph, tokens, 16)[0][:, :, 0].expand(tokens.n, -1, -1)
    ablated = _run.forward(model, graph, tokens.tokens, tokens.read_pos, embed=base_in)
    clean = _run.forward(model, graph, tokens.tokens, tokens.read_pos)
    effect = float((_logit_diff(tokens)(ablated.read) - _logit_diff(tokens)(clean.read)).mean())
    total = float(scores.scores[graph.edge_writer == 0].sum())
    assert abs(effect) > 0.03
    assert total == pytest.approx(effect, rel=4e-3)


def _exact_single_edges(model, task, ablation):
    graph, tokens = _prep.prepare(model, task, ablation)
    coefs = torch.zeros(graph.n_edges, graph.n_readers, graph.n_writers, dtype=torch.float64)
    coefs[torch.arange(graph.n_edges), graph.edge_reader, graph.edge_writer] = 1.0
    full, _, vals = evaluate(model, graph, task, tokens, Replacements(ablation), coefs,
                             circuit_batch=128)
    return vals.mean(1) - full.mean()


# Exact single-edge ablation (262 real interventions) against the estimates, Spearman over every
# edge, on tiny random GPT-2s (3 layers x 4 heads, weights N(0, 0.05), biases N(0, 0.1)), 16
# prompts of unequal length, float64. Measured, seeds 0 / 1 / 2:
#   EAP-IG (10 steps): mean ablation 0.952 / 0.958 / 0.972, corrupted 0.944 / 0.941 / 0.961
#   EAP:               mean ablation 0.953 / 0.901 / 0.974, corrupted 0.929 / 0.934 / 0.953
# With weights N(0, 0.1) (more non-linear) the same models give 0.84-0.92, and on the trained
# induction model (saturated attention) 0.4-0.6 for both: the estimates rank the large edges
# right there but not the many small ones (see the report).
EAP_IG_MIN, EAP_MIN = 0.9, 0.85


# The same on tiny random grouped-query LLaMAs (3 layers, 4 query heads sharing 2 key-value
# heads, RMSNorm, rotary positions; weights N(0, 0.05)), 16 prompts, float64, seeds 0 / 1 / 2:
#   EAP-IG (10 steps): mean ablation 0.889 / 0.806 / 0.919, corrupted 0.881 / 0.892 / 0.890
#   EAP:               mean ablation 0.903 / 0.915 / 0.922, corrupted 0.894 / 0.940 / 0.922
# Here EAP-IG ranks single-edge effects below EAP, and more steps do not change it (seed 1, mean:
# 1 / 3 / 10 / 30 steps 0.795 / 0.799 / 0.806 / 0.807): a single-edge ablation leaves every other
# edge clean, which is where EAP takes its gradient, while EAP-IG averages gradients along a
# path on which every edge is partly ablated at once. Both find 16 of the 20 largest exact
# effects among their own top 20 (seed 1, mean), Pearson 0.92 (EAP-IG) and 0.96 (EAP).
# Of the 20 largest exact effects, each estimate's own top 20 holds 16-19 on the GPT-2s (both
# methods, every seed and ablation), 16 on the LLaMA above.
MINIMA = {"gpt2": (EAP_IG_MIN, EAP_MIN, 14), "llama": (0.78, 0.85, 14)}
"""Per architecture: Spearman of EAP-IG and of EAP with exact single-edge ablation, and how many
of the 20 largest exact effects each must have in its own top 20."""


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ablation", ["mean", "corrupted"])
def test_scores_rank_edges_like_exact_single_edge_ablation(tmp_path, arch, seed,
                                                           ablation) -> None:
    from circuit_models import llama

    make = {"gpt2": gpt2, "llama": llama}[arch]
    d = save_dir(make(seed, std=0.05), tmp_path / "m")
    model = mechdiff.load_pair(d, d, device="cpu", dtype=torch.float64).base
    task = random_task(16, seed=seed)
    exact = _exact_single_edges(model, task, ablation)
    ig = edge_attribution(model, task, method="eap_ig", steps=10, ablation=ablation,
                          progress=False)
    eap = edge_attribution(model, task, method="eap", ablation=ablation, progress=False)
    ig_min, eap_min, top_min = MINIMA[arch]
    assert spearman(ig.scores, exact) >= ig_min
    assert spearman(eap.scores, exact) >= eap_min
    top = set(exact.abs().argsort(descending=True)[:20].tolist())
    for est in (ig, eap):
        found = len(top & set(est.scores.abs().argsort(descending=True)[:20].tolist()))
        assert found >= top_min


def test_parity_with_transformer_lens_edge_attribution(tiny) -> None:
    """TL 4.3's edge mode scores (a_clean - a_corrupt) . g on the corrupted run, per position;
    summed over positions it is our score with the roles of the two prompts exchanged (our
    clean = its corrupt): the same number, the sign convention converted by the exchange."""
    model = _model(tiny, "gpt2")
    graph = graph_of(model)
    task = random_task(3, seed=11, lengths=(7, 7))
    _, tokens = _prep.prepare(model, task, "corrupted")
    swapped = mechdiff.Task([list(map(int, t)) for t in tokens.corrupted_tokens],
                            answers=task.answers, wrong_answers=task.wrong_answers,
                            corrupted=[list(map(int, t)) for t in tokens.tokens])
    ours = edge_attribution(model, swapped, method="eap", ablation="corrupted", progress=False)
    ans, wrong = tokens.answer_ids, tokens.wrong_ids
    tl = torch.zeros(graph.n_edges)
    params = list(model.parameters())
    for p in params:  # TL differentiates through the parameters' graph; mechdiff freezes them
        p.requires_grad_(True)
    try:
        for i in range(tokens.n):
            def metric(logits, i=i):
                return logits[0, -1, ans[i]] - logits[0, -1, wrong[i]]

            res = attribution_patch(model, tokens.tokens[i:i + 1],
                                    tokens.corrupted_tokens[i:i + 1], metric,
                                    EdgeAttributionConfig(granularity="edge"))
            for (w, r), v in res.edge_scores.items():
                tl[graph.tl_edge(w, r)] += v / tokens.n
    finally:
        for p in params:
            p.requires_grad_(False)
    assert float(tl.abs().max()) > 1e-2
    torch.testing.assert_close(ours.scores, tl, atol=2e-5, rtol=1e-4)


def test_prompts_of_unequal_length_and_batches(tiny) -> None:
    model = _model(tiny, "llama")
    task = random_task(5, seed=2, lengths=(4, 12))
    whole = edge_attribution(model, task, method="eap_ig", steps=3, positions="each",
                             prompt_batch_size=5, progress=False)
    split = edge_attribution(model, task, method="eap_ig", steps=3, positions="each",
                             prompt_batch_size=2, progress=False)
    torch.testing.assert_close(split.per_prompt, whole.per_prompt, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(split.per_position, whole.per_position, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(whole.per_position.sum(1), whole.scores, atol=1e-5, rtol=1e-4)
    # With corrupted ablation each prompt's row is that prompt run alone, at its own read
    # position (with means, every prompt's ablation values depend on the others).
    batch = edge_attribution(model, task, method="eap", ablation="corrupted", progress=False)
    for i in (0, 3):
        one = mechdiff.Task([task.prompts[i]], answers=[task.answers[i]],
                            wrong_answers=[task.wrong_answers[i]], corrupted=[task.corrupted[i]])
        alone = edge_attribution(model, one, method="eap", ablation="corrupted", progress=False)
        torch.testing.assert_close(alone.per_prompt[0], batch.per_prompt[i], atol=1e-5,
                                   rtol=1e-4)
        assert float(alone.clean[0]) == pytest.approx(float(batch.clean[i]), abs=1e-5)


def test_result_saves_ranks_and_tables(tiny, tmp_path) -> None:
    model = _model(tiny, "gpt2")
    r = edge_attribution(model, random_task(3), method="eap", progress=False)
    loaded = EdgeScores.load(r.save(tmp_path / "scores"))
    torch.testing.assert_close(loaded.scores, r.scores)
    assert loaded.method == "eap" and loaded.ablation == "mean"
    top = r.top(3)
    assert abs(top[0].score) == pytest.approx(float(r.scores.abs().max()))
    assert top[0].label == r.edge_labels()[top[0].index]
    assert top[0].label in r.table(3)


def test_bad_options_are_refused_before_any_forward(tiny, monkeypatch) -> None:
    model = _model(tiny, "gpt2")

    def boom(*a, **k):
        raise AssertionError("a forward ran")

    monkeypatch.setattr(_run, "forward", boom)
    task = random_task(2)
    plain = mechdiff.Task(task.prompts, answers=task.answers, wrong_answers=task.wrong_answers)
    attribute = unchecked(edge_attribution)
    with pytest.raises(OptionError, match="method"):
        attribute(model, task, method="acdc")
    with pytest.raises(OptionError, match="ablation"):
        attribute(model, task, ablation="zero")
    with pytest.raises(OptionError, match="positions"):
        attribute(model, task, positions="some")
    with pytest.raises(OptionError, match="steps"):
        attribute(model, task, method="eap_ig", steps=0)
    with pytest.raises(PromptError, match="corrupted"):
        attribute(model, plain, ablation="corrupted")
    one = mechdiff.Task(task.prompts[:1], answers=task.answers[:1],
                        wrong_answers=task.wrong_answers[:1])
    with pytest.raises(PromptError, match="at least 2 prompts"):  # its mean is itself
        attribute(model, one, ablation="mean")
    kl = mechdiff.Task(task.prompts, metric="kl", corrupted=task.corrupted)
    with pytest.raises(OptionError, match="zero gradient at the clean run.*use method='eap_ig'"):
        attribute(model, kl, method="eap")  # every score would be 0
    with pytest.raises(OptionError, match="model must be a TransformerBridge.*got str"):
        attribute("gpt2", task)
    with pytest.raises(OptionError, match="model must be a TransformerBridge.*got GPT2LMHead"):
        attribute(model.original_model, task)
    with pytest.raises(OptionError, match=r"task must be a mechdiff.Task .*, got list"):
        attribute(model, list(task.prompts[:1]))  # (once read as a 1-prompt task: "at least 2")


def test_non_finite_activations_are_named_as_such_not_as_a_graph_problem(tmp_path) -> None:
    """An inf weight (unprocessed: compat processing refuses it at load) makes NaN activations;
    the decomposition check said 'relative error nan: this model adds, scales or normalizes
    something the graph does not model'. It is a broken model: MetricError, saying so."""
    from mechdiff.errors import MetricError

    broken = gpt2(0)
    with torch.no_grad():
        broken.transformer.h[1].mlp.c_fc.weight[0, 0] = float("inf")
    d = save_dir(broken, tmp_path / "inf")
    model = mechdiff.load_pair(d, d, device="cpu", processing="none").base
    with pytest.raises(MetricError, match="activations hold NaN/inf"):
        edge_attribution(model, random_task(3), method="eap", progress=False)


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
@pytest.mark.parametrize("metric", ["kl", "kl_all"])
def test_kl_metrics_read_the_ablated_run_where_the_clean_one_is_read(tiny, metric,
                                                                     ablation) -> None:
    """``kl_all`` reads every position: the corrupted run must be read at every position too
    (it was read at the last one: a shape error). The empty circuit's value equals the real
    every-edge-ablated run, and EAP-IG's scores sum to the change (completeness)."""
    model = _model(tiny, "llama", torch.float64)
    base = random_task(4, seed=3)
    task = mechdiff.Task(base.prompts, metric=metric, corrupted=base.corrupted)
    scores = edge_attribution(model, task, method="eap_ig", steps=3, ablation=ablation,
                              progress=False)
    graph, tokens = _prep.prepare(model, task, ablation)
    _, empty, _ = evaluate(model, graph, task, tokens, Replacements(ablation),
                           torch.zeros(0, graph.n_readers, graph.n_writers, dtype=torch.float64))
    assert float(scores.ablated.abs().max()) > 1e-3  # KL to the clean run: 0 there
    torch.testing.assert_close(scores.ablated, empty, atol=1e-10, rtol=1e-9)



def test_rankings_and_selections_refuse_sizes_that_are_not_counts(tiny) -> None:
    scores = edge_attribution(_model(tiny, "gpt2"), random_task(2), method="eap",
                              progress=False)
    top = unchecked(type(scores).top)
    for k in (-1, True):  # (a float is refused by the same check; here beartype refuses first)
        with pytest.raises(OptionError, match="k must be an integer"):
            top(scores, k)
    from mechdiff.circuits import select_circuit

    select = unchecked(select_circuit)
    for bad in ({"n": 2.7}, {"n": True}, {"n": -1}, {"fraction": True},
                {"rule": "threshold", "threshold": float("nan")}):
        with pytest.raises(OptionError):
            select(scores, **bad)


def test_a_float64_model_gives_float64_scores(tmp_path) -> None:
    d = save_dir(gpt2(3), tmp_path / "m")
    model = mechdiff.load_pair(d, d, device="cpu", dtype=torch.float64).base
    r = edge_attribution(model, random_task(2), method="eap", progress=False)
    assert r.scores.dtype == torch.float64


def _reader_grads(model, task, *, fork: bool):
    """Per-prompt EAP sums ``[batch, reader, writer]`` from one clean run and its backward."""
    from mechdiff.circuits._contract import Contraction

    graph, tokens = _prep.prepare(model, task, "mean")
    means = Replacements("mean")
    from mechdiff.circuits.ablation import mean_outputs

    means.means = mean_outputs(model, graph, tokens, 16)
    con = Contraction(tokens.n, graph.n_readers, graph.n_writers, int(tokens.tokens.shape[1]),
                      dtype=torch.float64, device=tokens.tokens.device, per_position=True)
    out = _run.forward(model, graph, tokens.tokens, tokens.read_pos, capture=True,
                       on_grad=con.on_grad, slot=con.slot, fork=fork)
    con.set_delta(means.blocks(model, graph, tokens), out.writers)
    con.backward(_logit_diff(tokens)(out.read), out)
    return con.acc, con.acc_pos


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("norm", ["closed", "wrong_form", "autograd"])
def test_projection_gradients_equal_the_forked_inputs_gradients(tiny, name, norm,
                                                               monkeypatch) -> None:
    """EAP takes q/k/v input gradients from the projections (no per-head fork): the same numbers
    as differentiating the bridge's per-head fork, for a closed-form norm VJP (LayerNorm for
    GPT-2, RMSNorm for LLaMA with GQA), for a wrong guess of the norm's form (caught on the
    first layer, then autograd through the module) and for autograd throughout."""
    model = _model(tiny, name, torch.float64)
    task = random_task(5, seed=4)
    forked, forked_pos = _reader_grads(model, task, fork=True)
    if norm == "wrong_form":
        real = _run._norm_form

        def wrong(ln):  # a norm weight the module does not apply (as Gemma's 1 + w)
            kind, weight, eps = real(ln)
            return kind, 2 * (weight if weight is not None else torch.ones(1)), eps

        monkeypatch.setattr(_run, "_norm_form", wrong)
    elif norm == "autograd":
        monkeypatch.setattr(_run, "_norm_form", lambda ln: None)
    calls = []
    real_closed = _run._closed_vjp
    monkeypatch.setattr(_run, "_closed_vjp", lambda *a: (calls.append(1), real_closed(*a)))
    proj, proj_pos = _reader_grads(model, task, fork=False)
    scale = float(forked.abs().max())
    assert scale > 0
    # LLaMA's RMSNorm computes in float32 even in a float64 model (the fork's reference too)
    tol = 1e-10 if name == "gpt2" else 1e-6
    assert float((proj - forked).abs().max()) <= tol * scale
    assert float((proj_pos - forked_pos).abs().max()) <= tol * scale
    n_layers = graph_of(model).n_layers
    assert len(calls) == {"closed": n_layers, "wrong_form": 1, "autograd": 0}[norm]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_unforked_runs_capture_the_same_head_outputs(tiny, name) -> None:
    """A run without interventions reads each head's output as ``z_h W_O[h]`` from ``hook_z``
    (no per-head result inside the bridge): the same writer blocks, head by head, as the
    bridge's ``hook_result`` in a forked run (GPT-2's Conv1D and LLaMA's Linear layouts)."""
    model = _model(tiny, name, torch.float64)
    graph, tokens = _prep.prepare(model, random_task(3, seed=5), "mean")
    assert _run.unforked(model)
    forked = _run.forward(model, graph, tokens.tokens, tokens.read_pos, capture=True, fork=True)
    plain = _run.forward(model, graph, tokens.tokens, tokens.read_pos, capture=True)
    assert len(forked.writers) == len(plain.writers) == 2 * graph.n_layers + 1
    for a, b in zip(forked.writers, plain.writers, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    assert torch.allclose(forked.read, plain.read, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_bfloat16_model_gives_the_float32_ranking(tiny, name) -> None:
    """Half precision: the decomposition check allows the dtype's own rounding (it refused every
    bfloat16 model at 1e-4), and EAP's scores (float32 accumulators) keep the float32 model's."""
    task = random_task(6, seed=1)
    ref = edge_attribution(_model(tiny, name), task, method="eap", progress=False).scores
    half = edge_attribution(_model(tiny, name, torch.bfloat16), task, method="eap",
                            progress=False)
    assert half.scores.dtype == torch.float32 and bool(torch.isfinite(half.scores).all())
    assert float(torch.corrcoef(torch.stack([ref, half.scores]))[0, 1]) >= 0.99
    assert spearman(ref.abs(), half.scores.abs()) >= 0.95


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_the_ablated_value_is_the_empty_circuit_run(tiny, ablation) -> None:
    """``EdgeScores.ablated`` (the corrupted run's own logits, or the closed form for means)
    equals the metric with every edge ablated by the real intervention machinery."""
    model = _model(tiny, "llama", torch.float64)
    task = random_task(5, seed=2)
    scores = edge_attribution(model, task, method="eap", ablation=ablation, progress=False)
    graph, tokens = _prep.prepare(model, task, ablation)
    _, empty, _ = evaluate(model, graph, task, tokens, Replacements(ablation),
                           torch.zeros(0, graph.n_readers, graph.n_writers, dtype=torch.float64))
    assert float((scores.ablated - scores.clean).abs().max()) > 0.05
    # float64 throughout (the closed form for means was summed in float32: 2.4e-7 off)
    torch.testing.assert_close(scores.ablated, empty, atol=1e-10, rtol=1e-10)


def test_edge_attribution_runs_under_torchs_flop_counter(tiny) -> None:
    """FlopCounterMode tracks modules with multi-grad hooks, which refuse ``torch.autograd.grad``
    on a leaf input: edge attribution (and the first run's norm check, which a fresh model does
    inside the backward pass) must still run there, with the same scores."""
    from torch.utils.flop_counter import FlopCounterMode

    model = _model(tiny, "llama")  # fresh: its closed-form norm check runs under the counter
    task = random_task(3, seed=5)
    with FlopCounterMode(display=False) as counter:
        counted = edge_attribution(model, task, method="eap", ablation="corrupted",
                                   progress=False)
    plain = edge_attribution(model, task, method="eap", ablation="corrupted", progress=False)
    torch.testing.assert_close(counted.scores, plain.scores)  # float32 rounding: 5e-7 of 1.4
    assert counter.get_total_flops() > 0


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_run_into_another_holds_the_difference_of_their_outputs(tiny, name) -> None:
    """EAP with corrupted prompts runs the corrupted prompts ``into`` the clean run: its tensor
    then holds corrupted minus clean outputs of every writer (heads from ``z_A - z_a``), equal
    to the difference of two separately captured runs."""
    model = _model(tiny, name, torch.float64)
    graph = graph_of(model)
    _, tokens = _prep.prepare(model, random_task(3, seed=2), "corrupted")
    assert _run.unforked(model)
    ids, corrupted, pos = tokens.tokens, tokens.corrupted_tokens, tokens.read_pos
    clean = _run.forward(model, graph, ids, pos, capture=True)
    corr = _run.forward(model, graph, corrupted, pos, capture=True)
    lazy = _run.forward(model, graph, ids, pos, capture=True, lazy_heads=True)
    torch.testing.assert_close(lazy.read, clean.read, rtol=0, atol=0)
    run = _run.forward(model, graph, corrupted, pos, capture=True, into=lazy)
    torch.testing.assert_close(run.read, corr.read, rtol=0, atol=0)
    assert run.writers is None and lazy.zs is None
    for got, a, c in zip(lazy.writers, corr.writers, clean.writers, strict=True):
        torch.testing.assert_close(got, a - c, rtol=1e-9, atol=1e-12)


def test_mean_ablation_of_a_float64_model_does_not_depend_on_the_batches(tiny) -> None:
    """The per-position means are summed in the model's precision: a float64 model's mean
    ablation gives the same scores in one batch or several to float64 rounding (float32 sums
    left 1e-7 of relative difference)."""
    model = _model(tiny, "llama", torch.float64)
    task = random_task(5, seed=4, lengths=(4, 12))
    kw = {"method": "eap", "ablation": "mean", "progress": False}
    whole = edge_attribution(model, task, prompt_batch_size=5, **kw)
    split = edge_attribution(model, task, prompt_batch_size=2, **kw)
    assert whole.scores.dtype == torch.float64
    torch.testing.assert_close(split.per_prompt, whole.per_prompt, rtol=1e-10, atol=1e-13)
