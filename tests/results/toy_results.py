"""Small result types for the tests of mechdiff.results (no model needed), and file helpers.

``rehash`` recomputes a result's content hash from the format documented in
``mechdiff.results.codec`` (written here again, independently), so tests can change a value and
still get past the hash to the check behind it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from safetensors.torch import save as st_save
from torch import Tensor

from mechdiff.errors import ResultError
from mechdiff.results import Provenance, SavableResult


@dataclass(frozen=True)
class Scores(SavableResult, name="tests.Scores"):
    """One score per site, a metric per site and prompt, a label per site."""

    scores: Float[Tensor, " site"]
    per_prompt: Float[Tensor, "site batch"]
    labels: tuple[str, ...]
    meta: dict[str, float]
    note: str | None
    provenance: Provenance
    seed: int = 0

    def validate(self) -> None:
        if len(self.labels) != self.scores.shape[0]:
            raise ResultError(f"{len(self.labels)} labels for {self.scores.shape[0]} scores")


@dataclass(frozen=True)
class Pair(SavableResult, name="tests.Pair"):
    """A composite analysis: a gap-like result, patch-like results by direction, repeats."""

    gap: Scores
    patches: dict[str, Scores]
    runs: tuple[Scores, ...]
    label: str


@dataclass(frozen=True)
class Comparison(SavableResult, name="tests.Comparison"):
    """A comparison of two results, holding both."""

    a: Scores
    b: Scores
    rho: float


def provenance(**kw: object) -> Provenance:
    fields = dict(base="base-dir", finetuned="ft-dir", processing="compat", task="toy",
                  prompts_hash="abc123", n_prompts=3, metric="logit_diff", seed=7,
                  processing_skipped=("center_unembed", "fold_ln"),
                  versions={"mechdiff": "0.1.0", "torch": "2.13.0"},
                  created="2026-01-01T00:00:00+00:00", host="testhost")
    return Provenance(**(fields | kw))


def scores(seed: int = 0, n: int = 4, batch: int = 3, note: str | None = "toy") -> Scores:
    g = torch.Generator().manual_seed(seed)
    return Scores(
        scores=torch.randn(n, generator=g), per_prompt=torch.randn(n, batch, generator=g),
        labels=tuple(f"L{i}H{seed}" for i in range(n)), meta={"gap": 0.5 + seed, "kl": 0.25},
        note=note, provenance=provenance(seed=seed), seed=seed,
    )


def pair(seed: int = 0) -> Pair:
    return Pair(gap=scores(seed), patches={"ft->base": scores(seed + 1), "base_to_ft": scores(seed + 2)},
                runs=(scores(seed + 3), scores(seed + 4)), label=f"pair{seed}")


def same_scores(a: Scores, b: Scores) -> bool:
    return (torch.equal(a.scores, b.scores) and torch.equal(a.per_prompt, b.per_prompt)
            and (a.labels, a.meta, a.note, a.provenance, a.seed)
            == (b.labels, b.meta, b.note, b.provenance, b.seed))


def rehash(folder: Path) -> None:
    """Recompute the hashes in ``folder/result.json`` after an edit (independent of mechdiff)."""
    meta = json.loads((folder / "result.json").read_text())
    meta.pop("hash", None)
    tensors = hashlib.sha256((folder / "tensors.safetensors").read_bytes()).hexdigest()
    canon = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    content = hashlib.sha256(b"mechdiff-result-1\n" + tensors.encode() + b"\n" + canon).hexdigest()
    meta["hash"] = {"algorithm": "sha256", "tensors": tensors, "content": content}
    (folder / "result.json").write_text(json.dumps(meta, indent=1))


def edit(folder: Path, *, fields: dict | None = None, drop: tuple[str, ...] = (),
         tensors: dict[str, Tensor] | None = None, hashed: bool = True) -> None:
    """Change a saved result in place: set/drop JSON fields, replace tensors; rehash if asked."""
    meta = json.loads((folder / "result.json").read_text())
    meta["fields"].update(fields or {})
    for name in drop:
        meta["fields"].pop(name, None)
    if tensors is not None:
        (folder / "tensors.safetensors").write_bytes(st_save(tensors))
        meta["tensors"] = {k: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
                           for k, t in tensors.items()}
    (folder / "result.json").write_text(json.dumps(meta, indent=1))
    if hashed:
        rehash(folder)


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``, files with their SHA-256: equal iff byte-identical."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def temporaries(parent: Path) -> list[str]:
    """Temporaries of interrupted writers in ``parent`` (the lock file does not count)."""
    return sorted(p.name for p in parent.iterdir()
                  if ".mechdiff-" in p.name and not p.name.endswith(".mechdiff-lock"))
