"""Patching: which components carry the behaviour gap, by exact intervention or its estimate.

* :func:`cross_patch` / :func:`activation_patch` (:mod:`.exact`): exact activation patching across
  two models, or clean-into-corrupted within one, batched at the cost floor.
* :func:`attribute` / :func:`attribute_single` (:mod:`.attribution`): attribution patching and
  integrated gradients, every site at once from a few gradients.
* :class:`PatchResult` (:mod:`.result`): the one result type of all four, with intervals over
  prompts.
"""

from mechdiff.patching._setup import POSITIONS, Positions
from mechdiff.patching.attribution import METHODS, Method, attribute, attribute_single
from mechdiff.patching.exact import activation_patch, cross_patch
from mechdiff.patching.result import PatchResult, RankedSite

__all__ = [
    "METHODS",
    "POSITIONS",
    "Method",
    "PatchResult",
    "Positions",
    "RankedSite",
    "activation_patch",
    "attribute",
    "attribute_single",
    "cross_patch",
]
