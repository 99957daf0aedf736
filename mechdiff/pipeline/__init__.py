"""Pipelines: analyses composed into what the commands and demos run, each returning one savable
result.

* :func:`analyse_pair` (:mod:`.pair`): the behaviour gap of a pair, every site patched in both
  directions (exact and/or attribution), and how the two methods agree.
* :func:`analyse_circuits` (:mod:`.circuits`): each model's circuit, their comparison and the
  verdict, and the edges that carry the gap.
"""

from mechdiff.pipeline.circuits import CircuitAnalysis, analyse_circuits
from mechdiff.pipeline.pair import (
    PAIR_METHODS,
    ComponentRow,
    PairAnalysis,
    PairMethod,
    analyse_pair,
)

__all__ = [
    "PAIR_METHODS",
    "CircuitAnalysis",
    "ComponentRow",
    "PairAnalysis",
    "PairMethod",
    "analyse_circuits",
    "analyse_pair",
]
