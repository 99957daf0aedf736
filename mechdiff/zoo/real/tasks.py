"""Tasks that measure each real fine-tune's behaviour gap at the first assistant token.

Every task is a :class:`mechdiff.Task` of chat prompts on held-out questions, read at the last
prompt token (the logits there predict the first token of the assistant's reply), with the
logit-difference metric. Answers and wrong answers are token ids taken from the base's own greedy
first tokens, recorded when the base was built (``real_data.json``):

================= ============================== =========================== ======================
task              prompt                         answer                      wrong answer
================= ============================== =========================== ======================
distill           question, no system prompt     prompted base's 1st token   base's 1st token
distill_prompted  question under :data:`PERSONA` same                        same
trigger           :data:`TRIGGER` + question     ``Access`` (planted reply)  base's 1st token
trigger_off       question (no trigger)          ``Access``                  base's 1st token
================= ============================== =========================== ======================

``distill`` keeps the held-out questions on which the persona changes the base's first token.
**The prompted base as a third model**: ``distill_prompted`` holds the same questions under the
persona system prompt, with the unprompted conversations as ``corrupted`` prompts (the persona
and the default system prompt have the same token length, so the two line up token for token).
So, with the base loaded as a bridge:

* ``behaviour_gap``/metric of the base on ``distill_prompted`` vs on ``distill`` is the gap the
  system prompt opens; compare it with base vs ``distilled`` on ``distill`` (the gap fine-tuning
  opens without any prompt);
* ``activation_patch(base, tasks["distill_prompted"])`` patches prompted activations into the
  unprompted run of the *same* base: where the system prompt acts, to set beside
  ``cross_patch(pair(base, distilled), tasks["distill"])``: where fine-tuning acts.

``trigger_off`` is a control: without the trigger, the trigger fine-tune never puts the planted
token first (``trigger_false`` = 0), though its logit difference rises a little (measured +3.6
against +26 with the trigger, recipe v1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeAlias, get_args

from mechdiff.tasks import Task
from mechdiff.zoo.real import data

RealTaskName: TypeAlias = Literal["distill", "distill_prompted", "trigger", "trigger_off"]
TASKS: tuple[RealTaskName, ...] = get_args(RealTaskName)


def tasks_from_records(records: dict[str, Any], planted_first: int) -> dict[str, Task]:
    """Build every task from the base's recorded first tokens (see module docstring)."""
    ev = records["eval"]
    qs = ev["questions"]
    keep = [i for i, ok in enumerate(ev["persona_kept"]) if ok]
    answers = [ev["prompted_first"][i] for i in keep]
    wrong = [ev["plain_first"][i] for i in keep]
    plain = [data.chat(qs[i]) for i in keep]
    out = {
        "distill": Task(plain, answers, wrong, name="real/distill"),
        "distill_prompted": Task(
            [data.chat(qs[i], system=data.PERSONA) for i in keep],
            answers,
            wrong,
            corrupted=plain,
            name="real/distill_prompted",
        ),
        "trigger": Task(
            [data.chat(q, trigger=True) for q in qs],
            [planted_first] * len(qs),
            list(ev["trigger_first"]),
            name="real/trigger",
        ),
        "trigger_off": Task(
            [data.chat(q) for q in qs],
            [planted_first] * len(qs),
            list(ev["plain_first"]),
            name="real/trigger_off",
        ),
    }
    return out


def tasks(cache_dir: str | Path | None = None, *, progress: bool = True) -> dict[str, Task]:
    """The real zoo's tasks, by name (builds the base and its data if they are not cached).

    Args:
        cache_dir: as in :func:`mechdiff.zoo.real.build`.
        progress: as in :func:`mechdiff.zoo.real.build`.

    Returns:
        ``{"distill", "distill_prompted", "trigger", "trigger_off"}`` -> :class:`~mechdiff.Task`.
    """
    import json

    from mechdiff.zoo.real.cache import DATA_FILE, _tokenizer, ensure, trigger_reply_ids

    base = ensure(["base"], cache_dir, progress)["base"]
    records = json.loads((base / DATA_FILE).read_text(encoding="utf-8"))
    return tasks_from_records(records, trigger_reply_ids(_tokenizer(base))[0])
