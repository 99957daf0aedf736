"""Exact activation patching, across models and within one model.

**Cross-model patching** (:func:`cross_patch`) runs the base and the fine-tuned model on the same
prompts and, for one site at a time (an attention head after its own ``W_O``, a whole attention
layer, an MLP, or the residual stream; at all positions or one position), puts the donor model's
activation into the receiving model's run:

* ``direction="ft->base"``: the fine-tuned activation enters the base model. A site that closes the
  gap is *sufficient* to produce the fine-tuned behaviour.
* ``direction="base->ft"``: the base activation enters the fine-tuned model. A site that closes the
  gap is *necessary* for the fine-tuned behaviour.

The score of a site is the fraction of the behaviour gap it closes::

    score = (mean metric patched - mean metric receiver) / (mean metric donor - mean metric receiver)

0 = the receiving model is unchanged, 1 = the donor's behaviour is reproduced. Task-free metrics
(``kl``, ``kl_all``) score ``1 - KL(donor || patched) / KL(donor || receiver)``.

**Classic patching** (:func:`activation_patch`) is the same machinery on one model, with the clean
prompts as donor and the corrupted prompts as receiver (Meng et al. 2022, "Locating and Editing
Factual Associations in GPT"; Wang et al. 2022, "Interpretability in the Wild").

Patches are exact (a real intervention, not an approximation) and batched: all patches of one
layer share forward passes, only the blocks at and above the patched layer are recomputed, and the
unembedding is computed only where the metric reads (see :mod:`mechdiff._engine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from mechdiff import _engine
from mechdiff.errors import OptionError, PromptError, SiteError, ZeroGapError
from mechdiff.loading import ModelPair
from mechdiff.metrics import check_finite, metric_values
from mechdiff.results import Provenance, SavableResult
from mechdiff.sites import SITE_KINDS, SiteKind, attn_out_hook, mlp_out_hook, resid_pre_hook, z_hook
from mechdiff.tasks import Task, Tokens

Direction: TypeAlias = Literal["ft->base", "base->ft"]
Positions: TypeAlias = Literal["all", "each"]
DIRECTIONS: tuple[Direction, ...] = ("ft->base", "base->ft")
_METHOD_NAMES = {"exact": "patching", "attribution": "attribution patching"}


@dataclass(frozen=True)
class RankedSite:
    """One row of a ranking: a site's label, its score (fraction of gap) and raw metric effect."""

    label: str
    score: float
    effect: float


@dataclass(frozen=True)
class PatchResult(SavableResult):
    """Scores of every site of one kind.

    Attributes:
        scores: fraction of the gap closed, shape ``dims`` (e.g. ``[layer, head]``,
            ``[layer, pos]``, ``[layer, head, pos]``).
        patched: metric per prompt with the patch applied, shape ``dims + [batch]``.
        receiver: metric per prompt of the unpatched receiving run, ``[batch]``.
        donor: metric per prompt of the donor run, ``[batch]``.
        sites: the site kind (``heads``, ``attn``, ``mlp``, ``resid``).
        dims: axis names of ``scores``.
        direction: ``ft->base``, ``base->ft`` or ``clean->corrupted``.
        positions: ``all`` (patched at every position) or ``each`` (one position at a time).
        provenance: models, task, metric, processing, versions.
        method: how the values were obtained: ``"exact"`` (real interventions), ``"attribution"``
            or ``"integrated_gradients(steps=N)"`` (gradient estimates, :func:`mechdiff.attribute`).
    """

    scores: Float[Tensor, "*site_dims"]
    patched: Float[Tensor, "*site_dims batch"]
    receiver: Float[Tensor, " batch"]
    donor: Float[Tensor, " batch"]
    sites: str
    dims: tuple[str, ...]
    direction: str
    positions: str
    provenance: Provenance
    method: str = "exact"

    @property
    def gap(self) -> float:
        """Mean donor metric minus mean receiver metric."""
        return float(self.donor.mean() - self.receiver.mean())

    @property
    def effects(self) -> Tensor:
        """Raw change of the mean metric caused by each patch, shape ``dims``."""
        return self.patched.mean(-1) - self.receiver.mean()

    def labels(self) -> list[str]:
        """Site labels aligned with ``scores.flatten()`` (``L3H7``, ``MLP3``, ``RESID2@5``...)."""
        names = []
        for index in torch.cartesian_prod(*[torch.arange(n) for n in self.scores.shape]).reshape(
            -1, self.scores.ndim
        ).tolist():
            named = dict(zip(self.dims, index, strict=True))
            layer = named["layer"]
            base = {
                "heads": f"L{layer}H{named.get('head', 0)}",
                "attn": f"ATTN{layer}",
                "mlp": f"MLP{layer}",
                "resid": f"RESID{layer}",
            }[self.sites]
            names.append(f"{base}@{named['pos']}" if "pos" in named else base)
        return names

    def top(self, k: int = 10, *, absolute: bool = True) -> list[RankedSite]:
        """The ``k`` sites with the largest scores (largest ``|score|`` if ``absolute``)."""
        flat, eff = self.scores.flatten(), self.effects.flatten()
        order = (flat.abs() if absolute else flat).argsort(descending=True)[:k]
        labels = self.labels()
        return [RankedSite(labels[i], float(flat[i]), float(eff[i])) for i in order.tolist()]

    def table(self, k: int = 10) -> str:
        """A plain-text ranking of the top ``k`` sites."""
        p = self.provenance
        lines = [
            f"{self.sites} {_METHOD_NAMES.get(self.method, self.method)} {self.direction} on {p.task!r} ({p.n_prompts} prompts, metric "
            f"{p.metric}); donor {self.donor.mean():.4f}, receiver {self.receiver.mean():.4f}, "
            f"gap {self.gap:+.4f}",
            f"{'rank':>4}  {'site':<12} {'fraction of gap':>16} {'metric change':>14}",
        ]
        for r, row in enumerate(self.top(k), 1):
            lines.append(f"{r:>4}  {row.label:<12} {row.score:>16.3f} {row.effect:>+14.4f}")
        return "\n".join(lines)


def cross_patch(
    pair: ModelPair,
    task: Task,
    *,
    sites: SiteKind = "heads",
    direction: Direction = "ft->base",
    positions: Positions = "all",
    batch_size: int = 64,
    prompt_batch_size: int = 32,
    progress: bool = True,
) -> PatchResult:
    """Exact cross-model activation patching of every site of one kind.

    Args:
        pair: the base and fine-tuned models.
        task: prompts and metric.
        sites: ``"heads"`` (each head's output after its own ``W_O``), ``"attn"`` (whole
            attention output), ``"mlp"`` or ``"resid"`` (residual stream entering each block).
        direction: ``"ft->base"`` (sufficiency) or ``"base->ft"`` (necessity).
        positions: ``"all"`` patches every position at once; ``"each"`` one position at a time.
        batch_size: sequences per patched forward (patched copies x prompts); bounds memory.
        prompt_batch_size: prompts captured at once; prompt sets are streamed in such batches.
        progress: show a progress bar.

    Returns:
        A :class:`PatchResult`; ``scores`` is ``[layer, head]`` for heads, ``[layer]`` otherwise,
        with a trailing ``pos`` axis when ``positions="each"``.

    Raises:
        SiteError, PromptError, AnswerTokenError, MetricError: bad arguments (before any forward).
        ZeroGapError: the two models score the same, so no fraction of the gap is defined.
    """
    if direction not in DIRECTIONS:
        raise OptionError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    recv, donor = (pair.base, pair.finetuned) if direction == "ft->base" else (
        pair.finetuned, pair.base)
    tokens = _prepare(task, pair.tokenizer, pair.n_ctx, pair.device, sites, positions, batch_size,
                      prompt_batch_size)
    recv_ids = donor_ids = tokens.tokens
    prov = Provenance(
        base=pair.base_id, finetuned=pair.finetuned_id, processing=pair.processing, task=task.name,
        prompts_hash=task.fingerprint(), n_prompts=len(task), metric=task.metric_name,
    )
    return _sweep(recv, donor, task, tokens, recv_ids, donor_ids, sites, positions, direction,
                  batch_size, prompt_batch_size, progress, prov)


def activation_patch(
    model: TransformerBridge,
    task: Task,
    *,
    sites: SiteKind = "resid",
    positions: Positions = "each",
    batch_size: int = 64,
    prompt_batch_size: int = 32,
    progress: bool = True,
    model_id: str = "<bridge>",
) -> PatchResult:
    """Classic single-model activation patching: clean activations into the corrupted run.

    ``task.corrupted`` must hold one corrupted prompt per clean prompt, of equal token length.
    Scores are the fraction of the clean-corrupted gap restored. Same machinery, result type and
    options as :func:`cross_patch`.
    """
    if task.corrupted is None:
        raise PromptError("activation_patch needs a task with corrupted prompts (Task(corrupted=...))")
    device = next(model.parameters()).device
    tokens = _prepare(task, model.tokenizer, int(model.cfg.n_ctx), device, sites, positions,
                      batch_size, prompt_batch_size)
    processing = "compat" if getattr(model, "compatibility_mode", False) else "none"
    prov = Provenance(
        base=model_id, finetuned=None, processing=processing, task=task.name,
        prompts_hash=task.fingerprint(), n_prompts=len(task), metric=task.metric_name,
    )
    return _sweep(model, model, task, tokens, tokens.corrupted_tokens, tokens.tokens, sites,
                  positions, "clean->corrupted", batch_size, prompt_batch_size, progress, prov)


def _prepare(
    task: Task, tokenizer: object, n_ctx: int, device: torch.device, sites: str, positions: str,
    batch_size: int, prompt_batch_size: int,
) -> Tokens:
    if sites not in SITE_KINDS:
        raise SiteError(f"unknown site kind {sites!r}; choose one of {SITE_KINDS}")
    if positions not in ("all", "each"):
        raise OptionError(f"positions must be 'all' or 'each', got {positions!r}")
    if batch_size < 1 or prompt_batch_size < 1:
        raise OptionError(
            f"batch_size and prompt_batch_size must be positive, got {batch_size} and "
            f"{prompt_batch_size}"
        )
    return task.tokenize(tokenizer, n_ctx=n_ctx, device=device)


def _hooks_for(kind: str, n_layers: int, receiver: bool) -> set[str]:
    names = {resid_pre_hook(layer) for layer in range(n_layers)} if receiver else set()
    read = {"heads": z_hook, "attn": attn_out_hook, "mlp": mlp_out_hook, "resid": resid_pre_hook}
    return names | {read[kind](layer) for layer in range(n_layers)}


def _layer_deltas(
    kind: str, layer: int, w_o: tuple[Tensor, Tensor] | None,
    rc: _engine.Capture, dc: _engine.Capture,
) -> Tensor:
    """Donor minus receiver activation for every site of the layer: ``[sites, batch, pos, d]``.

    ``w_o``: the receiver's and the donor's stacked ``W_O`` ``[layer, head, d_head, d_model]``
    (heads only; the bridge's ``W_O`` property stacks every layer on each access, so it is read
    once per sweep).
    """
    if kind == "heads":
        name = z_hook(layer)
        d_out = torch.einsum("bthe,hed->hbtd", dc.acts[name], w_o[1][layer])
        r_out = torch.einsum("bthe,hed->hbtd", rc.acts[name], w_o[0][layer])
        return d_out - r_out
    name = {"attn": attn_out_hook, "mlp": mlp_out_hook, "resid": resid_pre_hook}[kind](layer)
    return (dc.acts[name] - rc.acts[name])[None]


def _patch_chunk(
    kind: str, layer: int, model: TransformerBridge, rc: _engine.Capture, deltas: Tensor,
    chunk: list[tuple[int, int | None]], read_pos: Tensor | None, cols: Tensor | None = None,
) -> Tensor:
    """Run one batch of patches (site index, position or None) and return logits at read_pos.

    Per-position patches start the suffix at the chunk's first patched position (see
    :mod:`mechdiff._engine`); prompts whose read position lies before it are unaffected and
    keep the receiver's logits. With ``cols`` (``[batch, c]`` token ids), only those tokens'
    logits are computed and returned, ``[k*batch, c]``.
    """
    k = len(chunk)
    base = rc.acts[resid_pre_hook(layer)]
    b, t, d = base.shape
    start = 0
    if rc.kv is not None and all(p is not None for _, p in chunk):
        start = min(p for _, p in chunk)
    delta = torch.zeros(k, b, t - start, d, dtype=base.dtype, device=base.device)
    for j, (s, p) in enumerate(chunk):
        if p is None:
            delta[j] = deltas[s]
        else:
            delta[j, :, p - start] = deltas[s, :, p]
    delta = delta.reshape(k * b, t - start, d)
    hidden = base[:, start:].repeat(k, 1, 1)
    if kind == "resid":
        hidden = hidden + delta
        inject = None
    else:
        inject = {attn_out_hook(layer) if kind in ("heads", "attn") else mlp_out_hook(layer): delta}
    final = _engine.run_suffix(model, layer, hidden, rc, k, inject, pos=start)
    if read_pos is None:  # every position is read: the prefix is the receiver's own
        logits = _engine.unembed(model, final, None)
        if start:
            logits = torch.cat([rc.read[:, :start].repeat(k, 1, 1), logits], dim=1)
        return logits
    pos = read_pos.repeat(k) - start
    if cols is None:
        logits = _engine.unembed(model, final, pos.clamp_min(0))
        receiver = rc.read
    else:
        logits = _engine.unembed_columns(model, final, pos.clamp_min(0), cols.repeat(k, 1))
        receiver = rc.read.gather(1, cols)
    if start:
        before = pos < 0
        logits[before] = receiver.repeat(k, 1)[before]
    return logits


def checked_gap(receiver: Tensor, donor: Tensor, metric: str, task_name: str) -> float:
    """Mean donor metric minus mean receiver metric, after checking both are finite.

    Raises:
        MetricError: a metric value is NaN or infinite.
        ZeroGapError: the gap is zero (to float precision), so no fraction of it is defined.
    """
    check_finite(receiver, "the receiving model")
    check_finite(donor, "the donor model")
    gap = float(donor.mean() - receiver.mean())
    scale = max(1.0, float(donor.abs().mean()), float(receiver.abs().mean()))
    if abs(gap) <= 1e-6 * scale:
        raise ZeroGapError(
            f"the donor and receiving runs give the same mean {metric} ({float(donor.mean()):.6g}) "
            f"on task {task_name!r}: there is no gap to attribute. Are the two checkpoints "
            "identical, or is the task one on which fine-tuning changed nothing? "
            "behaviour_gap() shows per-prompt values and KL."
        )
    return gap


PREFIX_WASTE = 0.25
"""Per-position patches: a chunk may span positions ``p0..p1`` only while the positions it
recomputes needlessly, ``p1 - p0`` of the ``width - p0`` it runs, stay within this fraction."""


def _chunks(
    n_sites: int, positions: str, width: int, per_chunk: int
) -> list[list[tuple[int, int | None]]]:
    """Group the patches of one layer into batched runs of at most ``per_chunk`` patches.

    Whole-sequence patches are grouped in site order. Per-position patches are grouped
    position-major and a chunk is closed early once it would span positions too far apart
    (:data:`PREFIX_WASTE`): its suffix run starts at its first position, so a chunk of nearby
    positions recomputes little more than each patch needs.
    """
    if positions != "each":
        patches = [(s, None) for s in range(n_sites)]
        return [patches[c:c + per_chunk] for c in range(0, len(patches), per_chunk)]
    out: list[list[tuple[int, int | None]]] = []
    chunk: list[tuple[int, int | None]] = []
    for p in range(width):
        for s in range(n_sites):
            if chunk:
                first = chunk[0][1]
                if len(chunk) == per_chunk or p - first > PREFIX_WASTE * (width - first):
                    out.append(chunk)
                    chunk = []
            chunk.append((s, p))
    if chunk:
        out.append(chunk)
    return out


def _sweep(
    recv_model: TransformerBridge, donor_model: TransformerBridge, task: Task, tokens: Tokens,
    recv_ids: Tensor, donor_ids: Tensor, kind: str, positions: str, direction: str,
    batch_size: int, prompt_batch_size: int, progress: bool, prov: Provenance,
) -> PatchResult:
    metric = task.metric_name
    n_layers, n_heads = int(recv_model.cfg.n_layers), int(recv_model.cfg.n_heads)
    n_sites = n_heads if kind == "heads" else 1
    n_prompts, width = tokens.n, int(tokens.tokens.shape[1])
    n_pos = width if positions == "each" else 1
    starts = list(range(0, n_prompts, prompt_batch_size))

    def run_captures(start: int) -> tuple[Tokens, _engine.Capture, _engine.Capture, Tensor | None]:
        stop = min(start + prompt_batch_size, n_prompts)
        sub = tokens.select(start, stop)
        w = int(sub.tokens.shape[1])
        with torch.inference_mode():
            dc = _engine.capture(donor_model, sub, donor_ids[start:stop, :w], metric,
                                 _hooks_for(kind, n_layers, receiver=False))
            rc = _engine.capture(recv_model, sub, recv_ids[start:stop, :w], metric,
                                 _hooks_for(kind, n_layers, receiver=True),
                                 record_kv=positions == "each")
        ref = dc.read.log_softmax(-1) if metric in ("kl", "kl_all") else None
        return sub, rc, dc, ref

    # Pass 1: the unpatched runs, so a zero gap or a NaN metric is reported before patching.
    first = run_captures(0) if len(starts) == 1 else None
    recv_vals, donor_vals = [], []
    for start in starts:
        sub, rc, dc, ref = first or run_captures(start)
        recv_vals.append(metric_values(metric, rc.read, sub, ref))
        donor_vals.append(metric_values(metric, dc.read, sub, ref))
    receiver, donor = torch.cat(recv_vals), torch.cat(donor_vals)
    gap = checked_gap(receiver, donor, metric, task.name)

    w_o = (recv_model.W_O, donor_model.W_O) if kind == "heads" else None
    patched = torch.empty(n_layers, n_sites, n_pos, n_prompts)
    per_chunk = max(1, batch_size // min(prompt_batch_size, n_prompts))
    widths = [int(tokens.lengths[a:a + prompt_batch_size].max()) for a in starts]
    total = sum(n_layers * len(_chunks(n_sites, positions, w, per_chunk)) for w in widths)
    bar = tqdm(total=total, desc=f"{kind} patching {direction}", disable=not progress, leave=False)
    try:
        for start in starts:
            sub, rc, dc, ref = first or run_captures(start)
            b, w = sub.n, int(sub.tokens.shape[1])
            read_pos = None if task.reads_all_positions else sub.read_pos
            cols = None
            if metric == "logit_diff" and _engine.reads_columns(recv_model):
                cols = torch.stack([sub.answer_ids, sub.wrong_ids], dim=1)
            tiled = {}
            with torch.inference_mode():
                for layer in range(n_layers):
                    deltas = _layer_deltas(kind, layer, w_o, rc, dc)
                    for chunk in _chunks(n_sites, positions, w, per_chunk):
                        k = len(chunk)
                        read = _patch_chunk(kind, layer, recv_model, rc, deltas, chunk, read_pos,
                                            cols)
                        if cols is not None:  # logit difference from the two logits read
                            vals = (read[:, 0] - read[:, 1]).reshape(k, b)
                        else:
                            if k not in tiled:
                                tiled[k] = (_engine.tile_tokens(sub, k), None if ref is None
                                            else ref.repeat(k, *[1] * (ref.ndim - 1)))
                            vals = metric_values(metric, read, tiled[k][0],
                                                 tiled[k][1]).reshape(k, b)
                        for j, (s, p) in enumerate(chunk):
                            patched[layer, s, 0 if p is None else p, start:start + b] = vals[j].cpu()
                        bar.update(1)
                    if positions == "each" and w < n_pos:  # positions past this batch's prompts
                        patched[layer, :, w:, start:start + b] = receiver[start:start + b].cpu()
    finally:
        bar.close()
    check_finite(patched, "a patched run")

    if kind != "heads":
        patched = patched[:, 0]
    if positions == "all":
        patched = patched.squeeze(-2)
    scores = (patched.mean(-1) - receiver.mean().cpu()) / gap
    dims = ("layer", "head") if kind == "heads" else ("layer",)
    dims = dims + (("pos",) if positions == "each" else ())
    return PatchResult(
        scores=scores, patched=patched, receiver=receiver.cpu(), donor=donor.cpu(), sites=kind,
        dims=dims, direction=direction, positions=positions, provenance=prov,
    )
