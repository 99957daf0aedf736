"""Result types: frozen dataclasses holding tensors, axis labels and provenance.

Every analysis returns one result type. Each can be saved to a folder (``tensors.safetensors`` +
``result.json``) and loaded back without loading any model, so figures can be rebuilt from disk.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_file, save_file

from mechdiff.errors import ResultError

_R = TypeVar("_R", bound="SavableResult")


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


class SavableResult:
    """Mixin for frozen dataclass results: tensors to safetensors, everything else to JSON."""

    kind_name: ClassVar[str] = "result"

    def save(self, path: str | Path) -> Path:
        """Write the result to folder ``path`` (created if missing). Returns the folder."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"__type__": type(self).__name__}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                tensors[f.name] = value.detach().cpu().contiguous()
            elif dataclasses.is_dataclass(value):
                meta[f.name] = dataclasses.asdict(value)
            else:
                meta[f.name] = value
        save_file(tensors, str(path / "tensors.safetensors"))
        (path / "result.json").write_text(json.dumps(meta, indent=2, default=_json_default))
        return path

    @classmethod
    def load(cls: type[_R], path: str | Path) -> _R:
        """Load a result saved with :meth:`save`."""
        path = Path(path)
        meta_file, tensor_file = path / "result.json", path / "tensors.safetensors"
        if not meta_file.is_file() or not tensor_file.is_file():
            raise ResultError(
                f"{path} is not a saved mechdiff result (expected result.json and "
                "tensors.safetensors in it)"
            )
        try:
            meta = json.loads(meta_file.read_text())
            tensors = load_file(str(tensor_file))
        except Exception as e:  # noqa: BLE001 - re-raised typed
            raise ResultError(f"cannot read the result in {path}: {e}") from e
        if meta.pop("__type__", None) != cls.__name__:
            raise ResultError(f"{path} holds a different result type, not {cls.__name__}")
        kwargs: dict[str, Any] = dict(tensors)
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in meta:
                value = meta[f.name]
                if f.name == "provenance" and value is not None:
                    value = Provenance(**value)
                elif isinstance(value, list):
                    value = _tuplify(value)
                kwargs[f.name] = value
        return cls(**kwargs)


def _tuplify(value: list[Any]) -> tuple[Any, ...]:
    return tuple(_tuplify(v) if isinstance(v, list) else v for v in value)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in result.json")
