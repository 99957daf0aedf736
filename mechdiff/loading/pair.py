"""Model pairs: a base and a fine-tuned model as two TransformerLens bridges, checked compatible.

Each side may be a Hugging Face model name, a local HF directory (model + tokenizer saved together),
an already-built :class:`~transformer_lens.model_bridge.TransformerBridge`, or (fine-tuned side only)
a LoRA adapter directory, which is merged into a copy of the base with ``peft``.

Both sides are processed the same way, recorded as ``ModelPair.processing``:

* ``"compat"`` (default): TransformerLens's HookedTransformer-equivalent processing (folded
  LayerNorm, centred writing weights and unembedding, folded value biases). Activations and
  weights of the two models are then comparable like for like.
* ``"none"``: raw HF weights and activations.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import torch
from transformer_lens.model_bridge import TransformerBridge

from mechdiff.errors import (
    CheckpointError,
    IncompatibleModelsError,
    MissingDependencyError,
    OptionError,
)
from mechdiff.results import Provenance
from mechdiff.tasks import Task

Processing: TypeAlias = Literal["compat", "none"]
ModelSpec: TypeAlias = str | Path | TransformerBridge

_CFG_FIELDS = (
    "architecture",
    "n_layers",
    "n_heads",
    "n_key_value_heads",
    "d_model",
    "d_head",
    "d_mlp",
    "d_vocab",
    "act_fn",
    "normalization_type",
    "positional_embedding_type",
)


@dataclass
class ModelPair:
    """A base and a fine-tuned model of the same architecture and vocabulary.

    Attributes:
        base: the base model.
        finetuned: the fine-tuned model.
        tokenizer: the shared tokenizer (the base's).
        base_id: where the base came from (path, HF name or ``"<bridge>"``).
        finetuned_id: where the fine-tuned model came from.
        processing: how both models' weights were processed (see module docstring).
    """

    base: TransformerBridge
    finetuned: TransformerBridge
    tokenizer: Any
    base_id: str
    finetuned_id: str
    processing: Processing

    @property
    def cfg(self) -> Any:
        return self.base.cfg

    @property
    def n_layers(self) -> int:
        return int(self.base.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.base.cfg.n_heads)

    @property
    def n_ctx(self) -> int:
        return int(self.base.cfg.n_ctx)

    @property
    def device(self) -> torch.device:
        return model_device(self.base)

    def model(self, side: Literal["base", "finetuned"]) -> TransformerBridge:
        return self.base if side == "base" else self.finetuned

    def provenance(self, task: Task, *, seed: int | None = None) -> Provenance:
        """Provenance of an analysis of this pair on ``task``."""
        return Provenance.of(task, base=self.base_id, finetuned=self.finetuned_id,
                             processing=self.processing, seed=seed)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"ModelPair(base={self.base_id!r}, finetuned={self.finetuned_id!r}, "
            f"{c.architecture}, {c.n_layers} layers x {c.n_heads} heads, d_model={c.d_model}, "
            f"processing={self.processing!r})"
        )


def load_pair(
    base: ModelSpec,
    finetuned: ModelSpec,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    processing: Processing = "compat",
) -> ModelPair:
    """Load a base and a fine-tuned model as a checked :class:`ModelPair`.

    Args:
        base: HF name, local HF directory, or a ``TransformerBridge``.
        finetuned: HF name, local HF directory, LoRA adapter directory, or a ``TransformerBridge``.
        device: where to put the models (default: CUDA if available, else CPU).
        dtype: parameter dtype.
        processing: ``"compat"`` or ``"none"``, applied to both sides (see module docstring).
            A bridge passed in is put in compatibility mode in place if ``processing="compat"``.

    Raises:
        CheckpointError: a directory is missing or corrupt, or a name cannot be loaded.
        IncompatibleModelsError: architectures, sizes or tokenizer vocabularies differ.
        MissingDependencyError: a LoRA adapter was given and ``peft`` is not installed.
    """
    if processing not in ("compat", "none"):
        raise OptionError(f"processing must be 'compat' or 'none', got {processing!r}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # Cheap checks first: read configs and vocabularies of local directories before loading weights.
    _precheck_dirs(base, finetuned)
    base_bridge, base_id = _load_side(base, device=device, dtype=dtype, processing=processing)
    if _is_adapter_dir(finetuned):
        ft_bridge, ft_id = _load_adapter(base, finetuned, device=device, dtype=dtype,
                                         processing=processing)
    elif finetuned is base:
        ft_bridge, ft_id = base_bridge, base_id
    else:
        ft_bridge, ft_id = _load_side(finetuned, device=device, dtype=dtype, processing=processing)
    check_compatible(base_bridge, ft_bridge)
    _release_memory(base_bridge, ft_bridge)
    return ModelPair(base_bridge, ft_bridge, base_bridge.tokenizer, base_id, ft_id, processing)


def check_compatible(a: TransformerBridge, b: TransformerBridge) -> None:
    """Raise :class:`IncompatibleModelsError` naming every mismatch between two bridges."""
    problems = [
        f"{f}: {getattr(a.cfg, f, None)!r} vs {getattr(b.cfg, f, None)!r}"
        for f in _CFG_FIELDS
        if getattr(a.cfg, f, None) != getattr(b.cfg, f, None)
    ]
    problems += _vocab_mismatch(a.tokenizer, b.tokenizer)
    if problems:
        raise IncompatibleModelsError(
            "the base and fine-tuned models are not a comparable pair: " + "; ".join(problems)
            + ". mechdiff compares a model with a fine-tune of itself: same architecture, sizes "
            "and tokenizer."
        )


def _vocab_mismatch(ta: Any, tb: Any) -> list[str]:
    if ta is None or tb is None:
        return [] if ta is tb else ["tokenizer: one side has none"]
    va, vb = ta.get_vocab(), tb.get_vocab()
    if va == vb:
        return []
    only_a, only_b = set(va) - set(vb), set(vb) - set(va)
    moved = sum(1 for k in set(va) & set(vb) if va[k] != vb[k])
    return [
        f"tokenizer vocabulary: {len(va)} vs {len(vb)} tokens, {len(only_a)} only in base, "
        f"{len(only_b)} only in fine-tuned, {moved} with different ids"
    ]


def _is_local(spec: Any) -> bool:
    if isinstance(spec, Path):
        return True
    if not isinstance(spec, str):
        return False
    return Path(spec).exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1


def _is_adapter_dir(spec: Any) -> bool:
    return _is_local(spec) and (Path(spec).expanduser() / "adapter_config.json").is_file()


def _check_dir(path: Path) -> None:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    config = path / "config.json"
    if not config.is_file():
        raise CheckpointError(
            f"{path} has no config.json: it is not a Hugging Face model directory (save one with "
            "model.save_pretrained(dir) and tokenizer.save_pretrained(dir))"
        )
    try:
        json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config} is corrupt: {e}") from e
    weights = [*path.glob("*.safetensors"), *path.glob("*.bin")]
    if not weights:
        raise CheckpointError(f"{path} has a config.json but no weight files (*.safetensors, *.bin)")


def _precheck_dirs(base: ModelSpec, finetuned: ModelSpec) -> None:
    """Validate local directories and compare their configs/vocabularies before loading."""
    for spec in (base, finetuned):
        if _is_local(spec) and not _is_adapter_dir(spec):
            _check_dir(Path(spec).expanduser())
    if _is_adapter_dir(finetuned) and not _is_local(base) and not isinstance(base, str):
        raise CheckpointError(
            "a LoRA adapter needs the base as a directory or HF name (not a bridge), so the adapter "
            "can be merged into the base's raw weights"
        )
    if not (_is_local(base) and _is_local(finetuned)) or _is_adapter_dir(finetuned):
        return
    cfg_a = json.loads((Path(base).expanduser() / "config.json").read_text())
    cfg_b = json.loads((Path(finetuned).expanduser() / "config.json").read_text())
    keys = ("model_type", "architectures", "n_layer", "n_head", "n_embd", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "hidden_size", "intermediate_size",
            "vocab_size")
    problems = [f"{k}: {cfg_a.get(k)!r} vs {cfg_b.get(k)!r}" for k in keys
                if cfg_a.get(k) != cfg_b.get(k)]
    if problems:
        raise IncompatibleModelsError(
            f"{base} and {finetuned} have different architectures or sizes: " + "; ".join(problems)
        )


def _finish(bridge: TransformerBridge, processing: Processing) -> TransformerBridge:
    is_compat = bool(getattr(bridge, "compatibility_mode", False))
    if processing == "compat" and not is_compat:
        bridge.enable_compatibility_mode(disable_warnings=True)
    elif processing == "none" and is_compat:
        raise IncompatibleModelsError(
            "a bridge passed in is already in compatibility mode but processing='none' was asked; "
            "pass processing='compat' or a bridge without processing"
        )
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    return bridge


def _boot(name: str, **kwargs: Any) -> TransformerBridge:
    try:
        return TransformerBridge.boot_transformers(name, **kwargs)
    except Exception as e:  # noqa: BLE001 - re-raised typed with the cause attached
        local = Path(name).exists()
        hint = (
            "the directory exists but could not be loaded; is it complete and uncorrupted?"
            if local
            else "it is not a local directory, and loading it by name failed (is a model hub "
            "reachable? if not, save the model locally and pass its directory)"
        )
        raise CheckpointError(f"cannot load model {name!r}: {hint} Cause: {type(e).__name__}: {e}") from e


def _load_side(
    spec: ModelSpec, *, device: Any, dtype: torch.dtype, processing: Processing
) -> tuple[TransformerBridge, str]:
    if isinstance(spec, TransformerBridge):
        return _finish(spec, processing), "<bridge>"
    if not isinstance(spec, (str, Path)):
        raise CheckpointError(
            f"a model must be a HF name, a directory or a TransformerBridge, got {type(spec).__name__}"
        )
    name = str(Path(spec).expanduser()) if _is_local(spec) else str(spec)
    bridge = _boot(name, device=device, dtype=dtype)
    if bridge.tokenizer is None:
        raise CheckpointError(f"{name} has no tokenizer; save the tokenizer in the same directory")
    return _finish(bridge, processing), name


def _load_adapter(
    base: ModelSpec, adapter: ModelSpec, *, device: Any, dtype: torch.dtype, processing: Processing
) -> tuple[TransformerBridge, str]:
    """Merge a LoRA adapter into a fresh copy of the base's raw weights and boot it."""
    try:
        from peft import PeftModel
    except ImportError as e:
        raise MissingDependencyError(
            f"{adapter} is a LoRA adapter; merging it needs peft: pip install 'mechdiff[lora]'"
        ) from e
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_name = str(Path(base).expanduser()) if _is_local(base) else str(base)
    adapter_dir = Path(adapter).expanduser()
    try:
        hf = AutoModelForCausalLM.from_pretrained(base_name, dtype=dtype)
        merged = PeftModel.from_pretrained(hf, str(adapter_dir)).merge_and_unload()
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot merge LoRA adapter {adapter_dir} into {base_name}: {e}") from e
    # boot_transformers needs a directory it can read the config and tokenizer from.
    with tempfile.TemporaryDirectory(prefix="mechdiff-lora-") as tmp:
        merged.save_pretrained(tmp)
        tok_src = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_name
        AutoTokenizer.from_pretrained(str(tok_src)).save_pretrained(tmp)
        bridge = _boot(tmp, device=device, dtype=dtype)
    return _finish(bridge, processing), f"{base_name}+lora:{adapter_dir}"


def _release_memory(*models: torch.nn.Module) -> None:
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


def processing_of(model: TransformerBridge) -> Processing:
    """How a bridge's weights were processed: ``"compat"`` or ``"none"``."""
    return "compat" if getattr(model, "compatibility_mode", False) else "none"


def model_provenance(
    model: TransformerBridge, task: Task, *, model_id: str = "<bridge>", seed: int | None = None
) -> Provenance:
    """Provenance of a single-model analysis of ``model`` on ``task``."""
    return Provenance.of(task, base=model_id, finetuned=None, processing=processing_of(model),
                         seed=seed)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's parameters."""
    return next(model.parameters()).device


def active_hooks(model: torch.nn.Module) -> int:
    """Number of forward/backward hooks currently registered anywhere in ``model``."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )
