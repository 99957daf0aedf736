"""Edge scores from reader gradients: ``sum over positions of (A_u - a_u) . dM/dx_v``.

During a backward pass, :mod:`mechdiff.circuits._run` hands each reader group's gradient
``[batch, pos, readers, d_model]`` to :meth:`Contraction.on_grad`, which contracts it at once with
the upstream differences of every writer feeding the group (a batched matrix product over
``pos * d_model``) and adds the result, per prompt, to a ``[batch, reader, writer]`` accumulator.
Nothing per reader is kept, so memory holds one group's gradient at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor


class Contraction:
    """Accumulates ``weight * (D_w . g_r)`` for one prompt batch.

    Attributes:
        acc: ``[batch, reader, writer]`` per-prompt sums over positions.
        acc_pos: ``[reader, writer, pos]`` sums over prompts per position (if asked for).
    """

    def __init__(self, batch: int, n_readers: int, n_writers: int, width: int, *,
                 dtype: torch.dtype, device: torch.device, per_position: bool) -> None:
        self.acc = torch.zeros(batch, n_readers, n_writers, dtype=dtype, device=device)
        self.acc_pos = (torch.zeros(n_readers, n_writers, width, dtype=dtype, device=device)
                        if per_position else None)
        self.delta: Tensor | None = None  # [batch, writer, pos * d_model]
        self.width = width
        self.weight = 1.0

    def set_delta(self, replace: list[Tensor], writers: list[Tensor]) -> None:
        """Upstream differences ``A_w - a_w`` from replacement and current writer blocks
        (``[batch or 1, pos, n, d_model]`` each)."""
        parts = [(a.to(c.dtype) - c).permute(0, 2, 1, 3) for a, c in zip(replace, writers,
                                                                          strict=True)]
        b = max(p.shape[0] for p in parts)
        d = torch.cat([p.expand(b, *p.shape[1:]) for p in parts], dim=1)  # [batch, W, pos, d]
        self.delta = d.reshape(b, d.shape[1], -1)

    def on_grad(self, rows: list[int], n_up: int, g: Tensor) -> None:
        """Contract one reader group's gradient ``[batch, pos, len(rows), d_model]``."""
        b, s, r, d = g.shape
        up = self.delta[:, :n_up].to(g.dtype)
        gp = g.permute(0, 2, 1, 3).reshape(b, r, s * d)
        lo = rows[0]
        self.acc[:, lo:lo + r, :n_up] += self.weight * torch.bmm(gp, up.transpose(1, 2)).to(
            self.acc.dtype)
        if self.acc_pos is not None:
            per = torch.einsum("bsrd,bwsd->rws", g, up.reshape(b, n_up, s, d))
            self.acc_pos[lo:lo + r, :n_up, :s] += self.weight * per.to(self.acc_pos.dtype)
