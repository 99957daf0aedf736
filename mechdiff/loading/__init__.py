"""Loading models: a base and a fine-tuned checkpoint as two checked TransformerLens bridges.

* :mod:`mechdiff.loading.pair`: :func:`load_pair` / :class:`ModelPair` (HF names, local
  directories, bridges, LoRA adapters), compatibility checks, one processing for both sides.
"""

from mechdiff.loading.pair import (
    ModelPair,
    Processing,
    active_hooks,
    check_compatible,
    load_pair,
    model_device,
    model_provenance,
    processing_of,
)

__all__ = [
    "ModelPair",
    "Processing",
    "active_hooks",
    "check_compatible",
    "load_pair",
    "model_device",
    "model_provenance",
    "processing_of",
]
