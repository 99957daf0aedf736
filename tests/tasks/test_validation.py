"""Task(...) refuses what prompt files refuse, with the same words; Task.tokenize refuses what needs
the tokenizer; every public entry point of mechdiff.tasks validates its options.

The test session wraps mechdiff's functions and dataclass constructors in beartype; a user does not
have that wrapper, so calls with wrongly typed values go through ``unchecked`` and must meet
mechdiff's own typed, explained errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import torch
from support import make_tokenizer, unchecked
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mechdiff.errors import AnswerTokenError, MechdiffError, MetricError, OptionError, PromptError
from mechdiff.tasks import ChatPrompt, Task, Tokens, read_task, render_chat

TOK = make_tokenizer()  # word level: t0..t59 = ids 0..59, <pad> = 60 (also the unknown token), <bos>


def task(*args, **kw) -> Task:
    """``Task(...)`` as a user calls it (no type-checking wrapper)."""
    t = Task.__new__(Task)
    unchecked(Task.__init__)(t, *args, **kw)
    return t


def tokenize(t: Task, tokenizer=TOK, **kw) -> Tokens:
    return unchecked(Task.tokenize)(t, tokenizer, **{"n_ctx": 32, **kw})


def refused(error: type[MechdiffError], fn, *words: str) -> str:
    """Call ``fn``; assert it raises exactly ``error`` with a one-line message holding ``words``."""
    with pytest.raises(MechdiffError) as info:
        fn()
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    msg = str(info.value)
    msg.encode("utf-8")  # printable: no half surrogate pairs
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg


def word_tokenizer(words: list[str], unk: str | None, normalizer=None) -> PreTrainedTokenizerFast:
    model = models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=unk)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if normalizer is not None:
        tok.normalizer = normalizer
    kw = {"unk_token": unk} if unk else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", **kw)


# ------------------------------------------------------------------------------ prompts


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        ("   ", ["prompt 1 is whitespace only", "lone BOS"]),
        ("\t\n ", ["prompt 1 is whitespace only"]),
        ("", ["prompt 1 is empty"]),
        ([], ["prompt 1 is empty"]),
        (3, ["prompt 1 is 3 (a number)", "a list of token ids"]),
        (None, ["prompt 1 is None", "a prompt is a string"]),
        (True, ["prompt 1 is True (a boolean)"]),
        ([5, True], ["prompt 1 token 1 is True (a boolean)", "token id 1"]),
        ([5, -3], ["prompt 1 token 1 is a negative token id (-3)", "0 or more"]),
        ([5, 2**63], ["prompt 1 token 1 is 9223372036854775808, too large to be a token id"]),
        ([5, 2.0], ["prompt 1 token 1 is 2.0", "decimal point"]),
        ([5, 2.5], ["prompt 1 token 1 is 2.5 (a number)", "integers"]),
        ([5, "t2"], ["prompt 1 token 1 is 't2' (a string)"]),
        (["t1", "t2"], ["prompt 1 is a list of strings", "join"]),
        ({"role": "user", "content": "t1"}, ["prompt 1 is a single dict", "wrap it in [...]"]),
        ([{"role": "User", "content": "t1"}], ["prompt 1 message 0", "did you mean user?"]),
        ([{"role": "user", "contents": "t1"}], ["'contents'", "did you mean content?"]),
        ([{"role": "user", "content": "t1"}, "t2"], ["prompt 1 message 1 is 't2'"]),
        ([{"role": "user", "content": 3}], ["message 0 has content 3 (a number)"]),
        (b"t1", ["prompt 1 is a bytes"]),
        ("t1 \ud800", ["prompt 1", "surrogate"]),
        (torch.tensor([1, 0], dtype=torch.bool), ["prompt 1 token 0 is True (a boolean)"]),
    ],
)
def test_bad_prompts_are_prompt_errors(prompt, words) -> None:
    refused(PromptError, lambda: task(["t1", prompt]), *words)
    refused(PromptError, lambda: task(["t1", "t2"], corrupted=["t1", prompt]),
            *[w.replace("prompt 1", "corrupted prompt 1") for w in words])


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (True, ["[1] is True (a boolean)", "token id 1"]),
        (False, ["[1] is False (a boolean)", "token id 0"]),
        (-1, ["[1] is a negative token id (-1)"]),
        pytest.param(10**5000, ["[1] is <int>, too large to be a token id"], id="5000-digits"),
        ("", ["[1] is an empty string"]),
        (None, ["[1] is None"]),
        (1.0, ["[1] is 1.0", "decimal point"]),
        (["t1"], ["[1] is ['t1'] (a list)"]),
        ("\udc80", ["[1] holds", "surrogate"]),
        (torch.tensor(True), ["[1] is True (a boolean)"]),
    ],
)
def test_bad_answers_are_answer_token_errors(answer, words) -> None:
    first, rest = words[0], words[1:]
    refused(AnswerTokenError, lambda: task(["t1", "t2"], answers=["t3", answer]),
            "answers" + first, *rest)
    refused(AnswerTokenError,
            lambda: task(["t1", "t2"], answers=["t3", "t4"], wrong_answers=["t5", answer]),
            "wrong_answers" + first, *rest)


def test_an_answer_equal_to_its_wrong_answer_is_refused() -> None:
    refused(AnswerTokenError,
            lambda: task(["t1", "t2"], answers=["t3", "t4"], wrong_answers=["t5", "t4"]),
            "answers[1] and wrong_answers[1] are both 't4'", "0 by construction")
    refused(AnswerTokenError, lambda: task(["t1"], answers=[7], wrong_answers=[7]),
            "answers[0] and wrong_answers[0] are both 7")
    # Written differently, the same token: found when tokenizing.
    for a, w in ((" t4", "t4"), ("t4", 4), (4, "t4 ")):
        t = task(["t1"], answers=[a], wrong_answers=[w])
        refused(AnswerTokenError, lambda t=t: tokenize(t),
                "answers[0]", "wrong_answers[0]", "same token (id 4)")


def test_corrupted_prompts_of_another_kind_are_refused() -> None:
    chat = [{"role": "user", "content": "t1"}]
    for clean, corrupted, words in [
        ("t1 t2", [1, 2], "corrupted prompt 0 is a list of token ids but its clean prompt is a string"),
        ([1, 2], "t1 t2", "corrupted prompt 0 is a string but its clean prompt is a list of token"),
        (chat, "t1", "corrupted prompt 0 is a string but its clean prompt is a chat"),
    ]:
        refused(PromptError, lambda c=clean, k=corrupted: task([c], corrupted=[k]), words)


def test_containers_metric_name_and_flags_are_checked() -> None:
    refused(PromptError, lambda: task("t1 t2"), "prompts is a single string", "wrap it")
    refused(PromptError, lambda: task({"prompt": "t1"}), "prompts is a dict")
    refused(PromptError, lambda: task(None), "prompts is None")
    refused(PromptError, lambda: task([]), "the prompt list is empty")
    refused(AnswerTokenError, lambda: task(["t1"], answers="t2"), "answers is a single string")
    refused(PromptError, lambda: task(["t1", "t2"], answers=["t1"]),
            "answers has 1 entries but there are 2 prompts")
    refused(AnswerTokenError, lambda: task(["t1"], wrong_answers=["t2"]),
            "wrong_answers were given without answers")
    refused(MetricError, lambda: task(["t1"], metric="KL"), "unknown metric 'KL'",
            "did you mean kl?")
    refused(MetricError, lambda: task(["t1"], metric="logitdiff"), "did you mean logit_diff?")
    refused(MetricError, lambda: task(["t1"], metric=3), "unknown metric 3")
    refused(MetricError, lambda: task(["t1"], metric=["kl"]), "unknown metric ['kl']")
    refused(MetricError, lambda: task(["t1"], answers=["t2"], metric="logit_diff"),
            "needs answers and wrong_answers")
    refused(MetricError, lambda: task(["t1"], metric="logprob"), "needs answers")
    refused(OptionError, lambda: task(["t1"], name=3), "name is 3 (a number)")
    refused(OptionError, lambda: task(["t1"], name=" "), "name is blank")
    refused(OptionError, lambda: task(["t1"], prepend_bos="yes"), "prepend_bos is a string")
    refused(OptionError, lambda: task(["t1"], prepend_bos=1), "prepend_bos is a number")


def test_good_values_freeze_as_before() -> None:
    """Tensors, tuples and lists give the same frozen task, and the fingerprint is the one
    results already record (the pre-validation formula, recomputed here by hand)."""
    chat = [{"role": "system", "content": "t1"}, {"role": "user", "content": "t2"}]
    a = Task(["t1 t2", [3, 4], chat], answers=["t5", 6, "\n"], wrong_answers=[7, "t8", " "])
    b = task(("t1 t2", torch.tensor([3, 4]), tuple(chat)), answers=["t5", torch.tensor(6), "\n"],
             wrong_answers=torch.tensor([7, 0, 0]).tolist()[:1] + ["t8", " "])
    assert a == b and a.fingerprint() == b.fingerprint()
    assert a.prompts[1] == (3, 4) and type(a.prompts[1][0]) is int
    assert a.prompts[2] == ChatPrompt((("system", "t1"), ("user", "t2")))
    payload = json.dumps([["t1 t2", [3, 4], chat], ["t5", 6, "\n"], [7, "t8", " "], None,
                          "logit_diff", True])
    assert a.fingerprint() == hashlib.sha256(payload.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ with a tokenizer


def test_answers_the_tokenizer_does_not_know_are_refused() -> None:
    refused(AnswerTokenError, lambda: tokenize(task(["t1"], answers=["Paris"])),
            "answers[0] = 'Paris' is not in the tokenizer's vocabulary", "unknown token '<pad>'")
    refused(AnswerTokenError,
            lambda: tokenize(task(["t1"], answers=["t2"], wrong_answers=["Rome"])),
            "wrong_answers[0] = 'Rome'", "unknown token")
    # The unknown token written as itself, or given by id, is the user's choice.
    t = tokenize(task(["t1", "t2"], answers=["<pad>", 60], wrong_answers=["t3", "t4"]))
    assert t.answer_ids.tolist() == [60, 60]


def test_prompt_words_the_tokenizer_does_not_know_are_refused() -> None:
    refused(PromptError, lambda: tokenize(task(["t1 t2", "t1 Paris t2 Rome"])),
            "prompt 1 has 2 piece(s) ('Paris', 'Rome') the tokenizer does not know",
            "unknown token '<pad>'")
    refused(PromptError, lambda: tokenize(task(["t1"], corrupted=["Paris"])),
            "corrupted prompt 0 has 1 piece(s)")
    t = tokenize(task(["t1 <pad> t2"]))  # the unknown token written as itself
    assert t.tokens[0].tolist() == [61, 1, 60, 2]


def test_tokenizers_without_an_unknown_token_skip_the_unknown_checks() -> None:
    words = ["t0", "t1", "t2", "<bos>"]
    # No unknown token: known words pass; an unknown word is the tokenizer's own failure, typed.
    tok = word_tokenizer(words, unk=None)
    assert tok.unk_token_id is None
    t = tokenize(task(["t0 t1"], answers=["t2"]), tok)
    assert t.tokens.tolist() == [[3, 0, 1]] and t.answer_ids.tolist() == [2]
    refused(PromptError, lambda: tokenize(task(["t0 Paris"]), tok), "prompt 0", "cannot be tokenized")
    refused(AnswerTokenError, lambda: tokenize(task(["t0"], answers=["Paris"]), tok),
            "answers[0] ('Paris') cannot be tokenized")
    # GPT-2 style: BOS is also the unknown token; the prepended BOS is not an unknown word.
    tok = word_tokenizer(words, unk="<bos>")
    assert tok.unk_token_id == tok.bos_token_id == 3
    assert tokenize(task(["t0 t1"]), tok).tokens.tolist() == [[3, 0, 1]]


def test_prompts_that_tokenize_to_nothing_are_refused() -> None:
    tok = word_tokenizer(["t0", "t1", "<unk>", "<bos>"], unk="<unk>",
                         normalizer=normalizers.Replace("-", ""))
    refused(PromptError, lambda: tokenize(task(["t0", "- --"]), tok),
            "prompt 1 ('- --') tokenizes to nothing", "only a BOS would be scored")


def test_ids_outside_the_vocabulary_are_refused() -> None:
    refused(PromptError, lambda: tokenize(task([[1, 62]])),
            "prompt 0 holds token id 62 at position 1", "vocabulary (ids 0..61)")
    refused(PromptError, lambda: tokenize(task([[1, 2]], corrupted=[[1, 70]])),
            "corrupted prompt 0 holds token id 70 at position 1")
    refused(AnswerTokenError, lambda: tokenize(task(["t1"], answers=[62])),
            "answers[0] = 62 is not a token id", "ids 0..61")
    t = tokenize(task([[1, 61]], answers=[61], wrong_answers=[0]))
    assert t.tokens.tolist() == [[1, 61]] and t.answer_ids.tolist() == [61]


def test_tokenize_options_are_checked() -> None:
    t = task(["t1 t2"], answers=["t3"])
    for n_ctx in (0, -1, "32", True, 2.5, None):
        refused(OptionError, lambda n=n_ctx: tokenize(t, n_ctx=n), "n_ctx must be a positive")
    refused(OptionError, lambda: tokenize(t, device="gpu"), "device 'gpu' is not a torch device")
    refused(OptionError, lambda: tokenize(t, device="meta"), "meta")
    refused(OptionError, lambda: tokenize(t, device=0.5), "device must be")
    if not torch.cuda.is_available():
        refused(OptionError, lambda: tokenize(t, device="cuda:0"), "not available here")
    refused(OptionError, lambda: tokenize(t, tokenizer=None), "Hugging Face tokenizer")
    refused(PromptError, lambda: tokenize(t, n_ctx=2), "prompt 0 is 3 tokens long",
            "never truncates")
    assert tokenize(t, n_ctx=3, device=torch.device("cpu")).tokens.tolist() == [[61, 1, 2]]


def test_tokens_and_select_check_their_arguments() -> None:
    tokens = tokenize(task(["t1 t2", "t3", "t4 t5 t6"], answers=["t1", "t2", "t3"]))
    assert tokens.select(1, 3).tokens.tolist() == [[61, 3, 60, 60], [61, 4, 5, 6]]
    for start, stop in ((2, 1), (0, 4), (-1, 2), (1, 1)):
        refused(OptionError, lambda a=start, b=stop: tokens.select(a, b), "select(")
    refused(OptionError, lambda: unchecked(Tokens.select)(tokens, 0.0, 1), "integer bounds")
    make = unchecked(Tokens.__init__)
    ok = torch.zeros(2, 3, dtype=torch.long)
    refused(OptionError, lambda: make(Tokens.__new__(Tokens), ok, torch.ones(3, dtype=torch.long)),
            "Tokens.lengths has shape (3,)")
    refused(OptionError, lambda: make(Tokens.__new__(Tokens), ok.float(), ok[:, 0]),
            "Tokens.tokens must be an integer tensor")
    refused(OptionError, lambda: make(Tokens.__new__(Tokens), ok[0], ok[:, 0]),
            "Tokens.tokens must be a [batch, pos] tensor")
    refused(OptionError, lambda: make(Tokens.__new__(Tokens), ok, ok[:, 0], corrupted_tokens=ok[:1]),
            "Tokens.corrupted_tokens has shape (1, 3)")


def test_chat_entry_points_check_their_arguments() -> None:
    chat = [{"role": "user", "content": "t1"}]
    refused(OptionError, lambda: unchecked(render_chat)(TOK, chat, add_generation_prompt="yes"),
            "add_generation_prompt is a string")
    refused(OptionError, lambda: unchecked(render_chat)(None, chat), "Hugging Face tokenizer")
    refused(PromptError, lambda: unchecked(ChatPrompt.of)(ChatPrompt, "t1"), "chat prompt is a string")
    refused(PromptError, lambda: unchecked(ChatPrompt.of)(ChatPrompt, chat[0]), "single message")
    refused(PromptError, lambda: unchecked(ChatPrompt.of)(ChatPrompt, []), "no messages")
    make = unchecked(ChatPrompt.__init__)
    refused(PromptError, lambda: make(ChatPrompt.__new__(ChatPrompt), (("robot", "x"),)),
            "ChatPrompt message 0")
    refused(PromptError, lambda: make(ChatPrompt.__new__(ChatPrompt), [("user", "x")]),
            "non-empty tuple")


def test_read_task_checks_its_arguments(tmp_path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("t1 t2\n")
    refused(OptionError, lambda: unchecked(read_task)(3), "path must be a file path")
    refused(OptionError, lambda: read_task(path, metrics="kl"), "cannot override 'metrics'",
            "did you mean metric?")
    refused(OptionError, lambda: read_task(path, answers=["t1"]), "cannot override 'answers'")
    refused(MetricError, lambda: unchecked(read_task)(path, metric="kl_al"),
            "p.txt: unknown metric 'kl_al'", "did you mean kl_all?")
    refused(OptionError, lambda: unchecked(read_task)(path, name=3), "name is 3")
    assert read_task(path, metric="kl_all", name="texts").metric_name == "kl_all"
    assert read_task(path, metric=None).metric_name == "kl"  # None keeps the file's value


def test_file_labels_do_not_outlive_a_subset(tmp_path) -> None:
    """A task read from a file names file lines in tokenize-time errors; a subset of it (as the
    demos take with dataclasses.replace) falls back to list positions, never to wrong lines."""
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "t1", "answer": "t2"}\n\n{"prompt": "t3", "answer": "Paris"}\n')
    t = read_task(path)
    refused(AnswerTokenError, lambda: tokenize(t), f"{path}:3: 'answer' = 'Paris'")
    sub = dataclasses.replace(t, prompts=t.prompts[1:], answers=t.answers[1:])
    refused(AnswerTokenError, lambda: tokenize(sub), "answers[0] = 'Paris'")
    assert sub.fingerprint() == Task(["t3"], answers=["Paris"], name="p").fingerprint()
