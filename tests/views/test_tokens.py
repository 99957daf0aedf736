"""Tokens read as text: byte-level BPE and SentencePiece pieces decoded (never ``Ġ`` or ``▁``),
checked against real tokenizers built in memory; whitespace made visible."""

from __future__ import annotations

import pytest
from support import make_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mechdiff.views import readable, shown, token_texts

TEXTS = ["The cat sat on the mat.", "Caf\u00e9 na\u00efve \u00fcber", "line one\nline two\tend",
         "  two spaces", "emoji \U0001f600 ok", "price: $5 (approx)"]


def _byte_level() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 3, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|bos|>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>")


def _metaspace() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(TEXTS[:1] * 3, trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<unk>", "<s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>")


def test_byte_level_tokens_decode_exactly_and_without_bpe_symbols() -> None:
    tok = _byte_level()
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        pieces = tok.convert_ids_to_tokens(ids)
        assert any("\u0120" in p for p in pieces) or " " not in text.strip()
        decoded = token_texts(tok, ids)
        assert "".join(decoded) == text  # split multi-byte characters land whole on one token
        assert not any("\u0120" in t or "\u010a" in t for t in decoded)
        # Without the tokenizer, a stored piece that holds whole characters reads as the
        # tokenizer decodes it alone (a piece holding part of a character cannot).
        whole = 0
        for i, piece, expected in zip(ids, pieces, decoded, strict=True):
            if expected and tok.decode([i]) == expected:
                assert readable(piece) == expected
                whole += 1
        assert whole >= len(ids) // 2


def test_a_character_split_over_tokens_lands_on_the_token_that_completes_it() -> None:
    tok = _byte_level()
    ids = tok("\U0001f600", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1  # a 4-byte character this small vocabulary cannot hold in one piece
    assert token_texts(tok, ids) == ("",) * (len(ids) - 1) + ("\U0001f600",)


def test_sentencepiece_pieces_keep_their_leading_space() -> None:
    tok = _metaspace()
    ids = tok("The cat sat on the mat.", add_special_tokens=False)["input_ids"]
    decoded = token_texts(tok, ids)
    assert "".join(decoded) == " The cat sat on the mat."  # Metaspace marks the first word too
    assert not any("\u2581" in t for t in decoded)
    assert any(t.startswith(" ") and len(t) > 1 for t in decoded[1:])


@pytest.mark.parametrize(("piece", "text"), [
    ("\u0120cat", " cat"), ("\u010a", "\n"), ("\u00c3\u00a9", "\u00e9"), ("\u2581cat", " cat"),
    ("<0x0A>", "\n"), ("cat", "cat"), ("\u00e9", "\u00e9"), ("t5", "t5"), ("<bos>", "<bos>"),
    ("", ""), (" yes", " yes"), ("\u4e2d", "\u4e2d"),
])
def test_readable(piece: str, text: str) -> None:
    assert readable(piece) == text


def test_shown_marks_whitespace() -> None:
    assert shown(" cat") == "\u2423cat"
    assert shown("\n") == "\u21b5" and shown("\t") == "\u21e5"
    assert shown("") == "\u2205"
    assert shown("cat") == "cat"


def test_special_tokens_keep_their_names() -> None:
    tok = make_tokenizer()
    ids = tok("<bos> t3 t4", add_special_tokens=False)["input_ids"]
    assert token_texts(tok, ids) == ("<bos>", "t3", "t4")
    byte = _byte_level()
    bos = byte.convert_tokens_to_ids("<|bos|>")
    assert token_texts(byte, [bos])[0] == "<|bos|>"


def test_an_answer_of_several_tokens_is_refused_with_decoded_pieces() -> None:
    """The error names the pieces as people read them (``␣cat``), never as BPE symbols."""
    from mechdiff.errors import AnswerTokenError
    from mechdiff.tasks.encoding import answer_ids

    tok = _byte_level()
    answer = " approximately"
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1
    with pytest.raises(AnswerTokenError) as err:
        answer_ids(tok, [answer], ["answers[0]"], len(tok))
    message = str(err.value)
    assert "\u0120" not in message
    assert " | ".join(shown(t) for t in token_texts(tok, ids)) in message
    assert message.count("\u2423") >= 2  # the first piece's space and the legend
