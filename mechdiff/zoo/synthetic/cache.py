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

import logging
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, get_args

import torch
from transformers import GPT2LMHeadModel

from mechdiff.errors import OptionError
from mechdiff.zoo import store
from mechdiff.zoo.store import MARKER
from mechdiff.zoo.synthetic import vocab
from mechdiff.zoo.synthetic.evaluate import score
from mechdiff.zoo.synthetic.recipes import (
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
from mechdiff.zoo.synthetic.tasks import task
from mechdiff.zoo.synthetic.train import init_model, train

logger = logging.getLogger(__name__)

REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER)
EVAL_N = 256
"""Prompts per task when a build scores its models."""
EVAL_SEED = 12345
"""Seed of the evaluation prompts a build scores on (never used for training data)."""


def default_cache_dir() -> Path:
    """``$MECHDIFF_CACHE/zoo`` if the variable is set, else ``~/.cache/mechdiff/zoo``."""
    return store.default_root() / "zoo"


def zoo_dir(cache_dir: str | Path | None = None) -> Path:
    """The directory of this recipe's zoo inside ``cache_dir`` (default :func:`default_cache_dir`)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"v{ZOO_VERSION}-{recipe_hash()}"


def _check(path: Path, name: str) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a complete, undamaged zoo model."""
    store.check_model(path, name, required=REQUIRED, hashed={"model.safetensors": "weights_sha256"},
                      recipe=recipe_hash(), what="zoo",
                      fix=f"delete {path} and call mechdiff.zoo.build() again to rebuild it")


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
        store.say(f"  {th}: {value:.3f} {'ok' if ok else 'BELOW THRESHOLD'}", progress)
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
    store.say(
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


def _build_one(name: ModelName, root: Path, progress: bool) -> Path:
    model, meta = _train_model(name, root, progress)
    meta["scores"] = _scores(model, name, progress)

    def write(tmp: Path) -> dict[str, Any]:
        model.save_pretrained(str(tmp))
        vocab.tokenizer(ARCH.n_positions).save_pretrained(str(tmp))
        return meta | {"weights_sha256": store.file_sha256(tmp / "model.safetensors")}

    return store.save_atomic(root, name, write)


def _write_index(root: Path) -> None:
    """Write ``zoo.json``: every built model's marker, plus the recipe (atomic replace)."""
    store.write_index(root, "zoo.json", {
        "zoo_version": ZOO_VERSION,
        "recipe_hash": recipe_hash(),
        "arch": asdict(ARCH),
        "base_seed": BASE_SEED,
        "finetunes": {k: asdict(v) for k, v in FINETUNES.items()},
        "thresholds": [asdict(t) for t in THRESHOLDS],
        "eval": {"n": EVAL_N, "seed": EVAL_SEED},
    }, MODELS)


def _ensure(
    names: list[ModelName], cache_dir: str | Path | None, progress: bool
) -> dict[str, Path]:
    root = zoo_dir(cache_dir)
    out = store.ensure(
        root, names, all_models=MODELS, needs=lambda n: [] if n == "base" else ["base"],
        check=_check, build=lambda n, r: _build_one(n, r, progress), index=_write_index,
        what="zoo", progress=progress,
    )
    if not (root / "zoo.json").is_file() and any((root / n).exists() for n in MODELS):
        _write_index(root)
    return out


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
