"""Model pairs: a base and a fine-tuned model as two TransformerLens bridges, checked compatible.

Each side may be a Hugging Face model name, a local HF directory (model + tokenizer saved together),
a :class:`~transformer_lens.model_bridge.TransformerBridge`, or (fine-tuned side only) a LoRA
adapter directory, merged into a copy of the base with ``peft`` after it is checked to belong to it.

Both sides are loaded through :func:`mechdiff.loading.load_model` and processed the same way,
recorded as ``ModelPair.processing`` and ``ModelPair.processing_skipped``:

* ``"compat"`` (default): TransformerLens's HookedTransformer-equivalent processing (folded
  LayerNorm, centred writing weights and unembedding, folded value biases), checked on a probe
  batch to keep each model's logits up to a per-position constant; steps that would not are left
  out on both sides (:mod:`mechdiff.loading.processing`). Activations and weights of the two
  models are then comparable like for like.
* ``"none"``: raw HF weights and activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from mechdiff.errors import CheckpointError, IncompatibleModelsError, OptionError
from mechdiff.loading.adapters import is_adapter_dir
from mechdiff.loading.bridges import (
    active_hooks,
    check_seed,
    model_device,
    model_provenance,
    processing_of,
    processing_skipped_of,
    require_bridge,
)
from mechdiff.loading.model import (
    ModelSpec,
    Source,
    boot_raw,
    check_loaded,
    check_options,
    complete,
    prepare,
)
from mechdiff.loading.options import Processing, ProcessingStep
from mechdiff.results import Provenance
from mechdiff.tasks import Task

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
_CONFIG_KEYS = ("model_type", "architectures", "n_layer", "n_head", "n_embd", "n_inner",
                "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size",
                "intermediate_size", "ffn_dim", "vocab_size", "tie_word_embeddings")


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
        processing_skipped: ``"compat"`` steps left out on both sides (empty when processing was
            applied whole, and for ``"none"``).
    """

    base: TransformerBridge
    finetuned: TransformerBridge
    tokenizer: Any
    base_id: str
    finetuned_id: str
    processing: Processing
    processing_skipped: tuple[ProcessingStep, ...] = ()

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
        """The model of one side."""
        if side not in ("base", "finetuned"):
            raise OptionError(f"side must be 'base' or 'finetuned', got {side!r}")
        return self.base if side == "base" else self.finetuned

    def provenance(self, task: Task, *, seed: int | None = None) -> Provenance:
        """Provenance of an analysis of this pair on ``task``."""
        check_seed(seed)
        return Provenance.of(task, base=self.base_id, finetuned=self.finetuned_id,
                             processing=self.processing, seed=seed,
                             processing_skipped=self.processing_skipped)

    def __repr__(self) -> str:
        c = self.cfg
        skipped = f", skipped={list(self.processing_skipped)}" if self.processing_skipped else ""
        return (
            f"ModelPair(base={self.base_id!r}, finetuned={self.finetuned_id!r}, "
            f"{c.architecture}, {c.n_layers} layers x {c.n_heads} heads, d_model={c.d_model}, "
            f"processing={self.processing!r}{skipped})"
        )


def load_pair(
    base: ModelSpec,
    finetuned: ModelSpec,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    processing: Processing = "compat",
    allow_adapter_mismatch: bool = False,
) -> ModelPair:
    """Load a base and a fine-tuned model as a checked :class:`ModelPair`.

    Options are checked first, then both checkpoints and their configs are compared (no weights
    read), then the models are booted, compared as bridges, and processed together.

    Args:
        base: HF name, local HF directory, or a ``TransformerBridge``.
        finetuned: HF name, local HF directory, LoRA adapter directory (merged into ``base``), or
            a ``TransformerBridge``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` (default: CUDA if available).
        dtype: parameter dtype (float32, float64, bfloat16, float16).
        processing: ``"compat"`` or ``"none"``, applied to both sides (see module docstring).
            A raw bridge passed in is not modified (a processed copy is used); a bridge loaded by
            :func:`~mechdiff.loading.load_model` is used as it is. Bridges stay on their device
            and in their dtype (an explicit ``device`` must be theirs).
        allow_adapter_mismatch: merge a LoRA adapter whose ``adapter_config.json`` records
            another base.

    Raises:
        OptionError: a bad option (processing, device, dtype).
        CheckpointError: a directory is missing, corrupt, incomplete or not a supported causal
            LM, or a name cannot be loaded.
        IncompatibleModelsError: architectures, sizes or tokenizer vocabularies differ; an
            adapter belongs to another base; the sides were processed differently.
        ProcessingError: processing cannot keep a model's logits.
        MissingDependencyError: a LoRA adapter was given and ``peft`` is not installed.
    """
    processing, dev, dtype, _ = check_options(processing, device, dtype, (),
                                              allow_adapter_mismatch)
    if is_adapter_dir(base):
        raise CheckpointError(
            f"the base {base} is a LoRA adapter; a pair's base is a full model (pass the "
            "adapter as the fine-tuned side and its base model as the base)"
        )
    kw = {"device": dev, "dtype": dtype, "processing": processing,
          "allow_adapter_mismatch": allow_adapter_mismatch, "device_given": device is not None}
    src_b = prepare(base, base=None, **kw)
    same = finetuned is base
    src_f = src_b if same else prepare(
        finetuned, base=base if is_adapter_dir(finetuned) else None, **kw)
    _compare_configs(src_b, src_f)
    sources = [src_b] if same else [src_b, src_f]
    ready = [s for s in sources if s.info is not None]
    for s in ready:
        check_loaded(s, processing, ())
    todo = [s for s in sources if s.info is None]
    booted = [boot_raw(s, processing) for s in todo]
    models = {id(s): (s.bridge, s.info) for s in ready}
    if len(sources) == 2:
        b, f = (models[id(s)][0] if s.info is not None else booted[todo.index(s)]
                for s in sources)
        check_compatible(b, f)
    skip = ready[0].info.processing_skipped if ready else ()
    for s, loaded in zip(todo, complete(todo, booted, processing, skip), strict=True):
        models[id(s)] = loaded
    (bm, bi), (fm, fi) = models[id(src_b)], models[id(src_f)]
    if bi.processing_skipped != fi.processing_skipped:
        raise IncompatibleModelsError(
            f"the base was processed leaving out {list(bi.processing_skipped)} but the "
            f"fine-tuned model needs {list(fi.processing_skipped)} left out, so their weights "
            "would not be comparable; load both together (load_pair with two directories) or "
            "load the base with skip=... covering both"
        )
    return ModelPair(bm, fm, bm.tokenizer, bi.model_id, fi.model_id, processing,
                     bi.processing_skipped)


def check_compatible(a: TransformerBridge, b: TransformerBridge) -> None:
    """Raise :class:`IncompatibleModelsError` naming every mismatch between two bridges."""
    require_bridge(a, "a")
    require_bridge(b, "b")
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


def _compare_configs(a: Source, b: Source) -> None:
    """Compare the two sides' ``config.json`` before loading any weights."""
    if a is b or a.config is None or b.config is None:
        return
    problems = [f"{k}: {a.config.get(k)!r} vs {b.config.get(k)!r}" for k in _CONFIG_KEYS
                if a.config.get(k) != b.config.get(k)]
    if problems:
        raise IncompatibleModelsError(
            f"{a.model_id} and {b.model_id} have different architectures or sizes: "
            + "; ".join(problems)
        )


__all__ = ["ModelPair", "active_hooks", "check_compatible", "load_pair", "model_device",
           "model_provenance", "processing_of", "processing_skipped_of"]
