"""Chat prompts in Task: validation, rendering with the tokenizer's template, the read position.

A tiny word-level tokenizer with a ChatML template (built on the fly); the real SmolLM2 tokenizer
is tested in test_real_model.py.
"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mechdiff import ChatPrompt, Task, render_chat
from mechdiff.errors import PromptError

WORDS = [
    "<pad>",
    "<|im_start|>",
    "<|im_end|>",
    "system",
    "user",
    "assistant",
    "\n",
    "hi",
    "there",
    "be",
    "brief",
    "ok",
    "sure",
]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_tokenizer(template: str | None = CHATML) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.WhitespaceSplit()]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = template
    return fast


def test_chat_prompt_renders_with_template_and_reads_last_prompt_token() -> None:
    tok = chat_tokenizer()
    convs = [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}],
    ]
    t = Task(convs, answers=["ok", "sure"]).tokenize(tok, n_ctx=64)
    for i, conv in enumerate(convs):
        text = render_chat(tok, conv)
        assert text.endswith("<|im_start|>assistant\n")
        ids = tok(text, add_special_tokens=False)["input_ids"]
        n = int(t.lengths[i])
        assert t.tokens[i, :n].tolist() == ids  # no extra BOS: the template has its own
        assert ids.count(tok.bos_token_id) == len(conv) + 1
        # The full conversation continues the prompt; its next token is the first reply token.
        full = render_chat(
            tok, [*conv, {"role": "assistant", "content": "ok"}], add_generation_prompt=False
        )
        full_ids = tok(full, add_special_tokens=False)["input_ids"]
        assert full_ids[:n] == ids
        assert full_ids[int(t.read_pos[i]) + 1] == tok.convert_tokens_to_ids("ok")


def test_chat_prompts_mix_with_strings_and_freeze() -> None:
    conv = [{"role": "user", "content": "hi"}]
    task = Task([conv, "hi there"], corrupted=[conv, "hi there"])
    assert isinstance(task.prompts[0], ChatPrompt) and task.prompts[1] == "hi there"
    assert task.prompts[0].as_dicts() == conv
    conv[0]["content"] = "changed"  # the task holds a frozen copy
    assert task.prompts[0].messages == (("user", "hi"),)
    same = Task(
        [[{"role": "user", "content": "hi"}], "hi there"],
        corrupted=[[{"role": "user", "content": "hi"}], "hi there"],
    )
    other = Task(
        [[{"role": "system", "content": "hi"}], "hi there"],
        corrupted=[[{"role": "user", "content": "hi"}], "hi there"],
    )
    assert task.fingerprint() == same.fingerprint() != other.fingerprint()


@pytest.mark.parametrize(
    "bad",
    [
        [{"role": "robot", "content": "hi"}],
        [{"role": "user", "content": 3}],
        [{"role": "user"}],
        [{"role": "user", "content": "hi", "name": "x"}],
    ],
)
def test_malformed_messages_are_prompt_errors(bad: list) -> None:
    with pytest.raises(PromptError):
        Task([bad])


def test_chat_prompt_without_template_is_a_prompt_error() -> None:
    task = Task([[{"role": "user", "content": "hi"}]])
    with pytest.raises(PromptError, match="chat template"):
        task.tokenize(chat_tokenizer(template=None), n_ctx=64)


def test_chat_prompt_longer_than_context_is_refused() -> None:
    task = Task([[{"role": "user", "content": "hi there " * 20}]])
    with pytest.raises(PromptError, match="never truncates"):
        task.tokenize(chat_tokenizer(), n_ctx=16)


def test_chat_prompts_from_jsonl_file(tmp_path) -> None:
    import json

    rows = [{"prompt": [{"role": "user", "content": "hi"}], "answer": "ok", "wrong_answer": "sure"}]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = Task.from_file(path)
    assert isinstance(task.prompts[0], ChatPrompt) and task.metric_name == "logit_diff"
    t = task.tokenize(chat_tokenizer(), n_ctx=64)
    # This tokenizer drops whitespace: the assistant header is the last prompt token.
    assert t.tokens[0, int(t.read_pos[0])] == chat_tokenizer().convert_tokens_to_ids("assistant")
