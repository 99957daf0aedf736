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

**Per-position patches reuse the prefix.** With causal attention, a patch at position ``p`` of
block ``L`` leaves every position before ``p`` unchanged in every block, so only positions
``>= p`` of blocks ``>= L`` are recomputed. The capture records each block's keys and values
(after rotary embeddings, as the bridge's attention hands them to its KV-cache step), and the
suffix run feeds the recorded prefix ``[:p]`` to each block's attention in place of a KV cache,
slicing the position-dependent block arguments (``position_ids``, rotary ``position_embeddings``)
to ``p:``. Architectures whose attention bridge has no KV-cache step fall back to recomputing
every position (still exact).

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

try:
    from transformer_lens.model_bridge.architecture_adapter import (
        ArchitectureAdapter as _ArchitectureAdapter,
    )
except ImportError:  # pragma: no cover
    _ArchitectureAdapter = object

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
    kv: list[tuple[Tensor, Tensor]] | None = None

    @property
    def batch(self) -> int:
        return int(self.read.shape[0])


UNEMBED_IN = "unembed.hook_in"
"""Hook point on the unembedding's input (after the final norm)."""

_KV_STEP = "_update_kv_cache"
"""The bridge attention's KV-cache step, called with post-rotary ``k, v`` of shape
``[batch, kv_head, pos, d_head]`` (TransformerLens 4.3 ``AttentionBridge``)."""


def supports_prefix_reuse(model: TransformerBridge) -> bool:
    """Whether every block's attention bridge has the KV-cache step prefix reuse plugs into."""
    return all(callable(getattr(type(getattr(b, "attn", None)), _KV_STEP, None))
               for b in model.blocks)


@contextlib.contextmanager
def kv_step(model: TransformerBridge, fns: dict[int, Any]) -> Iterator[None]:
    """Replace the KV-cache step of the attention of block ``i`` by ``fns[i](k, v) -> (k, v)``.

    The replacement is an instance attribute, deleted on exit (also on exceptions), so the
    class's own method is back afterwards.
    """
    patched = []
    try:
        for i, fn in fns.items():
            attn = model.blocks[i].attn
            setattr(attn, _KV_STEP, lambda k, v, _fn=fn, **_kw: _fn(k, v))
            patched.append(attn)
        yield
    finally:
        for attn in patched:
            attn.__dict__.pop(_KV_STEP, None)


def _strip_cache(value: Any) -> Any:
    if _HFCache and isinstance(value, _HFCache):
        return None
    return value


@contextlib.contextmanager
def forward_hooks(model: TransformerBridge, hooks: dict[str, Any]) -> Iterator[None]:
    """Attach ``fn(output) -> output`` at hook points for the duration of the block."""
    handles = []
    points = model.hook_dict  # a property that walks every module (~1 ms a call): once
    try:
        for name, fn in hooks.items():
            point = points[name]
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
    model: TransformerBridge,
    tokens: Tokens,
    ids: Tensor,
    metric: MetricName,
    hook_names: set[str],
    *,
    record_kv: bool = False,
) -> Capture:
    """Run ``model`` on ``ids`` once, recording what suffix runs and patches need.

    With ``record_kv`` (and an architecture that supports it), also each block's keys and
    values, for suffix runs that start at a later position.
    """
    acts: dict[str, Tensor] = {}
    block_args: list[Any] = [None] * len(model.blocks)
    handles = []
    n_layers = len(model.blocks)
    kv: list[Any] = [None] * n_layers
    record_kv = record_kv and supports_prefix_reuse(model)

    def record(i: int):
        def fn(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
            kv[i] = (k.detach(), v.detach())
            return k, v

        return fn

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
        steps = {i: record(i) for i in range(n_layers)} if record_kv else {}
        hooks = {n: save(n) for n in hook_names}
        final_only = metric != "kl_all" and UNEMBED_IN in model.hook_dict
        if final_only:  # unembed the read positions only: [batch, 1, d_vocab], not [.., pos, ..]
            rows = torch.arange(ids.shape[0], device=ids.device)
            hooks[UNEMBED_IN] = lambda x: x[rows, tokens.read_pos][:, None]
        with forward_hooks(model, hooks), kv_step(model, steps):
            logits = model(ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    complete = record_kv and all(x is not None for x in kv)
    read = logits[:, 0] if final_only else read_logits(logits, tokens, metric)
    return Capture(acts=acts, block_args=block_args, read=read.float(),
                   kv=kv if complete else None)


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
    if isinstance(value, dict):
        return {key: _tile(v, batch, k) for key, v in value.items()}
    return value


_POSITION_KWARGS = ("position_ids", "cache_position")


def _from_position(kwargs: dict[str, Any], pos: int) -> dict[str, Any]:
    """Block keyword arguments for a run over positions ``pos:`` only.

    Attention masks are left whole: the bridge's attention takes the last query rows of a 4-D
    mask and the first key columns, which is what a run with a prefix needs.
    """
    out = dict(kwargs)
    for key in _POSITION_KWARGS:
        if isinstance(out.get(key), Tensor):
            out[key] = out[key][..., pos:]
    rotary = out.get("position_embeddings")
    if isinstance(rotary, tuple) and all(isinstance(t, Tensor) for t in rotary):
        out["position_embeddings"] = tuple(t[..., pos:, :] for t in rotary)
    return out


def _prefix_step(prefix: tuple[Tensor, Tensor], pos: int, copies: int):
    """A KV-cache step that puts the recorded keys and values of positions ``:pos`` in front."""
    pk, pv = (t[:, :, :pos].repeat(copies, 1, 1, 1) for t in prefix)

    def step(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)

    return step


def run_suffix(
    model: TransformerBridge,
    start: int,
    hidden: Tensor,
    cap: Capture,
    k: int,
    inject: dict[str, Tensor] | None = None,
    *,
    pos: int = 0,
) -> Tensor:
    """Run blocks ``start..`` on ``hidden`` (``k`` stacked copies of the capture's batch).

    Args:
        model: the receiving model.
        start: the first block to run.
        hidden: residual stream entering block ``start``, ``[k*batch, pos_count, d_model]``
            holding positions ``pos:`` only.
        cap: the receiving model's capture (block arguments; keys and values if ``pos > 0``).
        k: how many stacked copies of the capture's batch ``hidden`` holds.
        inject: hook name -> delta ``[k*batch, pos_count, d_model]`` added to that hook's output.
        pos: the first position computed; earlier positions' keys and values come from ``cap``.

    Returns:
        The residual stream after the last block at positions ``pos:``.
    """
    if pos and cap.kv is None:
        raise RuntimeError("a suffix from a later position needs a capture with keys and values")
    hooks = {name: (lambda out, d=delta: out + d) for name, delta in (inject or {}).items()}
    steps = {layer: _prefix_step(cap.kv[layer], pos, k)
             for layer in range(start, len(model.blocks))} if pos else {}
    with forward_hooks(model, hooks), kv_step(model, steps):
        for layer in range(start, len(model.blocks)):
            args, kwargs = cap.block_args[layer]
            if pos:
                kwargs = _from_position(kwargs, pos)
            out = model.blocks[layer](
                hidden, *_tile(args, cap.batch, k), **_tile(kwargs, cap.batch, k)
            )
            hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def _output_transform(model: TransformerBridge, logits: Tensor) -> Tensor:
    """What the model does to its logits after the unembedding (Gemma 2's soft-capping), as the
    bridge's forward does it."""
    adapter = getattr(model, "adapter", None)
    transform = getattr(adapter, "apply_output_logits_transform", None)
    return transform(logits) if transform is not None else logits


def unembed(model: TransformerBridge, resid: Tensor, read_pos: Tensor | None, *,
            dtype: torch.dtype = torch.float32) -> Tensor:
    """Final norm, unembedding and the model's output transform (e.g. logit soft-capping), at
    ``read_pos`` (one position per row) or at every position; logits in ``dtype``."""
    if read_pos is not None:
        resid = resid[torch.arange(resid.shape[0], device=resid.device), read_pos][:, None]
        return _output_transform(model, model.unembed(model.ln_final(resid)))[:, 0].to(dtype)
    return _output_transform(model, model.unembed(model.ln_final(resid))).to(dtype)


def reads_columns(model: TransformerBridge) -> bool:
    """Whether logits of a few tokens can be computed alone, as ``ln_final(x) @ W_U[:, ids] +
    b_U[ids]``: true for a plain linear unembedding with no output transform (no logit
    soft-capping)."""
    cap = getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0
    adapter = getattr(model, "adapter", None)
    plain = adapter is None or type(adapter).apply_output_logits_transform is getattr(
        _ArchitectureAdapter, "apply_output_logits_transform", None)
    return cap <= 0 and plain and hasattr(model, "W_U")


def unembed_columns(
    model: TransformerBridge, resid: Tensor, read_pos: Tensor, cols: Tensor
) -> Tensor:
    """Logits of the tokens ``cols`` (``[rows, c]`` ids, one set per row) at ``read_pos`` only.

    A logit difference reads two logits per prompt; this computes those two instead of the whole
    vocabulary (for GPT-2, 2 columns instead of 50,257). Requires :func:`reads_columns`.
    """
    rows = torch.arange(resid.shape[0], device=resid.device)
    x = model.ln_final(resid[rows, read_pos][:, None])[:, 0]
    w = model.W_U.T[cols]  # [rows, c, d_model]
    out = torch.einsum("rd,rcd->rc", x, w)
    if getattr(model, "b_U", None) is not None:
        out = out + model.b_U[cols]
    return out.float()


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
