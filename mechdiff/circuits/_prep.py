"""Checks every circuit analysis makes before any forward pass, and shared small helpers."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from transformer_lens.model_bridge import TransformerBridge

from mechdiff.circuits import _run
from mechdiff.circuits.ablation import ABLATIONS
from mechdiff.circuits.graph import (
    Graph,
    check_exact,
    check_hooks,
    graph_of,
    ln1_in_hook,
    logits_in_hook,
    mlp_in_hook,
    qkv_in_hook,
    resid_pre_hook,
)
from mechdiff.errors import AblationWarning, OptionError, PromptError, check_count
from mechdiff.loading import model_device
from mechdiff.loading.bridges import require_bridge
from mechdiff.metrics import metric_values
from mechdiff.tasks import Task, Tokens


def check_kind(name: str, value: Any, kind: type, what: str) -> None:
    """Raise OptionError unless ``value`` is a ``kind`` (``what`` says what is expected)."""
    if not isinstance(value, kind):
        raise OptionError(f"{name} must be {what}, got {type(value).__name__}")


def check_pair(pair: Any) -> None:
    from mechdiff.loading import ModelPair

    check_kind("pair", pair, ModelPair, "a ModelPair from mechdiff.load_pair(base, finetuned)")


def check_option(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise OptionError(f"{name} must be one of {allowed}, got {value!r}")


def check_positive(**values: int) -> None:
    for name, v in values.items():
        check_count(name, v, minimum=1)


def prepare(model: object, task: object, ablation: str) -> tuple[Graph, Tokens]:
    """The model's graph and the tokenized task, after every cheap check (``model`` and
    ``task`` are checked here, so they are typed ``object``: a wrong one gets mechdiff's
    explained error, not a type checker's).

    Raises:
        GraphError: the model has no exact edge graph (before any forward).
        OptionError: unknown ablation; a model that is not a bridge, a task that is not a Task.
        PromptError, AnswerTokenError: the prompts cannot be tokenized as asked, or
            ``ablation="corrupted"`` without corrupted prompts.
    """
    check_option("ablation", ablation, ABLATIONS)
    require_bridge(model)
    check_kind("task", task, Task, "a mechdiff.Task (prompts, answers, metric)")
    graph = graph_of(model)
    check_hooks(model, graph)
    check_ablation_prompts(task, ablation)
    tokens = task.tokenize(model.tokenizer, n_ctx=int(model.cfg.n_ctx), device=model_device(model))
    if ablation == "mean":
        warn_uncovered(task, tokens)
    return graph, tokens


def warn_uncovered(task: Task, tokens: Tokens) -> None:
    """Warn (:class:`~mechdiff.errors.AblationWarning`) about prompts whose read position no
    other prompt reaches: mean ablation averages each position over the prompts that have a
    token there (counted from their start), so there the mean is the prompt itself, and edges
    into its read position are not ablated."""
    lengths = tokens.lengths.tolist()
    alone = [i for i, n in enumerate(lengths) if sum(m >= n for m in lengths) < 2]
    if alone:
        shown = "; ".join(f"{task._loc('prompts', i)} ({lengths[i]} tokens)" for i in alone[:5])
        more = f" and {len(alone) - 5} more" if len(alone) > 5 else ""
        warnings.warn(
            f"mean ablation: {shown}{more}: read at a position no other prompt reaches (the "
            f"longest is {max(lengths)} tokens, the next {sorted(lengths)[-2]}): the mean there "
            "is the prompt itself, so edges into its read position are not ablated; give at "
            "least two prompts of each length you read at, or use ablation='corrupted'",
            AblationWarning, stacklevel=2)


def check_method_metric(method: str, task: Task) -> None:
    """Raise OptionError for EAP with a ``kl`` / ``kl_all`` metric (no model needed: the
    command line checks this before loading any): the KL of a run to its own clean logits is at
    its minimum there, so its gradient, and every EAP score, is 0."""
    if method == "eap" and task.metric_name in ("kl", "kl_all"):
        raise OptionError(
            f"method='eap' with metric {task.metric_name!r}: the KL of the model to its own clean "
            "run has zero gradient at the clean run, so every EAP score would be 0; use "
            "method='eap_ig' (--method eap_ig), which integrates the gradient from the ablated "
            "input, or a task with answers"
        )


def check_behaviour_metric(task: Task) -> None:
    """Raise OptionError for a comparison of circuits on a ``kl`` / ``kl_all`` task (no model
    needed: the command line checks this before loading any). Its verdict rests on the gap
    between the models' behaviour, and a KL metric compares each model with its own clean run:
    its gap is always 0, so the comparison could only end "undetermined"."""
    if task.metric_name in ("kl", "kl_all"):
        raise OptionError(
            f"comparing circuits needs a behaviour both models are scored on; metric "
            f"{task.metric_name!r} compares each model with itself (the gap between the models "
            "is always 0). Give answers and wrong answers (logit_diff) or answers (logprob) in "
            "the task or prompt file"
        )


def check_ablation_prompts(task: Task, ablation: str) -> None:
    """Raise PromptError if ``task`` cannot be ablated as asked (no model needed: the command
    line checks this before loading any)."""
    if ablation == "corrupted" and task.corrupted is None:
        raise PromptError(
            "ablation='corrupted' needs a task with corrupted prompts (Task(corrupted=...), one "
            "per prompt, of the same token length; in a prompt file, a \"corrupted\" entry on "
            "every row); use ablation='mean' (--ablation mean) otherwise"
        )
    if ablation == "corrupted" and all(c == p for c, p in zip(task.corrupted, task.prompts,
                                                              strict=True)):
        raise PromptError(
            f"ablation='corrupted': every corrupted prompt equals its clean prompt (all "
            f"{len(task)}), so nothing would be ablated (every edge scores 0 and faithfulness "
            "is 0/0); give corrupted prompts that differ where the behaviour is decided"
        )
    if ablation == "mean" and len(task) >= 2 and len(set(map(repr, task.prompts))) == 1:
        raise PromptError(
            f"ablation='mean': all {len(task)} prompts are the same, so their mean is each "
            "prompt and nothing would be ablated (every edge scores 0); give varied prompts or "
            "use ablation='corrupted'"
        )
    if ablation == "mean" and len(task) < 2:
        raise PromptError(
            f"ablation='mean' needs at least 2 prompts, got {len(task)}: the mean over one prompt "
            "is that prompt, so nothing would be ablated (every edge scores 0); add prompts or "
            "use ablation='corrupted' with a corrupted prompt"
        )


def batches(tokens: Tokens, size: int) -> Iterator[tuple[int, int, Tokens]]:
    for start in range(0, tokens.n, size):
        stop = min(start + size, tokens.n)
        yield start, stop, tokens.select(start, stop)


def check_records(graph: Graph) -> tuple[str, ...]:
    """Hooks recorded on a first batch to check the decomposition (:func:`checked`)."""
    names = [qkv_in_hook(0, "q"), ln1_in_hook(0), logits_in_hook(graph.n_layers)]
    for layer in range(graph.n_layers):
        names += [resid_pre_hook(layer), mlp_in_hook(layer)]
    return tuple(names)


def checked(model: TransformerBridge, graph: Graph, out: _run.Out, sub: Tokens) -> None:
    """Raise GraphError unless the run's reader inputs are sums of its writers (first batch; its
    first prompts: the check is of the model's structure, the same for every prompt)."""
    k = CHECKED_PROMPTS
    check_exact(model, graph, {n: a[:k] for n, a in out.acts.items()},
                [w[:k] for w in out.writers], sub.position_mask()[:k])


CHECKED_PROMPTS = 4


def metric(task: Task, read: Tensor, sub: Tokens, ref: Tensor | None) -> Tensor:
    """Per-prompt metric; ``ref`` are the reference log-probabilities of ``kl`` metrics.

    Metrics of a float64 model stay in float64 (``mechdiff.metrics`` uses float32 by default), so
    exact effects far below float32 resolution can be compared in tests.
    """
    return metric_values(task.metric_name, read, sub, ref, keep_float64=True)


def reference(task: Task, read: Tensor) -> Tensor | None:
    """Log-probabilities a ``kl`` metric compares with (None for task metrics)."""
    return read.detach().log_softmax(-1) if task.metric_name in ("kl", "kl_all") else None


def tile(sub: Tokens, copies: int) -> Tokens:
    from mechdiff._engine import tile_tokens

    return tile_tokens(sub, copies)


def tile_ref(ref: Tensor | None, copies: int) -> Tensor | None:
    if ref is None or copies == 1:
        return ref
    return ref.repeat(copies, *[1] * (ref.ndim - 1))


def cpu(x: Tensor) -> Tensor:
    """Detached, on the CPU, float32 (float64 stays float64)."""
    x = x.detach()
    return (x if x.dtype == torch.float64 else x.float()).cpu()


def result_dtype(model: TransformerBridge) -> torch.dtype:
    """float64 for a float64 model, else float32: the dtype of results and accumulators."""
    return torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32


def zeros_like_graph(graph: Graph, *lead: int, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.zeros(*lead, graph.n_readers, graph.n_writers, device=device, dtype=dtype)
