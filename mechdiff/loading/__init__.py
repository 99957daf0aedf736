"""Loading models: checked checkpoints, booted as TransformerLens bridges, processed only in ways
that keep what they compute.

Guarantees, in the order they are checked (nothing is loaded before the checks that can come
first):

1. **Options**: ``processing``, ``device`` (a device this machine has: ``"cuda"`` without CUDA or
   ``"cuda:3"`` with one GPU is an :class:`~mechdiff.errors.OptionError`, never blamed on the
   checkpoint) and ``dtype`` (a floating torch dtype) (:mod:`.options`).
2. **Checkpoints** (:mod:`.checkpoints`, :mod:`.adapters`): ``config.json`` is a JSON object of a
   supported causal-LM family; the weight files hold exactly the tensors the architecture
   expects, with their shapes (no tensor left to random initialisation); sharded checkpoints are
   complete; a LoRA adapter belongs to the base it is merged into (recorded base and shapes)
   unless ``allow_adapter_mismatch=True``. Failures are
   :class:`~mechdiff.errors.CheckpointError` /
   :class:`~mechdiff.errors.IncompatibleModelsError` listing what is wrong.
3. **Processing** (:mod:`.processing`): ``"compat"`` processing is checked on a probe batch to
   leave the logits unchanged up to a per-position constant; steps that do not are left out and
   recorded (``processing_skipped``, in every result's provenance), identically for both models of
   a pair; a model no subset of steps keeps is refused (:class:`ProcessingError`).

Supported families (``config.json`` ``model_type``), each tested on tiny random checkpoints with
square shapes (vocabulary == model width, MLP width == model width) against ``transformers``' own
logits, for ``"compat"`` and ``"none"``, and with :func:`mechdiff.cross_patch` on heads and MLPs:
GPT-2 (``gpt2``), LLaMA (``llama``: grouped-query attention, tied and untied embeddings),
Mistral (``mistral``), Qwen2 (``qwen2``), Qwen3 (``qwen3``), GPT-NeoX / Pythia (``gpt_neox``),
Gemma (``gemma``), Gemma 2 (``gemma2``: patched runs apply its final logit soft-capping), OPT
(``opt``), Phi (``phi``), Phi-3 (``phi3``) and OLMo (``olmo``). Other architectures are refused
before their weights are read (:mod:`.families`).

Rotary models: TransformerLens 4.3's ``cfg.rotary_base`` can disagree with the checkpoint
(SmolLM2: 10000 against ``rope_theta`` 1e5), but the bridge's forward uses the Hugging Face
module's own rotary embedding, so logits are right; take such constants from the HF config.

* :func:`load_model`: one model, with its :class:`LoadInfo`.
* :func:`load_pair` / :class:`ModelPair`: a base and a fine-tuned model, checked compatible.
"""

from mechdiff.loading.families import SUPPORTED_FAMILIES
from mechdiff.loading.model import LoadInfo, load_info, load_model
from mechdiff.loading.options import PROCESSING_STEPS, Processing, ProcessingStep
from mechdiff.loading.pair import (
    ModelPair,
    active_hooks,
    check_compatible,
    load_pair,
    model_device,
    model_provenance,
    processing_of,
    processing_skipped_of,
)
from mechdiff.loading.processing import ProbeCheck, ProcessingError

__all__ = [
    "PROCESSING_STEPS",
    "SUPPORTED_FAMILIES",
    "LoadInfo",
    "ModelPair",
    "ProbeCheck",
    "Processing",
    "ProcessingError",
    "ProcessingStep",
    "active_hooks",
    "check_compatible",
    "load_info",
    "load_model",
    "load_pair",
    "model_device",
    "model_provenance",
    "processing_of",
    "processing_skipped_of",
]
