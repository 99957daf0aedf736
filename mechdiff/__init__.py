"""mechdiff: what did fine-tuning change inside this model, where, and how?

A TransformerLens plugin that loads a base and a fine-tuned model as hooked models, measures the
behavioural gap, and attributes it to attention heads, MLPs and residual positions by exact
cross-model activation patching. A first analysis::

    import mechdiff
    pair = mechdiff.load_pair("base_dir", "finetuned_dir")
    result = mechdiff.cross_patch(pair, mechdiff.Task(prompts, answers, wrong_answers), sites="heads")
    print(result.table())
"""

from mechdiff import errors
from mechdiff.gap import GapResult, behaviour_gap
from mechdiff.loading import ModelPair, load_pair
from mechdiff.patching import (
    PatchResult,
    RankedSite,
    activation_patch,
    attribute,
    attribute_single,
    cross_patch,
)
from mechdiff.results import Provenance, load_result
from mechdiff.sites import MLP, AttnOut, Head, Resid
from mechdiff.tasks import ChatPrompt, Task, Tokens, render_chat

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "AttnOut",
    "ChatPrompt",
    "GapResult",
    "Head",
    "ModelPair",
    "PatchResult",
    "Provenance",
    "RankedSite",
    "Resid",
    "Task",
    "Tokens",
    "activation_patch",
    "attribute",
    "attribute_single",
    "behaviour_gap",
    "cross_patch",
    "errors",
    "load_pair",
    "load_result",
    "render_chat",
]
