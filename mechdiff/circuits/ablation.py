"""What an ablated edge carries instead of its upstream node's output.

Two ablations, always recorded in results (Miller, Chughtai & Saunders 2024, "Transformer Circuit
Faithfulness Metrics Are Not Robust": the ablation type changes faithfulness numbers):

* ``"corrupted"``: the upstream node's output on the task's corrupted prompt (``Task.corrupted``,
  one per clean prompt, of the same token length), from the same model: EAP-IG's and MIB's
  counterfactual "patching" ablation.
* ``"mean"``: the upstream node's **mean output at the same position over the task's prompts**:
  for writer ``w`` and position ``p``, ``mean_i a_w(prompt_i)[p]`` over the prompts ``i`` that have
  a token at position ``p`` (positions counted from each prompt's first token; padding never
  enters). For prompts of equal length this is MIB's position-wise mean ablation over the
  evaluation set; for unequal lengths, late positions average fewer prompts. The means are taken on
  the model being analysed (a circuit evaluated inside another model uses *that* model's means).
  They cost one forward pass over the prompts.

The empty circuit (every edge ablated) reads ``sum_w A_w`` plus the constants at the logits: for
``"corrupted"`` exactly the corrupted run, for ``"mean"`` the mean residual stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechdiff import _engine
from mechdiff._progress import progress_iter
from mechdiff.choices import ABLATIONS as ABLATIONS  # re-exported
from mechdiff.choices import Ablation
from mechdiff.circuits import _run
from mechdiff.circuits.graph import Graph, constants
from mechdiff.tasks import Tokens


@dataclass
class Replacements:
    """Replacement writer outputs for every prompt batch of one model.

    Attributes:
        kind: the ablation.
        means: for ``"mean"``, the mean writer blocks ``[1, pos, n, d_model]`` (all positions of
            the longest prompt).
    """

    kind: Ablation
    means: list[Tensor] | None = None

    def blocks(self, model: TransformerBridge, graph: Graph, sub: Tokens) -> list[Tensor]:
        """Replacement blocks for one prompt batch (``sub``, trimmed to its own width)."""
        return self.run(model, graph, sub, sub.read_pos)[0]

    def run(self, model: TransformerBridge, graph: Graph, sub: Tokens, read_pos: Tensor | None
            ) -> tuple[list[Tensor], Tensor | None]:
        """:meth:`blocks` and, for ``"corrupted"``, the corrupted run's logits at ``read_pos``
        (None: every position, for metrics that read them all), the empty circuit's: it reads
        exactly that run's residual; None for ``"mean"``."""
        width = int(sub.tokens.shape[1])
        if self.kind == "mean":
            return [m[:, :width] for m in self.means], None
        out = _run.forward(model, graph, sub.corrupted_tokens, read_pos, capture=True)
        return out.writers, out.read


class MeanSum:
    """Running per-position sums of every writer's output over prompts (padding excluded)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.sums: list[Tensor] | None = None
        self.counts: Tensor | None = None

    def add(self, writers: list[Tensor], sub: Tokens) -> None:
        """Add one prompt batch's writer blocks ``[batch, pos, n, d_model]``."""
        w = int(sub.tokens.shape[1])
        mask = sub.position_mask()
        # prompts shorter than the batch, and their lengths (padding is on the right)
        pad = [(i, int(n)) for i, n in enumerate(sub.lengths.tolist()) if n < w]
        batch_sums = []
        for b in writers:  # sums over prompts, minus the padding: no copy of a whole block
            total = b.sum(0)  # [w, n, d]
            for i, n in pad:
                total[n:] -= b[i, n:]
            batch_sums.append(total)
        if self.sums is None:
            self.sums = [torch.zeros(self.width, *s.shape[1:],  # float64 models: float64
                                     dtype=torch.promote_types(s.dtype, torch.float32),
                                     device=s.device) for s in batch_sums]
            self.counts = torch.zeros(self.width, device=batch_sums[0].device)
        for total, s in zip(self.sums, batch_sums, strict=True):
            total[:w] += s.to(total.dtype)
        self.counts[:w] += mask.sum(0).to(self.counts.device)

    def means(self, dtype: torch.dtype) -> list[Tensor]:
        """The mean blocks ``[1, width, n, d_model]`` in ``dtype``."""
        return [(s / self.counts.clamp_min(1)[:, None, None])[None].to(dtype) for s in self.sums]


def mean_outputs(model: TransformerBridge, graph: Graph, tokens: Tokens, batch_size: int,
                 progress: bool = False) -> list[Tensor]:
    """Per-position mean of every writer's output over the prompts (see module docstring).
    One forward pass over the prompts, without the per-head q/k/v fork (only writers are read)."""
    acc = MeanSum(int(tokens.tokens.shape[1]))
    starts = range(0, tokens.n, batch_size)
    for start in progress_iter(starts, desc="mean outputs", enabled=progress, leave=False):
        sub = tokens.select(start, min(start + batch_size, tokens.n))
        acc.add(_run.forward(model, graph, sub.tokens, sub.read_pos, capture=True).writers, sub)
    return acc.means(next(model.parameters()).dtype)


def empty_logits(model: TransformerBridge, graph: Graph, blocks: list[Tensor],
                 read_pos: Tensor | None, batch: int) -> Tensor:
    """Logits of the empty circuit: every edge ablated, so the logits read the sum of the
    replacement outputs plus the constants (positional embedding, ``b_O``); float32, float64
    for a float64 model."""
    width = blocks[0].shape[1]
    const = constants(model, width)[graph.n_layers]  # float32, float64 for a float64 model
    total = sum(b.to(const.dtype).sum(2) for b in blocks) + const
    total = total.expand(batch, *total.shape[1:]).to(next(model.parameters()).dtype)
    return _engine.unembed(model, total, read_pos, dtype=const.dtype)
