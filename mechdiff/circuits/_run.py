"""One forward of a bridge with edge-level interventions, writer capture and reader gradients.

Every circuit method runs through :func:`forward`. It turns on the bridge's per-head result and
split q/k/v input hooks (:func:`~mechdiff.circuits.graph.split_inputs`) and runs ``copies``
stacked copies of a prompt batch at once. Writers' outputs are grouped in **blocks** of the
writer order: ``[input, heads of layer 0, MLP 0, heads of layer 1, MLP 1, ...]``, each
``[batch, pos, n, d_model]`` (``n`` = 1 or ``n_heads``); block ``b`` of layer ``l`` starts at
writer ``1 + l (H + 1)`` (heads) or ``1 + l (H + 1) + H`` (MLP).

**Edge interventions.** Given replacement outputs ``A`` (a corrupted run's, per-position means, or
another model's) and per copy a coefficient ``c[r, w]`` for every edge, the input of reader ``r``
becomes::

    x_r  ->  x_r + sum_w c[r, w] (A_w - cur_w)

where ``cur_w`` is writer ``w``'s output *in this run* (so an ablated edge carries ``A_w`` whatever
happened upstream of ``w``, as EAP-IG's ``evaluate`` does). ``c = 1`` on the edges outside a circuit
ablates them all in one forward; ``c = alpha`` everywhere interpolates every edge at once.

**Reader gradients.** With ``on_grad``, the gradient ``dM/dx_r`` of every reader input is handed to
the caller during the backward pass, reader group by reader group (memory bounded by one layer's
readers). MLP inputs and the logits: a tensor hook on the input. Query, key and value inputs: in a
run with edge interventions, a tensor hook on each per-head fork of the residual (the bridge's
``use_split_qkv_input``). In a run without interventions (EAP, EAP-IG) the fork is not needed and
not built: the bridge runs its ordinary forward, and the gradient of the per-head input is
assembled from the gradient at the q/k/v projection outputs (``attn.{q,k,v}.hook_out``, before
rotary embeddings), which is exactly what the fork's copy ``j`` receives::

    dM/dx_j = VJP of ln1 at x, applied to  g_j W_j      (g_j: gradient of head j's projection,
                                                          W_j: its ``[d_head, d_model]`` slice)

with ``ln1`` the same raw layer-norm module the fork applies and ``x`` its input
(``ln1.hook_in``). It is computed when the three projections of a layer have their gradients, in
closed form for LayerNorm / RMSNorm (checked once per model against autograd through ``ln1``,
which is the fallback). Such runs also read each head's output as ``z_h W_O[h]`` from ``hook_z``
after the run instead of the bridge's per-head results. This saves the fork's ``H + 2G`` layer
norms and per-head projections in the forward and backward pass (SmolLM2-135M, 16 prompts:
forward + backward 2.3 s -> 1.5 s); equality with the forked gradients and head outputs is
tested. Runs compared with intervened runs (clean and donor runs of faithfulness and patching)
pass ``fork=True`` so that their numbers are computed the same way.

Hooks are always removed and the bridge's flags restored, also when an exception is raised.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechdiff import _engine
from mechdiff.circuits.graph import (
    INPUT_HOOK,
    Graph,
    head_out_hook,
    ln1_in_hook,
    logits_in_hook,
    mlp_in_hook,
    mlp_out_hook,
    qkv_in_hook,
    qkv_out_hook,
    rounding_tol,
    split_inputs,
    z_hook,
)

GradFn = Callable[[list[int], int, Tensor], None]
"""``on_grad(reader_rows, n_upstream_writers, grad)``: ``grad`` is ``[copies*batch, pos, len(rows),
d_model]``, the gradient of the summed metric at those readers' inputs."""

SlotFn = Callable[[list[int], int, int, int], Tensor]
"""``slot(reader_rows, n_upstream_writers, pos, d_model)``: a contiguous ``[len(rows), batch, pos,
d_model]`` tensor the caller takes those readers' gradients from (``Contraction.slot``)."""


def block_starts(graph: Graph) -> list[int]:
    """First writer index of each writer block."""
    starts = [0]
    for layer in range(graph.n_layers):
        starts += [graph.head(layer, 0), graph.mlp(layer)]
    return starts


def block_sizes(graph: Graph) -> list[int]:
    return [1] + [graph.n_heads, 1] * graph.n_layers


@dataclass
class Out:
    """What one forward returns.

    Attributes:
        read: logits at each row's read position ``[copies*batch, d_vocab]`` (every position,
            ``[copies*batch, pos, d_vocab]``, when ``read_pos`` is None), float32 (float64 for a
            float64 model).
        writers: the writer blocks of this run (detached), if asked for.
        stacked: in a run without the per-head fork, the ``[writer, batch, pos, d_model]``
            tensor every writer block is a view of (``writers[b]`` is
            ``stacked[start:start + n].permute(1, 2, 0, 3)``); None in forked runs, whose
            blocks are the bridge's own tensors. With ``lazy_heads`` its head blocks are not
            computed yet (see :func:`fill_heads` and ``forward(into=...)``).
        acts: activations recorded at the hooks asked for (detached).
        leaf: the input tensor gradients can be taken with respect to (with ``grad``).
    """

    read: Tensor
    writers: list[Tensor] | None
    acts: dict[str, Tensor]
    leaf: Tensor | None
    finish: Callable[[], None] = lambda: None
    """Call after the backward pass: checks that every reader group's gradient was handed over."""
    stacked: Tensor | None = None
    zs: dict[int, Tensor] | None = None
    """With ``lazy_heads``: each layer's ``hook_z`` ``[batch, pos, head, d_head]`` (detached),
    from which the head blocks of ``stacked`` are still to be computed."""


def _reader_groups(graph: Graph) -> list[tuple[str, list[int], int, int]]:
    """``(hook name, reader rows, upstream writers, blocks before)`` for every reader hook."""
    out = []
    n_h, n_kv = graph.n_heads, graph.n_kv_heads
    for layer in range(graph.n_layers):
        up = 1 + layer * graph.per_layer_writers
        for kind, count in (("q", n_h), ("k", n_kv), ("v", n_kv)):
            rows = [graph.reader(layer, kind, i) for i in range(count)]
            out.append((qkv_in_hook(layer, kind), rows, up, 1 + 2 * layer))
        out.append((mlp_in_hook(layer), [graph.reader(layer, "mlp")], up + n_h, 2 + 2 * layer))
    out.append((logits_in_hook(graph.n_layers), [graph.logits_reader], graph.n_writers,
                1 + 2 * graph.n_layers))
    return out


class _Edits:
    """The edge interventions of one forward pass.

    The input of reader ``r`` in copy ``c`` changes by ``sum_w coef[c, r, w] D_w`` with
    ``D_w = A_w - cur_w``. Written as ``base[c, r] S + sum_w (coef[c, r, w] - base[c, r]) D_w``
    where ``S`` is the running sum of every ``D_w`` produced so far (exactly the writers upstream of
    the readers about to run) and ``base`` is the median coefficient of the reader's edges: a small
    circuit (most edges ablated, ``base = 1``), a single patched edge (``base = 0``) and a uniform
    interpolation (``base = alpha``) all leave a sparse remainder, computed from the writer columns
    where it is non-zero (all of a product's writers at once when more than :data:`DENSE` of them
    are).

    The remainder is a product ``rest @ D`` over the stored ``D_w``, which reads every upstream
    ``D_w`` from memory once per product: the cost of an intervened run. So each layer has one
    product for its q/k/v readers *and* its MLP reader over the writers before the layer (taken
    when the attention runs; the MLP's row is kept until the MLP runs) and one small product for
    the MLP's edges from the layer's own heads (:func:`_products`). Before, the MLP read the
    whole history again: 30 % of the remainder's time on SmolLM2-135M.
    """

    def __init__(self, graph: Graph, coef: Tensor, replace: list[Tensor], copies: int,
                 batch: int) -> None:
        self.graph, self.replace, self.copies, self.batch = graph, replace, copies, batch
        valid = graph.valid.to(coef.device)
        masked = torch.where(valid, coef, torch.full_like(coef, float("nan")))
        self.base = masked.nanmedian(-1).values.nan_to_num(0.0)  # [copies, reader]
        self.rest = (coef - self.base[..., None]) * valid  # [copies, reader, writer]
        nonzero = self.rest.ne(0).any(0)  # [reader, writer]
        # first reader of a product -> (reader count, first writer, writer columns, end writer)
        self.products: dict[int, tuple[int, int, Tensor | None, int]] = {}
        for first, count, lo, hi in _products(graph):
            cols = nonzero[first:first + count, lo:hi].any(0).nonzero().flatten()
            self.products[first] = count, lo, (cols + lo if len(cols) else None), hi
        self.n_attn = graph.n_heads + 2 * graph.n_kv_heads
        self.kept: dict[int, Tensor] = {}  # MLP reader -> its row of the layer's product
        self.any_rest = bool(nonzero.any())
        self.starts, self.sizes = block_starts(graph), block_sizes(graph)
        self.buf: Tensor | None = None  # [copies, writer, batch*pos*d_model] of every D_w
        self.running: Tensor | None = None

    def add(self, b: int, cur: Tensor) -> None:
        """Writer block ``b`` of this run, ``[copies*batch, pos, n, d]``."""
        c = cur.reshape(self.copies, self.batch, *cur.shape[1:])
        d = self.replace[b].to(c.dtype)[None] - c  # [copies, batch, pos, n, d_model]
        total = d.sum(3)
        self.running = total if self.running is None else self.running + total
        if self.any_rest:
            if self.buf is None:
                self.buf = torch.empty(self.copies, self.graph.n_writers, total[0].numel(),
                                       dtype=d.dtype, device=d.device)
            a, n = self.starts[b], self.sizes[b]
            self.buf[:, a:a + n] = d.permute(0, 3, 1, 2, 4).reshape(self.copies, n, -1)

    def _product(self, first: int, rows: slice = slice(None), into: Tensor | None = None
                 ) -> Tensor | None:
        """``rest @ D`` of the product starting at reader ``first`` (its ``rows``),
        ``[copies, rows, batch*pos*d_model]``, added in place to ``into`` if given (one
        allocation per product: fresh pages cost as much as the product's own writes); None if
        both are."""
        count, lo, cols, hi = self.products[first]
        if cols is None:
            return into
        rest = self.rest[:, first:first + count][:, rows]
        if len(cols) > DENSE * (hi - lo):
            a, d = rest[:, :, lo:hi], self.buf[:, lo:hi]
        else:
            a, d = rest[:, :, cols], self.buf[:, cols]
        a = a.to(d.dtype)
        return torch.bmm(a, d) if into is None else into.baddbmm_(a, d)

    def _scaled(self, first: int, count: int, pad: int = 0) -> Tensor | None:
        """``base * S`` of readers ``first .. first+count-1``, ``[copies, count + pad,
        batch*pos*d_model]`` with ``pad`` rows of zeros after them (for a product with more
        rows to add into); None if their base coefficients are all zero."""
        base = self.base[:, first:first + count]
        if not bool(base.ne(0).any()):
            return None
        running = self.running.reshape(self.copies, 1, -1)
        out = torch.empty(self.copies, count + pad, running.shape[-1], dtype=running.dtype,
                          device=running.device)
        # in place rather than mul(out=...), which autograd refuses (runs with reader gradients)
        out[:, :count] = running
        out[:, :count].mul_(base[:, :, None].to(running.dtype))
        out[:, count:].zero_()
        return out

    def delta(self, first: int, count: int) -> Tensor | None:
        """Change of the inputs of readers ``first .. first+count-1`` (a layer's q/k/v readers,
        its MLP reader or the logits, all upstream writers added), ``[copies, batch, pos, count,
        d]``; None if nothing changes."""
        shape = self.running.shape
        if first == self.graph.logits_reader:
            out = self._product(first, into=self._scaled(first, count))
        elif count == self.n_attn:  # a layer's q/k/v, and its MLP's row kept for the MLP
            if self.products[first][2] is None:
                out = self._scaled(first, count)
            else:
                both = self._product(first, into=self._scaled(first, count, pad=1))
                self.kept[first + count] = both[:, count:]
                out = both[:, :count]
        else:  # an MLP: the layer's product (if the q/k/v had none), then its own heads
            out = self._scaled(first, count)
            early = self.kept.pop(first) if first in self.kept else self._product(
                first - self.n_attn, slice(self.n_attn, None))
            if early is not None:
                out = early if out is None else out.add_(early)
            out = self._product(first, into=out)
        if out is None:
            return None
        return out.reshape(self.copies, count, *shape[1:]).permute(0, 2, 3, 1, 4)


DENSE = 0.25
"""Above this share of non-zero columns, a product's remainder is one dense product."""


def _products(graph: Graph) -> list[tuple[int, int, int, int]]:
    """``(first reader, count, first writer, end writer)`` of each product of :class:`_Edits`:
    per layer, its q/k/v readers and its MLP reader over the writers before the layer, then its
    MLP reader over the layer's heads; the logits over every writer."""
    n_attn = graph.n_heads + 2 * graph.n_kv_heads
    out = []
    for layer in range(graph.n_layers):
        first = layer * graph.per_layer_readers
        up = 1 + layer * graph.per_layer_writers
        out += [(first, n_attn + 1, 0, up), (first + n_attn, 1, up, up + graph.n_heads)]
    return [*out, (graph.logits_reader, 1, 0, graph.n_writers)]


def projection_gradients(model: TransformerBridge) -> bool:
    """Whether q/k/v input gradients can be taken from the projections (module docstring):
    every attention layer applies a raw ``ln1`` module to a captured pre-norm residual, and its
    q/k/v projections are plain linear maps with readable weights."""
    points = model.hook_dict  # a property that walks every module: once
    for layer, block in enumerate(model.blocks):
        attn = getattr(block, "attn", None)
        if getattr(attn, "_ln1_module", None) is None:
            return False
        for which in "qkv":
            if _weight(getattr(attn, which, None)) is None:
                return False
            if qkv_out_hook(layer, which) not in points:
                return False
        if ln1_in_hook(layer) not in points or z_hook(layer) not in points:
            return False
        try:
            if _out_weight(attn, int(model.cfg.n_heads), int(model.cfg.d_head)) is None:
                return False
        except RuntimeError:  # a W_O that does not split into the configured heads
            return False
    return True


def unforked(model: TransformerBridge) -> bool:
    """Whether runs without edge interventions can skip the bridge's per-head fork and
    per-head results (see :func:`projection_gradients`); cached per model."""
    ok = _UNFORKED.get(model)
    if ok is None:
        ok = _UNFORKED[model] = projection_gradients(model)
    return ok


def _weight(linear: Any) -> Tensor | None:
    """The readable 2-D weight of a bridge's linear component (None if it has none)."""
    weight = getattr(getattr(linear, "original_component", None), "weight", None)
    if not isinstance(weight, Tensor) or weight.ndim != 2 or weight.is_meta:
        return None
    return weight


def _out_weight(attn: Any, n_heads: int, d_head: int) -> Tensor | None:
    """``W_O`` as ``[n_heads, d_head, d_model]``, read as the bridge's per-head result reads it
    (``_compute_per_head_result``: HF ``Conv1D`` stores ``[in, out]``, ``nn.Linear``
    ``[out, in]``); None where the bridge scales head outputs or the weight is not readable."""
    if getattr(attn, "_result_contribution_scale", 1.0) != 1.0:
        return None
    weight = _weight(getattr(attn, "o", None))
    if weight is None:
        return None
    if type(attn.o.original_component).__name__ == "Conv1D":
        return weight.view(n_heads, d_head, -1)
    return weight.view(weight.shape[0], n_heads, d_head).permute(1, 2, 0)


def head_outputs(model: TransformerBridge, layer: int, z: Tensor, out: Tensor) -> None:
    """Per-head outputs ``z_h W_O[h]`` (without ``b_O``) from ``hook_z`` ``[batch, pos, head,
    d_head]``, what ``hook_result`` carries in a forked run, written into ``out`` ``[head,
    batch, pos, d_model]`` (contiguous)."""
    b, s, h, e = z.shape
    w = _out_weight(model.blocks[layer].attn, h, e)
    torch.bmm(z.permute(2, 0, 1, 3).reshape(h, b * s, e), w.to(z.dtype),
              out=out.view(h, b * s, -1))


_UNFORKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _norm_form(ln: torch.nn.Module) -> tuple[str, Tensor | None, float] | None:
    """``(kind, weight, eps)`` of a layer norm whose VJP has a closed form: ``"layer"``
    (centred, ``torch.nn.LayerNorm`` and look-alikes) or ``"rms"``; None for anything else.
    The form is a guess from the module; :class:`_ProjectionGrads` checks it on its first
    layer against autograd and falls back to autograd if it differs (e.g. Gemma's ``1 + w``)."""
    eps = getattr(ln, "eps", None)
    eps = getattr(ln, "variance_epsilon", None) if eps is None else eps
    if not isinstance(eps, float):
        return None
    weight = getattr(ln, "weight", None)
    weight = weight if isinstance(weight, Tensor) else None
    name = type(ln).__name__.lower()
    if isinstance(ln, torch.nn.LayerNorm) or name.endswith("layernorm"):
        return "layer", weight, eps
    if "rmsnorm" in name:
        return "rms", weight, eps
    return None


Parts = list[tuple[Tensor, Tensor]]
"""One layer's ``(g, W)`` per projection (q, k, v): ``g`` the gradient at the projection's
output ``[batch, pos, n, d_head]``, ``W`` its ``nn.Linear`` weight ``[n * d_head, d_model]``."""


def _project(parts: Parts, out: Tensor, scale: Tensor | None = None,
             weight: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """``out[j] = (scale * g_j) W_j`` for every head ``j`` of every part, as
    ``[heads, batch * pos, d_model]`` (a view of ``out`` ``[heads, batch, pos, d_model]``,
    contiguous); ``weight`` transforms each part's ``[n, d_head, d_model]`` weights first."""
    n, b, s, d = out.shape
    flat = out.view(n, b * s, d)
    at = 0
    for g, w in parts:
        k, e = g.shape[2], g.shape[3]
        g = g.reshape(b * s, k, e).transpose(0, 1).to(out.dtype)  # [k, batch*pos, d_head]
        g = g * scale.reshape(1, b * s, 1) if scale is not None else g
        w = w.to(out.dtype).view(k, e, d)
        torch.bmm(g, weight(w) if weight is not None else w, out=flat[at:at + k])
        at += k
    return flat


def _closed_vjp(form: tuple[str, Tensor | None, float], x: Tensor, parts: Parts,
                out: Tensor) -> None:
    """Input gradients of ``n`` copies of ``x`` ``[batch, pos, d_model]`` through the norm and
    each head's projection weights ``W_j`` ``[d_head, d_model]``, given the projections'
    output gradients ``g_j`` (:data:`Parts`), written into ``out`` ``[n, batch, pos, d_model]``
    (contiguous, e.g. a :meth:`~mechdiff.circuits._contract.Contraction.slot`; no other memory of
    that size). With ``xh`` the normalized ``x`` and ``rs`` one over its scale::

        v = rs (g_j W_j) * weight;  [layer norm: v -= mean(v), by centring W's rows]
        dx = v - xh * mean(v * xh)
    """
    kind, norm_w, eps = form
    n, b, s, d = out.shape
    xc = x - x.mean(-1, keepdim=True) if kind == "layer" else x
    rs = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + eps)  # [batch, pos, 1]
    xh = xc.mul_(rs) if kind == "layer" else xc * rs

    def weight(w: Tensor) -> Tensor:
        if norm_w is not None:
            w = w * norm_w.to(w.dtype)
            return w.sub_(w.mean(-1, keepdim=True)) if kind == "layer" else w
        return w - w.mean(-1, keepdim=True) if kind == "layer" else w

    flat = _project(parts, out, rs, weight)  # v, [n, batch*pos, d_model]
    xh = xh.reshape(b * s, d)
    # a row-wise dot product (a batched matrix-vector bmm over positions: 3x slower on CPU)
    c = torch.linalg.vecdot(flat, xh[None]).div_(d)  # [n, batch*pos]
    flat.addcmul_(xh[None], c[:, :, None], value=-1)


def _autograd_vjp(ln: torch.nn.Module, x: Tensor, parts: Parts, out: Tensor) -> None:
    """:func:`_closed_vjp` by autograd through the norm module itself, for any norm."""
    n, b, s, d = out.shape
    u = _project(parts, torch.empty_like(out))
    with torch.enable_grad():
        xr = x[None].expand(n, b, s, d).reshape(-1, d).detach().requires_grad_(True)
        y = ln(xr)
        y.backward(u.reshape(-1, d).to(y.dtype), inputs=[xr])  # not grad(): see _contract
    out.copy_(xr.grad.view(n, b, s, d))


CHECK_POSITIONS = 8
"""Positions of the first prompt on which the closed-form norm VJP is checked against autograd."""

_CLOSED_FORM: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per model: whether its norms' closed-form VJP matched autograd (checked on its first run)."""


class _ProjectionGrads:
    """Assembles each layer's q/k/v input gradients from its projection gradients."""

    def __init__(self, model: TransformerBridge, graph: Graph, on_grad: GradFn,
                 slot: SlotFn | None) -> None:
        self.model, self.graph, self.on_grad, self.slot = model, graph, on_grad, slot
        self.x: dict[int, Tensor] = {}  # layer -> ln1 input (detached)
        self.grads: dict[int, dict[str, Tensor]] = {}
        self.counts = {"q": graph.n_heads, "k": graph.n_kv_heads, "v": graph.n_kv_heads}
        # closed-form norm VJP: unchecked (None) / checked (True) / refused (False), per model
        self.closed: bool | None = _CLOSED_FORM.get(model)

    def ln_in(self, layer: int) -> Callable[[Tensor], Tensor]:
        def fn(x: Tensor) -> Tensor:
            self.x[layer] = x.detach()
            return x

        return fn

    def proj_out(self, layer: int, which: str) -> Callable[[Tensor], Tensor]:
        def fn(x: Tensor) -> Tensor:
            if not x.requires_grad:
                return x
            # A new view: the bridge hands hooks a [batch, pos, heads, d_head] view and continues
            # with its own tensor unless the hook returns a different one.
            x = x.view_as(x)
            x.register_hook(lambda g: self.got(layer, which, g))
            return x

        return fn

    def got(self, layer: int, which: str, g: Tensor) -> None:
        grads = self.grads.setdefault(layer, {})
        grads[which] = g
        if len(grads) == 3:
            del self.grads[layer]
            self.hand_over(layer, grads)

    def hand_over(self, layer: int, grads: dict[str, Tensor]) -> None:
        attn = self.model.blocks[layer].attn
        ln = attn._ln1_module
        x = self.x.pop(layer)
        b, s, d = x.shape
        rows = list(range(layer * self.graph.per_layer_readers,
                          layer * self.graph.per_layer_readers + self.graph.n_heads
                          + 2 * self.graph.n_kv_heads))
        n_up = 1 + layer * self.graph.per_layer_writers
        out = (self.slot(rows, n_up, s, d) if self.slot is not None
               else torch.empty(len(rows), b, s, d, dtype=torch.promote_types(x.dtype,
                                                                              torch.float32),
                                device=x.device))
        parts = [(grads[w].reshape(b, s, self.counts[w], -1),
                  getattr(attn, w).original_component.weight) for w in "qkv"]
        form = _norm_form(ln) if self.closed is not False else None
        if form is None:
            _autograd_vjp(ln, x, parts, out)
        else:
            _closed_vjp(form, x.to(out.dtype), parts, out)
            if self.closed is None:  # first layer this model runs: check against autograd
                self.closed = self._check(ln, x, parts, out)
                _CLOSED_FORM[self.model] = self.closed
                if not self.closed:
                    _autograd_vjp(ln, x, parts, out)
        if self.slot is None:
            self.on_grad(rows, n_up, out.permute(1, 2, 0, 3))

    @staticmethod
    def _check(ln: torch.nn.Module, x: Tensor, parts: Parts, out: Tensor) -> bool:
        """Whether the closed form ``out`` matches autograd through ``ln`` on the first prompt's
        first :data:`CHECK_POSITIONS` positions (the norm's form is the same at every position;
        the whole layer, by autograd inside the backward pass, took 0.25 s on SmolLM2)."""
        k = min(CHECK_POSITIONS, x.shape[1])
        ref = torch.empty(out.shape[0], 1, k, out.shape[3], dtype=out.dtype, device=out.device)
        _autograd_vjp(ln, x[:1, :k], [(g[:1, :k], w) for g, w in parts], ref)
        scale = float(ref.abs().max()) or 1.0
        return float((out[:, :1, :k] - ref).abs().max()) <= rounding_tol(x.dtype) * scale

    def finish(self) -> None:
        if self.grads:
            layers = sorted(self.grads)
            self.grads.clear()
            raise RuntimeError(
                f"the backward pass reached only some q/k/v projections of layers {layers}; "
                "their input gradients are incomplete"
            )


def forward(
    model: TransformerBridge,
    graph: Graph,
    ids: Tensor,
    read_pos: Tensor | None,
    *,
    copies: int = 1,
    replace: list[Tensor] | None = None,
    coef: Tensor | None = None,
    capture: bool = False,
    record: tuple[str, ...] = (),
    embed: Tensor | None = None,
    on_grad: GradFn | None = None,
    slot: SlotFn | None = None,
    fork: bool | None = None,
    lazy_heads: bool = False,
    into: Out | None = None,
) -> Out:
    """Run ``copies`` stacked copies of ``ids`` with edge interventions.

    Args:
        model: the bridge.
        graph: its graph.
        ids: ``[batch, pos]`` token ids.
        read_pos: each prompt's read position ``[batch]``; None unembeds every position.
        copies: how many copies of the batch run stacked (one per coefficient matrix).
        replace: replacement writer blocks ``[batch or 1, pos, n, d_model]`` (module docstring).
        coef: ``[copies, reader, writer]`` edge coefficients (0 = edge untouched); needs
            ``replace``.
        capture: return this run's writer blocks (detached).
        record: hook names whose activations to return (detached); per-head q/k/v input hooks
            are recorded only in a run that forks them.
        embed: replaces the input writer's output (``hook_embed``), ``[batch, pos, d_model]``.
        on_grad: build the autograd graph and call ``on_grad`` with each reader group's
            gradient during the caller's backward pass (then call ``Out.finish``).
        slot: with ``on_grad``, in a run without the fork: the q/k/v input gradients are
            computed in place into ``slot(...)`` instead of being allocated and handed to
            ``on_grad`` (MLP and logits readers still go to ``on_grad``).
        fork: build the per-head q/k/v fork and per-head results; default: only where edges
            are intervened on, or where the model does not allow unforked runs
            (:func:`unforked`).
        lazy_heads: with ``capture`` in a run without the fork: keep each layer's ``z``
            (``Out.zs``) and leave the head blocks of ``Out.stacked`` uncomputed (for
            :func:`fill_heads`, or for a later run with ``into=``).
        into: a lazy-heads run of the same prompts' shape (unforked, captured): this run
            overwrites its ``stacked`` with ``this run's outputs - that run's``, every writer,
            heads as ``(z - z_into) W_O`` (one product per layer instead of two), allocating no
            writer tensor of its own. This run's ``writers`` and ``stacked`` are then None.
    """
    batch = ids.shape[0]
    rows_all = copies * batch
    grad = on_grad is not None
    cur: list[Tensor | None] = [None] * (2 * graph.n_layers + 1)
    acts: dict[str, Tensor] = {}
    leaf: list[Tensor] = []
    edits = None
    if coef is not None:
        if replace is None:
            raise ValueError("edge coefficients need replacement outputs")
        edits = _Edits(graph, coef, replace, copies, batch)
    if fork is None:
        fork = edits is not None or not unforked(model)
    if edits is not None and not fork:
        raise ValueError("edge interventions need the per-head q/k/v fork")
    if (lazy_heads or into is not None) and (fork or not capture):
        raise ValueError("lazy_heads and into= are for captured runs without the fork")
    if into is not None and (into.zs is None or into.stacked is None):
        raise ValueError("into= needs a captured run made with lazy_heads=True")
    proj = _ProjectionGrads(model, graph, on_grad, slot) if grad and not fork else None
    per_layer = graph.per_layer_readers
    n_attn = graph.n_heads + 2 * graph.n_kv_heads
    starts = block_starts(graph)
    # Unforked capture: every writer's output goes into one [writer, batch, pos, d_model] tensor
    # (head outputs are computed into it after the run), so that edge attribution can overwrite
    # it with the upstream differences instead of allocating them.
    stack: list[Tensor] = []

    def keep(b: int, block: Tensor) -> None:
        if fork:
            cur[b] = block
            return
        if into is not None:  # this run's output minus the other run's, in its tensor
            n = block.shape[2]
            part = into.stacked[starts[b]:starts[b] + n]
            torch.sub(block.detach().permute(2, 0, 1, 3), part, out=part)
            return
        if not stack:
            stack.append(torch.empty(graph.n_writers, block.shape[0], block.shape[1],
                                     block.shape[3], dtype=block.dtype, device=block.device))
        n = block.shape[2]
        part = stack[0][starts[b]:starts[b] + n]
        part.copy_(block.detach().permute(2, 0, 1, 3))
        cur[b] = part.permute(1, 2, 0, 3)

    def writer_fn(b: int) -> Callable[[Tensor], Tensor]:
        def fn(x: Tensor) -> Tensor:
            if b == 0:
                if embed is not None:
                    x = embed.repeat(copies, 1, 1) if copies > 1 else embed
                if grad:
                    x = x.detach().requires_grad_(True) if not x.requires_grad else x
                    leaf.append(x)
            block = x if x.ndim == 4 else x[:, :, None]
            if capture:
                keep(b, block)
            if edits is not None:
                edits.add(b, block)
            return x

        return fn

    cache: dict[int, Tensor | None] = {}

    def attn_delta(layer: int, rows: list[int]) -> Tensor | None:
        """All of a layer's q/k/v deltas, computed at its first attention input hook."""
        if layer not in cache:
            cache.clear()
            cache[layer] = edits.delta(layer * per_layer, n_attn)
        full = cache[layer]
        if full is None:
            return None
        lo = rows[0] - layer * per_layer
        return full[:, :, :, lo:lo + len(rows)]

    def reader_fn(rows: list[int], before: int, per_head: bool) -> Callable[[Tensor], Tensor]:
        layer = rows[0] // per_layer

        def fn(x: Tensor) -> Tensor:
            if grad and not per_head:
                # The MLP input hook sees the residual stream itself (a pre-hook of the layer
                # norm); a fresh tensor keeps the residual path's gradient out of this reader's.
                x = x.clone()
            if edits is not None:
                d = attn_delta(layer, rows) if per_head else edits.delta(rows[0], 1)
                if d is not None:
                    d = d.reshape(rows_all, *d.shape[2:])
                    x = x + (d if per_head else d[:, :, 0])
            if grad and x.requires_grad:
                if per_head:
                    x.register_hook(lambda g: on_grad(rows, before_w, g))
                else:
                    x.register_hook(lambda g: on_grad(rows, before_w, g[:, :, None]))
            return x

        before_w = graph.n_writers if before > 2 * graph.n_layers else (
            block_starts(graph)[before - 1] + block_sizes(graph)[before - 1])
        return fn

    zs: dict[int, Tensor] = {}

    def z_fn(layer: int) -> Callable[[Tensor], Tensor]:
        def fn(z: Tensor) -> Tensor:
            zs[layer] = z.detach()
            return z

        return fn

    hooks: dict[str, Any] = {INPUT_HOOK: writer_fn(0)}
    for layer in range(graph.n_layers):
        if fork:
            hooks[head_out_hook(layer)] = writer_fn(1 + 2 * layer)
        elif capture:  # head outputs from z after the run, outside the autograd graph
            hooks[z_hook(layer)] = z_fn(layer)
        hooks[mlp_out_hook(layer)] = writer_fn(2 + 2 * layer)
    for name, rows, _up, before in _reader_groups(graph):
        per_head = ".attn." in name
        if per_head and not fork:
            continue
        if per_head or edits is not None or grad:
            hooks[name] = reader_fn(rows, before, per_head=per_head)
    if proj is not None:
        for layer in range(graph.n_layers):
            hooks[ln1_in_hook(layer)] = proj.ln_in(layer)
            for which in "qkv":
                hooks[qkv_out_hook(layer, which)] = proj.proj_out(layer, which)

    def recorder(name: str, inner: Callable[[Tensor], Tensor] | None) -> Callable:
        def fn(x: Tensor) -> Tensor:
            y = inner(x) if inner is not None else x
            acts[name] = y.detach()
            return y

        return fn

    for name in record:
        if not fork and name.startswith("blocks.") and name.endswith("_input"):
            continue  # the per-head q/k/v fork is not built in this run
        hooks[name] = recorder(name, hooks.get(name))
    sliced = read_pos is not None and _engine.UNEMBED_IN in model.hook_dict
    if sliced:
        rows_idx = torch.arange(rows_all, device=ids.device)
        pos = read_pos.repeat(copies)
        hooks[_engine.UNEMBED_IN] = lambda x: x[rows_idx, pos][:, None]

    ids_all = ids.repeat(copies, 1) if copies > 1 else ids
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx, split_inputs(model, split=fork), _engine.forward_hooks(model, hooks):
        logits = model(ids_all, use_cache=False)
    if read_pos is None:
        read = logits
    elif sliced:
        read = logits[:, 0]
    else:
        read = logits[torch.arange(rows_all, device=ids.device), read_pos.repeat(copies)]
    read = read if read.dtype == torch.float64 else read.float()
    if into is not None:
        with torch.no_grad():
            for layer, z in zs.items():
                b = 1 + 2 * layer
                part = into.stacked[starts[b]:starts[b] + graph.n_heads]
                head_outputs(model, layer, z - into.zs[layer], part)
        into.zs = None  # the head blocks are computed now
        return Out(read=read, writers=None, acts=acts, leaf=leaf[0] if leaf else None,
                   finish=proj.finish if proj is not None else (lambda: None))
    if capture and not fork:
        with torch.no_grad():
            for layer, z in zs.items():
                b = 1 + 2 * layer
                part = stack[0][starts[b]:starts[b] + graph.n_heads]
                if not lazy_heads:
                    head_outputs(model, layer, z, part)
                cur[b] = part.permute(1, 2, 0, 3)
    writers = [c.detach() for c in cur] if capture else None
    return Out(read=read, writers=writers, acts=acts, leaf=leaf[0] if leaf else None,
               finish=proj.finish if proj is not None else (lambda: None),
               stacked=stack[0] if stack and capture else None,
               zs=dict(zs) if lazy_heads else None)


def fill_heads(model: TransformerBridge, graph: Graph, out: Out, rows: int) -> None:
    """Compute the head blocks of a lazy-heads run's ``stacked`` for its first ``rows`` prompts
    (the rest stay uncomputed until a run with ``into=out`` overwrites every row)."""
    starts = block_starts(graph)
    with torch.no_grad():
        for layer, z in out.zs.items():
            b = 1 + 2 * layer
            part = out.stacked[starts[b]:starts[b] + graph.n_heads, :rows]
            tmp = torch.empty_like(part)
            head_outputs(model, layer, z[:rows], tmp)
            part.copy_(tmp)
