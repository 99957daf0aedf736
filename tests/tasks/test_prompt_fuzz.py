"""Property-based fuzz of the prompt-file reader (hypothesis).

Whatever a file holds (random bytes, random JSON values, random rows with random keys, under any
of the suffixes in any case) ``read_task`` returns a valid Task or raises one of its documented
errors (PromptError, AnswerTokenError, MetricError) with a one-line message naming the file;
never anything else. A returned Task is then tokenized, which must give consistent Tokens or a
documented error too.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import make_tokenizer

from mechdiff.errors import AnswerTokenError, MetricError, PromptError
from mechdiff.tasks import METRICS, ChatPrompt, Task, read_task

TOK = make_tokenizer()
DOCUMENTED = (PromptError, AnswerTokenError, MetricError)
SUFFIXES = [".jsonl", ".json", ".txt", ".JSONL", ".Json", ".TXT"]
FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# Values that are often right and sometimes wrong: vocabulary words (and unknown ones, blanks),
# small ids (some negative or outside the vocabulary of 62), chat messages with good and bad roles,
# booleans, nulls, arbitrary JSON.


def often(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` seven times in eight, else ``bad``."""
    return st.sampled_from([good] * 7 + [bad]).flatmap(lambda s: s)


def odd_one(draw: st.DrawFn, sides: int) -> bool:
    """True about once in ``sides`` draws (hypothesis leans to first choices, so the odd one is
    the last)."""
    return draw(st.sampled_from(range(sides))) == sides - 1


words = often(
    st.lists(st.sampled_from(["t1", "t2", "t3", "t59"]), min_size=1, max_size=4).map(" ".join),
    st.sampled_from(["", " ", "\t", "t1 Paris", "<pad>", "t1\u2028t2"]),
)
ids = often(st.lists(st.integers(0, 61), min_size=1, max_size=4),
            st.lists(st.integers(-2, 70) | st.booleans(), max_size=3))
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "robot"]), "content": words}
)
chat = st.lists(message, min_size=0, max_size=2)
json_scalars = st.none() | st.booleans() | st.integers(-3, 100) | st.floats(allow_nan=False) \
    | st.text(max_size=6)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8,
)
prompt = often(words, ids | chat | json_values)
answer = often(st.sampled_from(["t1", "t2", "t3", "t59", 4, 7]), st.sampled_from(
    ["t1 t2", "Paris", "", "\n", -1, 62, True, False, None, 2.5]) | json_values)
ROW_KEYS = ["prompt", "answer", "wrong_answer", "corrupted"]
odd_keys = st.sampled_from(["wrong-answer", "Prompt", "metric", "prompts"]) | st.text(max_size=6)


@st.composite
def row_files(draw: st.DrawFn) -> list[dict]:
    """Rows sharing a schema (drawn from the real keys, sometimes an odd one), each sometimes
    mutated (a key dropped or added)."""
    schemas = [["prompt", "answer", "wrong_answer"]] * 2 + [
        ["prompt"], ["prompt", "answer"], ["prompt", "corrupted"], ROW_KEYS]
    keys = draw(st.sampled_from(schemas)) if not odd_one(draw, 5) else draw(
        st.lists(st.sampled_from(ROW_KEYS) | odd_keys, max_size=4, unique=True))
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        r = {k: draw(prompt if k in ("prompt", "corrupted") else answer if k in ROW_KEYS else
                     prompt | answer) for k in keys}
        mutation = draw(st.sampled_from(range(20)))
        if mutation == 18 and r:
            r.pop(draw(st.sampled_from(sorted(r))))
        elif mutation == 19:
            r[draw(st.sampled_from(ROW_KEYS) | odd_keys)] = draw(prompt | answer)
        rows.append(r)
    return rows


@st.composite
def json_objects(draw: st.DrawFn) -> dict:
    """A .json object: lists of one length (sometimes not), a metric, name or flag, odd keys."""
    n = draw(st.sampled_from([1, 2, 3, 0]))
    obj: dict = {}
    fields = ["prompts", "answers", "wrong_answers", "corrupted"]
    keys = fields[:3] if not odd_one(draw, 3) else draw(
        st.lists(st.sampled_from(fields), unique=True, max_size=4))
    for key in keys:
        size = draw(st.integers(0, 4)) if odd_one(draw, 10) else n
        item = prompt if key in ("prompts", "corrupted") else answer
        obj[key] = draw(json_values) if odd_one(draw, 20) else draw(
            st.lists(item, min_size=size, max_size=size))
    extras = {"metric": often(st.sampled_from(METRICS), st.sampled_from(["KL", "x"]) | json_values),
              "name": often(st.text(min_size=1, max_size=6), json_values),
              "prepend_bos": often(st.booleans(), json_values)}
    for key, values in extras.items():
        if odd_one(draw, 4):
            obj[key] = draw(values)
    if odd_one(draw, 10):
        obj[draw(odd_keys)] = draw(json_values)
    return obj


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for the module (hypothesis refuses function-scoped fixtures); each example
    overwrites its file."""
    return tmp_path_factory.mktemp("fuzz")


def check_file(folder: Path, name: str, body: bytes) -> Task | None:
    """Read ``body`` as the file ``name``: a valid Task (tokenized consistently) or a documented,
    one-line error naming the file; anything else fails the test."""
    path = folder / name
    path.write_bytes(body)
    try:
        task = read_task(path)
    except DOCUMENTED as e:
        assert "\n" not in str(e) and str(path) in str(e), str(e)
        str(e).encode("utf-8")  # printable: no half surrogate pairs
        return None
    assert isinstance(task, Task) and len(task) >= 1 and task.metric_name in METRICS
    for p in task.prompts:
        assert isinstance(p, (str, tuple, ChatPrompt))
        assert not isinstance(p, str) or p.strip()
        assert not isinstance(p, tuple) or all(type(t) is int and t >= 0 for t in p)
    for field in ("answers", "wrong_answers", "corrupted"):
        values = getattr(task, field)
        assert values is None or len(values) == len(task)
    for a in (task.answers or ()) + (task.wrong_answers or ()):
        assert type(a) in (str, int) and a != "" and (type(a) is str or a >= 0)
    try:
        tokens = task.tokenize(TOK, n_ctx=32)
    except (PromptError, AnswerTokenError) as e:
        assert "\n" not in str(e), str(e)
        return task
    assert tokens.n == len(task) and int(tokens.lengths.min()) >= 1
    assert int(tokens.tokens.max()) < len(TOK) and int(tokens.tokens.min()) >= 0
    if tokens.answer_ids is not None and tokens.wrong_ids is not None:
        assert bool((tokens.answer_ids != tokens.wrong_ids).all())
    return task


@FUZZ
@given(body=st.binary(max_size=300), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes(folder: Path, body: bytes, suffix: str) -> None:
    check_file(folder, "bytes" + suffix, body)


@FUZZ
@given(values=st.lists(json_values | json_objects() | row_files(), min_size=0, max_size=4),
       suffix=st.sampled_from(SUFFIXES), blank=st.booleans())
def test_random_json_values(folder: Path, values: list, suffix: str, blank: bool) -> None:
    if suffix.lower() == ".json":
        body = json.dumps(values[0] if len(values) == 1 else values, indent=1)
    else:
        body = ("\n\n" if blank else "\n").join(json.dumps(v) for v in values)
    check_file(folder, "values" + suffix, body.encode())


@FUZZ
@given(rows=row_files(), crlf=st.booleans())
def test_random_rows(folder: Path, rows: list[dict], crlf: bool) -> None:
    check_file(folder, "rows.jsonl", ("\r\n" if crlf else "\n").join(json.dumps(r) for r in rows).encode())


@FUZZ
@given(obj=json_objects())
def test_random_json_objects(folder: Path, obj: dict) -> None:
    check_file(folder, "object.json", json.dumps(obj, indent=2).encode())


def test_the_strategies_reach_valid_tasks(folder: Path) -> None:
    """The fuzz is not vacuous: its row and object strategies often give files that read into
    tasks, with answers and wrong answers that tokenize (counted over 100 reproducible draws)."""
    seen: Counter[str] = Counter()

    def outcome(task: Task | None) -> str:
        if task is None:
            return "refused"
        try:
            task.tokenize(TOK, n_ctx=32)
        except (PromptError, AnswerTokenError):
            return "refused by the tokenizer"
        return task.metric_name

    counting = settings(max_examples=100, deadline=None, database=None, derandomize=True)

    @counting
    @given(rows=row_files())
    def rows(rows: list[dict]) -> None:
        body = "\n".join(json.dumps(r) for r in rows)
        seen["jsonl " + outcome(check_file(folder, "count.jsonl", body.encode()))] += 1

    @counting
    @given(obj=json_objects())
    def objects(obj: dict) -> None:
        seen["json " + outcome(check_file(folder, "count.json", json.dumps(obj).encode()))] += 1

    rows()
    objects()
    for fmt in ("jsonl", "json"):
        assert seen[f"{fmt} logit_diff"] >= 3, seen
        assert sum(seen[f"{fmt} {m}"] for m in METRICS) >= 10, seen
        assert seen[f"{fmt} refused"] + seen[f"{fmt} refused by the tokenizer"] >= 20, seen
