"""Prompt files: reading a :class:`~mechdiff.tasks.Task` from ``.jsonl``, ``.json`` or ``.txt``.

Prompt files are parsed strictly, row by row: anything the reader does not understand is refused
with a one-line error naming the file, the line and the key, saying what was wrong and what to do.
Nothing is guessed, dropped or filled in.

**Every file.** UTF-8 text (a leading byte-order mark is ignored; UTF-16 and undecodable bytes are
refused, naming the line). The suffix decides the format, in any case (``.JSONL`` is JSON Lines);
other suffixes are refused. Lines end in ``\\n`` or ``\\r\\n`` and are numbered from 1, blank lines
included. A file with no prompts is refused.

**.jsonl** (JSON Lines): one JSON object per line, one row per prompt. Blank lines (nothing, or
spaces and tabs only) are allowed and skipped, but counted for line numbers. Keys of a row::

    prompt        required  the prompt (see "Prompts" below)
    answer        optional  the correct next token: a string (" Paris") or a token id (integer)
    wrong_answer  optional  a contrasting next token (string or id); needs "answer"
    corrupted     optional  a corrupted prompt of the same kind as "prompt" (classic patching)

Every row has the same keys as the first (one schema per file), so a row cannot silently change
the metric. Unknown keys are refused with a suggestion (``wrong-answer``: did you mean
wrong_answer?), as are duplicate keys. ``null`` is never a value: leave the key out of every row.
The metric follows from the keys (``logit_diff`` with wrong answers, ``logprob`` with answers only,
``kl`` without answers) unless overridden; the task is named after the file's stem.
Example row: ``{"prompt": "The capital of France is", "answer": " Paris", "wrong_answer": " Rome"}``.

**.json**: one JSON object (not a list: for one object per row, use ``.jsonl``) with keys::

    prompts        required  a non-empty list of prompts
    answers        optional  a list of answers, one per prompt (strings or token ids)
    wrong_answers  optional  a list of wrong answers, one per prompt; needs "answers"
    corrupted      optional  a list of corrupted prompts, one per prompt, each of its prompt's kind
    metric         optional  "logit_diff", "logprob", "kl" or "kl_all" (default from the keys)
    name           optional  a non-blank string (default: the file's stem)
    prepend_bos    optional  true or false (default true): prepend BOS to string prompts

Unknown and duplicate keys are refused as in ``.jsonl``, and so is ``null`` as a value (leave the
key out); every list must have one entry per prompt.

**.txt**: one prompt per line, taken verbatim (leading and trailing spaces kept, only the line
ending removed); lines holding only whitespace are skipped. A text file has no answers: its metric
is ``kl`` unless overridden (``kl_all`` reads every position of each text).

**Prompts** (in ``.jsonl`` and ``.json``) are one of: a string with at least one non-whitespace
character; a non-empty list of token ids (integers from 0, used as given: no BOS is added); a chat,
a non-empty list of objects with exactly the keys ``role`` (``system``, ``user`` or
``assistant``) and ``content`` (a string, possibly empty), see :mod:`mechdiff.tasks.chat`.
**Answers** are a non-empty string that the tokenizer makes exactly one token (whitespace such as
``"\\n"`` is allowed: it is a token in most vocabularies), or a token id (integer from 0).
Refused: ``true``/``false`` (they would be read as token ids 1 and 0), numbers written with a
decimal point (``3.0`` too), negative ids and ids from 2**63 up, a list of strings as a prompt, a
single message object where a chat (a list) belongs, an answer equal to its wrong answer, a
corrupted prompt of another kind than its prompt. What needs the tokenizer is checked by :meth:`Task.tokenize <mechdiff.tasks.Task.tokenize>`,
whose errors still name the file and line: an answer string must be exactly one token and not one
the tokenizer maps to its unknown token; prompts must not hold words mapped to the unknown token
(the unknown token written as itself is allowed), nor tokenize to nothing; token ids must lie in
the vocabulary (``0 .. len(tokenizer) - 1``); an answer and its wrong answer must be different
tokens (``"t1"`` and ``1`` may be the same); prompts must fit the model's context (never
truncated); a corrupted prompt must have its clean prompt's token length.

**Errors.** :class:`~mechdiff.errors.PromptError` for the file and its prompts,
:class:`~mechdiff.errors.AnswerTokenError` for answers, :class:`~mechdiff.errors.MetricError` for
the metric, :class:`~mechdiff.errors.OptionError` for bad arguments of :func:`read_task` itself.
"""

from __future__ import annotations

import bisect
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mechdiff.errors import AnswerTokenError, MetricError, OptionError, PromptError
from mechdiff.tasks import checks
from mechdiff.tasks.checks import Loc
from mechdiff.tasks.task import METRICS, Task, check_metric

ROW_KEYS: tuple[str, ...] = ("prompt", "answer", "wrong_answer", "corrupted")
"""Keys of a ``.jsonl`` row."""

JSON_KEYS: tuple[str, ...] = (
    "prompts", "answers", "wrong_answers", "corrupted", "metric", "name", "prepend_bos"
)
"""Keys of a ``.json`` object."""

OVERRIDES: tuple[str, ...] = ("metric", "name", "prepend_bos")
"""What :func:`read_task` may override."""

SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".txt")

ROW_EXAMPLE = '{"prompt": "The capital of France is", "answer": " Paris", "wrong_answer": " Rome"}'
JSON_EXAMPLE = '{"prompts": [...], "answers": [...], "wrong_answers": [...]}'

# A .jsonl row key -> the Task field it fills.
_FIELD = {"prompt": "prompts", "answer": "answers", "wrong_answer": "wrong_answers",
          "corrupted": "corrupted"}


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _loads(s: str) -> Any:
    return json.loads(s, object_pairs_hook=_no_duplicates)


def read_task(path: str | os.PathLike[str], **overrides: Any) -> Task:
    """Read a task from a prompt file (schema in the module docstring).

    Args:
        path: a ``.jsonl``, ``.json`` or ``.txt`` file (suffix in any case).
        **overrides: ``metric``, ``name`` or ``prepend_bos``, replacing what the file says
            (``None`` keeps the file's value).

    Returns:
        The task; errors found later by :meth:`Task.tokenize` still name the file and line.

    Raises:
        PromptError: the file is missing, unreadable, not UTF-8, malformed, of an unknown suffix,
            holds no prompts, or breaks the schema (naming the line and key).
        AnswerTokenError: an answer is a boolean, negative, empty, equal to its wrong answer, or
            wrong answers come without answers.
        MetricError: the metric is unknown, or cannot be scored on what the file holds.
        OptionError: ``path`` is not a path, or an override is unknown or of the wrong type.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise OptionError(f"path must be a file path (str or Path), got {type(path).__name__}")
    path = Path(path)
    for key in overrides:
        if key not in OVERRIDES:
            raise OptionError(
                f"read_task cannot override {key!r}{checks.suggest(key, OVERRIDES)}; it overrides "
                f"{', '.join(OVERRIDES)} (build a Task yourself to change prompts or answers)"
            )
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "metric" in overrides:
        overrides["metric"] = check_metric(overrides["metric"], f"{path}: ")
    if "name" in overrides:
        checks.name(overrides["name"])
    if "prepend_bos" in overrides:
        checks.flag(overrides["prepend_bos"], "prepend_bos")
    if path.is_dir():
        raise PromptError(f"{path} is a folder, not a prompt file: give a .jsonl, .json or .txt "
                          "file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        shown = repr(path.suffix) if path.suffix else "no suffix"
        raise PromptError(
            f"{path}: prompt files end in .jsonl, .json or .txt (any case), this has {shown}; "
            "rename it if it is one of those, or convert it"
        )
    text = _read_text(path)
    if not text.strip():
        what = "nothing" if not text else "only whitespace"
        hint = {".jsonl": f"one JSON object per line, such as {ROW_EXAMPLE}",
                ".json": f"one object such as {JSON_EXAMPLE}", ".txt": "one prompt per line"}
        raise PromptError(
            f"{path}: the prompt list is empty (the file holds {what}); write {hint[suffix]}"
        )
    reader: Callable[[Path, str], tuple[dict[str, Any], dict[str, tuple[Loc, ...]]]] = {
        ".jsonl": _read_jsonl, ".json": _read_json, ".txt": _read_txt
    }[suffix]
    data, locs = reader(path, text)
    data.setdefault("name", _default_name(path))
    data.update(overrides)
    try:
        task = Task(**data)
    except MetricError as e:
        raise MetricError(f"{path}: {e}") from None
    object.__setattr__(task, "_locs", locs)
    return task


def _default_name(path: Path) -> str:
    """The file's stem, or ``"task"`` where the stem is not a usable name."""
    try:
        return checks.name(path.stem)
    except OptionError:
        return "task"


def _read_text(path: Path) -> str:
    """The file's text, decoded strictly as UTF-8 (a leading BOM dropped)."""
    if not path.exists():
        raise PromptError(f"prompt file {path} does not exist; check the path")
    if path.is_dir():
        raise PromptError(f"{path} is a folder; give a prompt file (.jsonl, .json or .txt)")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PromptError(f"{path}: cannot read the file ({e.strerror or e}); check it") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PromptError(
            f"{path}: the file is UTF-16 text (it starts with a UTF-16 byte-order mark); "
            "save it as UTF-8"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise PromptError(
            f"{path}:{line}: byte 0x{raw[e.start]:02x} at column {col} is not UTF-8 "
            f"({e.reason}); prompt files are UTF-8 text: re-save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def _lines(text: str) -> list[str]:
    """Lines split on ``\\n`` only (JSON strings may hold U+2028), ``\\r\\n`` endings removed."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _unknown_key(key: str, known: tuple[str, ...], where: str, what: str) -> PromptError:
    hint = checks.suggest(key, known)
    if not hint and key in OVERRIDES:
        hint = (" (the metric, name and prepend_bos are set per file: in a .json file, or with "
                "the command line's --metric)")
    return PromptError(f"{where}unknown key {key!r}{hint}; {what} {', '.join(known)}")


def _read_jsonl(path: Path, text: str) -> tuple[dict[str, Any], dict[str, tuple[Loc, ...]]]:
    fields: dict[str, list[Any]] = {}
    locs: dict[str, list[Loc]] = {}
    schema: tuple[int, list[str]] | None = None  # (first line, its keys)
    for n, line in enumerate(_lines(text), 1):
        if not line.strip(" \t\r"):
            continue
        where = f"{path}:{n}: "
        try:
            row = _loads(line)
        except json.JSONDecodeError as e:
            raise PromptError(
                f"{where}cannot read this line as JSON: {e.msg} (column {e.colno}); each "
                f"non-blank line of a .jsonl file is one object such as {ROW_EXAMPLE}"
            ) from None
        except _DuplicateKey as e:
            raise PromptError(f"{where}the key {e.key!r} appears twice; give each key once") from None
        except RecursionError:
            raise PromptError(f"{where}the JSON is nested too deeply to read") from None
        except ValueError as e:  # e.g. an integer past Python's digit limit
            raise PromptError(f"{where}cannot read this line as JSON: {_first_line(e)}") from None
        if not isinstance(row, dict):
            raise PromptError(
                f"{where}the line is {checks.type_words(row, True)}, not an object; each "
                f"non-blank line of a .jsonl file is one object such as {ROW_EXAMPLE}"
            )
        for key in row:
            if key not in ROW_KEYS:
                raise _unknown_key(key, ROW_KEYS, where, "a row's keys are")
        if "prompt" not in row:
            raise PromptError(f"{where}the row has no 'prompt'; every row needs one")
        keys = [k for k in ROW_KEYS if k in row]
        if schema is None:
            schema = (n, keys)
            if "wrong_answer" in row and "answer" not in row:
                raise AnswerTokenError(
                    f"{where}the row has 'wrong_answer' but no 'answer'; give both (a logit "
                    "difference) or only 'answer' (a log-probability)"
                )
        elif keys != schema[1]:
            missing = [k for k in schema[1] if k not in keys]
            extra = [k for k in keys if k not in schema[1]]
            diff = "; ".join(
                s for s in (f"it lacks {', '.join(map(repr, missing))}" if missing else "",
                            f"it adds {', '.join(map(repr, extra))}" if extra else "") if s
            )
            raise PromptError(
                f"{where}the row's keys differ from line {schema[0]}'s ({diff}); every row of a "
                f".jsonl file has the same keys (one schema per file): fix the row or the file"
            )
        values = {}
        for key in keys:
            loc = Loc(where, repr(key), json=True)
            freeze = checks.prompt if key in ("prompt", "corrupted") else checks.answer
            values[key] = freeze(row[key], loc)
            fields.setdefault(_FIELD[key], []).append(values[key])
            locs.setdefault(_FIELD[key], []).append(loc)
        if "wrong_answer" in values:
            checks.answer_pair(values["answer"], values["wrong_answer"], where, "'answer'",
                               "'wrong_answer'")
        if "corrupted" in values:
            checks.same_kind(values["prompt"], values["corrupted"], Loc(where, "'corrupted'"))
    if schema is None:
        raise PromptError(
            f"{path}: the prompt list is empty (the file holds only blank lines); write one "
            f"JSON object per line, such as {ROW_EXAMPLE}"
        )
    return dict(fields), {k: tuple(v) for k, v in locs.items()}


_WS = re.compile(r"[ \t\n\r]*")


def _json_lines(text: str) -> dict[str, tuple[int, list[int]]]:
    """For a valid JSON object: each key's line, and the line of each entry of a list value."""
    newlines = [i for i, c in enumerate(text) if c == "\n"]

    def line(i: int) -> int:
        return bisect.bisect_right(newlines, i - 1) + 1

    dec = json.JSONDecoder()

    def ws(i: int) -> int:
        return _WS.match(text, i).end()

    out: dict[str, tuple[int, list[int]]] = {}
    i = ws(0) + 1  # past "{"
    while True:
        i = ws(i)
        if text[i] == "}":
            return out
        if text[i] == ",":
            i = ws(i + 1)
        key, i = dec.raw_decode(text, i)
        at = line(i)
        i = ws(ws(i) + 1)  # past ":"
        entries: list[int] = []
        if text[i] == "[":
            i = ws(i + 1)
            while text[i] != "]":
                entries.append(line(i))
                _, i = dec.raw_decode(text, i)
                i = ws(i)
                if text[i] == ",":
                    i = ws(i + 1)
            i += 1
        else:
            _, i = dec.raw_decode(text, i)
        out[key] = (at, entries)


def _duplicate_line(text: str, key: str) -> int:
    """The line of the second ``"key":`` in ``text`` (best effort; 1 if not found)."""
    for written in (json.dumps(key, ensure_ascii=False), json.dumps(key)):
        hits = [m.start() for m in re.finditer(re.escape(written) + r"\s*:", text)]
        if len(hits) > 1:
            return text.count("\n", 0, hits[1]) + 1
    return 1


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _read_json(path: Path, text: str) -> tuple[dict[str, Any], dict[str, tuple[Loc, ...]]]:
    try:
        obj = _loads(text)
    except json.JSONDecodeError as e:
        raise PromptError(
            f"{path}:{e.lineno}: cannot read the file as JSON: {e.msg} (column {e.colno}); a "
            f".json prompt file is one object such as {JSON_EXAMPLE}"
        ) from None
    except _DuplicateKey as e:
        raise PromptError(
            f"{path}:{_duplicate_line(text, e.key)}: the key {e.key!r} appears twice in one "
            "object; give each key once"
        ) from None
    except RecursionError:
        raise PromptError(f"{path}: the JSON is nested too deeply to read") from None
    except ValueError as e:  # e.g. an integer past Python's digit limit
        raise PromptError(f"{path}: cannot read the file as JSON: {_first_line(e)}") from None
    if isinstance(obj, list):
        raise PromptError(
            f"{path}: the top level is a list; a .json prompt file is one object such as "
            f"{JSON_EXAMPLE} (for one object per row, name the file .jsonl)"
        )
    if not isinstance(obj, dict):
        raise PromptError(
            f"{path}: the top level is {checks.type_words(obj, True)}; a .json prompt file is one "
            f"object such as {JSON_EXAMPLE}"
        )
    lines = _json_lines(text)
    for key in obj:
        if key not in JSON_KEYS:
            raise _unknown_key(key, JSON_KEYS, f"{path}:{lines[key][0]}: ", "the keys are")
    if "prompts" not in obj:
        raise PromptError(f"{path}: the object has no 'prompts'; give {JSON_EXAMPLE}")
    data: dict[str, Any] = {}
    locs: dict[str, tuple[Loc, ...]] = {}
    n = None
    for key in ("prompts", "answers", "wrong_answers", "corrupted"):
        if key not in obj:
            continue
        where = f"{path}:{lines[key][0]}: "
        value = obj[key]
        error = AnswerTokenError if key in ("answers", "wrong_answers") else PromptError
        if not isinstance(value, list):
            raise error(
                f"{where}{key!r} is {checks.type_words(value, True)}; give a list with one entry "
                "per prompt" + (" (leave the key out if there is none)" if value is None else "")
            )
        if key == "prompts" and not value:
            raise PromptError(f"{where}'prompts' is empty: the prompt list is empty; give prompts")
        if n is not None and len(value) != n:
            raise PromptError(
                f"{where}{key!r} has {len(value)} entries but 'prompts' has {n}; give exactly one "
                "per prompt"
            )
        n = len(value)
        loc = tuple(Loc(f"{path}:{ln}: ", f"{key!r}[{i}]", json=True)
                    for i, ln in enumerate(lines[key][1]))
        freeze = checks.prompt if error is PromptError else checks.answer
        data[key] = [freeze(x, loc[i]) for i, x in enumerate(value)]
        locs[key] = loc
    if "wrong_answers" in data and "answers" not in data:
        raise AnswerTokenError(
            f"{path}:{lines['wrong_answers'][0]}: 'wrong_answers' without 'answers'; give both "
            "(a logit difference) or only 'answers' (a log-probability)"
        )
    if "wrong_answers" in data:
        for i, (a, w) in enumerate(zip(data["answers"], data["wrong_answers"], strict=True)):
            la, lw = locs["answers"][i], locs["wrong_answers"][i]
            what_w = lw.what if la.where == lw.where else str(lw)
            checks.answer_pair(a, w, la.where, la.what, what_w)
    if "corrupted" in data:
        for i, (p, c) in enumerate(zip(data["prompts"], data["corrupted"], strict=True)):
            checks.same_kind(p, c, locs["corrupted"][i])
    for key in ("metric", "name", "prepend_bos"):
        if key in obj and obj[key] is None:
            raise PromptError(
                f"{path}:{lines[key][0]}: {key!r} is null; leave the key out for the default"
            )
    if "metric" in obj:
        data["metric"] = check_metric(obj["metric"], f"{path}:{lines['metric'][0]}: ")
    if "name" in obj:
        data["name"] = checks.name(obj["name"], PromptError, f"{path}:{lines['name'][0]}: ")
    if "prepend_bos" in obj:
        data["prepend_bos"] = checks.flag(
            obj["prepend_bos"], "prepend_bos", PromptError, f"{path}:{lines['prepend_bos'][0]}: "
        )
    return data, locs


def _read_txt(path: Path, text: str) -> tuple[dict[str, Any], dict[str, tuple[Loc, ...]]]:
    prompts, locs = [], []
    for n, line in enumerate(_lines(text), 1):
        if line.strip():
            loc = Loc(f"{path}:{n}: ", "prompt")
            prompts.append(checks.prompt(line, loc))
            locs.append(loc)
    return {"prompts": prompts}, {"prompts": tuple(locs)}


__all__ = ["JSON_KEYS", "METRICS", "ROW_KEYS", "read_task"]
