"""Prompt files are parsed strictly, row by row: every fault class is refused with its typed error
naming the file and line (and key), and good files give the same Task as the Python API.

Files are written byte for byte into tmp dirs; the tokenizer is the tiny word-level one of
``support`` (t0..t59 = ids 0..59, ``<pad>`` = 60 is also the unknown token, ``<bos>`` = 61).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from support import make_tokenizer

from mechdiff.errors import AnswerTokenError, MechdiffError, MetricError, PromptError
from mechdiff.tasks import Task, read_task

TOK = make_tokenizer()


def write(tmp: Path, name: str, body: str | bytes) -> Path:
    path = tmp / name
    path.write_bytes(body.encode("utf-8") if isinstance(body, str) else body)
    return path


def rows(*objs: object) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def refused(error: type[MechdiffError], path: Path, *words: str, tokenize: bool = False) -> str:
    """Read ``path`` (and tokenize it); assert exactly ``error``, one line, naming the file."""
    with pytest.raises(MechdiffError) as info:
        task = read_task(path)
        if tokenize:
            task.tokenize(TOK, n_ctx=32)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    msg = str(info.value)
    msg.encode("utf-8")  # printable: no half surrogate pairs
    assert "\n" not in msg and str(path) in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg


OK = {"prompt": "t1 t2", "answer": "t3", "wrong_answer": "t4"}
CHAT = [{"role": "user", "content": "t1"}]

# (file name, body, error, words): each a fault class; line numbers are part of the words.
JSONL_FAULTS = [
    # one schema per file: a first row without "answer" no longer turns the file into KL
    ("schema.jsonl", rows({"prompt": "t1"}, {"prompt": "t2", "answer": "t3"}), PromptError,
     [":2:", "differ from line 1", "adds 'answer'", "one schema per file"]),
    ("schema2.jsonl", rows(OK, OK, {"prompt": "t1", "answer": "t3"}), PromptError,
     [":3:", "lacks 'wrong_answer'"]),
    ("unknown.jsonl", rows(OK, {"prompt": "t1", "answer": "t3", "wrong-answer": "t4"}),
     PromptError, [":2:", "unknown key 'wrong-answer'", "did you mean wrong_answer?"]),
    ("case.jsonl", rows({"Prompt": "t1"}), PromptError, [":1:", "did you mean prompt?"]),
    ("plural.jsonl", rows({"prompts": ["t1"]}), PromptError, [":1:", "did you mean prompt?"]),
    ("metric.jsonl", rows({"prompt": "t1", "metric": "kl"}), PromptError,
     [":1:", "unknown key 'metric'", "per file"]),
    ("noprompt.jsonl", rows({"answer": "t1"}), PromptError, [":1:", "no 'prompt'"]),
    ("dup.jsonl", '{"prompt": "t1"}\n{"prompt": "t1", "prompt": "t2"}\n', PromptError,
     [":2:", "'prompt' appears twice"]),
    ("number.jsonl", rows(OK, {**OK, "prompt": 7}), PromptError,
     [":2:", "'prompt' is 7 (a number)", "a prompt is a string"]),
    ("strings.jsonl", rows({**OK, "prompt": ["t1", "t2"]}), PromptError,
     [":1:", "'prompt' is a list of strings"]),
    ("true.jsonl", rows({**OK, "answer": True}), AnswerTokenError,
     [":1:", "'answer' is true (a boolean)", "token id 1"]),
    ("false.jsonl", rows({**OK, "wrong_answer": False}), AnswerTokenError,
     [":1:", "'wrong_answer' is false (a boolean)", "token id 0"]),
    ("boolids.jsonl", rows({"prompt": [1, True]}), PromptError,
     [":1:", "'prompt' token 1 is true (a boolean)"]),
    ("negative.jsonl", rows({"prompt": [1, -2]}), PromptError,
     [":1:", "'prompt' token 1 is a negative token id (-2)"]),
    ("negans.jsonl", rows({**OK, "answer": -5}), AnswerTokenError,
     [":1:", "'answer' is a negative token id (-5)"]),
    ("huge.jsonl", rows({"prompt": [1, 2**70]}), PromptError,
     [":1:", "too large to be a token id"]),
    ("digits.jsonl", rows(OK) + '{"prompt": [' + "9" * 5000 + "]}\n", PromptError,
     [":2:", "cannot read this line as JSON", "digits"]),
    ("nested.jsonl", '{"prompt": ' + "[" * 800 + "]" * 800 + "}\n", PromptError,
     [":1:", "'prompt' token 0 is [[[["]),
    ("surrogatekey.jsonl", '{"prompt": "t1", "\\udc80": 1}\n', PromptError,
     [":1:", "unknown key '\\udc80'"]),
    ("float.jsonl", rows({**OK, "answer": 3.5}), AnswerTokenError, [":1:", "3.5 (a number)"]),
    ("null.jsonl", rows({**OK, "answer": None}), AnswerTokenError, [":1:", "'answer' is null"]),
    ("space.jsonl", rows(OK, {**OK, "prompt": " \t "}), PromptError,
     [":2:", "'prompt' is whitespace only", "lone BOS"]),
    ("empty_prompt.jsonl", rows({"prompt": ""}), PromptError, [":1:", "'prompt' is empty"]),
    ("same.jsonl", rows({**OK, "wrong_answer": "t3"}), AnswerTokenError,
     [":1:", "'answer' and 'wrong_answer' are both 't3'"]),
    ("kind.jsonl", rows({"prompt": "t1 t2", "corrupted": [1, 2]}), PromptError,
     [":1:", "'corrupted' is a list of token ids but its clean prompt is a string"]),
    ("wrongonly.jsonl", rows({"prompt": "t1", "wrong_answer": "t2"}), AnswerTokenError,
     [":1:", "'wrong_answer' but no 'answer'"]),
    ("role.jsonl", rows({"prompt": [{"role": "robot", "content": "t1"}]}), PromptError,
     [":1:", "'prompt' message 0 has the role \"robot\""]),
    ("message.jsonl", rows({"prompt": {"role": "user", "content": "t1"}}), PromptError,
     [":1:", "single object", "wrap it in [...]"]),
    ("msgkeys.jsonl", rows({"prompt": [{"role": "user", "contents": "t1"}]}), PromptError,
     [":1:", "did you mean content?"]),
    ("array.jsonl", rows(OK, ["t1", "t2"]), PromptError,
     [":2:", "the line is a list, not an object"]),
    ("malformed.jsonl", rows(OK) + "\n\n" + '{"prompt": "t1",}\n', PromptError,
     [":4:", "cannot read this line as JSON", "column 17"]),
    ("two.jsonl", '{"prompt": "t1"} {"prompt": "t2"}\n', PromptError, [":1:", "Extra data"]),
    ("surrogate.jsonl", '{"prompt": "t1 \\ud83d"}\n', PromptError, [":1:", "surrogate"]),
    ("deep.jsonl", '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n", PromptError,
     [":1:", "nested too deeply"]),
    ("blank.jsonl", "\n  \n\t\n", PromptError, ["the prompt list is empty", "only whitespace"]),
    ("nothing.jsonl", "", PromptError, ["the prompt list is empty", "holds nothing"]),
]

JSON_FAULTS = [
    ("list.json", json.dumps([OK]), PromptError, ["top level is a list", ".jsonl"]),
    ("string.json", '"t1 t2"', PromptError, ["top level is a string"]),
    ("malformed.json", '{\n "prompts": ["t1",\n  "t2"\n "answers": []}', PromptError,
     [":4:", "cannot read the file as JSON", "Expecting ',' delimiter"]),
    ("unknown.json", '{\n "prompts": ["t1"],\n "answer": ["t2"]\n}', PromptError,
     [":3:", "unknown key 'answer'", "did you mean answers?"]),
    ("dup.json", '{\n "prompts": ["t1"],\n "prompts": ["t2"]\n}', PromptError,
     [":3:", "'prompts' appears twice"]),
    ("noprompts.json", '{"answers": ["t1"]}', PromptError, ["no 'prompts'"]),
    ("emptyobj.json", "{}", PromptError, ["no 'prompts'"]),
    ("promptstr.json", '{"prompts": "t1"}', PromptError, [":1:", "'prompts' is a string"]),
    ("promptsnull.json", '{"prompts": null}', PromptError, [":1:", "'prompts' is null"]),
    ("noentries.json", '{"prompts": []}', PromptError, [":1:", "the prompt list is empty"]),
    ("length.json", '{\n "prompts": ["t1", "t2"],\n "answers": ["t3"]\n}', PromptError,
     [":3:", "'answers' has 1 entries but 'prompts' has 2"]),
    ("bool.json", '{\n "prompts": ["t1", "t2"],\n "answers": [\n  "t3",\n  true\n ]\n}',
     AnswerTokenError, [":5:", "'answers'[1] is true (a boolean)"]),
    ("space.json", '{"prompts": ["t1",\n "\\t"]}', PromptError,
     [":2:", "'prompts'[1] is whitespace only"]),
    ("same.json", '{"prompts": ["t1"], "answers": [5],\n "wrong_answers": [5]}', AnswerTokenError,
     [":1:", "'answers'[0] and ", ":2: 'wrong_answers'[0] are both 5"]),
    ("wrongonly.json", '{"prompts": ["t1"],\n "wrong_answers": ["t2"]}', AnswerTokenError,
     [":2:", "'wrong_answers' without 'answers'"]),
    ("kind.json", '{"prompts": [[1, 2]],\n "corrupted": ["t1 t2"]}', PromptError,
     [":2:", "'corrupted'[0] is a string but its clean prompt is a list of token ids"]),
    ("metric.json", '{"prompts": ["t1"],\n "metric": "KL"}', MetricError,
     [":2:", "unknown metric 'KL'", "did you mean kl?"]),
    ("needs.json", '{"prompts": ["t1"], "metric": "logprob"}', MetricError,
     ["metric 'logprob' needs answers"]),
    ("name.json", '{"prompts": ["t1"],\n\n "name": 3}', PromptError, [":3:", "name is 3"]),
    ("bos.json", '{"prompts": ["t1"], "prepend_bos": "yes"}', PromptError,
     [":1:", "prepend_bos is a string"]),
    ("nothing.json", "", PromptError, ["the prompt list is empty"]),
    ("nullmetric.json", '{"prompts": ["t1"],\n "metric": null}', PromptError,
     [":2:", "'metric' is null", "leave the key out"]),
]

OTHER_FAULTS = [
    ("blank.txt", "\n \n\r\n", PromptError, ["the prompt list is empty"]),
    ("prompts.csv", "t1,t2\n", PromptError, ["'.csv'", ".jsonl, .json or .txt (any case)"]),
    ("prompts", "t1\n", PromptError, ["no suffix"]),
    ("latin1.jsonl", rows(OK).encode() + b'{"prompt": "caf\xe9"}\n', PromptError,
     [":2:", "byte 0xe9 at column 16 is not UTF-8"]),
    ("binary.txt", b"t1\nt2\n\x80\x81", PromptError, [":3:", "byte 0x80 at column 1"]),
    ("utf16.json", json.dumps({"prompts": ["t1"]}).encode("utf-16"), PromptError,
     ["UTF-16", "save it as UTF-8"]),
]


@pytest.mark.parametrize(
    ("name", "body", "error", "words"),
    JSONL_FAULTS + JSON_FAULTS + OTHER_FAULTS,
    ids=[f[0] for f in JSONL_FAULTS + JSON_FAULTS + OTHER_FAULTS],
)
def test_faults_are_refused_as_what_they_are(tmp_path, name, body, error, words) -> None:
    refused(error, write(tmp_path, name, body), *words)


def test_missing_files_and_folders_are_prompt_errors(tmp_path) -> None:
    refused(PromptError, tmp_path / "missing.jsonl", "does not exist")
    (tmp_path / "dir.jsonl").mkdir()
    refused(PromptError, tmp_path / "dir.jsonl", "is a folder")


@pytest.mark.parametrize(
    ("name", "body", "error", "words"),
    [
        ("unk.jsonl", rows(OK, OK, {**OK, "answer": "Paris"}), AnswerTokenError,
         [":3: 'answer' = 'Paris' is not in the tokenizer's vocabulary", "unknown token '<pad>'"]),
        ("unkword.txt", "t1 t2\n\nt1 Paris\n", PromptError,
         [":3: prompt has 1 piece(s) ('Paris') the tokenizer does not know"]),
        ("vocab.json", '{"prompts": [[1, 2],\n [1, 99]]}', PromptError,
         [":2: 'prompts'[1] holds token id 99 at position 1", "ids 0..61"]),
        ("ansvocab.jsonl", rows({**OK, "answer": 62}), AnswerTokenError,
         [":1: 'answer' = 62 is not a token id"]),
        ("sametoken.jsonl", rows(OK, {**OK, "answer": 4}), AnswerTokenError,
         [":2: 'answer' (4) and 'wrong_answer' ('t4') are the same token (id 4)"]),
        ("multi.jsonl", rows({**OK, "answer": "t3 t5"}), AnswerTokenError,
         [":1: 'answer' = 't3 t5' is 2 tokens", "not one"]),
        ("long.jsonl", rows(OK, {**OK, "prompt": " ".join(["t1"] * 40)}), PromptError,
         [":2: 'prompt' is 41 tokens long but the model's context is 32"]),
        ("corrupt.jsonl", rows({"prompt": "t1 t2", "corrupted": "t1"}), PromptError,
         [":1: 'corrupted' has 2 tokens but its clean prompt has 3", "line up token for token"]),
    ],
    ids=lambda x: x if isinstance(x, str) and "." in x else "",
)
def test_tokenize_errors_still_name_the_file_line(tmp_path, name, body, error, words) -> None:
    path = write(tmp_path, name, body)
    read_task(path)  # the file itself is well formed: the tokenizer finds the fault
    refused(error, path, *words, tokenize=True)


# ------------------------------------------------------------------------------ good files


def same_task(path: Path, expected: Task) -> Task:
    task = read_task(path)
    assert task == expected and task.fingerprint() == expected.fingerprint()
    assert task.metric_name == expected.metric_name and task.name == expected.name
    got, want = task.tokenize(TOK, n_ctx=32), expected.tokenize(TOK, n_ctx=32)
    for field in ("tokens", "lengths", "answer_ids", "wrong_ids", "corrupted_tokens"):
        a, b = getattr(got, field), getattr(want, field)
        assert (a is None and b is None) or torch.equal(a, b), field
    return task


def test_jsonl_with_chats_ids_and_blank_lines_reads_as_the_api(tmp_path) -> None:
    body = (
        json.dumps({"prompt": "t1 t2 t3", "answer": "t4", "wrong_answer": 5,
                    "corrupted": "t1 t9 t3"}) + "\r\n"
        + "\n   \n"
        + json.dumps({"prompt": [7, 8], "answer": 9, "wrong_answer": "t10",
                      "corrupted": [7, 0]}) + "\n"
        + json.dumps({"prompt": CHAT, "answer": " t11", "wrong_answer": "t12",
                      "corrupted": [{"role": "user", "content": "t2"}]}) + "\n"
    )
    path = write(tmp_path, "mixed.jsonl", body)
    expected = Task(
        ["t1 t2 t3", [7, 8], CHAT], answers=["t4", 9, " t11"], wrong_answers=[5, "t10", "t12"],
        corrupted=["t1 t9 t3", [7, 0], [{"role": "user", "content": "t2"}]], name="mixed",
    )
    task = read_task(path)
    assert task == expected and task.metric_name == "logit_diff"
    # Lines are numbered with the blank ones counted.
    assert [str(task._loc("prompts", i)) for i in range(3)] == [
        f"{path}:1: 'prompt'", f"{path}:4: 'prompt'", f"{path}:5: 'prompt'"]


def test_json_with_metric_name_and_bos_reads_as_the_api(tmp_path) -> None:
    obj = {"prompts": ["t1 t2 t3", "t4"], "answers": ["t5", 6], "wrong_answers": ["t7", "t8"],
           "metric": "logprob", "name": "capitals", "prepend_bos": False}
    expected = Task(["t1 t2 t3", "t4"], answers=["t5", 6], wrong_answers=["t7", "t8"],
                    metric="logprob", name="capitals", prepend_bos=False)
    task = same_task(write(tmp_path, "c.json", json.dumps(obj, indent=2)), expected)
    assert task.tokenize(TOK, n_ctx=32).tokens[0].tolist() == [1, 2, 3]  # no BOS
    # Overrides replace what the file says.
    over = read_task(tmp_path / "c.json", metric="logit_diff", name="x", prepend_bos=True)
    assert over.metric_name == "logit_diff" and over.name == "x" and over.prepend_bos


def test_txt_is_task_free_with_mixed_lengths(tmp_path) -> None:
    lines = ["t1 t2 t3 t4 t5", "t6", "  t7 t8  "]
    path = write(tmp_path, "texts.txt", "\ufeff" + lines[0] + "\r\n\n" + "\n".join(lines[1:]))
    task = same_task(path, Task(lines, name="texts"))
    assert task.metric_name == "kl" and read_task(path, metric="kl_all").reads_all_positions
    t = task.tokenize(TOK, n_ctx=32)
    # Right-padded, each prompt's own length: BOS + its words, read at its own last token.
    for i, line in enumerate(lines):
        ids = [61] + [int(w[1:]) for w in line.split()]
        n = int(t.lengths[i])
        assert t.tokens[i, :n].tolist() == ids and set(t.tokens[i, n:].tolist()) <= {60}
    assert t.read_pos.tolist() == [5, 1, 2]


@pytest.mark.parametrize("suffix", [".JSONL", ".Jsonl", ".JSON", ".TXT", ".Txt"])
def test_suffixes_are_case_insensitive(tmp_path, suffix) -> None:
    body = {".jsonl": rows(OK, OK), ".json": json.dumps({"prompts": ["t1", "t2"]}),
            ".txt": "t1\nt2\n"}[suffix.lower()]
    upper = read_task(write(tmp_path, "p" + suffix, body))
    lower = read_task(write(tmp_path, "q" + suffix.lower(), body))
    assert upper.prompts == lower.prompts and upper.metric_name == lower.metric_name
    assert upper.answers == lower.answers


def test_bom_crlf_and_line_separators_inside_strings(tmp_path) -> None:
    plain = read_task(write(tmp_path, "a.jsonl", rows(OK, {**OK, "prompt": "t5 t6"})))
    bom = read_task(write(tmp_path, "a2.jsonl", "\ufeff" + rows(OK, {**OK, "prompt": "t5 t6"})
                          .replace("\n", "\r\n")))
    assert bom.prompts == plain.prompts and bom.answers == plain.answers
    # U+2028 is a line break for str.splitlines but a character inside a JSON string.
    odd = read_task(write(tmp_path, "b.jsonl", rows({"prompt": "t1\u2028t2"}, {"prompt": "t3"})))
    assert odd.prompts == ("t1\u2028t2", "t3")
    # A BOM before a .json object too.
    assert read_task(write(tmp_path, "c.json", '\ufeff{"prompts": ["t1"]}')).prompts == ("t1",)


def test_whitespace_answers_are_tokens_not_faults(tmp_path) -> None:
    """Whitespace-only *answers* stay allowed: a newline or a space is a token in most
    vocabularies (here the tokenizer drops them, so the tokenizer refuses them, as itself)."""
    path = write(tmp_path, "ws.jsonl", rows({"prompt": "t1", "answer": "\n"}))
    assert read_task(path).answers == ("\n",)
    refused(AnswerTokenError, path, "'answer' = '\\n' is 0 tokens", tokenize=True)
