"""The model families mechdiff loads, and the check that refuses the others before any weight is read.

A family is supported when all of these hold, each tested on tiny random checkpoints (square
shapes included) in ``tests/loading/test_families.py``:

* TransformerLens 4.3's bridge boots it from a local directory, and its raw forward equals
  ``transformers``' own ``AutoModelForCausalLM`` forward;
* ``"compat"`` processing, with the steps that fail the probe check skipped, gives logits equal to
  ``transformers``' up to a per-position constant;
* :func:`mechdiff.cross_patch` runs on a pair of them for heads and MLPs.

Other architectures are refused with :class:`~mechdiff.errors.CheckpointError` before their
weights are read: the bridge boots many more, but mechdiff's patching depends on each family's
hook layout, and an unchecked family could be silently wrong. (Gemma 2 was such a case until the
engine applied its final logit soft-capping to patched runs: exact patching was off by the same
constant on every site, 2.7% of the gap on a tiny model.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mechdiff.errors import CheckpointError

SUPPORTED_FAMILIES: dict[str, str] = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "opt": "OPTForCausalLM",
    "phi": "PhiForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "olmo": "OlmoForCausalLM",
}
"""``config.json`` ``model_type`` -> the causal-LM class mechdiff loads it as."""


def _not_causal(model_type: str, config: dict[str, Any]) -> str | None:
    """Why a model type is not a causal language model, or ``None`` if it is one."""
    from transformers.models.auto import modeling_auto as auto

    if model_type in auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        return "an encoder-decoder model"
    if model_type in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.get("is_decoder"):
        return "an encoder (masked language model)"
    if model_type not in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "not a language model transformers knows as causal"
    return None


def check_family(config: dict[str, Any], where: Path | str) -> str:
    """The model type of a ``config.json`` mechdiff supports, else :class:`CheckpointError`.

    Args:
        config: the parsed ``config.json`` (a dict).
        where: the directory, for messages.

    Raises:
        CheckpointError: no ``model_type``; not a causal language model (e.g. BERT); a causal LM
            family mechdiff does not support; ``architectures`` naming another head (e.g.
            ``LlamaForSequenceClassification``); a variant of a supported family that the
            bridge does not map (post-layer-norm OPT).
    """
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    supported = ", ".join(sorted(SUPPORTED_FAMILIES))
    if not isinstance(model_type, str):
        raise CheckpointError(
            f"{where}/config.json has no model_type, so the architecture is unknown; it is not a "
            "Hugging Face model directory mechdiff can load"
        )
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise CheckpointError(
            f"{where}/config.json: architectures must be a list of class names, got {archs!r}"
        )
    if model_type not in SUPPORTED_FAMILIES:
        why = _not_causal(model_type, config)
        if why is not None:
            raise CheckpointError(
                f"{where} is not a causal language model: config.json says model_type "
                f"{model_type!r} (architectures {archs}), {why}; mechdiff compares causal LMs "
                f"({supported})"
            )
        raise CheckpointError(
            f"{where} is a {model_type!r} model, a causal LM family mechdiff does not support "
            f"(supported: {supported}); its loading and patching are not checked for it"
        )
    expected = SUPPORTED_FAMILIES[model_type]
    other = [a for a in archs if a != expected]
    if other:
        raise CheckpointError(
            f"{where}/config.json declares architectures {archs} but mechdiff loads a "
            f"{model_type!r} model only as {expected} (a causal language-model head); "
            f"{other[0]} is not one"
        )
    if model_type == "opt" and config.get("do_layer_norm_before", True) is False:
        raise CheckpointError(
            f"{where} is a post-layer-norm OPT (do_layer_norm_before: false, the layout of "
            "facebook/opt-350m), which TransformerLens's OPT bridge does not map (it expects "
            "a final layer norm); mechdiff loads pre-layer-norm OPT checkpoints only"
        )
    return model_type
