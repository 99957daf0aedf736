"""Attribution patching across models: every site's patching effect from a few gradients.

Exact cross-model patching (:func:`mechdiff.cross_patch`) runs one intervention per site.
*Attribution patching* (Nanda 2023, "Attribution Patching: Activation Patching At Industrial
Scale", https://www.neelnanda.io/mechanistic-interpretability/attribution-patching; Syed, Rager &
Conmy 2023, "Attribution Patching Outperforms Automated Circuit Discovery") replaces each
intervention by its first-order Taylor estimate around the receiving run::

    effect(site) ~= grad_a M(receiver) . (a_donor - a_receiver)

where ``M`` is the task metric, ``a`` the site's activation and the dot product runs over
``d_model`` and, with ``positions="all"``, over positions (``positions="each"`` keeps one term per
position). One forward of the donor, one forward and one backward of the receiver score every
site of a kind at once. The site, the delta and the gradient are those of :func:`cross_patch`:

* ``heads``: a head's output after its *own* ``W_O``, ``delta = z_donor W_O,donor -
  z_receiver W_O,receiver``, dotted with the gradient at ``blocks.L.hook_attn_out`` (heads are
  summed into that output, so its gradient is each head's gradient);
* ``attn`` / ``mlp``: ``blocks.L.hook_attn_out`` / ``blocks.L.hook_mlp_out``;
* ``resid``: the residual stream entering block ``L``, gradient at ``blocks.L.hook_resid_pre``.

Gradients are taken with respect to activations, never parameters: a zero tensor that requires
grad is added at every site's hook and ``torch.autograd.grad`` differentiates the summed per-prompt
metric with respect to it, so each prompt's row is that prompt's own gradient.

**Integrated gradients** (Sundararajan, Taly & Yan 2017, "Axiomatic Attribution for Deep
Networks"; for circuits: Marks et al. 2024, "Sparse Feature Circuits", and Hanna, Pezzelle &
Belinkov 2024, "Have Faith in Faithfulness", EAP-IG) average the gradient along the patch
direction instead of reading it at the receiver::

    IG(site) = mean_k grad_a M(run_k) . delta,    alpha_k = (k + 1/2) / steps,  k < steps

(midpoint rule). What is interpolated, exactly:

* ``heads`` / ``attn`` / ``mlp``: run ``k`` is the receiving model with ``alpha_k * delta_L`` added
  to the output of *every* site of the kind at once (for heads, the sum of that layer's head deltas,
  ``b_O`` excluded), deltas measured on the unpatched runs. All layers move together along one path,
  so ``steps`` forwards and backwards score everything. The scores sum (as ``steps`` grows) to the
  effect of that joint shift; a site's own score equals its exact single-site patch where sites do
  not interact, and is its Aumann-Shapley share of the joint effect where they do.
* ``resid``: moving the residual stream at every layer together would count each upstream change
  twice (the stream at ``L`` already carries it), so each layer is interpolated on its own: run
  ``(L, k)`` starts from ``resid_pre(L) + alpha_k * delta_L`` and recomputes blocks ``L..`` only.
  With ``positions="all"`` a layer's score converges to its exact patch; with ``"each"`` the
  positions of a layer share that exact effect. Cost: ``steps * n_layers / 2`` forward+backward
  equivalents.

**Where the linear estimate fails.** A saturated or curved metric (log-probabilities near 0 or 1,
a large patch) makes the receiver's gradient a poor guide; integrated gradients help. Task-free
metrics are the extreme case: ``-KL(donor || model)`` is maximal (gradient zero) at the donor and
close to quadratic near it, so the tangent at the receiver overestimates: for a site that carries
the whole difference the linear estimate closes about *twice* the gap (score ~2), while the
midpoint rule of integrated gradients is exact for a quadratic. Use ``integrated_gradients`` for
``kl`` and ``kl_all``.

**Single model** (:func:`attribute_single`): clean prompts as donor, corrupted as receiver, the
quantity of TransformerLens's ``tools.analysis.attribution_patching`` (node granularity, which
scores ``(a_clean - a_corrupt) . grad`` at ``attn.hook_z`` and ``hook_mlp_out`` on the corrupt run).
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechdiff import _engine
from mechdiff._progress import progress_bar
from mechdiff.directions import Direction
from mechdiff.errors import OptionError
from mechdiff.loading import ModelPair
from mechdiff.metrics import check_finite, checked_gap, metric_values, read_logits
from mechdiff.patching._setup import Positions, Setup, across_models, within_model
from mechdiff.patching.result import PatchResult
from mechdiff.sites import SiteFamily, SiteKind, resid_pre_hook
from mechdiff.tasks import Task, Tokens

Method: TypeAlias = Literal["attribution", "integrated_gradients"]
METHODS: tuple[Method, ...] = ("attribution", "integrated_gradients")


def attribute(
    pair: ModelPair,
    task: Task,
    *,
    sites: SiteKind = "heads",
    direction: Direction = "ft->base",
    method: Method = "attribution",
    steps: int = 5,
    positions: Positions = "all",
    prompt_batch_size: int = 32,
    progress: bool = True,
) -> PatchResult:
    """Estimate cross-model patching of every site of one kind from gradients.

    Args:
        pair: the base and fine-tuned models.
        task: prompts and metric.
        sites: ``"heads"`` (each head's output after its own ``W_O``), ``"attn"``, ``"mlp"`` or
            ``"resid"`` (residual stream entering each block), as in :func:`cross_patch`.
        direction: ``"ft->base"`` (sufficiency) or ``"base->ft"`` (necessity).
        method: ``"attribution"`` (gradient at the receiver: one backward) or
            ``"integrated_gradients"`` (gradient averaged along the patch; see module docstring).
        steps: interpolation points of integrated gradients (ignored by ``"attribution"``).
        positions: ``"all"`` sums the estimate over positions; ``"each"`` keeps one per position.
        prompt_batch_size: prompts per forward/backward; results do not depend on it.
        progress: show a progress bar.

    Returns:
        A :class:`PatchResult` like :func:`cross_patch`'s, with *estimated* values: ``scores``
        the estimated fraction of the gap closed, ``[layer, head]`` or ``[layer]`` (+ ``pos``);
        ``patched`` the receiver's metric plus each prompt's estimated effect (``dims + [batch]``);
        ``method`` records how they were computed.

    Raises:
        SiteError, OptionError, PromptError, AnswerTokenError, MetricError: bad arguments (before
            any forward).
        ZeroGapError: the two models score the same, so no fraction of the gap is defined.
    """
    _check_method(method)
    setup = across_models(pair, task, sites=sites, direction=direction, positions=positions,
                          steps=steps, prompt_batch_size=prompt_batch_size)
    return _run(setup, task, method, steps, positions, prompt_batch_size, progress)


def attribute_single(
    model: TransformerBridge,
    task: Task,
    *,
    sites: SiteKind = "heads",
    method: Method = "attribution",
    steps: int = 5,
    positions: Positions = "each",
    prompt_batch_size: int = 32,
    progress: bool = True,
    model_id: str = "<bridge>",
) -> PatchResult:
    """Classic single-model attribution patching: clean activations toward the corrupted run.

    ``task.corrupted`` must hold one corrupted prompt per clean prompt, of equal token length.
    The gradient is taken on the corrupted run (TransformerLens's denoising convention), scores are
    the estimated fraction of the clean-corrupted gap restored. Same options and result type as
    :func:`attribute`; ``effects`` equals TransformerLens's node scores (summed over positions for
    ``positions="all"``).
    """
    _check_method(method)
    setup = within_model(model, task, sites=sites, positions=positions, model_id=model_id,
                         what="attribute_single", steps=steps, prompt_batch_size=prompt_batch_size)
    return _run(setup, task, method, steps, positions, prompt_batch_size, progress)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise OptionError(f"method must be one of {METHODS}, got {method!r}")


def _estimates(fam: SiteFamily, grads: list[Tensor], rc: _engine.Capture, dc: _engine.Capture,
               w_o: tuple[Tensor, Tensor] | None) -> Tensor:
    """Per-prompt, per-position estimates ``[layer, site, batch, pos]`` from gradients at the
    write hooks ``[batch, pos, d_model]``."""
    return torch.stack([fam.grad_dot(layer, g, rc.acts, dc.acts, w_o)
                        for layer, g in enumerate(grads)])


def _metric(task: Task, read: Tensor, sub: Tokens, ref: Tensor | None) -> Tensor:
    return metric_values(task.metric_name, read, sub, ref)


def _grad_at_shift(model: TransformerBridge, fam: SiteFamily, ids: Tensor, sub: Tokens,
                   task: Task, ref: Tensor | None, shifts: list[Tensor], rc_hooks: set[str] | None
                   ) -> tuple[list[Tensor], Tensor, _engine.Capture | None]:
    """One forward of ``model`` with ``shifts[L]`` added at every layer's write hook and one
    backward: the gradient of the summed per-prompt metric at each shift, the metric values, and
    (if ``rc_hooks``) a capture of the run."""
    leaves = [s.detach().clone().requires_grad_(True) for s in shifts]
    hooks = {fam.write_hook(layer): (lambda out, e=e: out + e) for layer, e in enumerate(leaves)}
    with torch.enable_grad(), _engine.forward_hooks(model, hooks):
        if rc_hooks is not None:
            cap = _engine.capture(model, sub, ids, task.metric_name, rc_hooks)
            read = cap.read
        else:
            cap = None
            read = read_logits(model(ids, use_cache=False), sub, task.metric_name).float()
        values = _metric(task, read, sub, ref)
        grads = torch.autograd.grad(values.sum(), leaves, allow_unused=True)
    grads = [torch.zeros_like(e) if g is None else g for g, e in zip(grads, leaves, strict=True)]
    return grads, values.detach(), cap


def _resid_ig(model: TransformerBridge, sub: Tokens, task: Task, ref: Tensor | None,
              rc: _engine.Capture, deltas: list[Tensor], alphas: list[float], bar: object
              ) -> list[Tensor]:
    """Mean gradient at ``resid_pre(L)`` along ``resid_pre(L) + alpha * delta_L``, one layer at a
    time, recomputing only blocks ``L..``."""
    read_pos = None if task.reads_all_positions else sub.read_pos
    out = []
    for layer, delta in enumerate(deltas):
        total = torch.zeros_like(delta)
        for alpha in alphas:
            hidden = (rc.acts[resid_pre_hook(layer)] + alpha * delta).requires_grad_(True)
            with torch.enable_grad():
                final = _engine.run_suffix(model, layer, hidden, rc, 1)
                values = _metric(task, _engine.unembed(model, final, read_pos), sub, ref)
                # backward(inputs=...), not autograd.grad: also under torch's module tracker
                # (FlopCounterMode), which refuses grad() for a leaf passed into a module
                torch.autograd.backward(values.sum(), inputs=[hidden])
            total += hidden.grad
            bar.update(1)  # type: ignore[attr-defined]
        out.append(total / len(alphas))
    return out


def _run(setup: Setup, task: Task, method: str, steps: int, positions: str,
         prompt_batch_size: int, progress: bool) -> PatchResult:
    recv_model, donor_model, fam, tokens = setup.receiver, setup.donor, setup.family, setup.tokens
    metric = task.metric_name
    n_layers, n_heads = int(recv_model.cfg.n_layers), int(recv_model.cfg.n_heads)
    n_sites = fam.per_layer(n_heads)
    n_prompts, width = tokens.n, int(tokens.tokens.shape[1])
    ig = method == "integrated_gradients"
    alphas = [(k + 0.5) / steps for k in range(steps)]
    read_hooks = fam.read_hooks(n_layers)
    if fam.kind == "resid" and ig:
        read_hooks |= {resid_pre_hook(layer) for layer in range(n_layers)}
    with torch.no_grad():  # W_O of both models, read once
        w_o = (recv_model.W_O.detach(), donor_model.W_O.detach()) if fam.kind == "heads" else None

    dtype = next(recv_model.parameters()).dtype
    starts = list(range(0, n_prompts, prompt_batch_size))
    per_batch = 1 if not ig else (steps * n_layers if fam.kind == "resid" else steps)
    each = positions == "each"
    est = torch.zeros(n_layers, n_sites, n_prompts, width if each else 1)  # memory: no pos if "all"
    recv_vals, donor_vals = [], []
    with progress_bar(total=len(starts) * per_batch, desc=f"{fam.kind} {method} "
                      f"{setup.direction}", enabled=progress) as bar:
        for start in starts:
            stop = min(start + prompt_batch_size, n_prompts)
            sub = tokens.select(start, stop)
            w = int(sub.tokens.shape[1])
            r_ids, d_ids = setup.receiver_ids[start:stop, :w], setup.donor_ids[start:stop, :w]
            with torch.no_grad():
                dc = _engine.capture(donor_model, sub, d_ids, metric, read_hooks)
            ref = dc.read.log_softmax(-1) if metric in ("kl", "kl_all") else None
            donor_vals.append(_metric(task, dc.read, sub, ref))
            shape = (sub.n, w, int(recv_model.cfg.d_model))
            if not ig:  # one forward + one backward of the receiver, zero shifts
                zeros = [torch.zeros(shape, dtype=dtype, device=r_ids.device)
                         for _ in range(n_layers)]
                grads, values, rc = _grad_at_shift(recv_model, fam, r_ids, sub, task, ref, zeros,
                                                   read_hooks)
                assert rc is not None
                bar.update(1)
            else:
                with torch.no_grad():
                    rc = _engine.capture(recv_model, sub, r_ids, metric, read_hooks)
                values = _metric(task, rc.read, sub, ref)
                deltas = [fam.summed_delta(layer, rc.acts, dc.acts, w_o)
                          for layer in range(n_layers)]
                if fam.kind == "resid":
                    grads = _resid_ig(recv_model, sub, task, ref, rc, deltas, alphas, bar)
                else:
                    grads = [torch.zeros_like(d) for d in deltas]
                    for alpha in alphas:
                        g, _, _ = _grad_at_shift(recv_model, fam, r_ids, sub, task, ref,
                                                 [alpha * d for d in deltas], None)
                        grads = [a + b / steps for a, b in zip(grads, g, strict=True)]
                        bar.update(1)
            recv_vals.append(values)
            batch_est = _estimates(fam, grads, rc, dc, w_o).detach()
            if each:
                est[:, :, start:stop, :w] = batch_est.cpu()
            else:
                est[:, :, start:stop, 0] = batch_est.sum(-1).cpu()

    receiver, donor = torch.cat(recv_vals).cpu(), torch.cat(donor_vals).cpu()
    gap = checked_gap(receiver, donor, metric, task.name)
    check_finite(est, "an attribution estimate", prompt_dim=2)

    est = est.permute(0, 1, 3, 2)  # [layer, site, pos, batch]
    if fam.kind != "heads":
        est = est[:, 0]
    if positions == "all":
        est = est.squeeze(-2)
    scores = est.mean(-1) / gap
    dims = fam.dims + (("pos",) if each else ())
    name = method if not ig else f"integrated_gradients(steps={steps})"
    return PatchResult(
        scores=scores, patched=receiver + est, receiver=receiver, donor=donor, sites=fam.kind,
        dims=dims, direction=setup.direction, positions=positions, provenance=setup.provenance,
        method=name,
    )
