"""Views: what the circuitsvis views of a pair need from its models, computed once and saved.

* :func:`pair_views` -> :class:`PairViews` (:mod:`.pair`): per-token KL(fine-tuned || base), the
  change of the next token's log-probability and of the task quantity at every position, and the
  attention patterns of chosen heads (:func:`top_heads` of a patching or attribution result) in
  both models, on a few prompts.
* :mod:`.tokens`: tokens decoded for people (``␣cat``, never ``Ġcat``).

Drawing them is :mod:`mechdiff.viz.views` (circuitsvis) and :mod:`mechdiff.report.html` (the
page); both read a saved :class:`PairViews` alone, without models.
"""

from mechdiff.views.pair import (
    DEFAULT_K,
    DEFAULT_PROMPTS,
    TASK_QUANTITY,
    PairViews,
    RankedHead,
    pair_views,
    top_heads,
)
from mechdiff.views.tokens import readable, shown, token_texts

__all__ = [
    "DEFAULT_K",
    "DEFAULT_PROMPTS",
    "TASK_QUANTITY",
    "PairViews",
    "RankedHead",
    "pair_views",
    "readable",
    "shown",
    "token_texts",
    "top_heads",
]
