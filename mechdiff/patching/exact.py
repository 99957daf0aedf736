"""Exact activation patching, across models and within one model.

**Cross-model patching** (:func:`cross_patch`) runs the base and the fine-tuned model on the same
prompts and, for one site at a time (an attention head after its own ``W_O``, a whole attention
layer, an MLP, or the residual stream; at all positions or one position), puts the donor model's
activation into the receiving model's run (see :mod:`mechdiff.directions`):

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

from collections.abc import Sequence

import einops
import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechdiff import _engine
from mechdiff._progress import progress_bar
from mechdiff.directions import Direction
from mechdiff.errors import SiteError
from mechdiff.loading import ModelPair
from mechdiff.metrics import check_finite, checked_gap, metric_values
from mechdiff.patching._setup import Positions, Setup, across_models, within_model
from mechdiff.patching.result import PatchResult
from mechdiff.sites import Site, SiteFamily, SiteKind, resid_pre_hook
from mechdiff.tasks import Task, Tokens


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
    only: Sequence[Site] | None = None,
) -> PatchResult:
    """Exact cross-model activation patching of every site of one kind (or of some of them).

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
        only: patch only these sites (of kind ``sites``), e.g. the strongest candidates of an
            attribution sweep; the others are left unpatched and score NaN. ``None``: all.

    Returns:
        A :class:`PatchResult`; ``scores`` is ``[layer, head]`` for heads, ``[layer]`` otherwise,
        with a trailing ``pos`` axis when ``positions="each"``.

    Raises:
        SiteError, OptionError, PromptError, AnswerTokenError, MetricError: bad arguments (before
            any forward).
        ZeroGapError: the two models score the same, so no fraction of the gap is defined.
    """
    setup = across_models(pair, task, sites=sites, direction=direction, positions=positions,
                          batch_size=batch_size, prompt_batch_size=prompt_batch_size)
    chosen = _selection(setup.family, only, pair.n_layers, pair.n_heads)
    return _sweep(setup, task, positions, batch_size, prompt_batch_size, progress, chosen)


def _selection(fam: SiteFamily, only: Sequence[Site] | None, n_layers: int, n_heads: int
               ) -> set[tuple[int, int]] | None:
    """``only`` as grid positions ``(layer, index)``, checked (before any forward)."""
    if only is None:
        return None
    chosen = set()
    for site in only:
        if getattr(site, "kind", None) != fam.kind:
            raise SiteError(f"only= holds {site!r}, not a site of kind {fam.kind!r}")
        index = getattr(site, "head", 0)
        if not (0 <= site.layer < n_layers and 0 <= index < fam.per_layer(n_heads)):
            raise SiteError(f"{site.label} does not exist in a model of {n_layers} layers x "
                            f"{n_heads} heads")
        chosen.add((site.layer, index))
    if not chosen:
        raise SiteError("only= is empty: give at least one site, or None for all")
    return chosen


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
    setup = within_model(model, task, sites=sites, positions=positions, model_id=model_id,
                         what="activation_patch", batch_size=batch_size,
                         prompt_batch_size=prompt_batch_size)
    return _sweep(setup, task, positions, batch_size, prompt_batch_size, progress)


def _capture_hooks(fam: SiteFamily, n_layers: int, receiver: bool) -> set[str]:
    names = {resid_pre_hook(layer) for layer in range(n_layers)} if receiver else set()
    return names | fam.read_hooks(n_layers)


def _patch_chunk(
    fam: SiteFamily, layer: int, model: TransformerBridge, rc: _engine.Capture, deltas: Tensor,
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
        start = min(p for _, p in chunk if p is not None)
    delta = torch.zeros(k, b, t - start, d, dtype=base.dtype, device=base.device)
    for j, (s, p) in enumerate(chunk):
        if p is None:
            delta[j] = deltas[s]
        else:
            delta[j, :, p - start] = deltas[s, :, p]
    delta = einops.rearrange(delta, "k b t d -> (k b) t d")
    hidden = base[:, start:].repeat(k, 1, 1)
    if fam.kind == "resid":
        hidden = hidden + delta
        inject = None
    else:
        inject = {fam.write_hook(layer): delta}
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


PREFIX_WASTE = 0.25
"""Per-position patches: a chunk may span positions ``p0..p1`` only while the positions it
recomputes needlessly, ``p1 - p0`` of the ``width - p0`` it runs, stay within this fraction."""


def _chunks(
    sites: Sequence[int], positions: str, width: int, per_chunk: int
) -> list[list[tuple[int, int | None]]]:
    """Group the patches of one layer into batched runs of at most ``per_chunk`` patches.

    Whole-sequence patches are grouped in site order. Per-position patches are grouped
    position-major and a chunk is closed early once it would span positions too far apart
    (:data:`PREFIX_WASTE`): its suffix run starts at its first position, so a chunk of nearby
    positions recomputes little more than each patch needs.
    """
    if positions != "each":
        patches: list[tuple[int, int | None]] = [(s, None) for s in sites]
        return [patches[c:c + per_chunk] for c in range(0, len(patches), per_chunk)]
    out: list[list[tuple[int, int | None]]] = []
    chunk: list[tuple[int, int | None]] = []
    for p in range(width):
        for s in sites:
            if chunk:
                first = chunk[0][1]
                assert first is not None
                if len(chunk) == per_chunk or p - first > PREFIX_WASTE * (width - first):
                    out.append(chunk)
                    chunk = []
            chunk.append((s, p))
    if chunk:
        out.append(chunk)
    return out


def _sweep(
    setup: Setup, task: Task, positions: str, batch_size: int, prompt_batch_size: int,
    progress: bool, chosen: set[tuple[int, int]] | None = None,
) -> PatchResult:
    recv_model, donor_model, fam, tokens = setup.receiver, setup.donor, setup.family, setup.tokens
    metric = task.metric_name
    n_layers, n_heads = int(recv_model.cfg.n_layers), int(recv_model.cfg.n_heads)
    n_sites = fam.per_layer(n_heads)
    n_prompts, width = tokens.n, int(tokens.tokens.shape[1])
    n_pos = width if positions == "each" else 1
    starts = list(range(0, n_prompts, prompt_batch_size))

    def run_captures(start: int) -> tuple[Tokens, _engine.Capture, _engine.Capture, Tensor | None]:
        stop = min(start + prompt_batch_size, n_prompts)
        sub = tokens.select(start, stop)
        w = int(sub.tokens.shape[1])
        with torch.inference_mode():
            dc = _engine.capture(donor_model, sub, setup.donor_ids[start:stop, :w], metric,
                                 _capture_hooks(fam, n_layers, receiver=False))
            rc = _engine.capture(recv_model, sub, setup.receiver_ids[start:stop, :w], metric,
                                 _capture_hooks(fam, n_layers, receiver=True),
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

    w_o = (recv_model.W_O, donor_model.W_O) if fam.kind == "heads" else None
    patched = torch.full((n_layers, n_sites, n_pos, n_prompts), torch.nan)
    per_chunk = max(1, batch_size // min(prompt_batch_size, n_prompts))
    widths = [int(tokens.lengths[a:a + prompt_batch_size].max()) for a in starts]
    layer_sites = [[s for s in range(n_sites) if chosen is None or (layer, s) in chosen]
                   for layer in range(n_layers)]
    total = sum(len(_chunks(sel, positions, w, per_chunk)) for w in widths for sel in layer_sites)
    with progress_bar(total=total, desc=f"{fam.kind} patching {setup.direction}",
                      enabled=progress) as bar:
        for start in starts:
            sub, rc, dc, ref = first or run_captures(start)
            b, w = sub.n, int(sub.tokens.shape[1])
            read_pos = None if task.reads_all_positions else sub.read_pos
            cols = None
            if metric == "logit_diff" and _engine.reads_columns(recv_model):
                assert sub.answer_ids is not None and sub.wrong_ids is not None
                cols = torch.stack([sub.answer_ids, sub.wrong_ids], dim=1)
            tiled: dict[int, tuple[Tokens, Tensor | None]] = {}
            with torch.inference_mode():
                for layer in range(n_layers):
                    if not layer_sites[layer]:
                        continue
                    deltas = fam.deltas(layer, rc.acts, dc.acts, w_o)
                    for chunk in _chunks(layer_sites[layer], positions, w, per_chunk):
                        k = len(chunk)
                        read = _patch_chunk(fam, layer, recv_model, rc, deltas, chunk, read_pos,
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
                        for s in layer_sites[layer]:
                            patched[layer, s, w:, start:start + b] = receiver[start:start + b].cpu()
    done = [(layer, s) for layer in range(n_layers) for s in layer_sites[layer]]
    check_finite(patched[[x[0] for x in done], [x[1] for x in done]], "a patched run",
                 prompt_dim=-1)

    if fam.kind != "heads":
        patched = patched[:, 0]
    if positions == "all":
        patched = patched.squeeze(-2)
    scores = (patched.mean(-1) - receiver.mean().cpu()) / gap
    dims = fam.dims + (("pos",) if positions == "each" else ())
    return PatchResult(
        scores=scores, patched=patched, receiver=receiver.cpu(), donor=donor.cpu(), sites=fam.kind,
        dims=dims, direction=setup.direction, positions=positions, provenance=setup.provenance,
    )
