"""Device placement of the engine: the audit itself, then exact and attribution patching,
the behaviour gap and the circuitsvis views.

On this CPU-only machine every call runs under :class:`device_audit.DeviceAudit`, which plays the
model's device as a second device and records each operation that would mix it with host tensors
(what fails with "Expected all tensors to be on the same device" on a GPU). The audit is first
shown to catch planted mistakes and to allow what CUDA allows. Where CUDA is present, the same
calls on ``cuda`` give the CPU's numbers. (The circuit analyses: ``circuits/test_device.py``.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from device_audit import NO_CUDA, DeviceAudit, is_host

import mechdiff
from mechdiff.pipeline import analyse_pair
from mechdiff.sites import Head
from mechdiff.views import pair_views

sys.path.insert(0, str(Path(__file__).parent / "circuits"))
from circuit_models import gpt2, llama, random_task, save_dir  # noqa: E402

MODELS = {"gpt2": gpt2, "llama": llama}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("device")
    return {name: (save_dir(make(0), root / f"{name}_a"), save_dir(make(1), root / f"{name}_b"))
            for name, make in MODELS.items()}


def _pair(dirs, name: str, device: str = "cpu") -> mechdiff.ModelPair:
    return mechdiff.load_pair(*dirs[name], device=device)


def test_the_audit_catches_host_tensors_meeting_device_tensors(dirs) -> None:
    """Planted mistakes are recorded; what CUDA allows is not."""
    model = _pair(dirs, "gpt2").base
    w = model.blocks[0].attn.q.original_component.weight  # made before the audit: device
    with DeviceAudit() as audit:
        _ = w + torch.zeros(w.shape)  # no device: a host tensor
    assert [op for op, _ in audit.violations] == ["add"]
    assert "test_device.py" not in audit.report()  # the caller's frame is not mechdiff's
    with DeviceAudit() as audit:
        idx = torch.arange(3)  # host
        _ = torch.index_select(w, 0, idx)  # CUDA refuses host indices here
        _ = torch.cat([w[:2], torch.ones(2, w.shape[1]).float()])  # a dtype-only .to(): host
        _ = w.cpu() * w  # .cpu() and .to("cpu") are the host
        _ = w.to("cpu") - w
        _ = torch.zeros(3, device="cpu") @ w[:3]
        _ = w[:3].sum(0) + torch.ones(w.shape[1])  # a device result meets a host tensor
    assert [op for op, _ in audit.violations] == ["index_select", "cat", "mul", "sub",
                                                  "matmul", "add"]
    with DeviceAudit() as audit:
        d = w.device  # the model's device as the audit names it
        idx = torch.arange(3)
        a = w[idx]  # host indices into a device tensor: allowed
        b = w * torch.tensor(2.0)  # a host scalar: allowed
        c = w + torch.zeros(w.shape, device=d)  # a factory on the model's device
        e = w + torch.ones(w.shape).to(d)  # moved
        f = w + torch.ones(w.shape).to(w)  # moved like another device tensor
        g = w.new_zeros(w.shape) + w  # new_* keep the source's device
        h = torch.zeros_like(w) + w
        w2 = w.clone()
        w2[idx] = torch.ones(3, w.shape[1])  # setitem copies across devices
        w2.copy_(torch.zeros(w.shape))
        host = torch.ones(4).cpu() * 2  # host with host
    assert audit.violations == [], audit.report()
    assert d != torch.device("cpu")
    assert not any(is_host(t) for t in (a, b, c, e, f, g, h, w2)) and is_host(host)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_engine_keeps_to_the_models_device(dirs, name) -> None:
    """Exact and attribution patching of every site kind at both position settings, single-model
    patching, the behaviour gap and the views: nothing made on the host meets the models'
    tensors (two prompt batches of unequal lengths)."""
    pair = _pair(dirs, name)
    task = random_task(6, seed=2)
    with DeviceAudit() as audit:
        mechdiff.behaviour_gap(pair, task, prompt_batch_size=4)
        for sites in ("heads", "attn", "mlp", "resid"):
            for positions in ("all", "each"):
                mechdiff.cross_patch(pair, task, sites=sites, positions=positions,
                                     prompt_batch_size=4, progress=False)
                for method in ("attribution", "integrated_gradients"):
                    mechdiff.attribute(pair, task, sites=sites, positions=positions,
                                       method=method, steps=2, prompt_batch_size=4,
                                       progress=False)
        for sites in ("heads", "resid"):
            mechdiff.activation_patch(pair.base, task, sites=sites, prompt_batch_size=4,
                                      progress=False)
            mechdiff.attribute_single(pair.base, task, sites=sites, prompt_batch_size=4,
                                      progress=False)
        analyse_pair(pair, task, label=name, sites=("heads", "mlp"),
                     methods=("exact", "attribution"), prompt_batch_size=4, progress=False)
        views = pair_views(pair, task, label=name, heads=[Head(0, 1), Head(1, 0)], n_prompts=3)
    assert audit.violations == [], audit.report()
    assert len(views.prompt_indices) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("name", list(MODELS))
def test_cuda_gives_the_cpus_numbers(dirs, name) -> None:
    task = random_task(6, seed=2)
    out = {}
    for device in ("cpu", "cuda"):
        pair = _pair(dirs, name, device)
        exact = mechdiff.cross_patch(pair, task, sites="heads", prompt_batch_size=4,
                                     progress=False)
        est = mechdiff.attribute(pair, task, sites="heads", method="integrated_gradients",
                                 prompt_batch_size=4, progress=False)
        gap = mechdiff.behaviour_gap(pair, task, prompt_batch_size=4)
        out[device] = (exact.scores, est.scores, torch.tensor(gap.gap), gap.kl_mean)
    for a, b in zip(out["cpu"], out["cuda"], strict=True):
        torch.testing.assert_close(b.cpu(), a.cpu(), atol=1e-4, rtol=1e-3)
