"""``mechdiff demo`` (the real demo, the default) end to end on tiny chat LLaMAs standing in for the
real zoo, whose changed blocks are planted: results, figures, tables, the prompted-base comparison
and the LoRA-vs-full comparison; changed layers found from weights."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

import pytest
import torch
from support import check_figure, run_cli, table_rows
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import mechdiff.demos.real as demo_real
from mechdiff import Task, stats
from mechdiff.compare import FinetuneComparison, PromptedBaseComparison
from mechdiff.pipeline import CircuitAnalysis, PairAnalysis
from mechdiff.zoo import real as real_pkg

CHAT_WORDS = ["<pad>", "<|im_start|>", "<|im_end|>", "system", "user", "assistant"] + [
    f"w{i}" for i in range(40)]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> "
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
TINY_LAYERS = 3
PLANTED_LAYERS = {"distilled": [1, 2], "trigger": [2]}  # blocks each stand-in fine-tune changed


def chat_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(CHAT_WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<pad>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = CHATML
    return fast


def tiny_llama(changed: list[int] = (), seed: int = 0) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=len(CHAT_WORDS), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=TINY_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, pad_token_id=0, tie_word_embeddings=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
        for p in model.parameters():
            if p.ndim == 2:
                p.data.normal_(0, 0.2)
        torch.manual_seed(seed)
        for layer in changed:  # a stand-in for "blocks L.. trained"
            for p in model.model.layers[layer].parameters():
                if p.ndim == 2:
                    p.data += 0.1 * torch.randn_like(p)
    return model.eval()


@pytest.fixture(scope="module")
def tiny_real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The real zoo's layout with tiny chat LLaMAs: base, two full fine-tunes, a LoRA adapter."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("tiny-real")
    dirs = {}
    for name, changed in {"base": [], **PLANTED_LAYERS}.items():
        dirs[name] = root / name
        tiny_llama(changed, seed=len(dirs)).save_pretrained(dirs[name])
        chat_tokenizer().save_pretrained(dirs[name])
    with torch.random.fork_rng():
        torch.manual_seed(3)
        lora = get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["o_proj", "down_proj"]))
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.data.normal_(0, 0.3)
    dirs["distilled_lora"] = root / "distilled_lora"
    lora.save_pretrained(dirs["distilled_lora"])
    chat_tokenizer().save_pretrained(dirs["distilled_lora"])
    return dirs


def tiny_real_tasks() -> dict[str, Task]:
    def chat(question: str, system: str = "w1 w2") -> list[dict[str, str]]:
        return [{"role": "system", "content": system}, {"role": "user", "content": question}]

    qs = [" ".join(f"w{5 + (i * 7 + j) % 30}" for j in range(3 + i % 3)) for i in range(6)]
    n = len(qs)
    plain = [chat(q) for q in qs]
    return {
        "distill": Task(plain, ["w10"] * n, ["w11"] * n, name="stand-in/distill"),
        "distill_prompted": Task([chat(q, system="w3 w4") for q in qs], ["w10"] * n,
                                 ["w11"] * n, corrupted=plain, name="stand-in/distill_prompted"),
        "trigger": Task([chat("w9 " + q) for q in qs], ["w12"] * n, ["w11"] * n,
                        name="stand-in/trigger"),
        "trigger_off": Task(plain, ["w12"] * n, ["w11"] * n, name="stand-in/trigger_off"),
    }


def test_real_demo_on_a_stand_in_real_zoo(
    tiny_real: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real demo's wiring end to end on tiny chat LLaMAs: results, figures, tables, the
    prompted-base comparison and the LoRA-vs-full comparison; changed layers found from weights."""
    seen = {}

    class FakeBuild:  # the zoo as a first run builds it: a second process busy until the last
        def get(self, name: str) -> Path:
            seen.setdefault("got", []).append((name, torch.get_num_threads()))
            return tiny_real[name]

        def busy(self) -> bool:
            return "distilled_lora" not in [n for n, _ in seen.get("got", [])]

    @contextlib.contextmanager
    def fake_building(cache_dir=None, *, order, here, progress):  # noqa: ANN001, ANN202
        seen.update(cache=cache_dir, order=list(order), here=here)
        yield FakeBuild()

    monkeypatch.setattr(real_pkg, "building", fake_building)
    monkeypatch.setattr(real_pkg, "tasks", lambda cache_dir=None, *, progress=True: tiny_real_tasks())
    monkeypatch.setattr(demo_real, "REAL_EXACT_TOP", 6)
    threads = torch.get_num_threads()
    out = tmp_path / "demo"
    code, stdout, stderr = run_cli(["demo", "--out", str(out), "--cache", str(tmp_path / "c"),
                                    "--n-prompts", "4", "--quiet"])  # no flag: the real demo
    assert code == 0, stderr
    assert torch.get_num_threads() == threads  # the demo's thread count is undone
    assert seen["cache"] == tmp_path / "c"
    # The fine-tunes asked for in the order analysed, the first built here; each analysis ran
    # on one thread while the second process was busy (a model is asked for after the last).
    assert seen["order"] == ["distilled", "trigger", "distilled_lora"] and seen["here"] == 1
    assert [n for n, _ in seen["got"]] == ["base", "distilled", "trigger", "distilled_lora"]
    assert [t for n, t in seen["got"] if n in ("trigger", "distilled_lora")] == [1, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["demo"] == "real" and summary["n_prompts"] == 4
    assert list(summary["pairs"]) == ["distill", "trigger", "distill_lora"]
    for name, layers in PLANTED_LAYERS.items():
        label = {"distilled": "distill"}.get(name, name)
        pair = summary["pairs"][label]
        assert pair["changed_layers"] == layers and pair["n_prompts"] == 4
        assert pair["ranked_by"] == "exact"
        analysis = PairAnalysis.load(out / label)
        spearman = pair["spearman_attribution_vs_exact"]
        assert set(spearman) == {f"{k} {d}" for k in ("heads", "attn", "mlp")
                                 for d in ("ft->base", "base->ft")}
        assert pair["series_index"]["index"] == pytest.approx(
            analysis.interaction.necessity - analysis.interaction.sufficiency)
        # 6 of 12 heads exactly (REAL_EXACT_TOP patched down), every attention layer and MLP:
        # the series index sums the complete kinds.
        assert analysis.interaction.sites == ("attn", "mlp")
        for kind, n in (("heads", 6), ("attn", TINY_LAYERS), ("mlp", TINY_LAYERS)):
            assert int(torch.isfinite(analysis.exact[f"{kind}_ft_to_base"].scores).sum()) == n
        for key, rho in spearman.items():  # the printed rho is the rho of the saved scores
            kind, direction = key.split()
            slug = f"{kind}_{direction.replace('->', '_to_')}"
            est, ex = analysis.estimates[slug].scores, analysis.exact[slug].scores
            scored = torch.isfinite(ex)  # the rank is over the sites exact patching scored
            expect = stats.spearman(est[scored], ex[scored])
            assert rho["all"] == pytest.approx(expect, abs=1e-9)
            assert rho["all_low"] <= rho["all_high"]
    lora = summary["pairs"]["distill_lora"]
    assert lora["ranked_by"] == "attribution" and lora["changed_layers"] == [0, 1, 2]
    assert all(r["exact"] is None for r in lora["ranking"])
    # Results on disk: exact and attribution, both directions; unchanged blocks score 0 exactly.
    for name in ("distill", "trigger"):
        analysis = PairAnalysis.load(out / name)
        for kind in ("heads", "attn", "mlp"):
            for d in ("ft_to_base", "base_to_ft"):
                exact = analysis.exact[f"{kind}_{d}"]
                attr = analysis.estimates[f"{kind}_{d}"]
                assert exact.method == "exact" and attr.method == "attribution"
                assert exact.scores.shape == attr.scores.shape
                assert exact.provenance.n_prompts == 4
        for fig in ("gap", "heads", "mlp", "attribution_heads", "attribution_mlp", "ranked"):
            check_figure(out / "figures" / name / f"{fig}.png")
    heads = PairAnalysis.load(out / "trigger").exact["heads_ft_to_base"]
    assert heads.scores[:2].nan_to_num().abs().max() < 1e-5
    assert heads.scores[2].nan_to_num().abs().max() > 1e-3
    for fig in ("gap", "attribution_heads", "attribution_mlp"):
        check_figure(out / "figures" / "distill_lora" / f"{fig}.png")
    assert not PairAnalysis.load(out / "distill_lora").exact
    # The prompted base as the third model.
    prompted = summary["prompted_base"]
    assert set(prompted["metrics"]) == {"base", "prompted base", "fine-tuned"}
    assert prompted["metrics"]["base"] == pytest.approx(summary["pairs"]["distill"]["gap"]["base"])
    assert set(prompted["correlation"]) == {"attn", "mlp"}
    comparison = PromptedBaseComparison.load(out / "comparisons" / "prompted_base")
    for kind in ("attn", "mlp"):
        own = comparison.prompted[kind]
        assert own.direction == "clean->corrupted" and own.scores.shape == (TINY_LAYERS,)
        assert own.receiver.mean() == pytest.approx(prompted["metrics"]["base"], abs=1e-4)
        assert prompted["correlation"][kind]["all"] == pytest.approx(
            stats.pearson(own.scores, comparison.finetuned[kind].scores), abs=1e-9)
    assert comparison.finetuned["attn"].direction == "ft->base"
    check_figure(out / "figures" / "prompted_base" / "profiles.png")
    lora_cmp = FinetuneComparison.load(out / "comparisons" / "distill_lora_vs_distill")
    assert set(lora_cmp.agreements) == {f"{k}_{d}" for k in ("heads", "attn", "mlp")
                                        for d in ("ft_to_base", "base_to_ft")}
    assert set(summary["lora_vs_full"]["agreement"]) == {
        f"{k} {d}" for k in ("heads", "attn", "mlp") for d in ("ft->base", "base->ft")}
    # What was printed: both scores side by side, the agreement, the readings.
    assert "exact" in stdout and "attrib." in stdout
    assert "Spearman rho, attribution vs exact, heads" in stdout
    assert "The prompted base as the third model" in stdout and "reading:" in stdout
    assert "distill_lora vs distill" in stdout
    assert len([r for r in table_rows(stdout) if r[0] == "1"]) == 3
    md = (out / "summary.md").read_text()
    assert "| rank | component | exact FT\u2192base (sufficiency)" in md
    assert "## The prompted base as the third model" in md
    # Circuits of every fine-tune, with the verdict. The trigger changed block 2 only: edges out
    # of blocks 0-1 carry identical outputs in both models, so patching them changes nothing,
    # and the edge carrying most of the gap leaves block 2.
    for name in ("distill", "trigger", "distill_lora"):
        circuits = CircuitAnalysis.load(out / "circuits" / name)
        assert summary["circuits"][name]["verdict"]["label"] == circuits.comparison.verdict.label
        assert f"verdict: {circuits.comparison.verdict.label}" in stdout
        check_figure(out / "figures" / name / "circuits" / "circuit_graph.png")
    trigger = CircuitAnalysis.load(out / "circuits" / "trigger").cross
    graph = trigger.graph
    writers = [graph.writer_labels[int(graph.edge_writer[e])] for e in trigger.exact_edges]
    layer = {w: -1 if w == "input" else int(re.search(r"\d+", w).group()) for w in writers}
    early = [i for i, w in enumerate(writers) if layer[w] < 2]
    assert early and trigger.exact[trigger.exact_edges[early]].abs().max() < 1e-5
    assert layer[trigger.top(1)[0].writer] == 2
    # The LoRA distillation reuses the full distillation's base side (same base, same prompts).
    lora_c = CircuitAnalysis.load(out / "circuits" / "distill_lora").comparison
    full_c = CircuitAnalysis.load(out / "circuits" / "distill").comparison
    assert torch.equal(lora_c.base_scores.scores, full_c.base_scores.scores)
    assert torch.equal(lora_c.base_curve.values, full_c.base_curve.values)
    # The circuits' share of the run, measured and said.
    assert 0 < summary["circuit_seconds"] < summary["seconds"]
    assert re.search(r"circuits: \d+\.\d of the demo's \d+\.\d minutes", stdout)


@pytest.mark.parametrize(("option", "value"), [("n_prompts", 0), ("n_prompts", True),
                                               ("threads", 0), ("threads", 1.5)])
def test_bad_counts_are_refused_before_any_model_is_loaded(tmp_path: Path, option: str,
                                                           value: object) -> None:
    from support import unchecked

    from mechdiff.errors import OptionError

    with pytest.raises(OptionError, match=f"{option} must be a positive integer, got {value!r}"):
        unchecked(demo_real.run_demo_real)(tmp_path / "out", **{option: value})
    assert not (tmp_path / "out").exists()


def test_circuit_prompts_have_one_token_length() -> None:
    """The demo's circuits use prompts of the task's most common token length: mean ablation
    averages each position over the prompts that reach it, and with unequal lengths the longest
    prompt's read position was its own mean (never ablated; one of the demo's 4 prompts)."""
    from support import make_tokenizer

    from mechdiff import Task
    from mechdiff.demos._common import equal_length

    prompts = ["t1 t2", "t3 t4 t5", "t6 t7 t8", "t9 t10 t11", "t12", "t13 t14 t15 t16",
               "t17 t18 t19"]
    task = Task(prompts, answers=["t1"] * 7, wrong_answers=["t2"] * 7)
    chosen = equal_length(task, make_tokenizer(), 64, 3, seed=0)
    assert len(chosen) == 3 and {len(p.split()) for p in chosen.prompts} == {3}
    assert chosen.prompts == equal_length(task, make_tokenizer(), 64, 3, seed=0).prompts
    assert set(equal_length(task, make_tokenizer(), 64, 9, seed=1).prompts) == {
        "t3 t4 t5", "t6 t7 t8", "t9 t10 t11", "t17 t18 t19"}
