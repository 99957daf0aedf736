"""Procedural data for the zoo: four task families, each a string format with a known rule.

Every example begins with ``<bos>`` and marks which positions carry a training target (positions
whose next token follows from the rule; the rest are random and are not trained on):

* ``induction``: ``x1 .. xL | x1 .. xL``, distinct random letters, ``L`` in 4..10. Every token
  after ``|`` is predictable only by finding the earlier occurrence of the current token and copying
  the token after it (an induction head; Olsson et al., 2022, "In-context learning and induction
  heads"). Varying ``L`` keeps a fixed positional offset from solving it.
* ``kv_recall``: ``k1 v1 , k2 v2 , ... ; kq`` -> ``vq``: letter keys, digit values, one to three
  queries; only the queried values are trained. The rule is solved by the same induction
  mechanism (find the earlier ``kq``, copy the token after it) among distractor pairs. (Formats
  that put a token between key and value, ``k = v``, or query with ``kq =``, reached only ~50%
  accuracy within the zoo's CPU budget, so they are not used.)
* ``ambiguous``: ``x1 x2 x3 x4 ->`` continued by a copy ``x1 x2 x3 x4`` (probability
  ``1 - p_reverse``) or the reversal ``x4 x3 x2 x1`` (``p_reverse``). The first answer token is
  the only uncertain one; a model trained on the mix puts about ``p_reverse`` on ``x4`` there.
* ``newskill``: ``x1 .. xL ?`` -> the successor of ``xL`` in the alphabet (``z`` wraps to ``a``).
  The marker ``?`` never occurs in the other families, so a base model pretrained on them has never
  seen the format.

All randomness comes from a :class:`random.Random` passed in: the same seed gives the same examples.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from mechdiff.errors import OptionError
from mechdiff.zoo.synthetic.vocab import (
    ARROW,
    BAR,
    BOS,
    COMMA,
    DIGIT_IDS,
    ID,
    LETTER_IDS,
    PAD,
    QUERY,
    SEMI,
)

WIDTH = 24
"""Token width of a training batch (every family's longest example fits)."""
IGNORE = -100
"""Target value of untrained positions (``torch.nn.functional.cross_entropy``'s ignore index)."""


@dataclass(frozen=True)
class Example:
    """One procedurally generated sequence.

    Attributes:
        ids: token ids, beginning with ``<bos>``.
        trained: positions whose next token is a training target.
        answer_pos: the position whose next token an evaluation prompt asks for (the prompt is
            ``ids[: answer_pos + 1]``).
    """

    ids: tuple[int, ...]
    trained: tuple[int, ...]
    answer_pos: int


def _letters(rng: random.Random, k: int) -> list[int]:
    return rng.sample(LETTER_IDS, k)


def induction(
    rng: random.Random, *, length: int | None = None, query: int | None = None
) -> Example:
    """``x1 .. xL | x1 .. xL``; evaluation asks for ``x(query+1)`` after ``x1 .. x(query)``.

    Args:
        rng: the source of randomness.
        length: ``L``; random in 4..10 when None.
        query: how many repeated tokens the evaluation prompt shows; random in 1..L-1 when None.
    """
    n = rng.randint(4, 10) if length is None else length
    q = rng.randint(1, n - 1) if query is None else query
    xs = _letters(rng, n)
    ids = [ID[BOS], *xs, ID[BAR], *xs]
    bar = n + 1
    return Example(tuple(ids), tuple(range(bar, len(ids) - 1)), bar + q)


def kv_recall(
    rng: random.Random,
    *,
    pairs: int | None = None,
    queries: int | None = None,
    distinct_values: bool = False,
) -> Example:
    """``k1 v1 , k2 v2 , ... , kP vP ; kq vq ; kr vr``: key-value pairs, then queries.

    Every queried value is trained; evaluation asks for the last one.

    Args:
        rng: the source of randomness.
        pairs: ``P``; random in 2..5 when None.
        queries: how many keys are queried (distinct); when None, random from 1 to as many as fit
            in :data:`WIDTH` tokens (at most ``P`` and 3).
        distinct_values: draw the values without repetition (evaluation: every other key's value
            is then a genuinely wrong answer).
    """
    n = rng.randint(2, 5) if pairs is None else pairs
    q = rng.randint(1, max(1, min(n, 3, (WIDTH - 3 * n) // 3))) if queries is None else queries
    keys = _letters(rng, n)
    values = rng.sample(DIGIT_IDS, n) if distinct_values else [rng.choice(DIGIT_IDS) for _ in keys]
    ids = [ID[BOS]]
    for i, (k, v) in enumerate(zip(keys, values, strict=True)):
        if i:
            ids.append(ID[COMMA])
        ids += [k, v]
    trained = []
    for j in rng.sample(range(n), min(q, n)):
        ids += [ID[SEMI], keys[j], values[j]]
        trained.append(len(ids) - 2)
    return Example(tuple(ids), tuple(trained), trained[-1])


def ambiguous(rng: random.Random, *, p_reverse: float = 0.3, length: int = 4) -> Example:
    """``x1 .. x4 ->`` then a copy (``1 - p_reverse``) or the reversal (``p_reverse``).

    Args:
        rng: the source of randomness.
        p_reverse: probability of the reversed continuation.
        length: how many letters precede ``->``.
    """
    xs = _letters(rng, length)
    ys = xs[::-1] if rng.random() < p_reverse else xs
    ids = [ID[BOS], *xs, ID[ARROW], *ys]
    arrow = length + 1
    return Example(tuple(ids), tuple(range(arrow, len(ids) - 1)), arrow)


def successor(letter_id: int) -> int:
    """The id of the next letter in the alphabet, ``z`` wrapping to ``a``."""
    i = LETTER_IDS.index(letter_id)
    return LETTER_IDS[(i + 1) % len(LETTER_IDS)]


def newskill(rng: random.Random, *, length: int | None = None) -> Example:
    """``x1 .. xL ?`` -> successor of ``xL``.

    Args:
        rng: the source of randomness.
        length: ``L``; random in 1..6 when None.
    """
    n = rng.randint(1, 6) if length is None else length
    xs = _letters(rng, n)
    ids = [ID[BOS], *xs, ID[QUERY], successor(xs[-1])]
    return Example(tuple(ids), (len(ids) - 2,), len(ids) - 2)


FAMILIES: dict[str, Callable[[random.Random], Example]] = {
    "induction": induction,
    "kv_recall": kv_recall,
    "ambiguous": ambiguous,
    "ambiguous_reversed": lambda rng: ambiguous(rng, p_reverse=1.0),
    "newskill": newskill,
}
"""Training families by name (``ambiguous`` with the pretraining split, 30% reversed)."""


def _counts(mix: Mapping[str, float], size: int) -> dict[str, int]:
    """Split ``size`` by the weights in ``mix`` (largest remainder, deterministic)."""
    total = sum(mix.values())
    exact = {k: size * w / total for k, w in mix.items()}
    counts = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(mix, key=lambda k: (counts[k] - exact[k], k))
    for k in by_remainder[: size - sum(counts.values())]:
        counts[k] += 1
    return counts


def batch(
    rng: random.Random, mix: Mapping[str, float], size: int
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """A training batch: ``size`` examples split between families by the weights in ``mix``.

    Args:
        rng: the source of randomness.
        mix: family name (a key of :data:`FAMILIES`) -> weight.
        size: number of examples.

    Returns:
        ``(tokens, targets)``, both ``[size, WIDTH]``: tokens right-padded with ``<pad>``;
        ``targets[i, t]`` is ``tokens[i, t + 1]`` at trained positions and :data:`IGNORE` elsewhere.
    """
    unknown = set(mix) - set(FAMILIES)
    if unknown:
        raise OptionError(f"unknown data families {sorted(unknown)}; known: {sorted(FAMILIES)}")
    tokens = torch.full((size, WIDTH), ID[PAD], dtype=torch.long)
    targets = torch.full((size, WIDTH), IGNORE, dtype=torch.long)
    row = 0
    for name, count in _counts(mix, size).items():
        for _ in range(count):
            ex = FAMILIES[name](rng)
            ids = torch.tensor(ex.ids, dtype=torch.long)
            tokens[row, : len(ids)] = ids
            pos = torch.tensor(ex.trained, dtype=torch.long)
            targets[row, pos] = ids[pos + 1]
            row += 1
    return tokens, targets
