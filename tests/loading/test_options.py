"""Options are validated before any loading, with typed errors that blame the option: a wrong
device or dtype is never reported as a bad checkpoint, even when the checkpoint is also bad."""

from __future__ import annotations

import pytest
import torch
from support import unchecked

import mechdiff
from mechdiff.errors import OptionError
from mechdiff.loading import load_model, load_pair


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


BAD = [
    ({"device": "tpu"}, "device 'tpu' is not a device torch knows"),
    ({"device": "cuda:x"}, "is not a device torch knows"),
    ({"device": "meta"}, "mechdiff loads models on cpu, cuda, mps, not 'meta'"),
    ({"device": 3}, "device must be a string"),
    ({"dtype": torch.int64}, "dtype must be a floating-point torch dtype"),
    ({"dtype": "float32"}, "dtype must be a floating-point torch dtype"),
    ({"dtype": torch.float8_e4m3fn}, "dtype must be a floating-point torch dtype"),
    ({"processing": "folded"}, "processing must be 'compat'"),
    ({"allow_adapter_mismatch": "yes"}, "allow_adapter_mismatch must be True or False"),
]


@pytest.mark.parametrize(("kwargs", "words"), BAD)
def test_bad_options_are_refused_first(kwargs, words, tmp_path, no_boot):
    missing = tmp_path / "does-not-exist"  # a bad checkpoint too: the option is blamed first
    with pytest.raises(OptionError, match=words):
        unchecked(load_model)(missing, **{"device": "cpu", **kwargs})
    with pytest.raises(OptionError, match=words):
        unchecked(load_pair)(missing, missing, **{"device": "cpu", **kwargs})


def test_cuda_without_cuda(gpt2_dir, no_gpu, no_boot):
    with pytest.raises(OptionError, match="device 'cuda' was asked but CUDA is not available"):
        load_model(gpt2_dir, device="cuda")
    with pytest.raises(OptionError, match="CUDA is not available"):
        load_pair(gpt2_dir, gpt2_dir, device=torch.device("cuda", 0))


def test_cuda_index_beyond_the_gpus(gpt2_dir, one_gpu, no_boot):
    with pytest.raises(OptionError, match=r"device 'cuda:3' does not exist: 1 CUDA device\(s\) "
                                          r"visible \(cuda:0 to cuda:0\)"):
        load_model(gpt2_dir, device="cuda:3")


@pytest.mark.parametrize(("skip", "words"), [
    (["fold"], r"unknown processing steps \['fold'\]"),
    ("fold_ln", "must be a sequence of processing steps"),
])
def test_bad_skip(gpt2_dir, no_boot, skip, words):
    with pytest.raises(OptionError, match=words):
        unchecked(load_model)(gpt2_dir, device="cpu", skip=skip)


def test_skip_needs_compat(gpt2_dir, no_boot):
    with pytest.raises(OptionError, match="processing='none'"):
        load_model(gpt2_dir, device="cpu", processing="none", skip=["fold_ln"])


def test_base_only_for_adapters(gpt2_dir, no_boot):
    with pytest.raises(OptionError, match="base= is for LoRA adapters"):
        load_model(gpt2_dir, device="cpu", base=gpt2_dir)


def test_not_a_model_spec(no_boot):
    with pytest.raises(mechdiff.errors.CheckpointError, match="got int"):
        unchecked(load_model)(42, device="cpu")


def test_helpers_check_their_arguments(gpt2_dir):
    from mechdiff.loading import (
        ModelPair,
        active_hooks,
        check_compatible,
        load_info,
        model_device,
        model_provenance,
        processing_of,
    )

    pair = load_pair(gpt2_dir, gpt2_dir, device="cpu", processing="none")
    task = mechdiff.Task([[1, 2, 3]], answers=[1], wrong_answers=[2])
    for fn, args, kwargs, words in [
        (ModelPair.model, (pair, "ft"), {}, "side must be 'base' or 'finetuned'"),
        (ModelPair.provenance, (pair, task), {"seed": True}, "seed must be an integer"),
        (model_provenance, (pair.base, task), {"seed": "0"}, "seed must be an integer"),
        (model_provenance, (pair.base, task), {"model_id": 3}, "model_id must be a string"),
        (check_compatible, (pair.base, "gpt2"), {}, "b must be a TransformerBridge"),
        (processing_of, (pair.base.original_model,), {}, "must be a TransformerBridge"),
        (load_info, (None,), {}, "must be a TransformerBridge"),
        (model_device, (torch.nn.ReLU(),), {}, "ReLU has no parameters"),
        (active_hooks, ("model",), {}, "must be a torch.nn.Module"),
    ]:
        with pytest.raises(OptionError, match=words):
            unchecked(fn)(*args, **kwargs)
    assert pair.model("finetuned") is pair.finetuned and model_device(pair.base).type == "cpu"


def test_a_bridge_is_not_silently_left_on_another_device(gpt2_dir, one_gpu):
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(str(gpt2_dir), device="cpu")
    with pytest.raises(OptionError, match="device='cuda:0' was asked but the bridge passed in is "
                                          "on cpu"):
        load_model(bridge, device="cuda:0")
    with pytest.raises(OptionError, match="the bridge passed in is on cpu"):
        load_pair(bridge, bridge, device="cuda")
    assert load_model(bridge, processing="none")[0] is bridge  # no device given: stays
