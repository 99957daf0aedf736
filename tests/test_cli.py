"""The mechdiff command line end to end: `patch` on tiny checkpoints with planted changes (the
planted component must come out on top, in the printed table and in the saved results), `demo`
(the real model by default) on a stand-in real zoo of tiny chat LLaMAs whose changed blocks are
planted, `demo --synthetic` on a stand-in zoo (fast) and on the zoo itself (slow), and one-line
errors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from support import random_prompts
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens.model_bridge import TransformerBridge
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from mechdiff import GapResult, PatchResult, Task
from mechdiff import zoo as zoo_pkg
from mechdiff.cli import DEFAULT_DEMO, build_parser, main
from mechdiff.zoo import real as real_pkg
from mechdiff.zoo.recipes import ARCH

SUFFIX_MAGIC = {".pdf": b"%PDF", ".png": b"\x89PNG"}


def write_jsonl(path: Path, n: int = 8, seed: int = 0) -> Path:
    rows = [{"prompt": p, "answer": "t1", "wrong_answer": "t2"}
            for p in random_prompts(n, seed=seed)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout and stderr captured (usable from module-scoped fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def table_rows(text: str) -> list[list[str]]:
    """The data rows of printed ranked tables: ``[rank, component, score, score...]``."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit():
            rows.append(parts)
    return rows


def check_figure(path: Path) -> None:
    assert path.is_file(), f"missing figure {path}"
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(SUFFIX_MAGIC[path.suffix])


@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any model is loaded (errors must come before loading)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", refuse)


# ---------------------------------------------------------------- patch, end to end


@pytest.fixture(scope="module")
def patch_run(ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("cli-patch")
    prompts = write_jsonl(tmp / "planted.jsonl")
    out = tmp / "out"
    code, stdout, stderr = run([
        "patch", "--base", str(ckpts["base"]), "--finetuned", str(ckpts["head_last"]),
        "--prompts", str(prompts), "--out", str(out), "--quiet",
    ])
    return code, stdout, stderr, out


def test_patch_ranks_the_planted_head_first(patch_run, ckpts: dict[str, Path]) -> None:
    code, stdout, stderr, out = patch_run
    assert code == 0, stderr
    rows = table_rows(stdout)
    assert rows[0][:2] == ["1", "L2H2"], stdout
    assert float(rows[0][2]) == pytest.approx(1.0, abs=1e-3)  # FT->base closes the whole gap
    assert float(rows[0][3]) == pytest.approx(1.0, abs=1e-3)  # and base->FT too
    # Only W_O of L2H2 changed: no other head moves the metric (MLP2 reads L2H2's output).
    others = [r for r in rows[1:] if r[1].startswith("L")]
    assert others and all(abs(float(v)) < 1e-3 for r in others for v in r[2:])
    for direction in ("ft_to_base", "base_to_ft"):
        heads = PatchResult.load(out / f"heads_{direction}")
        assert heads.top(1)[0].label == "L2H2"
        assert heads.dims == ("layer", "head") and heads.provenance.n_prompts == 8
        assert PatchResult.load(out / f"mlp_{direction}").dims == ("layer",)
    gap = GapResult.load(out / "gap")
    assert gap.provenance.finetuned == str(ckpts["head_last"])
    summary = json.loads((out / "summary.json").read_text())
    (pair,) = summary["pairs"].values()
    assert pair["ranking"][0]["component"] == "L2H2"
    assert "| 1 | L2H2 |" in (out / "summary.md").read_text()


def test_patch_writes_pdf_and_png_figures(patch_run) -> None:
    *_, out = patch_run
    for name in ("gap", "heads", "mlp"):
        for suffix in (".pdf", ".png"):
            check_figure(out / "figures" / f"{name}{suffix}")


def test_patch_options_one_direction_each_position(ckpts, tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", n=4)
    out = tmp_path / "out"
    code, stdout, stderr = run([
        "patch", "--base", str(ckpts["base"]), "--finetuned", str(ckpts["head_mid"]),
        "--prompts", str(prompts), "--sites", "heads", "--direction", "ft-to-base",
        "--positions", "each", "--metric", "logprob", "--top", "3", "--out", str(out), "--quiet",
    ])
    assert code == 0, stderr
    result = PatchResult.load(out / "heads_ft_to_base")
    assert result.dims == ("layer", "head", "pos") and result.provenance.metric == "logprob"
    assert not (out / "heads_base_to_ft").exists() and not (out / "mlp_ft_to_base").exists()
    rows = table_rows(stdout)
    assert len(rows) == 3 and rows[0][1].startswith("L1H1@")  # the planted head, at some position
    check_figure(out / "figures" / "heads_ft_to_base.png")


# ---------------------------------------------------------------- errors: one line, status 2


def assert_one_line_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mechdiff: error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0]


def test_missing_checkpoint_exits_2_naming_the_path(
    ckpts, tmp_path: Path, no_model_loading: None
) -> None:
    missing = tmp_path / "no_such_model"
    code, stdout, stderr = run([
        "patch", "--base", str(ckpts["base"]), "--finetuned", str(missing),
        "--prompts", str(write_jsonl(tmp_path / "p.jsonl")), "--out", str(tmp_path / "out"),
    ])
    assert_one_line_error(code, stderr, str(missing), "does not exist")
    assert stdout == ""


def test_empty_prompt_file_exits_2_with_the_prompt_error(
    ckpts, tmp_path: Path, no_model_loading: None
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    code, _, stderr = run([
        "patch", "--base", str(ckpts["base"]), "--finetuned", str(ckpts["head_last"]),
        "--prompts", str(empty), "--out", str(tmp_path / "out"),
    ])
    assert_one_line_error(code, stderr, "the prompt list is empty")


def test_multi_token_answer_exits_2(ckpts, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "t1 t2", "answer": "t3 t4", "wrong_answer": "t5"}) + "\n")
    code, _, stderr = run([
        "patch", "--base", str(ckpts["base"]), "--finetuned", str(ckpts["head_last"]),
        "--prompts", str(bad), "--out", str(tmp_path / "out"), "--quiet",
    ])
    assert_one_line_error(code, stderr, "not one")


def test_identical_models_exit_2_with_zero_gap(ckpts, tmp_path: Path) -> None:
    code, _, stderr = run([
        "patch", "--base", str(ckpts["base"]), "--finetuned", str(ckpts["base"]),
        "--prompts", str(write_jsonl(tmp_path / "p.jsonl", n=3)), "--out", str(tmp_path / "o"),
        "--quiet",
    ])
    assert_one_line_error(code, stderr, "no gap")


def test_usage_errors_exit_2(tmp_path: Path, no_model_loading: None) -> None:
    code, _, stderr = run(["patch", "--base", "a", "--finetuned", "b", "--prompts", "p.jsonl",
                           "--sites", "neurons"])
    assert code == 2 and "invalid choice" in stderr
    code, _, stderr = run(["patch", "--base", "a", "--finetuned", "b", "--prompts", "p.jsonl",
                           "--direction", "sideways"])
    assert code == 2 and "invalid direction" in stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, stderr = run(["demo", "--out", str(a_file)])
    assert_one_line_error(code, stderr, str(a_file), "not a folder")
    assert run([])[0] == 2
    assert run(["--help"])[0] == 0


# ---------------------------------------------------------------- demo


FAKE_ZOO = {"reweight": ("head_last", "L2H2"), "reweight_seed1": ("head_mid", "L1H1"),
            "newskill": ("mlp_last", "MLP2")}


def test_demo_on_a_stand_in_zoo(ckpts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's wiring, fast: the zoo replaced by checkpoints whose one change is planted."""
    dirs = {"base": ckpts["base"], **{k: ckpts[v] for k, (v, _) in FAKE_ZOO.items()}}
    seen = {}

    def fake_build(cache_dir=None, *, progress=True):  # noqa: ANN001, ANN202
        seen["cache"] = cache_dir
        return dirs

    def fake_task(name, *, n=32, seed=0):  # noqa: ANN001, ANN202
        return Task(random_prompts(n, seed=seed), answers=["t1"] * n, wrong_answers=["t2"] * n,
                    name=f"stand-in/{name}")

    monkeypatch.setattr(zoo_pkg, "build", fake_build)
    monkeypatch.setattr(zoo_pkg, "task", fake_task)
    out = tmp_path / "demo"
    code, stdout, stderr = run(["demo", "--synthetic", "--out", str(out), "--cache",
                                str(tmp_path / "c"), "--n-prompts", "4", "--quiet"])
    assert code == 0, stderr
    assert seen["cache"] == tmp_path / "c"
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["pairs"]) == list(zoo_pkg.FINETUNES)
    for name, (_, planted) in FAKE_ZOO.items():
        assert summary["pairs"][name]["ranking"][0]["component"] == planted
        assert f"{name}: {summary['pairs'][name]['mechanism']}" in stdout
        for analysis in ("heads_ft_to_base", "heads_base_to_ft", "mlp_ft_to_base",
                         "mlp_base_to_ft"):
            PatchResult.load(out / name / analysis)
        for fig in ("gap", "heads", "mlp"):
            check_figure(out / name / "figures" / f"{fig}.png")
    assert "re-weights an existing behaviour" in stdout and "builds a new skill" in stdout
    assert [r[1] for r in table_rows(stdout) if r[0] == "1"] == [p for _, p in FAKE_ZOO.values()]


@pytest.mark.slow
def test_demo_on_the_zoo(zoo: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cache = zoo["base"].parent.parent
    code, stdout, stderr = run(["demo", "--synthetic", "--out", str(out), "--cache", str(cache),
                                "--quiet", "--n-prompts", "16"])
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["pairs"]) == set(zoo_pkg.FINETUNES)
    components = {f"L{layer}H{h}" for layer in range(ARCH.n_layer) for h in range(ARCH.n_head)}
    components |= {f"MLP{layer}" for layer in range(ARCH.n_layer)}
    for name, spec in zoo_pkg.FINETUNES.items():
        pair = summary["pairs"][name]
        assert pair["gap"]["gap"] > 1.0  # every fine-tune raises its task's logit difference
        assert pair["task"] == f"zoo/{spec.task}"
        assert {r["component"] for r in pair["ranking"]} == components
        for fig in ("gap", "heads", "mlp"):
            for suffix in (".pdf", ".png"):
                check_figure(out / name / "figures" / f"{fig}{suffix}")
        assert PatchResult.load(out / name / "heads_ft_to_base").scores.shape == (ARCH.n_layer, ARCH.n_head)
    tops = [r[1] for r in table_rows(stdout) if r[0] == "1"]
    assert len(tops) == len(zoo_pkg.FINETUNES) and set(tops) <= components
    assert (out / "summary.md").read_text().count("| 1 |") == len(zoo_pkg.FINETUNES)


# ---------------------------------------------------------------- demo on the real model (stand-in)


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


def test_demo_runs_the_real_model_by_default() -> None:
    assert DEFAULT_DEMO == "real"
    parser = build_parser()
    assert parser.parse_args(["demo"]).demo == "real"
    assert parser.parse_args(["demo", "--real"]).demo == "real"
    assert parser.parse_args(["demo", "--synthetic"]).demo == "synthetic"
    assert parser.parse_args(["demo"]).n_prompts is None  # each demo has its own default


def test_real_demo_on_a_stand_in_real_zoo(
    tiny_real: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real demo's wiring end to end on tiny chat LLaMAs: results, figures, tables, the
    prompted-base comparison and the LoRA-vs-full comparison; changed layers found from weights."""
    seen = {}

    def fake_build(cache_dir=None, *, progress=True):  # noqa: ANN001, ANN202
        seen["cache"] = cache_dir
        return tiny_real

    monkeypatch.setattr(real_pkg, "build", fake_build)
    monkeypatch.setattr(real_pkg, "tasks", lambda cache_dir=None, *, progress=True: tiny_real_tasks())
    threads = torch.get_num_threads()
    out = tmp_path / "demo"
    code, stdout, stderr = run(["demo", "--out", str(out), "--cache", str(tmp_path / "c"),
                                "--n-prompts", "4", "--quiet"])
    assert code == 0, stderr
    assert torch.get_num_threads() == threads  # the demo's thread count is undone
    assert seen["cache"] == tmp_path / "c"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["demo"] == "real" and summary["n_prompts"] == 4
    assert list(summary["pairs"]) == ["distill", "trigger", "distill_lora"]
    for name, layers in PLANTED_LAYERS.items():
        pair = summary["pairs"][{"distilled": "distill"}.get(name, name)]
        assert pair["changed_layers"] == layers and pair["n_prompts"] == 4
        assert pair["ranked_by"] == "exact"
        spearman = pair["spearman_attribution_vs_exact"]
        assert set(spearman) == {"heads ft->base", "heads base->ft", "mlp ft->base", "mlp base->ft"}
        assert all(-1 - 1e-9 <= rho["all"] <= 1 + 1e-9 for rho in spearman.values())
    lora = summary["pairs"]["distill_lora"]
    assert lora["ranked_by"] == "attribution" and lora["changed_layers"] == [0, 1, 2]
    assert all(r["exact"] is None for r in lora["ranking"])
    # Results on disk: exact and attribution, both directions; unchanged blocks score 0 exactly.
    for name in ("distill", "trigger"):
        for kind in ("heads", "mlp"):
            for d in ("ft_to_base", "base_to_ft"):
                exact = PatchResult.load(out / name / f"{kind}_{d}")
                attr = PatchResult.load(out / name / f"attribution_{kind}_{d}")
                assert exact.method == "exact" and attr.method == "attribution"
                assert exact.scores.shape == attr.scores.shape
                assert exact.provenance.n_prompts == 4
        for fig in ("gap", "heads", "mlp", "attribution_heads", "attribution_mlp"):
            check_figure(out / name / "figures" / f"{fig}.png")
    heads = PatchResult.load(out / "trigger" / "heads_ft_to_base")
    assert heads.scores[:2].abs().max() < 1e-5 and heads.scores[2].abs().max() > 1e-3
    for fig in ("gap", "attribution_heads", "attribution_mlp"):
        check_figure(out / "distill_lora" / "figures" / f"{fig}.png")
    assert not (out / "distill_lora" / "heads_ft_to_base").exists()
    # The prompted base as the third model.
    prompted = summary["prompted_base"]
    assert set(prompted["metrics"]) == {"base", "prompted base", "distilled"}
    assert prompted["metrics"]["base"] == pytest.approx(summary["pairs"]["distill"]["gap"]["base"])
    assert set(prompted["correlation"]) == {"attn", "mlp"}
    for kind in ("attn", "mlp"):
        own = PatchResult.load(out / "prompted_base" / kind)
        assert own.direction == "clean->corrupted" and own.scores.shape == (TINY_LAYERS,)
        assert own.receiver.mean() == pytest.approx(prompted["metrics"]["base"], abs=1e-4)
    assert PatchResult.load(out / "distill" / "attn_ft_to_base").direction == "ft->base"
    check_figure(out / "prompted_base" / "figures" / "profiles.png")
    assert set(summary["lora_vs_full"]["agreement"]) == {
        "heads ft->base", "heads base->ft", "mlp ft->base", "mlp base->ft"}
    # What was printed: both scores side by side, the agreement, the readings.
    assert "exact   attrib." in stdout and "Spearman rho, attribution vs exact, heads" in stdout
    assert "The prompted base as the third model" in stdout and "reading:" in stdout
    assert "distill_lora vs distill" in stdout
    assert len([r for r in table_rows(stdout) if r[0] == "1"]) == 3
    md = (out / "summary.md").read_text()
    assert "| rank | component | exact FT\u2192base | attribution FT\u2192base" in md
    assert "## The prompted base as the third model" in md
