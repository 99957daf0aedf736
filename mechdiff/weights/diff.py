"""Weight differences between the two models of a pair.

Both models of a :class:`~mechdiff.loading.ModelPair` are processed the same way (DESIGN.md: weight
processing changes weights, so only like-for-like comparisons mean anything), so a block whose
parameters are bit-identical after processing was not changed by fine-tuning.
"""

from __future__ import annotations

import torch

from mechdiff.loading import ModelPair


def changed_blocks(pair: ModelPair) -> tuple[int, ...]:
    """Blocks whose parameters differ between the base and the fine-tuned model (exactly)."""
    changed = []
    for layer, (a, b) in enumerate(zip(pair.base.blocks, pair.finetuned.blocks, strict=True)):
        pa, pb = list(a.parameters()), list(b.parameters())
        if len(pa) != len(pb) or any(not torch.equal(x, y) for x, y in zip(pa, pb, strict=True)):
            changed.append(layer)
    return tuple(changed)
