"""A CUDA device-placement audit that runs on a CPU-only machine.

The usual way code breaks when a model moves to a GPU: a tensor is made without ``device=``
(so on the CPU, torch's default device) and then meets the model's tensors in one operation
(``Expected all tensors to be on the same device``). On a CPU-only machine both are CPU tensors
and nothing fails, so such a line passes every CPU test.

:class:`DeviceAudit` is a ``TorchFunctionMode`` that plays the model's device as a second device.
Tensors that existed before it was entered (the model's parameters and buffers) are *device*
tensors, and a device tensor's ``.device`` reads ``cpu:0`` (:data:`MODEL_DEVICE`, a CPU device
with an index), a host tensor's ``cpu``. So ``device=x.device`` follows ``x``, and
``model_device(model)`` names the model's device as the code sees it. Inside the audit:

* a factory (``torch.zeros``, ``torch.tensor``, ``arange``, ``from_numpy``, ...) without a
  ``device`` makes a host tensor (``as_tensor(t)`` keeps ``t``'s); with ``device="cpu"`` a host
  tensor, with ``cpu:0`` a device tensor;
* ``.cpu()`` and ``.to("cpu")`` give host tensors, ``.to(model device)`` and ``.to(tensor)`` move
  like that device or tensor, a dtype-only ``.to()`` and ``new_*`` keep the source's;
* any other result is host if every tensor input is host.

An operation that mixes a host tensor with a device tensor is recorded as a violation, with the
rules CUDA applies: host tensors of zero dimensions (CPU scalars) may meet device tensors;
``copy_`` and ``__setitem__`` copy across devices; a device tensor may be indexed with host
indices (``x[idx]``). What it reports is a line that fails on a GPU. What it cannot see: work
inside torch's C++ (the backward pass, whose gradients are on the device anyway) and tensors
made before it was entered (cached at import time, say), which it takes for device tensors.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

_HOST = "_mechdiff_audit_host"
MODEL_DEVICE = torch.device("cpu", 0)
"""What a device tensor's ``.device`` says under the audit: a CPU device with an index, so that
tensors made with ``device=x.device`` follow ``x`` and ``.to("cpu")`` means the host."""
HOST_DEVICE = torch.device("cpu")
NO_CUDA = "CUDA is not available on this machine (device placement is checked by the device audit)"
_FACTORIES = _device_constructors() | {torch.from_numpy, torch.frombuffer}
_COPIES = {torch.Tensor.copy_, torch.Tensor.__setitem__}
_NEW = {torch.Tensor.new_tensor, torch.Tensor.new_zeros, torch.Tensor.new_ones,
        torch.Tensor.new_empty, torch.Tensor.new_full}
_DEVICE_PROPERTY = torch._C.TensorBase.__dict__["device"]


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def is_host(t: torch.Tensor) -> bool:
    return bool(getattr(t, _HOST, False))


def _mark(out: Any, host: bool) -> None:
    for t in _tensors(out):
        try:
            setattr(t, _HOST, host)
        except (AttributeError, RuntimeError):  # a tensor subclass without a __dict__
            pass


def _host_device(device: Any) -> bool | None:
    """Whether a ``device`` argument names the host (None: not a device)."""
    if isinstance(device, (str, torch.device)):
        return torch.device(device).index is None
    return None


class DeviceAudit(TorchFunctionMode):
    """Record every operation that would mix the model's device with the host (module
    docstring). ``violations`` holds ``(operation, where)`` pairs; ``where`` is the innermost
    mechdiff frame of the call."""

    def __init__(self) -> None:
        super().__init__()
        self.violations: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__self__", None) is _DEVICE_PROPERTY:
            return HOST_DEVICE if is_host(args[0]) else MODEL_DEVICE
        out = func(*args, **kwargs)
        if func in _FACTORIES:
            data = args[0] if args else kwargs.get("data")
            named = _host_device(kwargs.get("device"))
            if named is not None:
                _mark(out, named)
            else:  # as_tensor(t) keeps t's device; anything else is made on the host
                _mark(out, is_host(data) if isinstance(data, torch.Tensor) else True)
            return out
        if func in (torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.to, torch.Tensor.type_as
                    ) or func in _NEW:
            host = self._moved(func, args, kwargs)
            if out is args[0] and is_host(out) != host:
                # on this machine the move returned its input; on a GPU it is a new tensor
                out = out.view_as(out)
            _mark(out, host)
            return out
        inputs = list(_tensors(args)) + list(_tensors(kwargs))
        if not inputs or func in _COPIES:
            return out
        host = [t for t in inputs if is_host(t)]
        device = [t for t in inputs if not is_host(t)]
        if func is torch.Tensor.__getitem__ and not is_host(args[0]):
            host = []  # host indices into a device tensor: allowed
        if device and any(t.ndim > 0 for t in host):  # host scalars may meet device tensors
            self._violation(func)
        _mark(out, bool(host) and not device)  # host only if every input is
        return out

    @staticmethod
    def _moved(func, args, kwargs) -> bool:
        """Whether a ``cpu`` / ``cuda`` / ``to`` / ``type_as`` / ``new_*`` call's result is a
        host tensor."""
        if func is torch.Tensor.cpu:
            return True
        if func is torch.Tensor.cuda:
            return False
        if func is torch.Tensor.type_as:
            return is_host(args[1])
        targets = [kwargs.get("device")] + (list(args[1:]) if func is torch.Tensor.to else [])
        targets.append(kwargs.get("other"))
        for target in targets:
            if isinstance(target, torch.Tensor):
                return is_host(target)
            named = _host_device(target)
            if named is not None:
                return named
        return is_host(args[0])  # a dtype-only .to(), or new_* without a device

    def _violation(self, func) -> None:
        name = getattr(func, "__name__", None) or repr(func)
        frames = [f for f in traceback.extract_stack()[:-2] if "/mechdiff/" in f.filename
                  and "/tests/" not in f.filename]
        where = f"{frames[-1].filename}:{frames[-1].lineno} ({frames[-1].line})" if frames \
            else "outside mechdiff"
        self.violations.append((name, where))

    def report(self) -> str:
        seen: dict[tuple[str, str], int] = {}
        for v in self.violations:
            seen[v] = seen.get(v, 0) + 1
        return "\n".join(f"{op} at {where} (x{n})" for (op, where), n in seen.items())
