"""The zoo cache: building, saving atomically, validating and reusing the model directories.

Layout of the cache (default ``$MECHDIFF_CACHE/zoo``, else ``~/.cache/mechdiff/zoo``)::

    <cache>/v<ZOO_VERSION>-<recipe hash>/
        zoo.json            recipe, seeds, scores against THRESHOLDS, build times
        base/               an ordinary HF directory: model + tokenizer + zoo_model.json
        reweight/
        reweight_seed1/
        newskill/

The recipe hash is part of the path, so a changed recipe builds a new zoo beside the old one.
Each model is trained, saved into a temporary sibling directory and then renamed into place
(atomic on one filesystem): a killed build leaves at most a ``.tmp-*`` directory, never a
half-written model under its final name. ``zoo_model.json`` in each model directory records the
SHA-256 of its weights, so a damaged directory is detected before anything is trained or loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, get_args

import torch
from tqdm.auto import tqdm
from transformers import GPT2LMHeadModel

from mechdiff.errors import CheckpointError, OptionError
from mechdiff.zoo import vocab
from mechdiff.zoo.evaluate import score
from mechdiff.zoo.recipes import (
    ARCH,
    BASE_SEED,
    FINETUNES,
    MODELS,
    PRETRAIN,
    THRESHOLDS,
    ZOO_VERSION,
    ModelName,
    recipe_hash,
)
from mechdiff.zoo.tasks import task
from mechdiff.zoo.train import init_model, train

logger = logging.getLogger(__name__)

MARKER = "zoo_model.json"
"""Written into every model directory: name, seeds, weight hash, scores."""
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER)
EVAL_N = 256
"""Prompts per task when a build scores its models."""
EVAL_SEED = 12345
"""Seed of the evaluation prompts a build scores on (never used for training data)."""


def default_cache_dir() -> Path:
    """``$MECHDIFF_CACHE/zoo`` if the variable is set, else ``~/.cache/mechdiff/zoo``."""
    env = os.environ.get("MECHDIFF_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "mechdiff"
    return root / "zoo"


def zoo_dir(cache_dir: str | Path | None = None) -> Path:
    """The directory of this recipe's zoo inside ``cache_dir`` (default :func:`default_cache_dir`)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"v{ZOO_VERSION}-{recipe_hash()}"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check(path: Path, name: str) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a complete, undamaged zoo model."""
    fix = f"delete {path} and call mechdiff.zoo.build() again to rebuild it"
    if not path.is_dir():
        raise CheckpointError(f"zoo model {name!r} at {path} is not a directory; {fix}")
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"zoo model {name!r} at {path} is missing {missing}; {fix}")
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
        json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"zoo model {name!r} at {path} has unreadable metadata ({e}); {fix}"
        ) from e
    if marker.get("name") != name or marker.get("recipe_hash") != recipe_hash():
        raise CheckpointError(
            f"{path} holds zoo model {marker.get('name')!r} of recipe {marker.get('recipe_hash')!r}, "
            f"expected {name!r} of recipe {recipe_hash()!r}; {fix}"
        )
    if _sha256(path / "model.safetensors") != marker.get("weights_sha256"):
        raise CheckpointError(
            f"zoo model {name!r} at {path}: weights do not match their hash; {fix}"
        )


def _report(msg: str, progress: bool) -> None:
    if progress:
        tqdm.write(msg)
    else:
        logger.info(msg)


def _scores(model: Any, name: str, progress: bool) -> dict[str, dict[str, float | bool]]:
    """Score ``model`` against every threshold that names it; report each line."""
    out: dict[str, dict[str, float | bool]] = {}
    cache: dict[str, Any] = {}
    for th in THRESHOLDS:
        if th.model != name:
            continue
        if th.task not in cache:
            cache[th.task] = score(model, task(th.task, n=EVAL_N, seed=EVAL_SEED))
        value = cache[th.task].get(th.measure)
        ok = th.passes(value)
        out[str(th)] = {"value": value, "passes": ok}
        _report(f"  {th}: {value:.3f} {'ok' if ok else 'BELOW THRESHOLD'}", progress)
        if not ok:
            logger.warning("zoo model %s misses its threshold %s (measured %.3f)", name, th, value)
    return out


def _load_hf(path: Path) -> GPT2LMHeadModel:
    with torch.random.fork_rng(devices=[]):
        model = GPT2LMHeadModel.from_pretrained(str(path))
    model.eval()
    return model


def _train_model(
    name: ModelName, root: Path, progress: bool
) -> tuple[GPT2LMHeadModel, dict[str, Any]]:
    """Train one zoo model (the base must already be built for a fine-tune)."""
    if name == "base":
        model = init_model(ARCH, BASE_SEED)
        schedule, seed, parent, info = PRETRAIN, BASE_SEED, None, {"mechanism": None}
    else:
        spec = FINETUNES[name]
        model = _load_hf(root / "base")
        schedule, seed, parent = spec.schedule, spec.seed, "base"
        info = {"mechanism": spec.mechanism, "task": spec.task, "description": spec.description}
    rng = random.Random(f"mechdiff.zoo/{name}/data/{seed}")
    start = time.perf_counter()
    losses = train(model, schedule, rng=rng, progress=progress, desc=f"zoo {name}")
    seconds = time.perf_counter() - start
    tail = sum(losses[-50:]) / len(losses[-50:])
    _report(
        f"zoo {name}: {schedule.steps} steps in {seconds:.0f} s, final loss {tail:.3f}", progress
    )
    meta = {
        "name": name,
        "recipe_hash": recipe_hash(),
        "zoo_version": ZOO_VERSION,
        "parent": parent,
        "seed": seed,
        "init_seed": BASE_SEED,
        "data_stream": f"mechdiff.zoo/{name}/data/{seed}",
        "schedule": asdict(schedule),
        "arch": asdict(ARCH),
        "final_loss": tail,
        "train_seconds": seconds,
        "torch": torch.__version__,
        **info,
    }
    return model, meta


def save_atomic(root: Path, name: str, write: Callable[[Path], dict[str, Any]]) -> Path:
    """Build ``root/name`` atomically: ``write(tmp)`` fills a temporary sibling directory and
    returns the marker, which is written as :data:`MARKER`; then ``tmp`` is renamed into place.

    A killed build leaves at most a ``.tmp-*`` directory, never a half-written model under its
    final name. Shared by the synthetic and the real zoo.
    """
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        marker = write(tmp)
        (tmp / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():  # not a concurrent build that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build_one(name: ModelName, root: Path, progress: bool) -> Path:
    model, meta = _train_model(name, root, progress)
    meta["scores"] = _scores(model, name, progress)

    def write(tmp: Path) -> dict[str, Any]:
        model.save_pretrained(str(tmp))
        vocab.tokenizer(ARCH.n_positions).save_pretrained(str(tmp))
        return meta | {"weights_sha256": _sha256(tmp / "model.safetensors")}

    return save_atomic(root, name, write)


def _write_index(root: Path) -> None:
    """Write ``zoo.json``: every built model's marker, plus the recipe (atomic replace)."""
    models = {}
    for name in MODELS:
        marker = root / name / MARKER
        if marker.is_file():
            models[name] = json.loads(marker.read_text(encoding="utf-8"))
    index = {
        "zoo_version": ZOO_VERSION,
        "recipe_hash": recipe_hash(),
        "arch": asdict(ARCH),
        "base_seed": BASE_SEED,
        "finetunes": {k: asdict(v) for k, v in FINETUNES.items()},
        "thresholds": [asdict(t) for t in THRESHOLDS],
        "eval": {"n": EVAL_N, "seed": EVAL_SEED},
        "models": models,
    }
    tmp = root / f".zoo.json.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(index, indent=2), encoding="utf-8")
    os.replace(tmp, root / "zoo.json")


def _ensure(
    names: list[ModelName], cache_dir: str | Path | None, progress: bool
) -> dict[str, Path]:
    root = zoo_dir(cache_dir)
    # Validate everything already there before any training starts.
    for name in MODELS:
        if (root / name).exists():
            _check(root / name, name)
    needed: list[ModelName] = []
    for name in names:
        if name != "base" and "base" not in needed:
            needed.append("base")
        if name not in needed:
            needed.append(name)
    todo = [n for n in needed if not (root / n).exists()]
    if todo:
        root.mkdir(parents=True, exist_ok=True)
        _report(f"building zoo models {todo} in {root}", progress)
        for name in todo:
            _check(_build_one(name, root, progress), name)
        _write_index(root)
    elif not (root / "zoo.json").is_file() and any((root / n).exists() for n in MODELS):
        _write_index(root)
    return {name: root / name for name in names}


def build(cache_dir: str | Path | None = None, *, progress: bool = True) -> dict[str, Path]:
    """Build every zoo model that is not cached yet, and return all their directories.

    Args:
        cache_dir: where the zoo lives; default ``$MECHDIFF_CACHE/zoo`` or
            ``~/.cache/mechdiff/zoo``. A subdirectory named after the recipe version is used.
        progress: show training progress, loss and scores (else they go to ``logging``).

    Returns:
        ``{"base": ..., "reweight": ..., "reweight_seed1": ..., "newskill": ...}``: ordinary HF
        directories (model + tokenizer) that ``from_pretrained`` and
        ``TransformerBridge.boot_transformers`` load offline.

    Raises:
        CheckpointError: a cached model directory is incomplete or damaged (checked before any
            training).
    """
    return _ensure(list(MODELS), cache_dir, progress)


def model_dir(
    name: ModelName, cache_dir: str | Path | None = None, *, progress: bool = True
) -> Path:
    """The directory of one zoo model, building it (and the base, for a fine-tune) if needed.

    Args:
        name: ``"base"``, ``"reweight"``, ``"reweight_seed1"`` or ``"newskill"``.
        cache_dir: as in :func:`build`.
        progress: as in :func:`build`.

    Raises:
        ValueError: ``name`` is not a zoo model.
        CheckpointError: a cached model directory is incomplete or damaged.
    """
    if name not in get_args(ModelName):
        raise OptionError(f"unknown zoo model {name!r}; choose one of {MODELS}")
    return _ensure([name], cache_dir, progress)[name]


def load(
    name: ModelName, cache_dir: str | Path | None = None, *, progress: bool = True
) -> GPT2LMHeadModel:
    """A zoo model as a HF ``GPT2LMHeadModel`` in eval mode (built if needed)."""
    return _load_hf(model_dir(name, cache_dir, progress=progress))
