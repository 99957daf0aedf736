"""The computational graph of a transformer, as circuit discovery sees it.

Following Hanna, Pezzelle & Belinkov 2024 ("Have Faith in Faithfulness: Going Beyond Circuit
Overlap When Finding Model Mechanisms", EAP-IG; code ``hannamw/EAP-IG``, ``eap/graph.py``), the
residual stream is a sum of the outputs of earlier components, so every component's input is a sum
over *edges* from upstream components:

* **writers** (upstream nodes, :attr:`Graph.n_writers` = ``1 + n_layers * (n_heads + 1)``):
  ``input`` (the token embedding, ``hook_embed``), every attention head (its output ``z_h W_O[h]``
  *without* ``b_O``, ``attn.hook_result``) and every MLP (``hook_mlp_out``);
* **readers** (downstream inputs): for every layer, the query input of each query head, the key and
  the value input of each **key-value head**, the MLP input; and the logits. A reader's input is
  the residual stream *before* the layer norm that the component applies
  (``attn.hook_{q,k,v}_input``, ``hook_mlp_in``, the last block's ``hook_resid_post``).

**Grouped-query attention natively.** In a model with ``n_key_value_heads < n_heads`` (LLaMA-family,
e.g. SmolLM2-135M: 9 query heads sharing 3 key-value heads), the keys and values of one key-value
head are computed once and shared by a group of ``n_heads / n_key_value_heads`` query heads. The
graph has one ``k`` and one ``v`` reader per *key-value head*, not per query head: an edge into
``L3KV1.k`` changes the keys every query head of group 1 attends with. TransformerLens 4.3's bridge
computes exactly this when ``use_split_qkv_input`` is on: it forks the residual into
``hook_q_input`` of shape ``[batch, pos, n_heads, d_model]`` and ``hook_k_input`` /
``hook_v_input`` of shape ``[batch, pos, n_key_value_heads, d_model]``, normalizes each copy and
projects copy ``j`` with key-value head ``j``'s own slice of ``W_K`` / ``W_V``
(``_project_per_head_qkv``): no weight is copied, and no query head is given a private copy of a
shared key-value head (EAP-IG instead asks for GQA models to be "ungrouped").

**Edges.** Every writer feeds every reader after it: the q/k/v inputs of layer ``l`` read the input
and the heads and MLPs of layers ``< l``; the MLP input of layer ``l`` also reads layer ``l``'s
heads; the logits read everything. With ``H`` query heads and ``G`` key-value heads::

    n_edges = sum_l [(H + 2G) (1 + l (H + 1)) + 1 + l (H + 1) + H] + 1 + L (H + 1)

GPT-2 small (12 layers, 12 heads): **32,491 edges**, EAP-IG's count. SmolLM2-135M (30 layers, 9 query
heads, 3 key-value heads): **70,651 edges** (123,211 if its key-value heads were ungrouped).

**Exactness.** The reader inputs must be the sum of the upstream writers' outputs plus constants:
the positional embedding (GPT-2's learned ``W_pos``; rotary models add none to the stream) and the
attention output biases ``b_O`` of the layers before. Every analysis checks this on its first prompt
batch (to ``1e-4`` relative to the residual's scale) and refuses the model with
:class:`GraphError` if it does not hold, as TransformerLens refuses edge attribution for models whose
attention output is not the sum of its heads (post-norm blocks, scaled residuals); models whose MLP
reads the block input in parallel with attention are refused before any forward.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechdiff.errors import MechdiffError, MetricError
from mechdiff.loading.checkpoints import local_config


class GraphError(MechdiffError):
    """The model's residual stream is not an exact sum of its components' outputs, so edges
    between components are not defined (or the bridge cannot expose per-head inputs)."""


# Hook names of the graph: the only place they are spelled.
INPUT_HOOK = "hook_embed"
POS_HOOK = "hook_pos_embed"


def head_out_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_result"


def mlp_out_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def qkv_in_hook(layer: int, which: str) -> str:
    return f"blocks.{layer}.attn.hook_{which}_input"


def qkv_out_hook(layer: int, which: str) -> str:
    """The q/k/v projection's output (before rotary embeddings), in split and unsplit runs."""
    return f"blocks.{layer}.attn.{which}.hook_out"


def z_hook(layer: int) -> str:
    """The heads' mixed values before the output projection, ``[batch, pos, head, d_head]``."""
    return f"blocks.{layer}.attn.hook_z"


def ln1_in_hook(layer: int) -> str:
    """The attention layer norm's input: the residual the split fork copies per head."""
    return f"blocks.{layer}.ln1.hook_in"


def mlp_in_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_in"


def resid_pre_hook(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def logits_in_hook(n_layers: int) -> str:
    return f"blocks.{n_layers - 1}.hook_resid_post"


@dataclass(frozen=True)
class Graph:
    """The edge graph of a model with ``n_layers`` blocks of ``n_heads`` query heads sharing
    ``n_kv_heads`` key-value heads.

    Writers are indexed ``0`` (input), then per layer its heads and its MLP:
    head ``(l, h)`` is ``1 + l (H + 1) + h`` and MLP ``l`` is ``1 + l (H + 1) + H``. Readers are
    indexed per layer: ``H`` query inputs, ``G`` key inputs, ``G`` value inputs, the MLP input;
    then the logits last. Every reader reads a *prefix* of the writers
    (:meth:`n_upstream`), and the edges are listed reader by reader, each reader's writers in
    index order: edge ``offsets[r] + w`` goes from writer ``w`` into reader ``r``.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.n_heads < 1 or self.n_kv_heads < 1:
            raise GraphError(f"a graph needs positive sizes, got {self}")
        if self.n_heads % self.n_kv_heads:
            raise GraphError(
                f"{self.n_heads} query heads cannot share {self.n_kv_heads} key-value heads evenly"
            )

    # sizes ---------------------------------------------------------------------------------
    @property
    def per_layer_writers(self) -> int:
        return self.n_heads + 1

    @property
    def per_layer_readers(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + 1

    @property
    def group(self) -> int:
        """Query heads per key-value head."""
        return self.n_heads // self.n_kv_heads

    @property
    def n_writers(self) -> int:
        return 1 + self.n_layers * self.per_layer_writers

    @property
    def n_readers(self) -> int:
        return self.n_layers * self.per_layer_readers + 1

    @property
    def logits_reader(self) -> int:
        return self.n_readers - 1

    @cached_property
    def upstream(self) -> Int[Tensor, " reader"]:
        """How many writers (a prefix in writer order) feed each reader."""
        out = []
        for layer in range(self.n_layers):
            before = 1 + layer * self.per_layer_writers
            out += [before] * (self.n_heads + 2 * self.n_kv_heads) + [before + self.n_heads]
        out.append(self.n_writers)
        return torch.tensor(out, dtype=torch.long)

    def n_upstream(self, reader: int) -> int:
        return int(self.upstream[reader])

    @cached_property
    def offsets(self) -> Int[Tensor, " reader"]:
        """Index of each reader's first edge."""
        return torch.cat([torch.zeros(1, dtype=torch.long), self.upstream.cumsum(0)[:-1]])

    @property
    def n_edges(self) -> int:
        return int(self.upstream.sum())

    @cached_property
    def edge_writer(self) -> Int[Tensor, " edge"]:
        return torch.cat([torch.arange(int(n)) for n in self.upstream])

    @cached_property
    def edge_reader(self) -> Int[Tensor, " edge"]:
        return torch.repeat_interleave(torch.arange(self.n_readers), self.upstream)

    @cached_property
    def valid(self) -> Bool[Tensor, "reader writer"]:
        """Dense ``[reader, writer]`` mask of the pairs that are edges."""
        return torch.arange(self.n_writers)[None, :] < self.upstream[:, None]

    def dense(self, edge_values: Tensor, fill: float = 0.0) -> Tensor:
        """Per-edge values (last axis ``edge``) as a dense ``[..., reader, writer]`` tensor."""
        shape = (*edge_values.shape[:-1], self.n_readers, self.n_writers)
        out = torch.full(shape, fill, dtype=edge_values.dtype, device=edge_values.device)
        out[..., self.valid.to(out.device)] = edge_values
        return out

    def flat(self, dense: Tensor) -> Tensor:
        """The inverse of :meth:`dense`: ``[..., reader, writer]`` to ``[..., edge]``."""
        return dense[..., self.valid.to(dense.device)]

    # indices -------------------------------------------------------------------------------
    def head(self, layer: int, head: int) -> int:
        return 1 + layer * self.per_layer_writers + head

    def mlp(self, layer: int) -> int:
        return 1 + layer * self.per_layer_writers + self.n_heads

    def reader(self, layer: int, kind: str, index: int = 0) -> int:
        """Reader index of ``kind`` (``q``, ``k``, ``v``, ``mlp``) in ``layer``; ``index`` is the
        query head for ``q`` and the key-value head for ``k`` / ``v``."""
        base = layer * self.per_layer_readers
        if kind == "q":
            return base + index
        if kind == "k":
            return base + self.n_heads + index
        if kind == "v":
            return base + self.n_heads + self.n_kv_heads + index
        if kind == "mlp":
            return base + self.n_heads + 2 * self.n_kv_heads
        raise GraphError(f"unknown reader kind {kind!r}; one of q, k, v, mlp")

    def edge(self, writer: int, reader: int) -> int:
        """Flat index of the edge from ``writer`` into ``reader``."""
        if not 0 <= reader < self.n_readers or not 0 <= writer < self.n_upstream(reader):
            raise GraphError(f"writer {writer} does not feed reader {reader}")
        return int(self.offsets[reader]) + writer

    def tl_edge(self, writer: Any, reader: Any) -> int:
        """Flat index of an edge keyed as TransformerLens 4.3's edge attribution keys it
        (``attribution_patch(..., EdgeAttributionConfig(granularity="edge")).edge_scores``:
        writer kinds ``embed`` / ``attn_head_out`` / ``mlp_out``, reader kinds ``q_in`` /
        ``k_in`` / ``v_in`` / ``mlp_in`` / ``logits``, each with ``layer`` and ``head``)."""
        writers = {"embed": lambda: 0, "attn_head_out": lambda: self.head(writer.layer, writer.head),
                   "mlp_out": lambda: self.mlp(writer.layer)}
        if writer.kind not in writers:
            raise GraphError(f"unknown TransformerLens writer kind {writer.kind!r}")
        if reader.kind == "logits":
            r = self.logits_reader
        elif reader.kind == "mlp_in":
            r = self.reader(reader.layer, "mlp")
        else:
            r = self.reader(reader.layer, reader.kind[0], reader.head)
        return self.edge(writers[writer.kind](), r)

    def writer_layer(self, writer: int) -> int:
        """Block of a writer (``-1`` for the input)."""
        return -1 if writer == 0 else (writer - 1) // self.per_layer_writers

    def reader_layer(self, reader: int) -> int:
        """Block of a reader (``n_layers`` for the logits)."""
        return reader // self.per_layer_readers

    @cached_property
    def reader_owners(self) -> list[list[int]]:
        """The writer nodes whose computation each reader's input enters: a query input its
        head, a key or value input every query head of its group, an MLP input its MLP; none
        for the logits."""
        owners: list[list[int]] = []
        for layer in range(self.n_layers):
            owners += [[self.head(layer, h)] for h in range(self.n_heads)]
            for _ in range(2):
                owners += [[self.head(layer, j * self.group + g) for g in range(self.group)]
                           for j in range(self.n_kv_heads)]
            owners.append([self.mlp(layer)])
        owners.append([])
        return owners

    # labels --------------------------------------------------------------------------------
    @cached_property
    def writer_labels(self) -> list[str]:
        out = ["input"]
        for layer in range(self.n_layers):
            out += [f"L{layer}H{h}" for h in range(self.n_heads)] + [f"MLP{layer}"]
        return out

    @cached_property
    def reader_labels(self) -> list[str]:
        kv = "H" if self.n_kv_heads == self.n_heads else "KV"
        out = []
        for layer in range(self.n_layers):
            out += [f"L{layer}H{h}.q" for h in range(self.n_heads)]
            out += [f"L{layer}{kv}{j}.k" for j in range(self.n_kv_heads)]
            out += [f"L{layer}{kv}{j}.v" for j in range(self.n_kv_heads)]
            out.append(f"MLP{layer}.in")
        return [*out, "logits"]

    def edge_label(self, edge: int) -> str:
        return (f"{self.writer_labels[int(self.edge_writer[edge])]}->"
                f"{self.reader_labels[int(self.edge_reader[edge])]}")

    @property
    def dims(self) -> dict[str, int]:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads}


def graph_of(model: TransformerBridge) -> Graph:
    """The graph of a bridge, after checking that its structure allows exact edges.

    Raises:
        GraphError: the MLP reads the block input in parallel with attention, the attention
            bridge cannot expose per-head inputs (``use_split_qkv_input``) or outputs
            (``use_attn_result``), or the blocks scale the attention output before adding it to
            the residual stream. Blocks that *normalize* a sublayer's output before the residual
            add (Gemma 2's and OLMo 2's post-sublayer norms) pass this structural check and are
            refused with a GraphError by the decomposition check on the first forward of any
            analysis (:func:`check_exact`: the residual stream is not the sum of the writers).
    """
    cfg = model.cfg
    if bool(getattr(cfg, "parallel_attn_mlp", False)):
        raise GraphError(
            "this model computes attention and MLP in parallel from the block input, so a head "
            "does not feed its own block's MLP; mechdiff.circuits supports sequential "
            "(GPT-2 / LLaMA-style) blocks only"
        )
    for layer, block in enumerate(model.blocks):
        attn = getattr(block, "attn", None)
        if attn is None or not getattr(attn, "supports_split_qkv_fork", False):
            raise GraphError(
                f"blocks.{layer}.attn does not expose per-head q/k/v inputs in TransformerLens "
                "(no split-qkv fork for this architecture), so edges into heads are undefined"
            )
        if not getattr(attn, "supports_attn_result", False):
            raise GraphError(
                f"blocks.{layer}.attn ({type(attn).__name__}) cannot give per-head outputs in "
                "TransformerLens (no use_attn_result for this architecture), so an edge out of "
                "a head cannot be ablated on its own"
            )
        if getattr(block, "residual_contribution_scale", 1.0) != 1.0:
            raise GraphError(
                f"blocks.{layer} scales its attention output before the residual add, so a head's "
                "output is not its contribution to the residual stream"
            )
    try:  # the bridge's own test of both per-head flags (it refuses some attention classes)
        with split_inputs(model):
            pass
    except NotImplementedError as e:
        raise GraphError(f"this model's attention cannot be split per head in TransformerLens: "
                         f"{e}") from None
    n_heads = int(cfg.n_heads)
    n_kv = int(getattr(cfg, "n_key_value_heads", None) or n_heads)
    return Graph(int(cfg.n_layers), n_heads, n_kv)


@contextlib.contextmanager
def split_inputs(model: TransformerBridge, split: bool = True) -> Iterator[None]:
    """Turn on the bridge flags that expose (``split``) per-head results and per-head q/k/v
    inputs, and the MLP input hook; the caller's flags are restored on exit, also after an
    exception. ``split=False`` runs the bridge's ordinary attention (runs that only read writers,
    whose head outputs are computed from ``hook_z``, or take the q/k/v input gradients from the
    projections, :mod:`mechdiff.circuits._run`)."""
    cfg = model.cfg
    saved = (cfg.use_attn_result, cfg.use_split_qkv_input, cfg.use_hook_mlp_in,
             bool(getattr(cfg, "use_attn_in", False)))
    try:
        if saved[3]:
            model.set_use_attn_in(False)
        model.set_use_attn_result(split)
        model.set_use_split_qkv_input(split)
        model.set_use_hook_mlp_in(True)
        yield
    finally:
        model.set_use_attn_result(saved[0])
        model.set_use_split_qkv_input(saved[1])
        model.set_use_hook_mlp_in(saved[2])
        if saved[3]:
            model.set_use_attn_in(True)


def constants(model: TransformerBridge, width: int) -> list[Tensor]:
    """What the residual stream holds besides the writers' outputs, at the input of each block
    and at the logits: ``[n_layers + 1]`` tensors ``[pos, d_model]`` (positional embedding plus
    the ``b_O`` of earlier attention layers), float32 (float64 for a float64 model). The MLP
    input of layer ``l`` adds ``b_O[l]``."""
    d = int(model.cfg.d_model)
    param = next(model.parameters())
    device, dtype = param.device, torch.promote_types(param.dtype, torch.float32)
    base = torch.zeros(width, d, device=device, dtype=dtype)
    if POS_HOOK in model.hook_dict and hasattr(model, "W_pos"):
        base = base + model.W_pos[:width].detach().to(dtype)
    b_o = getattr(model, "b_O", None)
    b_o = (b_o.detach().to(dtype) if b_o is not None
           else torch.zeros(int(model.cfg.n_layers), d, dtype=dtype))
    out = [base]
    for layer in range(int(model.cfg.n_layers)):
        out.append(out[-1] + b_o[layer].to(device))
    return out


def rounding_tol(dtype: torch.dtype) -> float:
    """Relative tolerance of a check on values computed in ``dtype``: ``1e-4``, or 8 rounding
    units of a half-precision dtype (bfloat16: 0.0625, float16: 0.0078), which cannot be checked
    more finely."""
    return max(1e-4, 8 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-4


def check_exact(model: TransformerBridge, graph: Graph, acts: dict[str, Tensor],
                writers: list[Tensor], mask: Tensor, *, tol: float | None = None) -> float:
    """Check that every reader's input is the sum of its upstream writers plus constants.

    Args:
        model: the bridge (for the constants).
        graph: its graph.
        acts: the run's ``hook_resid_pre`` of every block, each block's ``hook_mlp_in``, the
            logits reader input, and block 0's ``hook_q_input`` (a split run) or ``ln1.hook_in``
            (an unsplit run: what the fork would copy).
        writers: the run's writer blocks (see :mod:`mechdiff.circuits._run`).
        mask: ``[batch, pos]`` real positions.
        tol: largest error allowed, relative to the residual's largest absolute value; default
            :func:`rounding_tol` of the writers' dtype.

    Returns:
        The largest relative error found.

    Raises:
        GraphError: the error exceeds ``tol``.
        MetricError: an activation is NaN or infinite (a broken model, not a graph problem).
    """
    tol = rounding_tol(writers[0].dtype) if tol is None else tol
    width = mask.shape[1]
    consts = constants(model, width)
    dtype = consts[0].dtype  # float32, float64 for a float64 model
    total = writers[0][:, :, 0].to(dtype)
    worst = 0.0

    def compare(name: str, actual: Tensor, expected: Tensor) -> None:
        nonlocal worst
        real = mask.to(torch.bool)
        if not bool(torch.isfinite(actual[real]).all()):
            raise MetricError(
                f"{name}: the model's activations hold NaN/inf on these prompts, so nothing "
                "about its edges can be computed; check its weights and dtype (fp16 overflow?)"
            )
        m = mask[..., None]
        scale = max(float((actual.to(dtype).abs() * m).max()), 1e-6)
        err = float(((actual.to(dtype) - expected) * m).abs().max()) / scale
        worst = max(worst, err)
        if not err <= tol:
            raise GraphError(
                f"{name}: the residual stream is not the sum of the graph's components' outputs "
                f"(relative error {err:.2e} > {tol:g}); this model adds, scales or normalizes "
                "something the graph does not model, so its edges are not defined"
            )

    first = acts.get(qkv_in_hook(0, "q"))
    if first is not None:  # the per-head fork must carry the residual before the layer norm
        compare("blocks.0 query input", first[:, :, 0], acts[resid_pre_hook(0)].to(dtype))
    ln_in = acts.get(ln1_in_hook(0))
    if ln_in is not None:  # so must the layer norm input the q/k/v gradients are taken at
        compare("blocks.0 attention layer norm input", ln_in,
                acts[resid_pre_hook(0)].to(dtype))
    for layer in range(graph.n_layers):
        compare(resid_pre_hook(layer), acts[resid_pre_hook(layer)], total + consts[layer])
        total = total + writers[1 + 2 * layer].to(dtype).sum(2)
        compare(mlp_in_hook(layer), acts[mlp_in_hook(layer)], total + consts[layer + 1])
        total = total + writers[2 + 2 * layer][:, :, 0].to(dtype)
    name = logits_in_hook(graph.n_layers)
    compare(name, acts[name], total + consts[graph.n_layers])
    return worst


def graph_of_config(folder: str | os.PathLike[str]) -> Graph | None:
    """The graph of the checkpoint in ``folder`` from its ``config.json`` alone (no model
    loaded), for checks before loading; None where the file or its sizes are not there
    (GPT-2's ``n_layer`` / ``n_head`` or LLaMA-style ``num_hidden_layers`` /
    ``num_attention_heads`` / ``num_key_value_heads``)."""
    cfg = local_config(folder, text=True)
    if cfg is None:
        return None
    layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    heads = cfg.get("num_attention_heads", cfg.get("n_head"))
    kv = cfg.get("num_key_value_heads") or heads
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
               for v in (layers, heads, kv)):
        return None
    try:
        return Graph(layers, heads, kv)
    except GraphError:
        return None


_PARALLEL_FAMILIES = ("gptj", "codegen", "phi", "cohere")
"""Hugging Face model types whose blocks always run attention and MLP in parallel."""


def parallel_in_config(folder: str | os.PathLike[str]) -> str | None:
    """Why the checkpoint in ``folder`` has parallel attention and MLP blocks, read from its
    ``config.json`` alone (so the command line refuses it before loading, as :func:`graph_of`
    does after); None when the configuration does not say so or cannot be read."""
    cfg = local_config(folder)
    if cfg is None:
        return None
    kind = cfg.get("model_type")
    if kind in _PARALLEL_FAMILIES:
        return f"model_type {kind!r} runs attention and MLP in parallel"
    if kind == "gpt_neox" and cfg.get("use_parallel_residual", True):  # HF's default: True
        return "use_parallel_residual is true"
    if kind == "falcon" and (cfg.get("parallel_attn", True)
                             or cfg.get("new_decoder_architecture", False)):
        return "parallel_attn is true"
    return None


def check_hooks(model: TransformerBridge, graph: Graph) -> None:
    """Raise :class:`GraphError` if a hook point the graph needs does not exist."""
    names = [INPUT_HOOK, logits_in_hook(graph.n_layers)]
    for layer in range(graph.n_layers):
        names += [head_out_hook(layer), mlp_out_hook(layer), mlp_in_hook(layer),
                  resid_pre_hook(layer)] + [qkv_in_hook(layer, x) for x in "qkv"]
    points = model.hook_dict  # a property that walks every module: once
    missing = [n for n in names if n not in points]
    if missing:
        raise GraphError(
            f"the bridge has no hook point {missing[0]!r} (and {len(missing) - 1} more missing): "
            "mechdiff.circuits needs TransformerLens's per-head result and split q/k/v input hooks"
        )


def describe(graph: Graph) -> dict[str, Any]:
    """Counts of nodes and edges, for reports."""
    return {
        **graph.dims,
        "writers": graph.n_writers,
        "readers": graph.n_readers,
        "edges": graph.n_edges,
    }
