"""mechdiff.zoo: a small, offline, deterministic model zoo with known fine-tuning mechanisms.

No model hub is reachable where mechdiff runs, so the zoo trains its own models on CPU in a few
minutes: a GPT-2-style base model (``transformers.GPT2LMHeadModel``, word-level vocabulary of
readable tokens) pretrained on procedurally generated data, and fine-tunes of it whose mechanism
is known by design. That turns "did fine-tuning build a new mechanism or re-weight one the base
already had?" into an experiment with ground truth.

Pretraining mixes three skills (see :mod:`mechdiff.zoo.synthetic.data`):

* **induction**: ``x1 .. xL | x1 .. xL``, predict the repeat (induction heads).
* **key-value recall**: ``a 3 , f 7 , k 1 ; f`` -> ``7`` (induction among distractors).
* **ambiguous**: ``x1 x2 x3 x4 ->`` continued as a copy (70%) or reversed (30%), so the base
  already produces both continuations: at the first answer position it puts about 0.7 on ``x1``
  and 0.3 on ``x4``.

Fine-tunes (full-parameter, from the base, with pretraining data mixed in against forgetting):

* ``reweight``: trained only on the reversed continuation. Known mechanism: **re-weights an
  existing behaviour**; the reversal is already in the base, fine-tuning makes it dominant.
* ``reweight_seed1``: the same recipe with another data seed (path dependence, mode connectivity).
* ``newskill``: ``x1 .. xL ?`` -> the alphabet successor of ``xL``. The marker ``?`` never occurs in
  pretraining and nothing there orders the letters. Known mechanism: **a new skill**; the base is at
  chance.

Every model is an ordinary HF directory (model + tokenizer), cached under
``$MECHDIFF_CACHE/zoo`` (or ``~/.cache/mechdiff/zoo``) in a folder keyed by the recipe, with a
``zoo.json`` recording seeds and scores. Typical use::

    from mechdiff import zoo
    dirs = zoo.build()                      # trains what is missing (minutes, once)
    t = zoo.task("ambiguous", n=64)         # answers: reversal; wrong answers: copy
    # TransformerBridge.boot_transformers(str(dirs["reweight"]), device="cpu") ...

The library never touches global RNG state: data come from seeded ``random.Random`` objects and
model initialisation runs inside ``torch.random.fork_rng``.
"""

from mechdiff.zoo.synthetic.cache import build, default_cache_dir, load, model_dir, zoo_dir
from mechdiff.zoo.synthetic.evaluate import Measure, Scores, accuracy, score
from mechdiff.zoo.synthetic.recipes import (
    FINETUNES,
    MODELS,
    THRESHOLDS,
    FineTuneSpec,
    ModelName,
    Threshold,
)
from mechdiff.zoo.synthetic.tasks import TASKS, TaskName, task
from mechdiff.zoo.synthetic.vocab import tokenizer

MECHANISMS: dict[str, str] = {
    "reweight": "re-weights an existing behaviour",
    "new_skill": "builds a new skill",
}
"""Statements of the known mechanisms of the zoos' fine-tunes (``FineTuneSpec.mechanism`` and
``real.Experiment.mechanism``)."""

__all__ = [
    "FINETUNES",
    "MECHANISMS",
    "MODELS",
    "TASKS",
    "THRESHOLDS",
    "FineTuneSpec",
    "Measure",
    "ModelName",
    "Scores",
    "TaskName",
    "Threshold",
    "accuracy",
    "build",
    "default_cache_dir",
    "load",
    "model_dir",
    "score",
    "task",
    "tokenizer",
    "zoo_dir",
]
