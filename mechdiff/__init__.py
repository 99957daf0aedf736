"""mechdiff: what did fine-tuning change inside this model, where, and how?

A TransformerLens plugin that loads a base and a fine-tuned model as hooked models, measures the
behavioural gap, and attributes it to attention heads, MLPs and residual positions by exact
cross-model activation patching. A first analysis::

    import mechdiff
    pair = mechdiff.load_pair("base_dir", "finetuned_dir")
    result = mechdiff.cross_patch(pair, mechdiff.Task(prompts, answers, wrong_answers), sites="heads")
    print(result.table())
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

# The public names load on first use (PEP 562): ``import mechdiff`` costs nothing until a name
# is used, so the command line can start, answer --help and take Ctrl-C before torch and
# TransformerLens are imported.
_PUBLIC: dict[str, str] = {
    "errors": "mechdiff.errors",
    "GapResult": "mechdiff.gap", "behaviour_gap": "mechdiff.gap",
    "ModelPair": "mechdiff.loading", "load_pair": "mechdiff.loading",
    "PatchResult": "mechdiff.patching", "RankedSite": "mechdiff.patching",
    "activation_patch": "mechdiff.patching", "attribute": "mechdiff.patching",
    "attribute_single": "mechdiff.patching", "cross_patch": "mechdiff.patching",
    "Provenance": "mechdiff.results", "load_result": "mechdiff.results",
    "MLP": "mechdiff.sites", "AttnOut": "mechdiff.sites", "Head": "mechdiff.sites",
    "Resid": "mechdiff.sites",
    "ChatPrompt": "mechdiff.tasks", "Task": "mechdiff.tasks", "Tokens": "mechdiff.tasks",
    "render_chat": "mechdiff.tasks",
}

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:  # a subpackage used as an attribute (mechdiff.circuits.edge_attribution)
        if importlib.util.find_spec(f"mechdiff.{name}") is None:
            raise AttributeError(f"module 'mechdiff' has no attribute {name!r}")
        module = f"mechdiff.{name}"
    mod = importlib.import_module(module)
    value = mod if module == f"mechdiff.{name}" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


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
