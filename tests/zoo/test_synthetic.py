"""Tests of mechdiff.zoo: data and determinism (fast), the built zoo against its thresholds (slow)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from support import unchecked
from transformers import GPT2LMHeadModel

from mechdiff.errors import CheckpointError
from mechdiff.zoo import (
    FINETUNES,
    MODELS,
    TASKS,
    THRESHOLDS,
    accuracy,
    build,
    default_cache_dir,
    model_dir,
    score,
    task,
    tokenizer,
    zoo_dir,
)
from mechdiff.zoo.synthetic import cache as cache_module
from mechdiff.zoo.synthetic import data, vocab
from mechdiff.zoo.synthetic.recipes import ARCH, PRETRAIN_MIX
from mechdiff.zoo.synthetic.train import Arch, Schedule, init_model, train

# ---------------------------------------------------------------- fast: vocabulary, data, tasks


def test_tokenizer_round_trips_and_ids_match_config() -> None:
    tok = tokenizer()
    prompt = "a = 3 , f = 7 ; f = ->  | ?"
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert vocab.decode(ids) == " ".join(prompt.split())
    assert tok.unk_token_id not in ids
    cfg = ARCH.config()
    assert cfg.bos_token_id == tok.bos_token_id == vocab.ID["<bos>"]
    assert cfg.eos_token_id == tok.eos_token_id
    assert cfg.pad_token_id == tok.pad_token_id == vocab.ID["<pad>"]
    assert cfg.vocab_size == len(tok)


def test_batches_are_deterministic_and_targets_are_next_tokens() -> None:
    a = data.batch(random.Random(7), dict(PRETRAIN_MIX), 32)
    b = data.batch(random.Random(7), dict(PRETRAIN_MIX), 32)
    c = data.batch(random.Random(8), dict(PRETRAIN_MIX), 32)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    tokens, targets = a
    trained = targets != data.IGNORE
    assert trained.any(dim=1).all()  # every example trains somewhere
    assert torch.equal(targets[:, :-1][trained[:, :-1]], tokens[:, 1:][trained[:, :-1]])


def test_newskill_marker_never_in_pretraining_data() -> None:
    rng = random.Random(0)
    for _ in range(20):
        tokens, _ = data.batch(rng, dict(PRETRAIN_MIX), 64)
        assert not (tokens == vocab.ID["?"]).any()
    tokens, _ = data.batch(rng, {"newskill": 1.0}, 8)
    assert (tokens == vocab.ID["?"]).sum() == 8


def test_ambiguous_pretraining_split() -> None:
    rng = random.Random(0)
    exs = [data.ambiguous(rng) for _ in range(2000)]
    reversed_share = sum(e.ids[6] == e.ids[4] for e in exs) / len(exs)
    assert 0.25 < reversed_share < 0.35


@pytest.mark.parametrize("name", TASKS)
def test_tasks_are_seeded_single_token_and_fit(name: str) -> None:
    t = task(name, n=16, seed=3)
    assert t.prompts == task(name, n=16, seed=3).prompts
    assert t.prompts != task(name, n=16, seed=4).prompts
    toks = t.tokenize(tokenizer(), n_ctx=ARCH.n_positions)  # raises on multi-token answers
    assert toks.tokens.shape == (16, int(toks.lengths[0]))  # equal lengths
    assert (toks.answer_ids != toks.wrong_ids).all()


def test_task_answers_follow_the_rules() -> None:
    amb = task("ambiguous", n=8)
    for p, a, w in zip(amb.prompts, amb.answers, amb.wrong_answers, strict=True):
        xs = p.split()
        assert xs[-1] == "->" and a == xs[-2] and w == xs[0]
    new = task("newskill", n=8)
    for p, a, w in zip(new.prompts, new.answers, new.wrong_answers, strict=True):
        x = p.split()[-2]
        assert w == x and a == chr((ord(x) - ord("a") + 1) % 26 + ord("a"))
    kv = task("kv_recall", n=8)
    for p, a in zip(kv.prompts, kv.answers, strict=True):
        xs = p.split()
        assert xs[-2] == ";" and a == xs[xs.index(xs[-1]) + 1]


def test_unknown_names_raise() -> None:
    with pytest.raises(ValueError, match="unknown zoo task"):
        unchecked(task)("nope")
    with pytest.raises(ValueError, match="unknown zoo model"):
        unchecked(model_dir)("nope")


def _forbidden(name: str):
    def call(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"the library called the global random.{name}()")

    return call


def test_training_is_deterministic_and_leaves_global_rng_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arch = Arch(n_layer=1, n_head=2, n_embd=16, n_positions=32)
    sched = Schedule(steps=10, batch_size=8, lr=1e-3, warmup=2, weight_decay=0.01, mix=PRETRAIN_MIX)
    torch_state = torch.get_rng_state()
    threads = torch.get_num_threads()
    # The library must draw only from the random.Random passed in. (Comparing random.getstate()
    # does not work here: beartype, which checks types in the test session, samples containers
    # with the global generator.) Any call to the module-level functions fails the test.
    for name in ("random", "randint", "randrange", "choice", "choices", "sample", "shuffle",
                 "seed", "uniform", "gauss"):
        monkeypatch.setattr(random, name, _forbidden(name))

    def run(seed: int) -> dict[str, torch.Tensor]:
        m = init_model(arch, 0)
        train(m, sched, rng=random.Random(seed), progress=False)
        return m.state_dict()

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert torch.get_num_threads() == threads


def test_default_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MECHDIFF_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "zoo"
    assert zoo_dir().parent == tmp_path / "zoo"
    monkeypatch.delenv("MECHDIFF_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "mechdiff" / "zoo"


def test_incomplete_cache_dir_raises_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started before the cache was validated")

    monkeypatch.setattr(cache_module, "train", no_training)
    broken = zoo_dir(tmp_path) / "reweight"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="missing"):
        build(tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="reweight"):
        model_dir("base", tmp_path, progress=False)


# ---------------------------------------------------------------- slow: the built zoo


# The `zoo` fixture (session scope, shared with test_cli.py) lives in conftest.py.


@pytest.fixture(scope="module")
def hf_models(zoo: dict[str, Path]) -> dict[str, GPT2LMHeadModel]:
    return {name: GPT2LMHeadModel.from_pretrained(str(path)).eval() for name, path in zoo.items()}


@pytest.mark.slow
@pytest.mark.parametrize("threshold", THRESHOLDS, ids=str)
def test_thresholds_hold(threshold, hf_models: dict[str, GPT2LMHeadModel]) -> None:  # noqa: ANN001
    # Fresh prompts (seed 0), not the ones the build scored itself on.
    value = score(hf_models[threshold.model], task(threshold.task, n=256, seed=0)).get(
        threshold.measure
    )
    assert threshold.passes(value), f"{threshold}: measured {value:.3f}"


@pytest.mark.slow
def test_finetunes_move_their_task_the_stated_way(hf_models: dict[str, GPT2LMHeadModel]) -> None:
    amb = task("ambiguous", n=128, seed=1)
    base = score(hf_models["base"], amb)
    for name in ("reweight", "reweight_seed1"):
        ft = score(hf_models[name], amb)
        assert ft.get("answer_prob") > base.get("answer_prob") + 0.5
    new = task("newskill", n=128, seed=1)
    assert accuracy(hf_models["newskill"], new) > accuracy(hf_models["base"], new) + 0.7
    # The seeds differ in weights, not just by name.
    a, b = hf_models["reweight"].state_dict(), hf_models["reweight_seed1"].state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_dirs_boot_offline_in_transformer_bridge(
    name: str, zoo: dict[str, Path], hf_models: dict[str, GPT2LMHeadModel]
) -> None:
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(zoo[name]), device="cpu")
    bridge.enable_compatibility_mode()
    t = task("ambiguous", n=8)
    tokens = bridge.to_tokens(list(t.prompts))
    assert tokens.shape[1] == len(t.prompts[0].split()) + 1  # <bos> prepended, nothing cut
    with torch.no_grad():
        ours = bridge(tokens).log_softmax(-1)
        ref = hf_models[name](tokens).logits.log_softmax(-1)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_zoo_json_records_seeds_and_scores(zoo: dict[str, Path]) -> None:
    index = json.loads((zoo["base"].parent / "zoo.json").read_text())
    assert set(index["models"]) == set(MODELS)
    for name, spec in FINETUNES.items():
        entry = index["models"][name]
        assert entry["seed"] == spec.seed and entry["parent"] == "base"
        assert entry["scores"]
    assert (
        index["models"]["reweight"]["data_stream"]
        != index["models"]["reweight_seed1"]["data_stream"]
    )


@pytest.mark.slow
def test_second_build_reuses_the_cache(
    zoo: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached zoo was retrained")

    monkeypatch.setattr(cache_module, "train", no_training)
    before = {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in zoo.items()}
    again = build(zoo["base"].parent.parent, progress=False)
    assert again == zoo
    assert {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in again.items()} == before


@pytest.mark.slow
def test_damaged_weights_raise(zoo: dict[str, Path], tmp_path: Path) -> None:
    copy = zoo_dir(tmp_path) / "base"
    shutil.copytree(zoo["base"], copy)
    assert model_dir("base", tmp_path, progress=False) == copy  # intact copy is accepted
    weights = copy / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="hash"):
        model_dir("base", tmp_path, progress=False)
