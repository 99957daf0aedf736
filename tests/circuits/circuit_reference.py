"""Slow, obviously-correct references for the circuit tests, written against TransformerLens's
own hook API (``model.hooks``) and independent of :mod:`mechdiff.circuits._run`.

Nodes are named explicitly: writers ``("input",)``, ``("head", layer, head)``, ``("mlp", layer)``;
readers ``("q", layer, head)``, ``("k", layer, kv_head)``, ``("v", layer, kv_head)``,
``("mlp", layer)``, ``("logits",)``. One Python loop per edge: no batching, no sparsity tricks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Writer = tuple
Reader = tuple


def _flags(model, on: bool) -> None:
    model.set_use_attn_result(on)
    model.set_use_split_qkv_input(on)
    model.set_use_hook_mlp_in(on)


def writer_value(outs: dict[str, Tensor], w: Writer) -> Tensor:
    """A writer's output ``[batch, pos, d_model]`` from hook activations."""
    if w[0] == "input":
        return outs["hook_embed"]
    if w[0] == "head":
        return outs[f"blocks.{w[1]}.attn.hook_result"][:, :, w[2]]
    return outs[f"blocks.{w[1]}.hook_mlp_out"]


def writer_hooks(n_layers: int) -> list[str]:
    return ["hook_embed"] + [f"blocks.{layer}.{n}" for layer in range(n_layers)
                             for n in ("attn.hook_result", "hook_mlp_out")]


def capture(model, ids: Tensor) -> dict[str, Tensor]:
    """Every writer hook's activation on ``ids``."""
    outs: dict[str, Tensor] = {}

    def save(name: str):
        def fn(x, hook):
            outs[name] = x.detach().clone()
            return x

        return fn

    _flags(model, True)
    try:
        with torch.no_grad(), model.hooks(fwd_hooks=[(n, save(n)) for n in
                                                     writer_hooks(model.cfg.n_layers)]):
            model(ids)
    finally:
        _flags(model, False)
    return outs


def reader_hook_name(r: Reader, n_layers: int) -> str:
    if r[0] in ("q", "k", "v"):
        return f"blocks.{r[1]}.attn.hook_{r[0]}_input"
    if r[0] == "mlp":
        return f"blocks.{r[1]}.hook_mlp_in"
    return f"blocks.{n_layers - 1}.hook_resid_post"


def run_edges(model, ids: Tensor, read_pos: Tensor, replace: dict[str, Tensor],
              edges: dict[tuple[Writer, Reader], float]) -> Tensor:
    """Logits at ``read_pos`` with ``x_r += c (A_w - a_w)`` for every ``(w, r): c`` in ``edges``
    (``a_w`` this run's output of ``w``, ``A_w`` from ``replace``, hook name -> activation)."""
    n_layers = model.cfg.n_layers
    live: dict[str, Tensor] = {}
    by_reader: dict[str, list] = {}
    for (w, r), c in edges.items():
        by_reader.setdefault(reader_hook_name(r, n_layers), []).append((w, r, c))

    def keep(name: str):
        def fn(x, hook):
            live[name] = x
            return x

        return fn

    def edit(name: str):
        def fn(x, hook):
            return _edit(name, x)

        return fn

    def _edit(name: str, x: Tensor) -> Tensor:
        x = x.clone()
        for w, r, c in by_reader[name]:
            d = writer_value(replace, w) - writer_value(live, w)
            if r[0] in ("q", "k", "v"):
                x[:, :, r[2]] += c * d
            else:
                x += c * d
        return x

    hooks = [(n, keep(n)) for n in writer_hooks(n_layers)] + [(n, edit(n)) for n in by_reader]
    _flags(model, True)
    try:
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            logits = model(ids)
    finally:
        _flags(model, False)
    return logits[torch.arange(ids.shape[0]), read_pos]


def reader_grad(model, ids: Tensor, read_pos: Tensor, metric: Callable[[Tensor], Tensor],
                reader: Reader) -> Tensor:
    """``d sum(metric) / d x_reader`` on the clean run, ``[batch, pos, d_model]``, taken at a
    zero tensor added to the reader's input hook."""
    return reader_grads(model, ids, read_pos, metric, [reader])[0]


def reader_grads(model, ids: Tensor, read_pos: Tensor, metric: Callable[[Tensor], Tensor],
                 readers: list[Reader]) -> list[Tensor]:
    """:func:`reader_grad` of several readers (distinct hooks) from one forward and backward
    pass: each gets its own zero tensor, so each gradient is its own."""
    n_layers = model.cfg.n_layers
    names = [reader_hook_name(r, n_layers) for r in readers]
    if len(set(names)) != len(names):
        raise ValueError("reader_grads takes readers of distinct hooks")
    zeros: dict[int, Tensor] = {}

    def add(i: int, reader: Reader):
        def fn(x, hook):
            per_head = reader[0] in ("q", "k", "v")
            shape = x[:, :, reader[2]].shape if per_head else x.shape
            z = torch.zeros(shape, dtype=x.dtype, device=x.device, requires_grad=True)
            zeros[i] = z
            if per_head:
                x = x.clone()
                x[:, :, reader[2]] = x[:, :, reader[2]] + z
                return x
            return x + z

        return fn

    _flags(model, True)
    try:
        hooks = [(name, add(i, r)) for i, (name, r) in enumerate(zip(names, readers,
                                                                     strict=True))]
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            logits = model(ids)
            value = metric(logits[torch.arange(ids.shape[0]), read_pos]).sum()
            grads = torch.autograd.grad(value, [zeros[i] for i in range(len(readers))])
    finally:
        _flags(model, False)
    return list(grads)


def readers_of_layer(layer: int, n_heads: int, n_kv: int) -> list[Reader]:
    return ([("q", layer, h) for h in range(n_heads)] + [("k", layer, j) for j in range(n_kv)]
            + [("v", layer, j) for j in range(n_kv)] + [("mlp", layer)])


def writers_before(layer: int, n_heads: int, *, mlp: bool = False) -> list[Writer]:
    out: list[Writer] = [("input",)]
    for lay in range(layer):
        out += [("head", lay, h) for h in range(n_heads)] + [("mlp", lay)]
    if mlp:
        out += [("head", layer, h) for h in range(n_heads)]
    return out


def all_edges(n_layers: int, n_heads: int, n_kv: int) -> list[tuple[Writer, Reader]]:
    """Every edge, enumerated from the definition (independently of ``Graph``)."""
    out = []
    for layer in range(n_layers):
        for r in readers_of_layer(layer, n_heads, n_kv):
            out += [(w, r) for w in writers_before(layer, n_heads, mlp=r[0] == "mlp")]
    everything = writers_before(n_layers, n_heads)
    return out + [(w, ("logits",)) for w in everything]


def index_of(graph, edge: tuple[Writer, Reader]) -> int:
    """The flat index of an explicitly named edge in ``graph``."""
    w, r = edge
    wi = 0 if w[0] == "input" else graph.head(w[1], w[2]) if w[0] == "head" else graph.mlp(w[1])
    ri = graph.logits_reader if r[0] == "logits" else graph.reader(
        r[1], r[0], r[2] if len(r) > 2 else 0)
    return graph.edge(wi, ri)
