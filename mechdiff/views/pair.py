"""What the views of a pair need from its two models, computed once and saved (:class:`PairViews`).

The HTML report (:func:`mechdiff.report.html.write_report`) and the circuitsvis views
(:mod:`mechdiff.viz.views`) are drawn from a saved :class:`PairViews` alone, so a page rebuilds
without loading a model. Each model runs once over the kept prompts, recording:

* **per-token divergence**: at every real position ``t`` of every prompt, KL(fine-tuned || base)
  of the two next-token distributions read there, and the change (fine-tuned minus base) of the
  log-probability of the token that actually follows (``t + 1``; undefined at the last
  position). Where the task has answers, also the change of the task's quantity read at ``t``
  (``logit[answer] - logit[wrong answer]`` for ``logit_diff`` tasks, ``log p(answer)`` for
  ``logprob`` tasks): its value at each prompt's last position is the behaviour gap of that
  prompt, so a user sees *where in the text* the two models start to disagree.
* **attention patterns** of chosen heads (e.g. the top ``k`` of a patching or attribution result,
  :func:`top_heads`) in both models on the same prompts (``hook_pattern``, ``[query, key]``
  after the softmax), so a head's base and fine-tuned patterns can be set side by side with their
  difference.

Only a few prompts are kept (by default the ``n_prompts`` on which the two models differ most:
largest ``|gap|`` of the prompt, or KL at its last position for task-free metrics, found by a first
pass over every prompt without hooks; memory stays bounded by the batch size); their indices
into the task are recorded, so per-position patching results (which keep every prompt's values)
can be shown over the same prompts' tokens. Tokens are stored decoded (:mod:`.tokens`).
Attention heads as in Elhage et al. (2021), "A Mathematical Framework for Transformer Circuits";
the views themselves are circuitsvis components (Cooney & Nanda, CircuitsVis).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechdiff._engine import forward_hooks
from mechdiff._progress import progress_bar
from mechdiff.errors import OptionError, ResultError, check_count
from mechdiff.loading import ModelPair
from mechdiff.metrics import check_finite, kl_div
from mechdiff.patching import PatchResult
from mechdiff.pipeline.pair import PairAnalysis
from mechdiff.results import Provenance, SavableResult
from mechdiff.sites import Head, pattern_hook
from mechdiff.tasks import Task, Tokens
from mechdiff.views.tokens import token_texts

TASK_QUANTITY = {
    "logit_diff": "logit(answer) \u2212 logit(wrong answer)",
    "logprob": "log p(answer)",
}
"""The task quantity read at every position, by metric (task-free metrics have none)."""
DEFAULT_K = 6
"""Heads shown by default."""
DEFAULT_PROMPTS = 2
"""Prompts kept by default."""


@dataclass(frozen=True)
class RankedHead:
    """A head chosen for the views, with the score that chose it."""

    head: Head
    score: float
    source: str


@dataclass(frozen=True)
class PairViews(SavableResult):
    """Per-token divergence and attention patterns of a pair on a few prompts.

    Attributes:
        label: the pair's label (as in its :class:`~mechdiff.pipeline.PairAnalysis`).
        prompt_indices: the kept prompts' indices into the task.
        chosen_by: how the prompts were chosen.
        tokens: each kept prompt's tokens, decoded (``" cat"``; see :mod:`mechdiff.views.tokens`).
        lengths: each kept prompt's length in tokens.
        kl: KL(fine-tuned || base) of the next-token distributions at each position, ``NaN``
            past a prompt's length.
        next_logprob_diff: fine-tuned minus base log-probability of the token that follows each
            position (``NaN`` at the last position and past it).
        task_diff: fine-tuned minus base of the task quantity (:data:`TASK_QUANTITY`) read at each
            position; None for task-free metrics.
        task_quantity: what ``task_diff`` measures (None with it).
        heads: labels of the heads whose patterns are kept (``L3H7``), strongest first.
        head_layers / head_indices: their layers and indices in the layer.
        head_scores: the score that chose each head (NaN when given by hand).
        heads_source: where the scores come from (e.g. ``exact patching, heads, |score| over
            ft->base and base->ft``).
        base_pattern / finetuned_pattern: the heads' attention patterns, ``[prompt, head, query,
            key]`` (``NaN`` past a prompt's length); None when no heads were asked for.
        provenance: models, task (prompts hash), metric, versions.
    """

    label: str
    prompt_indices: tuple[int, ...]
    chosen_by: str
    tokens: tuple[tuple[str, ...], ...]
    lengths: Int[Tensor, " prompt"]
    kl: Float[Tensor, "prompt pos"]
    next_logprob_diff: Float[Tensor, "prompt pos"]
    task_diff: Float[Tensor, "prompt pos"] | None
    task_quantity: str | None
    heads: tuple[str, ...]
    head_layers: tuple[int, ...]
    head_indices: tuple[int, ...]
    head_scores: tuple[float, ...]
    heads_source: str
    base_pattern: Float[Tensor, "prompt head pos pos"] | None
    finetuned_pattern: Float[Tensor, "prompt head pos pos"] | None
    provenance: Provenance

    def validate(self) -> None:
        n = len(self.prompt_indices)
        if len(self.tokens) != n or tuple(self.lengths.shape) != (n,):
            raise ResultError(f"{n} prompt indices but {len(self.tokens)} token lists and "
                              f"lengths of shape {tuple(self.lengths.shape)}")
        if [len(t) for t in self.tokens] != self.lengths.tolist():
            raise ResultError("the token lists do not match the recorded lengths")
        if n and int(self.lengths.max()) > int(self.kl.shape[1]):
            raise ResultError(f"a prompt of {int(self.lengths.max())} tokens does not fit "
                              f"{int(self.kl.shape[1])} positions")
        k = len(self.heads)
        if {len(self.head_layers), len(self.head_indices), len(self.head_scores)} != {k}:
            raise ResultError("heads, head_layers, head_indices and head_scores differ in length")
        for name in ("base_pattern", "finetuned_pattern"):
            pattern = getattr(self, name)
            if (pattern is None) != (k == 0) or (pattern is not None
                                                 and int(pattern.shape[1]) != k):
                raise ResultError(f"{name} must hold one pattern per head ({k} heads), got "
                                  f"{None if pattern is None else tuple(pattern.shape)}")
        if (self.task_diff is None) != (self.task_quantity is None):
            raise ResultError("task_diff and task_quantity go together")

    def prompt_tokens(self, i: int) -> tuple[str, ...]:
        """The decoded tokens of kept prompt ``i`` (0-based among the kept prompts)."""
        return self.tokens[i]

    def pattern(self, i: int, h: int, which: str) -> Tensor:
        """Kept prompt ``i``'s ``[query, key]`` pattern of head ``h`` in ``base`` or
        ``finetuned``, cut to the prompt's length."""
        source = self.base_pattern if which == "base" else self.finetuned_pattern
        if source is None:
            raise ResultError("these views hold no attention patterns")
        n = int(self.lengths[i])
        return source[i, h, :n, :n]


def top_heads(source: PairAnalysis | PatchResult, k: int = DEFAULT_K) -> list[RankedHead]:
    """The ``k`` heads with the largest ``|score|`` of a patching or attribution result.

    Args:
        source: a :class:`PairAnalysis` (its heads ranked by its ranking method, the largest
            ``|score|`` over both directions) or a heads :class:`PatchResult` (per-position head
            results: the largest ``|score|`` over positions).
        k: how many heads.

    Raises:
        OptionError: ``k`` is not a positive integer, or ``source`` has no head results.
    """
    check_count("k", k, minimum=1)
    if isinstance(source, PairAnalysis):
        results = {key: r for key, r in source.results(source.ranked_by).items()
                   if r.sites == "heads"}
        if not results:
            raise OptionError(f"the analysis {source.label!r} has no head results to rank; run "
                              "it with sites including 'heads'")
        dirs = "/".join(dict.fromkeys(r.direction for r in results.values()))
        what = f"{_method(source.ranked_by)}, |score| over {dirs}"
        strength: dict[Head, float] = {}
        signed: dict[Head, float] = {}
        for r in results.values():
            for head, value in _head_scores(r).items():
                if head not in strength or abs(value) > strength[head]:
                    strength[head], signed[head] = abs(value), value
        order = sorted(strength, key=lambda h: (-strength[h], h))
        return [RankedHead(h, signed[h], what) for h in order[:k]]
    if isinstance(source, PatchResult):
        if source.sites != "heads":
            raise OptionError(f"a {source.sites} result has no heads; pass a heads result")
        scores = _head_scores(source)
        what = f"{_method(source.method)}, {source.direction}, |score|"
        order = sorted(scores, key=lambda h: (-abs(scores[h]), h))
        return [RankedHead(h, scores[h], what) for h in order[:k]]
    raise OptionError(f"top_heads takes a PairAnalysis or a PatchResult, got "
                      f"{type(source).__name__}")


def _method(method: str) -> str:
    return {"exact": "exact patching", "attribution": "attribution patching"}.get(method, method)


def _head_scores(result: PatchResult) -> dict[Head, float]:
    """Each head's score (for per-position results: the one of largest ``|score|``)."""
    scores = result.scores.detach().float().cpu()
    if scores.ndim == 3:  # layer head pos
        idx = scores.abs().nan_to_num(-1.0).argmax(-1, keepdim=True)
        scores = scores.gather(-1, idx)[..., 0]
    return {Head(layer, head): float(scores[layer, head])
            for layer in range(scores.shape[0]) for head in range(scores.shape[1])
            if math.isfinite(float(scores[layer, head]))}


def pair_views(
    pair: ModelPair,
    task: Task,
    *,
    label: str,
    heads: Sequence[Head] | PairAnalysis | PatchResult = (),
    k: int = DEFAULT_K,
    prompts: Sequence[int] | None = None,
    n_prompts: int = DEFAULT_PROMPTS,
    prompt_batch_size: int = 16,
    progress: bool = False,
) -> PairViews:
    """Per-token divergence and attention patterns of ``pair`` on a few of ``task``'s prompts.

    Args:
        pair: the base and fine-tuned models.
        task: the task (the same prompts as the analysis the views go with).
        label: the pair's label (the views are matched to its analysis by it).
        heads: the heads whose patterns to keep: a list of :class:`~mechdiff.sites.Head`, or a
            result whose top ``k`` heads to take (:func:`top_heads`); empty: none.
        k: heads taken from a result.
        prompts: indices of the prompts to keep; by default the ``n_prompts`` on which the two
            models differ most (largest ``|gap|`` of the prompt; KL at its last position for
            task-free metrics).
        n_prompts: prompts kept by default.
        prompt_batch_size: prompts run at once.
        progress: show progress bars (two passes when the prompts are chosen: one over every
            prompt without hooks, one over the kept prompts recording patterns).

    Raises:
        OptionError: a bad option (before any forward): a head outside the model, a prompt
            index outside the task, a non-positive count.
        MetricError: a model gives NaN/inf logits.
    """
    if not isinstance(label, str) or not label:
        raise OptionError(f"label must be a non-empty string, got {label!r}")
    for name, value in (("n_prompts", n_prompts), ("prompt_batch_size", prompt_batch_size)):
        check_count(name, value, minimum=1)
    chosen = _chosen_heads(heads, k, pair)
    n_task = len(task)
    keep: list[int] = []
    if prompts is not None:
        prompts = [int(i) for i in prompts]
        bad = [i for i in prompts if not 0 <= i < n_task] or ([] if prompts else ["(none)"])
        if bad:
            raise OptionError(f"prompts must be indices into the task's {n_task} prompts, got "
                              f"{bad}")
        keep = list(dict.fromkeys(prompts))
    tokens = task.tokenize(pair.tokenizer, n_ctx=pair.n_ctx, device=pair.device)
    metric = task.metric_name
    quantity = TASK_QUANTITY.get(metric)
    if prompts is None:  # a first pass without hooks: where do the two models differ most?
        found = _run(pair, tokens, range(tokens.n), quantity is not None, metric, [],
                     prompt_batch_size, progress, "views: choosing prompts")
        last = tokens.lengths.cpu() - 1
        rows = torch.arange(tokens.n)
        change = (found["task"][rows, last].abs() if quantity is not None
                  else found["kl"][rows, last])
        keep = change.argsort(descending=True, stable=True)[:n_prompts].tolist()
        chosen_by = (f"the {len(keep)} of {n_task} prompts with the largest |gap| "
                     f"({metric} at the last position)" if quantity is not None else
                     f"the {len(keep)} of {n_task} prompts with the largest KL(FT || base) at "
                     "the last position")
    else:
        chosen_by = "given"
    layers = sorted({r.head.layer for r in chosen})
    cat = _run(pair, tokens, keep, quantity is not None, metric, layers, prompt_batch_size,
               progress, "views")
    lengths = tokens.lengths.cpu()[keep]
    n_pos = int(lengths.max())
    texts = tuple(token_texts(pair.tokenizer, tokens.tokens[i, : int(tokens.lengths[i])].tolist())
                  for i in keep)
    patterns: dict[str, Tensor | None] = {}
    for which in ("base", "finetuned"):
        if chosen:
            full = cat[f"{which}_pattern"]  # [prompt, layer slot, head, query, key]
            slots = [layers.index(r.head.layer) for r in chosen]
            hs = [r.head.head for r in chosen]
            patterns[which] = full[:, slots, hs][..., :n_pos, :n_pos].contiguous()
        else:
            patterns[which] = None
    return PairViews(
        label=label, prompt_indices=tuple(keep), chosen_by=chosen_by, tokens=texts,
        lengths=lengths.clone(), kl=cat["kl"][:, :n_pos].contiguous(),
        next_logprob_diff=cat["next"][:, :n_pos].contiguous(),
        task_diff=cat["task"][:, :n_pos].contiguous() if quantity is not None else None,
        task_quantity=quantity, heads=tuple(r.head.label for r in chosen),
        head_layers=tuple(r.head.layer for r in chosen),
        head_indices=tuple(r.head.head for r in chosen),
        head_scores=tuple(r.score for r in chosen),
        heads_source=chosen[0].source if chosen else "",
        base_pattern=patterns["base"], finetuned_pattern=patterns["finetuned"],
        provenance=pair.provenance(task),
    )


def _run(pair: ModelPair, tokens: Tokens, indices: Sequence[int], with_task: bool, metric: str,
         layers: list[int], batch_size: int, progress: bool, desc: str) -> dict[str, Tensor]:
    """The per-position values (and patterns of ``layers``) of the prompts at ``indices``, in
    that order, padded with NaN to their longest length."""
    indices = list(indices)
    parts: list[dict[str, Tensor]] = []
    with progress_bar(total=len(indices), desc=desc, enabled=progress) as bar:
        for start in range(0, len(indices), batch_size):
            sub = _subset(tokens, indices[start:start + batch_size])
            parts.append(_batch(pair, sub, with_task, metric, layers))
            bar.update(sub.n)
    width = max(int(p["kl"].shape[1]) for p in parts)
    return {key: torch.cat([_pad(p[key], width) for p in parts]) for key in parts[0]}


def _subset(tokens: Tokens, indices: list[int]) -> Tokens:
    """The prompts at ``indices`` (any order), trimmed to their own longest length."""
    idx = torch.tensor(indices, device=tokens.tokens.device)
    width = int(tokens.lengths[idx].max())

    def take(x: Tensor | None) -> Tensor | None:
        return None if x is None else x[idx]

    return Tokens(tokens=tokens.tokens[idx, :width], lengths=tokens.lengths[idx],
                  answer_ids=take(tokens.answer_ids), wrong_ids=take(tokens.wrong_ids))


def _chosen_heads(heads: Any, k: int, pair: ModelPair) -> list[RankedHead]:
    if isinstance(heads, PairAnalysis | PatchResult):
        chosen = top_heads(heads, k)
    else:
        if isinstance(heads, Head) or not isinstance(heads, Sequence | tuple | list):
            raise OptionError(f"heads must be a list of Head sites or a result to take the top "
                              f"heads of, got {type(heads).__name__}")
        wrong = [h for h in heads if not isinstance(h, Head)]
        if wrong:
            raise OptionError(f"heads must be Head sites (mechdiff.sites.Head), got {wrong[0]!r}")
        chosen = [RankedHead(h, math.nan, "given") for h in dict.fromkeys(heads)]
    n_layers, n_heads = int(pair.cfg.n_layers), int(pair.cfg.n_heads)
    for r in chosen:
        if not (0 <= r.head.layer < n_layers and 0 <= r.head.head < n_heads):
            raise OptionError(f"head {r.head.label} is outside the model ({n_layers} layers x "
                              f"{n_heads} heads)")
    return chosen


def _pad(x: Tensor, width: int) -> Tensor:
    """Pad the position axes (1, and for patterns the last two) of ``x`` with NaN to ``width``."""
    if x.ndim == 2:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=math.nan)
    return torch.nn.functional.pad(x, (0, width - x.shape[-1], 0, width - x.shape[-2]),
                                   value=math.nan)


def _keeper(store: dict[int, Tensor], layer: int) -> Any:
    """A hook function that records its activation (float, CPU) in ``store[layer]``."""
    def fn(x: Tensor) -> Tensor:
        store[layer] = x.detach().float().cpu()
        return x

    return fn


def _batch(pair: ModelPair, sub: Any, with_task: bool, metric: str,
           layers: list[int]) -> dict[str, Tensor]:
    """One batch: per-position KL, next-token and task differences, and patterns of ``layers``."""
    mask = sub.position_mask().cpu()
    out: dict[str, Tensor] = {}
    logprobs = {}
    task_vals = {}
    with torch.inference_mode():
        for which, model in (("base", pair.base), ("finetuned", pair.finetuned)):
            seen: dict[int, Tensor] = {}
            with forward_hooks(model, {pattern_hook(layer): _keeper(seen, layer)
                                       for layer in layers}):
                logits = model(sub.tokens, use_cache=False).float()
            check_finite(logits, f"the {which} model's logits")
            lp = logits.log_softmax(-1)
            logprobs[which] = lp
            if with_task:
                if metric == "logit_diff":
                    a = logits.gather(-1, sub.answer_ids[:, None, None].expand(-1, lp.shape[1], 1))
                    w = logits.gather(-1, sub.wrong_ids[:, None, None].expand(-1, lp.shape[1], 1))
                    task_vals[which] = (a - w)[..., 0].cpu()
                else:
                    task_vals[which] = lp.gather(
                        -1, sub.answer_ids[:, None, None].expand(-1, lp.shape[1], 1))[..., 0].cpu()
            if layers:
                stacked = torch.stack([seen[layer] for layer in layers], 1)  # [b, L, h, q, k]
                pad = ~mask
                stacked = stacked.masked_fill(pad[:, None, None, :, None], math.nan)
                stacked = stacked.masked_fill(pad[:, None, None, None, :], math.nan)
                out[f"{which}_pattern"] = stacked
        lpf, lpb = logprobs["finetuned"], logprobs["base"]
        kl = kl_div(lpf, lpb).cpu()
        nxt = sub.tokens[:, 1:, None]
        gained = (lpf[:, :-1].gather(-1, nxt) - lpb[:, :-1].gather(-1, nxt))[..., 0].cpu()
        gained = torch.nn.functional.pad(gained, (0, 1), value=math.nan)
        follows = torch.zeros_like(mask)
        follows[:, :-1] = mask[:, 1:]
    out["kl"] = kl.masked_fill(~mask, math.nan)
    out["next"] = gained.masked_fill(~follows, math.nan)
    if with_task:
        out["task"] = (task_vals["finetuned"] - task_vals["base"]).masked_fill(~mask, math.nan)
    return out
