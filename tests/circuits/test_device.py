"""Device placement of the circuit analyses.

On this CPU-only machine every public circuit call runs under :class:`device_audit.DeviceAudit`,
which records each operation that would mix the model's device with host tensors (the audit's
own tests: ``tests/test_device.py``). Where CUDA is present, the same calls on ``cuda`` give the
CPU's numbers.
"""

from __future__ import annotations

import pytest
import torch
from circuit_models import random_task
from device_audit import NO_CUDA, DeviceAudit

import mechdiff
from mechdiff import circuits
from mechdiff.pipeline import analyse_circuits


def _pair(tiny, name: str, device: str = "cpu", dtype=torch.float32) -> mechdiff.ModelPair:
    return mechdiff.load_pair(tiny[name], tiny[f"{name}_b"], device=device, dtype=dtype)


@pytest.mark.filterwarnings("ignore::mechdiff.errors.VerdictWarning")  # 6 prompts: a preview
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_circuit_analyses_keep_to_the_models_device(tiny, name) -> None:
    """Every public circuit call, run with the models made before the audit: no operation mixes
    a tensor made on the host with the models' tensors (two prompt batches, unequal lengths)."""
    pair = _pair(tiny, name)
    task = random_task(6, seed=11)
    with DeviceAudit() as audit:
        for method in ("eap", "eap_ig"):
            for ablation in ("corrupted", "mean"):
                scores = circuits.edge_attribution(
                    pair.base, task, method=method, steps=2, ablation=ablation,
                    positions="each", prompt_batch_size=4, progress=False)
        curve = circuits.faithfulness_curve(pair.base, task, scores, fractions=(0.1, 0.5),
                                            prompt_batch_size=4, progress=False)
        circuit = circuits.select_circuit(scores, n=20)
        circuits.faithfulness(pair.finetuned, task, circuit, ablation="mean",
                              prompt_batch_size=4, progress=False)
        for direction in ("ft->base", "base->ft"):
            circuits.cross_edge_attribution(pair, task, direction=direction, exact_top=4,
                                            prompt_batch_size=4, progress=False)
        comparison = circuits.compare_circuits(pair, task, method="eap", ablation="corrupted",
                                               n_boot=20, prompt_batch_size=4, progress=False)
        analyse_circuits(pair, task, label=name, method="eap_ig", steps=2, cross_top=4,
                         n_boot=20, prompt_batch_size=4, progress=False)
    assert audit.violations == [], audit.report()
    assert curve.values.shape[-1] == 2 and comparison.verdict.label


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_cuda_gives_the_cpus_numbers(tiny, name) -> None:
    """The same calls on CUDA (the device taken from the models) give the CPU's numbers."""
    task = random_task(6, seed=11)
    out = {}
    for device in ("cpu", "cuda"):
        pair = _pair(tiny, name, device=device)
        scores = circuits.edge_attribution(pair.base, task, method="eap_ig", steps=3,
                                           ablation="mean", prompt_batch_size=4,
                                           progress=False)
        curve = circuits.faithfulness_curve(pair.base, task, scores, prompt_batch_size=4,
                                            progress=False)
        cross = circuits.cross_edge_attribution(pair, task, exact_top=4, prompt_batch_size=4,
                                                progress=False)
        assert scores.scores.device.type == "cpu"  # results live on the host
        out[device] = (scores.scores, curve.values, cross.estimate, cross.exact)
    for a, b in zip(out["cpu"], out["cuda"], strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-3)
