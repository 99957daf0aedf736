"""Loading one model: a checked checkpoint, booted as a TransformerLens bridge, processed with a
check that it still computes what the checkpoint computes.

:func:`load_model` is the one path every model takes (:func:`mechdiff.loading.load_pair` loads
each side through the same steps). The order is: options (:mod:`~mechdiff.loading.options`),
checkpoint checks (:mod:`~mechdiff.loading.checkpoints`, :mod:`~mechdiff.loading.adapters`), boot,
checked processing (:mod:`~mechdiff.loading.processing`). Nothing is loaded before the checks pass.

What was done is returned as a :class:`LoadInfo` and also kept on the bridge, so a bridge loaded by
mechdiff can be passed to :func:`~mechdiff.loading.load_pair` later (a demo holds one base and
loads several fine-tunes) without being processed or checked again.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import torch
from transformer_lens.model_bridge import TransformerBridge

from mechdiff.errors import CheckpointError, OptionError
from mechdiff.loading.adapters import check_adapter, is_adapter_dir, merged_booter, require_peft
from mechdiff.loading.checkpoints import check_checkpoint, is_local, local_dir
from mechdiff.loading.options import (
    Processing,
    ProcessingStep,
    check_dtype,
    check_flag,
    check_processing,
    check_steps,
    resolve_device,
)
from mechdiff.loading.processing import ProbeCheck, ProcessingError, Raw, process_checked

ModelSpec: TypeAlias = str | Path | TransformerBridge
_RECORD = "_mechdiff_load_info"


@dataclass(frozen=True)
class LoadInfo:
    """How a model was loaded.

    Attributes:
        model_id: where it came from: a directory, a hub name, ``"<base>+lora:<adapter>"`` or
            ``"<bridge>"``.
        processing: ``"compat"`` or ``"none"``.
        processing_skipped: steps of ``"compat"`` processing left out (asked, declined by
            TransformerLens, or failing the probe check); empty for ``"none"``.
        probe: the probe check of the processed model (``None`` for ``"none"``).
    """

    model_id: str
    processing: Processing
    processing_skipped: tuple[ProcessingStep, ...] = ()
    probe: ProbeCheck | None = None


def load_info(model: TransformerBridge) -> LoadInfo | None:
    """How mechdiff loaded ``model``, or ``None`` for a bridge it did not load."""
    if not isinstance(model, TransformerBridge):
        raise OptionError(f"model must be a TransformerBridge, got {type(model).__name__}")
    return getattr(model, _RECORD, None)


def load_model(
    spec: ModelSpec,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    processing: Processing = "compat",
    base: str | Path | None = None,
    skip: Sequence[ProcessingStep] = (),
    allow_adapter_mismatch: bool = False,
) -> tuple[TransformerBridge, LoadInfo]:
    """Load one model as a checked TransformerLens bridge.

    Args:
        spec: a local HF directory, a HF model name, a LoRA adapter directory (needs ``base``), or
            a ``TransformerBridge``. A raw bridge is never modified: with ``processing="compat"``
            a processed copy is returned. A bridge mechdiff loaded is returned as it is. A bridge
            stays on its device and in its dtype (an explicit ``device`` must be its).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` (default: CUDA if available).
        dtype: parameter dtype (float32, float64, bfloat16, float16).
        processing: ``"compat"`` (TransformerLens weight processing, checked on a probe batch;
            steps that would change the logits are left out) or ``"none"`` (raw weights).
        base: for a LoRA adapter, the base it is merged into (directory or HF name).
        skip: ``"compat"`` steps to leave out in any case (e.g. those another model of a pair
            needed left out: ``skip=base_info.processing_skipped``).
        allow_adapter_mismatch: merge an adapter whose ``adapter_config.json`` records another
            base (for a moved or renamed copy of the same base).

    Returns:
        The bridge (eval mode, no gradients on parameters) and its :class:`LoadInfo`.

    Raises:
        OptionError: a bad option (processing, device, dtype, skip, base without an adapter).
        CheckpointError: a missing, corrupt or unsupported checkpoint (checked before loading).
        IncompatibleModelsError: an adapter that does not belong to ``base``.
        ProcessingError: processing cannot keep the model's logits even with every step left out.
        MissingDependencyError: an adapter was given and ``peft`` is not installed.
    """
    processing, dev, dtype, skip = check_options(processing, device, dtype, skip,
                                                  allow_adapter_mismatch)
    source = prepare(spec, base=base, device=dev, dtype=dtype, processing=processing,
                     allow_adapter_mismatch=allow_adapter_mismatch,
                     device_given=device is not None)
    if source.info is not None:
        return source.bridge, check_loaded(source, processing, skip)
    [(model, info)] = complete([source], [boot_raw(source, processing)], processing, skip)
    return model, info


def check_options(
    processing: Any, device: Any, dtype: Any, skip: Any, allow_adapter_mismatch: Any
) -> tuple[Processing, torch.device, torch.dtype, tuple[ProcessingStep, ...]]:
    """Every loading option checked (:class:`OptionError`), the device resolved."""
    processing = check_processing(processing)
    dev = resolve_device(device)
    dtype = check_dtype(dtype)
    skip = check_steps(skip)
    check_flag(allow_adapter_mismatch, "allow_adapter_mismatch")
    if skip and processing == "none":
        raise OptionError(f"skip={list(skip)} names processing steps but processing='none'")
    return processing, dev, dtype, skip


# ------------------------------------------------------------------------------ sources


@dataclass
class Source:
    """A checked model spec, not loaded yet (or a bridge passed in).

    Attributes:
        model_id: its identity.
        boot: returns a fresh raw bridge (``None`` for a bridge mechdiff already loaded).
        bridge: the bridge passed in, if any.
        config: ``config.json`` of the directory (the base's for an adapter), to compare the
            two sides of a pair before loading.
        info: for a bridge mechdiff loaded, how it was loaded.
    """

    model_id: str
    boot: Callable[[], TransformerBridge] | None
    bridge: TransformerBridge | None = None
    config: dict[str, Any] | None = None
    info: LoadInfo | None = None


def prepare(
    spec: Any, *, base: Any, device: torch.device, dtype: torch.dtype, processing: Processing,
    allow_adapter_mismatch: bool, device_given: bool = True,
) -> Source:
    """Check a spec without loading weights; return how to load it.

    A bridge passed in stays where it is; a ``device`` given explicitly must be the bridge's.
    """
    if isinstance(spec, TransformerBridge):
        if base is not None:
            raise OptionError("base= is for LoRA adapters; the model given is a bridge")
        here = next(spec.parameters()).device
        if device_given and (here.type != device.type
                             or device.index not in (None, here.index)):
            raise OptionError(
                f"device={str(device)!r} was asked but the bridge passed in is on {here}; move it "
                "first (bridge.to(device)) or leave device out"
            )
        return _bridge_source(spec, processing)
    if not isinstance(spec, (str, Path)):
        raise CheckpointError(
            f"a model must be a HF name, a directory or a TransformerBridge, got {type(spec).__name__}"
        )
    boot_kwargs = {"device": str(device), "dtype": dtype}
    if is_adapter_dir(spec):
        adapter = Path(spec).expanduser()
        require_peft(adapter)
        if base is None:
            raise OptionError(f"{adapter} is a LoRA adapter: pass the base it was trained on "
                              "(base=...)")
        if not isinstance(base, (str, Path)) or is_adapter_dir(base):
            raise CheckpointError(
                "a LoRA adapter needs the base as a directory or HF name (not a bridge or another "
                "adapter), so the adapter can be merged into the base's raw weights"
            )
        base_dir = local_dir(base)
        base_ckpt = check_checkpoint(base_dir)
        check_adapter(adapter, base_ckpt, base_name=None if is_local(base) else str(base),
                      allow_mismatch=allow_adapter_mismatch)
        base_id = str(base_dir) if is_local(base) else str(base)
        fresh = merged_booter(base_dir, adapter, boot=_boot, **boot_kwargs)
        return Source(f"{base_id}+lora:{adapter}", fresh, config=base_ckpt.config)
    if base is not None:
        raise OptionError(f"base= is for LoRA adapters; {spec} is not one (no adapter_config.json)")
    path = local_dir(spec)
    ckpt = check_checkpoint(path)
    model_id = str(path) if is_local(spec) else str(spec)
    return Source(model_id, lambda: _boot(str(path), **boot_kwargs), config=ckpt.config)


def _bridge_source(bridge: TransformerBridge, processing: Processing) -> Source:
    if not getattr(bridge, "compatibility_mode", False):
        return Source("<bridge>", lambda: copy.deepcopy(bridge), bridge=bridge)
    info = load_info(bridge)
    if info is None and processing == "none":
        raise OptionError(
            "the bridge passed in is already in compatibility mode but processing='none' was "
            "asked; pass processing='compat' or a bridge without processing"
        )
    if info is None:
        raise ProcessingError(
            "the bridge passed in was put in compatibility mode outside mechdiff, so mechdiff "
            "cannot check that processing kept what it computes (TransformerLens 4.3 processing "
            "is wrong on square shapes); pass the bridge before enable_compatibility_mode(), or "
            "its directory"
        )
    return Source(info.model_id, None, bridge=bridge, info=info)


def check_loaded(source: Source, processing: Processing,
                 skip: Sequence[ProcessingStep]) -> LoadInfo:
    """The info of a bridge mechdiff loaded, if it fits what is asked now."""
    info = source.info
    assert info is not None
    if info.processing != processing:
        raise OptionError(
            f"the bridge passed in was loaded with processing={info.processing!r}, but "
            f"processing={processing!r} was asked; load it again with the processing wanted"
        )
    if not set(skip) <= set(info.processing_skipped):
        raise OptionError(
            f"the bridge passed in was processed with {sorted(set(skip) - set(info.processing_skipped))}"
            f" applied, but skip={list(skip)} asks to leave them out; load it again"
        )
    return info


FLOAT64_COMPAT = (
    "a float64 model with processing='compat': TransformerLens 4.3 processes weights in float32 "
    "(ProcessWeights.process_weights casts every other dtype to float32), so the processed "
    "weights carry float32 rounding (logits within about 1e-7 of their range, not 1e-15); "
    "load with processing='none' for float64-exact weights"
)
"""Warned when a float64 model is processed (the probe check passes: the loss is float32's)."""


def boot_raw(source: Source, processing: Processing) -> TransformerBridge:
    """A raw bridge of a source to check and process (a bridge passed in is used as it is for
    ``"none"``; for ``"compat"`` a copy is processed, the caller's bridge is left alone)."""
    if processing == "none" and source.bridge is not None:
        return source.bridge
    assert source.boot is not None
    return source.boot()


def complete(
    sources: Sequence[Source], booted: Sequence[TransformerBridge], processing: Processing,
    skip: Sequence[ProcessingStep],
) -> list[tuple[TransformerBridge, LoadInfo]]:
    """Process booted raw models together (one set of steps, checked on each); record how."""
    if not sources:
        return []
    if processing == "none":
        return [_finish(m, LoadInfo(s.model_id, "none")) for s, m in zip(sources, booted, strict=True)]
    if any(p.dtype == torch.float64 for m in booted for p in m.parameters()):
        warnings.warn(FLOAT64_COMPAT, UserWarning, stacklevel=3)
    raws = [Raw.of(s.model_id, m, s.boot) for s, m in zip(sources, booted, strict=True)]
    models, skipped, checks = process_checked(raws, skip)
    return [_finish(m, LoadInfo(s.model_id, "compat", skipped, c))
            for s, m, c in zip(sources, models, checks, strict=True)]


def _finish(model: TransformerBridge, info: LoadInfo) -> tuple[TransformerBridge, LoadInfo]:
    if model.tokenizer is None:
        raise CheckpointError(f"{info.model_id} has no tokenizer; save the tokenizer in the same "
                              "directory")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    object.__setattr__(model, _RECORD, info)
    release_memory(model)
    return model, info


def _boot(name: str, **kwargs: Any) -> TransformerBridge:
    """Boot a raw bridge from a directory; the global RNGs are left as they were (booting
    draws from them to initialise weights it then overwrites)."""
    dev = torch.device(kwargs.get("device") or "cpu")
    rngs = [dev.index if dev.index is not None else torch.cuda.current_device()] \
        if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rngs):
            return TransformerBridge.boot_transformers(name, **kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised typed with the cause attached
        raise CheckpointError(
            f"cannot load model {name!r}: the directory passed the checks but could not be "
            f"loaded; is it complete and uncorrupted? Cause: {type(e).__name__}: {e}"
        ) from e


def release_memory(*models: torch.nn.Module) -> None:
    """Release memory that loading and weight processing left behind.

    * Weights still backed by the checkpoint file: safetensors tensors are views of a memory map
      of the whole file, and weight processing keeps a few originals (e.g. GPT-2's fused
      ``c_attn``), which keeps every page of the file mapped and resident. Those tensors are
      copied into ordinary memory so the map is dropped (GPT-2 small: 950 MB of resident file
      pages for 2 x 85 MB of such weights).
    * Memory freed while processing weights is handed back to the OS (glibc ``malloc_trim``;
      elsewhere a no-op): ~440 MB for a GPT-2-small pair.
    """
    import ctypes
    import ctypes.util
    import gc

    with torch.no_grad():
        for model in models:
            for module in model.modules():
                for t in [*module._parameters.values(), *module._buffers.values()]:
                    # Storages torch allocated itself are resizable; views of a file map are not.
                    if t is not None and t.device.type == "cpu" and not (
                        t.untyped_storage().resizable()
                    ):
                        t.data = t.data.clone()
    gc.collect()
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)
