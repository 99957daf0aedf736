"""The execution engine shared by every patching method.

Exact activation patching at a site in block ``L`` leaves blocks ``< L`` unchanged, so only the
suffix ``L..n_layers-1`` needs recomputing, and the unembedding is only needed where the metric
reads. The engine therefore

1. runs each model once on the prompts (a *capture*), recording the residual stream entering every
   block, the activations that patches read, the logits at the metric's positions, and the keyword
   arguments the Hugging Face model passes to each block (attention mask, position ids, rotary
   embeddings, ...);
2. re-runs only the blocks from ``L`` on, as a batch of ``k`` patched copies of the prompts at once
   (one copy per patch), by calling the bridge's own block modules with the captured arguments,
   so every TransformerLens hook still fires and the numerics are the model's own;
3. applies the final norm and unembedding at the read positions only.

Patches enter through forward hooks on the bridge's hook points that are always removed, also when
an exception is raised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechdiff.metrics import read_logits
from mechdiff.tasks import MetricName, Tokens

try:  # transformers' KV-cache base class: never replayed into a suffix run
    from transformers.cache_utils import Cache as _HFCache
except ImportError:  # pragma: no cover
    _HFCache = ()


@dataclass
class Capture:
    """One model's run on one batch of prompts.

    Attributes:
        acts: hook name -> activation ``[batch, pos, ...]`` for the hooks that were asked for.
        block_args: per block, the positional (after the hidden state) and keyword arguments the
            HF model passed to it, with KV caches removed.
        read: logits at the metric's read positions, float32.
    """

    acts: dict[str, Tensor]
    block_args: list[tuple[tuple[Any, ...], dict[str, Any]]]
    read: Tensor

    @property
    def batch(self) -> int:
        return int(self.read.shape[0])


def _strip_cache(value: Any) -> Any:
    if _HFCache and isinstance(value, _HFCache):
        return None
    return value


@contextlib.contextmanager
def forward_hooks(model: TransformerBridge, hooks: dict[str, Any]) -> Iterator[None]:
    """Attach ``fn(output) -> output`` at hook points for the duration of the block."""
    handles = []
    try:
        for name, fn in hooks.items():
            point = model.hook_dict[name]
            handles.append(point.register_forward_hook(_converting(point, fn)))
        yield
    finally:
        for h in handles:
            h.remove()


def _converting(point: Any, fn: Any) -> Any:
    """A raw forward hook that shows ``fn`` the activation in TransformerLens's layout.

    Some hook points carry a conversion (e.g. ``hook_z`` fires as ``[batch, pos, head*d_head]``
    and is shown to TL hooks as ``[batch, pos, head, d_head]``); apply it and revert the result.
    """
    conv = getattr(point, "hook_conversion", None)

    def hook(_mod: Any, _inp: Any, out: Tensor) -> Tensor | None:
        x = conv.convert(out) if conv is not None else out
        y = fn(x)
        if y is x:
            return None
        return conv.revert(y) if conv is not None else y

    return hook


def capture(
    model: TransformerBridge, tokens: Tokens, ids: Tensor, metric: MetricName, hook_names: set[str]
) -> Capture:
    """Run ``model`` on ``ids`` once, recording what suffix runs and patches need."""
    acts: dict[str, Tensor] = {}
    block_args: list[Any] = [None] * len(model.blocks)
    handles = []

    def save_args(i: int):
        def pre(_mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            rest = tuple(_strip_cache(a) for a in args[1:])
            kw = {k: _strip_cache(v) for k, v in kwargs.items() if k != "hidden_states"}
            if "use_cache" in kw:
                kw["use_cache"] = False
            block_args[i] = (rest, kw)

        return pre

    def save(name: str):
        def fn(out: Tensor) -> Tensor:
            acts[name] = out.detach()
            return out

        return fn

    try:
        for i, block in enumerate(model.blocks):
            handles.append(block.register_forward_pre_hook(save_args(i), with_kwargs=True))
        with forward_hooks(model, {n: save(n) for n in hook_names}):
            logits = model(ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return Capture(acts=acts, block_args=block_args, read=read_logits(logits, tokens, metric).float())


def _tile(value: Any, batch: int, k: int) -> Any:
    if k == 1:
        return value
    if isinstance(value, Tensor):
        if value.ndim >= 2 and value.shape[0] == batch and batch > 1:
            return value.repeat(k, *([1] * (value.ndim - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_tile(v, batch, k) for v in value)
    if isinstance(value, list):
        return [_tile(v, batch, k) for v in value]
    return value


def run_suffix(
    model: TransformerBridge,
    start: int,
    hidden: Tensor,
    cap: Capture,
    k: int,
    inject: dict[str, Tensor] | None = None,
) -> Tensor:
    """Run blocks ``start..`` on ``hidden`` (``k`` stacked copies of the capture's batch).

    ``inject`` maps a hook name to a delta ``[k*batch, pos, d_model]`` added to that hook's output.
    Returns the residual stream after the last block.
    """
    hooks = {name: (lambda out, d=delta: out + d) for name, delta in (inject or {}).items()}
    with forward_hooks(model, hooks):
        for layer in range(start, len(model.blocks)):
            args, kwargs = cap.block_args[layer]
            out = model.blocks[layer](
                hidden, *_tile(args, cap.batch, k), **_tile(kwargs, cap.batch, k)
            )
            hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def unembed(model: TransformerBridge, resid: Tensor, read_pos: Tensor | None) -> Tensor:
    """Final norm and unembedding, at ``read_pos`` (one position per row) or at every position."""
    if read_pos is not None:
        resid = resid[torch.arange(resid.shape[0], device=resid.device), read_pos][:, None]
        return model.unembed(model.ln_final(resid))[:, 0].float()
    return model.unembed(model.ln_final(resid)).float()


def tile_tokens(tokens: Tokens, k: int) -> Tokens:
    """``k`` stacked copies of a tokenized batch (for metrics on patched copies)."""
    if k == 1:
        return tokens

    def rep(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.repeat(k, *([1] * (x.ndim - 1)))

    return Tokens(
        tokens=rep(tokens.tokens),
        lengths=rep(tokens.lengths),
        answer_ids=rep(tokens.answer_ids),
        wrong_ids=rep(tokens.wrong_ids),
        corrupted_tokens=None,
    )
