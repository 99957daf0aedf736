"""Tokens as people read them: decoded text with visible whitespace, never raw BPE symbols.

Tokenizers store pieces in their own alphabets: byte-level BPE (GPT-2, LLaMA-3, SmolLM2) writes a
leading space as ``Ġ`` and a newline as ``Ċ``; SentencePiece (LLaMA-2, Gemma) writes a space as
``▁`` and unprintable bytes as ``<0x0A>``. Views show the decoded text instead, with whitespace
made visible (:func:`shown`: ``␣`` for a space, ``↵`` for a newline, ``⇥`` for a tab), so a token
that starts a word reads ``␣cat`` and one that continues a word reads ``cat``.

* :func:`token_texts` decodes ids with the tokenizer (exact);
* :func:`readable` decodes a piece already stored as text (e.g. :class:`~mechdiff.gap.GapResult`'s
  tokens, kept as ``convert_ids_to_tokens`` gave them) without the tokenizer, by the conventions
  of both families.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Sequence
from typing import Any

VISIBLE = {" ": "\u2423", "\n": "\u21b5", "\t": "\u21e5", "\r": "\u240d"}
"""How whitespace is shown: space ``␣``, newline ``↵``, tab ``⇥``, carriage return ``␍``."""
EMPTY = "\u2205"
"""How an empty token is shown (``∅``)."""
_SP_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def shown(text: str) -> str:
    """``text`` with its whitespace made visible (``" cat"`` -> ``"␣cat"``); ``∅`` if empty."""
    if not text:
        return EMPTY
    return "".join(VISIBLE.get(c, c) for c in text)


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (``bytes_to_unicode``), inverted: character -> byte."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
                 + list(range(ord("\xae"), ord("\xff") + 1)))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


def readable(piece: str) -> str:
    """The text of a stored token piece, without the tokenizer.

    ``"Ġcat"`` -> ``" cat"``, ``"Ċ"`` -> ``"\\n"``, ``"Ã©"`` -> ``"é"`` (byte-level BPE);
    ``"▁cat"`` -> ``" cat"``, ``"<0x0A>"`` -> ``"\\n"`` (SentencePiece). A piece is read as
    byte-level only when every character is in that alphabet and it either holds one of the
    alphabet's shifted characters (``Ġ``, ``Ċ`` ...) or decodes as UTF-8 to something else, so
    plain words (``"cat"``, ``"é"``) come back unchanged.
    """
    if "\u2581" in piece or _SP_BYTE.fullmatch(piece):
        text = piece.replace("\u2581", " ")
        return _SP_BYTE.sub(lambda m: bytes([int(m.group(1), 16)]).decode("latin-1"), text)
    table = _byte_decoder()
    if not piece or any(c not in table for c in piece):
        return piece
    raw = bytes(table[c] for c in piece)
    if any(ord(c) >= 256 for c in piece):
        return raw.decode("utf-8", errors="replace")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return piece
    return text


def token_texts(tokenizer: Any, ids: Sequence[int]) -> tuple[str, ...]:
    """The text of each token of ``ids``, decoded with ``tokenizer``'s conventions.

    Special tokens keep their names (``<bos>``, ``<|im_start|>``); SentencePiece pieces keep
    their leading space (decoding a single piece would drop it). With a byte-level tokenizer the
    pieces are decoded in sequence, so a character split over several tokens (``é`` as ``Ã`` +
    ``©``) appears whole on the token that completes it, and the tokens before it are empty; the
    texts then join to exactly the decoded prompt.
    """
    ids = [int(i) for i in ids]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if _is_byte_level(tokenizer):
        return _byte_level_texts(ids, pieces, special)
    out = []
    for i, piece in zip(ids, pieces, strict=True):
        if piece is None:
            out.append(f"<{i}>")
        elif i in special or "\u2581" in piece or _SP_BYTE.fullmatch(piece):
            out.append(piece if i in special else readable(piece))
        else:
            out.append(tokenizer.decode([i], skip_special_tokens=False,
                                        clean_up_tokenization_spaces=False))
    return tuple(out)


def _is_byte_level(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` writes pieces in GPT-2's byte-level alphabet."""
    if hasattr(tokenizer, "byte_decoder"):  # slow GPT-2-style tokenizers
        return True
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    return decoder is not None and "ByteLevel" in repr(decoder)


def _byte_level_texts(ids: list[int], pieces: list[str | None],
                      special: set[int]) -> tuple[str, ...]:
    table = _byte_decoder()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out: list[str] = []
    for i, piece in zip(ids, pieces, strict=True):
        if piece is None or i in special or any(c not in table for c in piece):
            tail = decoder.decode(b"", final=True)
            if tail and out:
                out[-1] += tail
            decoder.reset()
            out.append(f"<{i}>" if piece is None else piece)
        else:
            out.append(decoder.decode(bytes(table[c] for c in piece)))
    tail = decoder.decode(b"", final=True)
    if tail and out:
        out[-1] += tail
    return tuple(out)
