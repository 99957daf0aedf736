"""Tasks: the prompts a behaviour is measured on, how they are scored, and how they become tokens.

* :mod:`mechdiff.tasks.task`: :class:`Task` (prompts, answers, metric) and :class:`Tokens` (padded
  ids, each prompt's own read position).
* :mod:`mechdiff.tasks.chat`: chat prompts rendered with the tokenizer's own template.
* :mod:`mechdiff.tasks.files`: prompt files (``.jsonl``, ``.json``, ``.txt``), parsed strictly;
  the schema is in its module docstring.
* :mod:`mechdiff.tasks.checks`: the checks ``Task(...)`` and prompt files share (what is refused,
  and why).
* :mod:`mechdiff.tasks.encoding`: the checks that need the tokenizer, made by ``Task.tokenize``.
"""

from mechdiff.tasks.chat import ROLES, ChatPrompt, Message, render_chat
from mechdiff.tasks.files import read_task
from mechdiff.tasks.task import METRICS, Answer, MetricName, Prompt, Task, Tokens

__all__ = [
    "METRICS",
    "ROLES",
    "Answer",
    "ChatPrompt",
    "Message",
    "MetricName",
    "Prompt",
    "Task",
    "Tokens",
    "read_task",
    "render_chat",
]
