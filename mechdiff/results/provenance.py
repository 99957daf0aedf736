"""Provenance: where a result came from (models, task, processing, seed, versions).

Stored inside every result's ``result.json`` and loaded back equal to what was saved (tuples stay
tuples, nested dictionaries stay dictionaries): loading decodes each field by its annotation.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("mechdiff", "transformer-lens", "torch", "transformers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


@dataclass(frozen=True)
class Provenance:
    """Where a result came from.

    Attributes:
        base: identifier of the base (or, for single-model analyses, the only) model.
        finetuned: identifier of the fine-tuned model (None for single-model analyses).
        processing: how weights were processed before the analysis (same for both models):
            ``"compat"`` (TransformerLens HookedTransformer-equivalent: folded LayerNorm, centred
            writing weights and unembedding, folded value biases) or ``"none"`` (raw HF weights).
        processing_skipped: steps of ``"compat"`` processing that were not applied because they
            would have changed what the model computes (e.g. ``"center_unembed"`` on a square
            unembedding); empty when processing was applied whole.
        task: the task's name.
        prompts_hash: fingerprint of prompts, answers and metric (:meth:`Task.fingerprint`).
        n_prompts: number of prompts.
        metric: the metric name.
        seed: the seed used, if the analysis is random.
        versions: package versions.
        created: ISO timestamp (UTC).
    """

    base: str
    finetuned: str | None
    processing: str
    task: str
    prompts_hash: str
    n_prompts: int
    metric: str
    seed: int | None = None
    processing_skipped: tuple[str, ...] = ()
    versions: dict[str, str] = dataclasses.field(default_factory=_versions)
    created: str = dataclasses.field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds")
    )
    host: str = dataclasses.field(default_factory=platform.node)

    @classmethod
    def of(
        cls,
        task: Any,
        *,
        base: str,
        finetuned: str | None,
        processing: str,
        seed: int | None = None,
        processing_skipped: tuple[str, ...] = (),
    ) -> Provenance:
        """The provenance of an analysis of ``task`` (a :class:`~mechdiff.tasks.Task`).

        The one place results get their provenance: :meth:`mechdiff.loading.ModelPair.provenance`
        and :func:`mechdiff.loading.model_provenance` call it with the models' identities.
        """
        return cls(
            base=base, finetuned=finetuned, processing=processing, task=task.name,
            prompts_hash=task.fingerprint(), n_prompts=len(task), metric=task.metric_name,
            seed=seed, processing_skipped=tuple(processing_skipped),
        )
