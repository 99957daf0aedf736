"""The peers mechdiff is timed against: TransformerLens's own patching loops and a naive loop.

* TransformerLens 4.3 ``transformer_lens.patching`` (``get_act_patch_attn_head_out_all_pos``,
  ``get_act_patch_resid_pre``, ``get_act_patch_attn_head_out_by_pos``) runs unchanged on a
  ``TransformerBridge``: ``generic_activation_patch`` does one full ``model.run_with_hooks`` forward
  of the corrupted batch per patched index, with a hook that copies the clean activation in
  (``hook_z`` for heads, which the bridge shows as ``[batch, pos, head, d_head]``).
* The naive cross-model loop is what a user would write without mechdiff: one full forward of the
  receiving model per head, adding ``donor z_h @ W_O[h] - receiver z_h @ W_O[h]`` (each model's own
  ``W_O``) at ``blocks.L.hook_attn_out``.

Every peer forward costs the same (a full forward, whatever the patched layer), so a peer can be
timed on a sample of its patches (``index_df``) and scaled to the full count; :class:`PeerTiming`
records both the sample size and the full count, and the cache forwards are timed separately.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from transformer_lens import patching
from transformer_lens.model_bridge import TransformerBridge


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def logit_diff_metric(answers: torch.Tensor, wrong: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Mean over prompts of logit(answer) - logit(wrong) at the last position (equal-length prompts)."""
    idx = torch.arange(answers.shape[0], device=answers.device)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1].float()
        return (last[idx, answers] - last[idx, wrong]).mean()

    return metric


@dataclass(frozen=True)
class PeerTiming:
    """A peer loop timed on ``n_sampled`` of its ``n_total`` patched forwards.

    ``setup_s`` is the unpatched forwards it needs (clean cache, receiver cache); ``per_patch_s``
    the median time of one patched forward (median, so a burst of load from other processes on a
    shared machine does not dominate); ``total_s`` the estimated time of the full loop.
    """

    setup_s: float
    patch_times: list[float]
    n_total: int
    values: torch.Tensor  # metric per sampled patch, in ``index`` order
    index: list[tuple[int, ...]]

    @property
    def n_sampled(self) -> int:
        return len(self.patch_times)

    @property
    def per_patch_s(self) -> float:
        return statistics.median(self.patch_times)

    @property
    def total_s(self) -> float:
        return self.setup_s + self.per_patch_s * self.n_total


def spread(n: int, k: int, offset: int = 0) -> list[int]:
    """``k`` of ``range(n)`` spread evenly, rotated by ``offset`` (always includes an end point)."""
    k = min(k, n)
    picks = sorted({(round(i * (n - 1) / max(k - 1, 1)) + offset) % n for i in range(k)})
    return picks if len(picks) == k else list(range(k))


def tl_sweep(
    fn: Callable, model: TransformerBridge, clean: torch.Tensor, corrupted: torch.Tensor,
    metric: Callable, index: Sequence[tuple[int, ...]], columns: Sequence[str], n_total: int,
) -> PeerTiming:
    """Time a ``transformer_lens.patching.get_act_patch_*`` function on the rows ``index``."""
    device = clean.device
    times, values = [], []
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        _, cache = model.run_with_cache(clean)
        sync(device)
        setup = time.perf_counter() - t0
        for row in index:  # one TL call per patch, so each patched forward is timed on its own
            # the partials bind index_axis_names; a sample of indices is passed as index_df
            df = pd.DataFrame([row], columns=list(columns))
            t0 = time.perf_counter()
            out = fn(model, corrupted, cache, metric, index_axis_names=None, index_df=df)
            sync(device)
            times.append(time.perf_counter() - t0)
            values.append(out.reshape(-1)[0])
    return PeerTiming(setup, times, n_total, torch.stack(values).float().cpu(), list(index))


def tl_heads_all_pos(model, clean, corrupted, metric, index, n_total) -> PeerTiming:
    return tl_sweep(patching.get_act_patch_attn_head_out_all_pos, model, clean, corrupted, metric,
                    index, ("layer", "head"), n_total)


def tl_resid_pre(model, clean, corrupted, metric, index, n_total) -> PeerTiming:
    return tl_sweep(patching.get_act_patch_resid_pre, model, clean, corrupted, metric, index,
                    ("layer", "pos"), n_total)


def tl_heads_by_pos(model, clean, corrupted, metric, index, n_total) -> PeerTiming:
    return tl_sweep(patching.get_act_patch_attn_head_out_by_pos, model, clean, corrupted, metric,
                    index, ("layer", "pos", "head"), n_total)


def naive_cross_heads(
    receiver: TransformerBridge, donor: TransformerBridge, tokens: torch.Tensor, metric: Callable,
    index: Sequence[tuple[int, int]], n_total: int,
) -> PeerTiming:
    """One full receiver forward per head, with the donor's head output (own ``W_O``) swapped in."""
    device = tokens.device
    only_z = lambda name: name.endswith("attn.hook_z")  # noqa: E731
    values, times = [], []
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        _, rcache = receiver.run_with_cache(tokens, names_filter=only_z)
        _, dcache = donor.run_with_cache(tokens, names_filter=only_z)
        sync(device)
        setup = time.perf_counter() - t0
        for layer, head in index:
            t0 = time.perf_counter()
            name = f"blocks.{layer}.attn.hook_z"
            delta = (dcache[name][:, :, head] @ donor.W_O[layer, head]
                     - rcache[name][:, :, head] @ receiver.W_O[layer, head])

            def add(act, hook, d=delta):
                return act + d

            logits = receiver.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_attn_out", add)])
            values.append(metric(logits))
            sync(device)
            times.append(time.perf_counter() - t0)
    return PeerTiming(setup, times, n_total, torch.stack(values).float().cpu(), list(index))


def tl_attribution(model: TransformerBridge, clean: torch.Tensor, corrupted: torch.Tensor,
                   answers: torch.Tensor, wrong: torch.Tensor) -> tuple[float, dict]:
    """TL 4.3 ``tools.analysis.attribution_patching.attribution_patch`` (node granularity, one
    clean/corrupt pair per call since answers differ per prompt; TL itself loops one pair at a
    time and averages). Returns the seconds and the node scores averaged over pairs.

    TL's tool differentiates through the weights' graph, so parameters need ``requires_grad``
    (mechdiff's pairs freeze them; restored afterwards)."""
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    totals: dict = {}
    try:
        sync(clean.device)
        t0 = time.perf_counter()
        for i in range(clean.shape[0]):
            def metric(logits, a=int(answers[i]), w=int(wrong[i])):
                return logits[0, -1, a].float() - logits[0, -1, w].float()

            res = attribution_patch(model, clean[i:i + 1], corrupted[i:i + 1], metric)
            for node, v in res.node_scores.items():
                totals[node] = totals.get(node, 0.0) + v / clean.shape[0]
        sync(clean.device)
        seconds = time.perf_counter() - t0
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
    return seconds, totals
