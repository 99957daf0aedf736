"""Prompt files: reading a :class:`~mechdiff.tasks.Task` from ``.jsonl``, ``.json`` or text.

``.jsonl``: one object per line with ``prompt`` and optional ``answer``, ``wrong_answer``,
``corrupted``. ``.json``: an object with ``prompts`` and optional ``answers``, ``wrong_answers``,
``corrupted``, ``metric``, ``name``. Any other suffix: one prompt per non-empty line (task-free).
In JSON files a prompt may be a chat: a list of ``{"role", "content"}`` messages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mechdiff.errors import PromptError
from mechdiff.tasks.task import Task


def read_task(path: str | Path, **kwargs: Any) -> Task:
    """Read a task from a prompt file; ``kwargs`` override what the file says (``metric``...)."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            data: dict[str, Any] = {"prompts": [r["prompt"] for r in rows]}
            for key in ("answer", "wrong_answer", "corrupted"):
                if rows and key in rows[0]:
                    out = "corrupted" if key == "corrupted" else key + "s"
                    data[out] = [r[key] for r in rows]
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = {"prompts": [line for line in text.splitlines() if line.strip()]}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise PromptError(f"cannot read prompts from {path}: {e}") from e
    data.setdefault("name", path.stem)
    data.update(kwargs)
    return Task(**data)
