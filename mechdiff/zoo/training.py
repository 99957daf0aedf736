"""What the zoos' training loops share: the learning-rate schedule.

Linear warm-up over ``warmup`` steps (starting at ``lr / warmup``, not 0), then cosine decay to
``lr / 10`` at the last step. transformers' ``get_cosine_with_min_lr_schedule_with_warmup`` has the
same decay but starts its warm-up at 0; it would change every trained zoo model (and so the
numbers the README reports), so the schedule stays ours, written once.
"""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, lr: float, warmup: int, steps: int) -> float:
    """The learning rate at optimiser step ``step`` (0-based)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))  # ends at lr / 10
