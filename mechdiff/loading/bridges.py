"""Small facts about a loaded bridge: how it was processed, where it lives, which hooks it holds,
and the provenance of a single-model analysis. Each checks its argument (:class:`OptionError`)."""

from __future__ import annotations

from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from mechdiff.errors import OptionError
from mechdiff.loading.model import load_info
from mechdiff.loading.options import Processing, ProcessingStep
from mechdiff.results import Provenance
from mechdiff.tasks import Task


def require_bridge(model: Any, name: str = "model") -> TransformerBridge:
    """``model`` if it is a TransformerBridge, else :class:`OptionError`."""
    if not isinstance(model, TransformerBridge):
        raise OptionError(f"{name} must be a TransformerBridge (load one with "
                          f"mechdiff.loading.load_model), got {type(model).__name__}")
    return model


def require_module(model: Any, name: str = "model") -> torch.nn.Module:
    """``model`` if it is a torch module, else :class:`OptionError`."""
    if not isinstance(model, torch.nn.Module):
        raise OptionError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_seed(seed: Any) -> int | None:
    """``seed`` if it is an int or ``None`` (not a bool), else :class:`OptionError`."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise OptionError(f"seed must be an integer or None, got {seed!r}")
    return seed


def processing_of(model: TransformerBridge) -> Processing:
    """How a bridge's weights were processed: ``"compat"`` or ``"none"``."""
    require_bridge(model)
    return "compat" if getattr(model, "compatibility_mode", False) else "none"


def processing_skipped_of(model: TransformerBridge) -> tuple[ProcessingStep, ...]:
    """The ``"compat"`` steps left out when mechdiff loaded ``model`` (empty if none or unknown)."""
    info = load_info(require_bridge(model))
    return info.processing_skipped if info is not None else ()


def model_provenance(
    model: TransformerBridge, task: Task, *, model_id: str = "<bridge>", seed: int | None = None
) -> Provenance:
    """Provenance of a single-model analysis of ``model`` on ``task``."""
    if not isinstance(model_id, str):
        raise OptionError(f"model_id must be a string, got {model_id!r}")
    check_seed(seed)
    return Provenance.of(task, base=model_id, finetuned=None, processing=processing_of(model),
                         seed=seed, processing_skipped=processing_skipped_of(model))


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters."""
    param = next(require_module(model).parameters(), None)
    if param is None:
        raise OptionError(f"{type(model).__name__} has no parameters, so no device")
    return param.device


def active_hooks(model: torch.nn.Module) -> int:
    """Number of forward/backward hooks currently registered anywhere in ``model``."""
    require_module(model)
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )
