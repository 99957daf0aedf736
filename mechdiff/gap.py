"""The behaviour gap: how differently the base and fine-tuned models behave on a task.

Reports the task metric per prompt on each model, the KL divergence KL(FT || base) at each
prompt's final position and averaged over its positions, and the next tokens whose probability
(at the final position, averaged over prompts) rose and fell most under fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from mechdiff import stats
from mechdiff.errors import ResultError
from mechdiff.loading import ModelPair
from mechdiff.metrics import check_finite, kl_div, metric_values
from mechdiff.results import Provenance, SavableResult
from mechdiff.tasks import Task


@dataclass(frozen=True)
class GapResult(SavableResult):
    """Behaviour of both models on one task.

    Attributes:
        base_metric: the task metric per prompt on the base model, ``[batch]``. For task-free
            metrics this is ``-KL(FT || base)``.
        finetuned_metric: the same on the fine-tuned model (0 for task-free metrics).
        kl_final: KL(FT || base) at each prompt's final position, ``[batch]``.
        kl_mean: KL(FT || base) averaged over each prompt's real positions, ``[batch]``.
        rose_tokens / fell_tokens: next tokens whose mean final-position probability rose / fell
            most; ``rose_delta`` / ``fell_delta`` their mean probability change.
        message: a one-line summary (says so plainly when there is no gap).
        provenance: models, task, metric.
    """

    base_metric: Float[Tensor, " batch"]
    finetuned_metric: Float[Tensor, " batch"]
    kl_final: Float[Tensor, " batch"]
    kl_mean: Float[Tensor, " batch"]
    rose_tokens: tuple[str, ...]
    rose_delta: Float[Tensor, " k"]
    fell_tokens: tuple[str, ...]
    fell_delta: Float[Tensor, " k"]
    message: str
    provenance: Provenance

    def validate(self) -> None:
        """Per-prompt values and token lists fit together."""
        n = int(self.base_metric.shape[0])
        shapes = [t.shape for t in (self.finetuned_metric, self.kl_final, self.kl_mean)]
        if any(tuple(s) != (n,) for s in shapes):
            raise ResultError(f"per-prompt values of different lengths: {n} and {shapes}")
        if (len(self.rose_tokens), len(self.fell_tokens)) != (
                int(self.rose_delta.shape[0]), int(self.fell_delta.shape[0])):
            raise ResultError("the rose/fell token lists do not match their probability changes")
        if self.provenance.n_prompts != n:
            raise ResultError(f"{n} per-prompt values but provenance records "
                              f"{self.provenance.n_prompts} prompts")

    @property
    def gap(self) -> float:
        """Mean fine-tuned metric minus mean base metric."""
        return float(self.finetuned_metric.mean() - self.base_metric.mean())

    def gap_interval(
        self,
        level: float = stats.CI_LEVEL,
        *,
        samples: int = stats.BOOTSTRAP_SAMPLES,
        seed: int = stats.BOOTSTRAP_SEED,
    ) -> tuple[float, float]:
        """Bootstrap interval over prompts of the gap (the mean per-prompt difference)."""
        return stats.mean_interval(self.finetuned_metric - self.base_metric, level=level,
                                   samples=samples, seed=seed)

    @property
    def is_zero(self) -> bool:
        scale = max(1.0, float(self.base_metric.abs().mean()))
        return abs(self.gap) <= 1e-6 * scale and float(self.kl_mean.max()) <= 1e-8

    def summary(self) -> str:
        rose = ", ".join(f"{t!r} {d:+.3f}" for t, d in zip(self.rose_tokens, self.rose_delta.tolist(),
                                                          strict=True))
        fell = ", ".join(f"{t!r} {d:+.3f}" for t, d in zip(self.fell_tokens, self.fell_delta.tolist(),
                                                          strict=True))
        return f"{self.message}\n  rose: {rose}\n  fell: {fell}"


def behaviour_gap(
    pair: ModelPair, task: Task, *, top_k: int = 10, prompt_batch_size: int = 32
) -> GapResult:
    """Measure the behaviour gap of ``pair`` on ``task`` (one forward of each model per batch)."""
    tokens = task.tokenize(pair.tokenizer, n_ctx=pair.n_ctx, device=pair.device)
    metric = task.metric_name
    base_vals, ft_vals, kl_final, kl_mean = [], [], [], []
    dprob = torch.zeros(int(pair.cfg.d_vocab_out))
    with torch.inference_mode():
        for start in range(0, tokens.n, prompt_batch_size):
            sub = tokens.select(start, min(start + prompt_batch_size, tokens.n))
            lb = pair.base(sub.tokens, use_cache=False).float()
            lf = pair.finetuned(sub.tokens, use_cache=False).float()
            lpb, lpf = lb.log_softmax(-1), lf.log_softmax(-1)
            kl = kl_div(lpf, lpb)
            mask = sub.position_mask().float()
            kl_mean.append((kl * mask).sum(-1) / mask.sum(-1))
            idx = torch.arange(sub.n, device=lb.device)
            kl_final.append(kl[idx, sub.read_pos])
            read_b = lb if task.reads_all_positions else lb[idx, sub.read_pos]
            read_f = lf if task.reads_all_positions else lf[idx, sub.read_pos]
            ref = read_f.log_softmax(-1) if metric in ("kl", "kl_all") else None
            base_vals.append(metric_values(metric, read_b, sub, ref))
            ft_vals.append(metric_values(metric, read_f, sub, ref))
            final = idx, sub.read_pos
            dprob += (lpf[final].exp() - lpb[final].exp()).sum(0).cpu()
    base_metric, ft_metric = torch.cat(base_vals).cpu(), torch.cat(ft_vals).cpu()
    check_finite(base_metric, "the base model")
    check_finite(ft_metric, "the fine-tuned model")
    dprob /= tokens.n
    k = min(top_k, dprob.numel())
    rose, fell = dprob.topk(k), (-dprob).topk(k)
    decode = pair.tokenizer.convert_ids_to_tokens
    kl_f, kl_m = torch.cat(kl_final).cpu(), torch.cat(kl_mean).cpu()
    gap = float(ft_metric.mean() - base_metric.mean())
    if abs(gap) <= 1e-6 * max(1.0, float(base_metric.abs().mean())) and float(kl_m.max()) <= 1e-8:
        message = (f"zero gap: base and fine-tuned give identical outputs on {task.name!r} "
                   f"({tokens.n} prompts; KL(FT||base) = {float(kl_m.mean()):.2g}); nothing to "
                   "attribute")
    else:
        message = (f"{task.name!r}: {metric} base {float(base_metric.mean()):.4f} -> fine-tuned "
                   f"{float(ft_metric.mean()):.4f} (gap {gap:+.4f}); KL(FT||base) final "
                   f"{float(kl_f.mean()):.4f}, all positions {float(kl_m.mean()):.4f} "
                   f"({tokens.n} prompts)")
    prov = pair.provenance(task)
    return GapResult(
        base_metric=base_metric, finetuned_metric=ft_metric, kl_final=kl_f, kl_mean=kl_m,
        rose_tokens=tuple(decode(rose.indices.tolist())), rose_delta=rose.values,
        fell_tokens=tuple(decode(fell.indices.tolist())), fell_delta=-fell.values,
        message=message, provenance=prov,
    )
