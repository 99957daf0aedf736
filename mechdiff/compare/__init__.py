"""Comparisons: two scorings, two fine-tunes, or a fine-tune and a prompt, set side by side.

* :func:`agreement` (:mod:`.agreement`): rank agreement of two scorings of the same sites (exact
  patching vs its gradient estimate; a LoRA vs a full fine-tune), with intervals over prompts.
* :func:`compare_finetunes` (:mod:`.finetunes`): two fine-tunes of one behaviour, site by site.
* :func:`interaction` (:mod:`.interaction`): do a fine-tune's component effects add up or act in
  series? (sufficiency against necessity, the series index).
* :func:`compare_prompted_base` (:mod:`.prompted`): the prompted base as a third model.
* :mod:`.readings`: numbers read against named thresholds, saying when an interval straddles one.

Every comparison is a saved result (:class:`Agreement`, :class:`FinetuneComparison`,
:class:`PromptedBaseComparison`).
"""

from mechdiff.compare.agreement import TOP_K, Agreement, agreement
from mechdiff.compare.finetunes import FinetuneComparison, compare_finetunes
from mechdiff.compare.interaction import SERIES_THRESHOLD, Interaction, interaction
from mechdiff.compare.prompted import PromptedBaseComparison, compare_prompted_base
from mechdiff.compare.readings import Band, Reading, read

__all__ = [
    "SERIES_THRESHOLD",
    "TOP_K",
    "Agreement",
    "Band",
    "FinetuneComparison",
    "Interaction",
    "PromptedBaseComparison",
    "Reading",
    "agreement",
    "compare_finetunes",
    "compare_prompted_base",
    "interaction",
    "read",
]
