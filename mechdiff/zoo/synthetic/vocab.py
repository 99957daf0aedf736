"""The zoo's word-level vocabulary and tokenizer.

Every token is a readable word: the letters ``a``..``z`` (the "content" tokens the tasks shuffle),
the digits ``0``..``9`` (values in key-value recall), a few symbols that mark task formats, and the
special tokens ``<pad>``, ``<bos>`` and ``<unk>``. A prompt is a string of tokens separated by single
spaces, e.g. ``"a = 3 , f = 7 ; f ="``, so token strings and prompt strings round-trip exactly.

The tokenizer is a HF ``tokenizers`` WordLevel model with a WhitespaceSplit pre-tokenizer, wrapped
as a :class:`transformers.PreTrainedTokenizerFast`, so it saves and loads like any HF tokenizer and
TransformerLens boots it from a model directory. It never adds special tokens by itself: callers
(mechdiff's :class:`~mechdiff.tasks.Task`, TransformerLens's ``to_tokens``) prepend ``<bos>``.
"""

from __future__ import annotations

import string
from functools import cache

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, UNK = "<pad>", "<bos>", "<unk>"
LETTERS: tuple[str, ...] = tuple(string.ascii_lowercase)
DIGITS: tuple[str, ...] = tuple(string.digits)
EQ, COMMA, SEMI, ARROW, BAR, QUERY = "=", ",", ";", "->", "|", "?"
"""Format markers. ``?`` (the new-skill marker) never appears in pretraining data."""
SYMBOLS: tuple[str, ...] = (EQ, COMMA, SEMI, ARROW, BAR, QUERY)

TOKENS: tuple[str, ...] = (PAD, BOS, UNK, *LETTERS, *DIGITS, *SYMBOLS)
"""Every token, in id order."""
ID: dict[str, int] = {t: i for i, t in enumerate(TOKENS)}
"""Token string -> id."""
VOCAB_SIZE = len(TOKENS)
LETTER_IDS: tuple[int, ...] = tuple(ID[t] for t in LETTERS)
DIGIT_IDS: tuple[int, ...] = tuple(ID[t] for t in DIGITS)


@cache
def _tokenizer(model_max_length: int) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.WordLevel(vocab=dict(ID), unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=BOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
    )


def tokenizer(model_max_length: int = 32) -> PreTrainedTokenizerFast:
    """The zoo tokenizer (shared instance per ``model_max_length``; do not mutate it).

    Args:
        model_max_length: the context length recorded in the tokenizer (the model's
            ``n_positions``).
    """
    return _tokenizer(model_max_length)


def decode(ids: list[int] | tuple[int, ...]) -> str:
    """Token ids -> a prompt string (tokens joined by single spaces)."""
    return " ".join(TOKENS[i] for i in ids)
