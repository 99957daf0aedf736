"""LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"), checked
against their base and merged into a fresh copy of it.

An adapter is a difference from one particular base model; merged into another it gives a model
nobody trained, and nothing in the numbers shows it. Before any weight is read:

* ``adapter_config.json`` must be a JSON object describing a LoRA adapter (``peft_type`` LORA);
* its ``base_model_name_or_path`` must name the base it is merged into: the same directory, the
  same hub name, or the name the base's own ``config.json`` records. A mismatch (or no record) is
  an :class:`~mechdiff.errors.IncompatibleModelsError` unless ``allow_adapter_mismatch=True``
  (for a base that was moved or renamed);
* every adapter tensor must fit the base: each ``lora_A`` / ``lora_B`` targets a module the base
  has, with the base weight's input and output sizes (``Linear``, GPT-2's ``Conv1D`` and embeddings
  read the right axes) and one rank. A shape mismatch cannot be merged and is always an error.

The merge itself (``peft``'s ``merge_and_unload``) runs on the base's raw weights, into a
temporary directory that TransformerLens boots from.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from mechdiff.errors import CheckpointError, IncompatibleModelsError, MissingDependencyError
from mechdiff.loading.checkpoints import (
    Checkpoint,
    bin_shapes,
    is_local,
    meta_model,
    read_json_object,
    safetensors_shapes,
)

ADAPTER_CONFIG = "adapter_config.json"
_LORA_KEY = re.compile(
    r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
    r"(?:\.weight|(?P<bias>\.bias))?$"
)
_SHOWN = 8


def is_adapter_dir(spec: Any) -> bool:
    """Whether a spec is a local directory holding a peft adapter."""
    return is_local(spec) and (Path(spec).expanduser() / ADAPTER_CONFIG).is_file()


def require_peft(adapter: Path) -> None:
    """:class:`MissingDependencyError` saying what to install if ``peft`` is missing."""
    try:
        import peft  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            f"{adapter} is a LoRA adapter; merging it needs peft: pip install 'mechdiff[lora]'"
        ) from e


def check_adapter(
    adapter: Path, base: Checkpoint, *, base_name: str | None, allow_mismatch: bool
) -> dict[str, Any]:
    """Check an adapter directory against the base it is merged into; return its config.

    Args:
        adapter: the adapter directory.
        base: the checked base checkpoint.
        base_name: the hub name the base was given as (``None`` for a directory).
        allow_mismatch: accept an adapter recorded as trained on another base.

    Raises:
        CheckpointError: not a LoRA adapter, or no adapter weights.
        IncompatibleModelsError: trained on another base, or tensors that do not fit the base.
    """
    config = read_json_object(adapter / ADAPTER_CONFIG, ADAPTER_CONFIG)
    peft_type = config.get("peft_type")
    if str(peft_type).upper() != "LORA":
        raise CheckpointError(
            f"{adapter}/{ADAPTER_CONFIG} describes a {peft_type!r} adapter; mechdiff merges LoRA "
            "adapters only (peft_type 'LORA')"
        )
    recorded = config.get("base_model_name_or_path")
    if not allow_mismatch and not _same_base(recorded, base, base_name):
        gone = (isinstance(recorded, str) and is_local(recorded)
                and not Path(recorded).expanduser().exists())
        why = (f"was trained on {recorded!r}" + (" (no longer there)" if gone else "")
               if recorded else "records no base model")
        raise IncompatibleModelsError(
            f"LoRA adapter {adapter} {why} (adapter_config.json base_model_name_or_path), but "
            f"it is being merged into {base_name or base.path}. Merged into another base it "
            "gives a model nobody trained. If this base is the same model (a moved or renamed "
            "copy), pass allow_adapter_mismatch=True (CLI: --allow-adapter-mismatch)."
        )
    _check_shapes(adapter, base)
    return config


def _same_base(recorded: Any, base: Checkpoint, base_name: str | None) -> bool:
    if not isinstance(recorded, str) or not recorded:
        return False
    if base_name is not None and recorded == base_name:
        return True
    path = Path(recorded).expanduser()
    if path.exists():
        return path.resolve() == base.path.resolve()
    return recorded in {base.config.get("_name_or_path"), base.config.get("_model_name_or_path")}


def _adapter_shapes(adapter: Path) -> dict[str, tuple[int, ...]]:
    for name, reader in (("adapter_model.safetensors", safetensors_shapes),
                         ("adapter_model.bin", bin_shapes)):
        if (adapter / name).is_file():
            return reader(adapter / name)
    raise CheckpointError(
        f"{adapter} has an {ADAPTER_CONFIG} but no adapter weights (adapter_model.safetensors "
        "or adapter_model.bin)"
    )


def _check_shapes(adapter: Path, base: Checkpoint) -> None:
    shapes = _adapter_shapes(adapter)
    model = meta_model(base.path)
    modules = dict(model.named_modules())
    params = dict(model.state_dict())
    problems: list[str] = []
    ranks: dict[str, dict[str, int]] = {}
    for key, shape in shapes.items():
        name = key.removeprefix("base_model.model.")
        m = _LORA_KEY.match(name)
        if m is None:  # a fully saved module (modules_to_save): same shape as the base's
            plain = re.sub(r"\.modules_to_save(\.[A-Za-z0-9_]+)?", "", name)
            if plain not in params:
                problems.append(f"{key}: the base has no tensor {plain}")
            elif tuple(params[plain].shape) != shape:
                problems.append(f"{key} {list(shape)}: the base's {plain} is "
                                f"{list(params[plain].shape)}")
            continue
        module = modules.get(m["module"])
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            problems.append(f"{key}: the base has no module {m['module']} with a weight")
            continue
        size_in, size_out = _in_out(module, weight)
        kind, rank_axis = m["kind"], 0 if m["kind"].endswith("A") else -1
        if m["bias"]:
            want = {"lora_B": (size_out,)}.get(kind)
            if want is not None and shape != want:
                problems.append(f"{key} {list(shape)}: expected {list(want)}")
            continue
        if len(shape) != 2:
            problems.append(f"{key} {list(shape)}: a LoRA factor is a matrix")
            continue
        fit = shape[1] == size_in if kind.endswith("A") else shape[0] == size_out
        if not fit:
            side = f"input size {size_in}" if kind.endswith("A") else f"output size {size_out}"
            problems.append(f"{key} {list(shape)}: the base's {m['module']} has {side}")
        ranks.setdefault(m["module"], {})[kind[-1]] = shape[rank_axis]
    problems += [f"{module}: lora_A has rank {r['A']} but lora_B rank {r['B']}"
                 for module, r in ranks.items() if len(set(r.values())) > 1]
    if problems:
        shown = "; ".join(problems[:_SHOWN]) + (f"; ... ({len(problems)} in all)"
                                                if len(problems) > _SHOWN else "")
        raise IncompatibleModelsError(
            f"LoRA adapter {adapter} does not fit base {base.path}: {shown}. It was trained on "
            "a model of another architecture or size; it cannot be merged into this one."
        )


def _in_out(module: torch.nn.Module, weight: torch.Tensor) -> tuple[int, int]:
    """(input size, output size) of the module a LoRA factor pair adapts."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):  # GPT-2: weight is [in, out]
        return int(weight.shape[0]), int(weight.shape[1])
    if isinstance(module, torch.nn.Embedding):  # lora_embedding_A [r, num], B [dim, r]
        return int(weight.shape[0]), int(weight.shape[1])
    return int(weight.shape[1]), int(weight.shape[0])  # Linear: weight is [out, in]


def merged_booter(
    base: Path, adapter: Path, *, boot: Callable[..., TransformerBridge], dtype: torch.dtype,
    **boot_kwargs: Any,
) -> Callable[[], TransformerBridge]:
    """A function returning a fresh raw bridge of ``adapter`` merged into ``base`` on each call."""

    def fresh() -> TransformerBridge:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            with torch.random.fork_rng(devices=[]):  # loading draws from the global RNG
                hf = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype)
                merged = PeftModel.from_pretrained(hf, str(adapter)).merge_and_unload()
        except Exception as e:  # noqa: BLE001 - re-raised typed
            raise CheckpointError(
                f"cannot merge LoRA adapter {adapter} into {base}: {type(e).__name__}: {e}"
            ) from e
        # boot_transformers needs a directory it can read the config and tokenizer from.
        with tempfile.TemporaryDirectory(prefix="mechdiff-lora-") as tmp:
            merged.save_pretrained(tmp)
            del hf, merged
            tok_src = adapter if (adapter / "tokenizer_config.json").is_file() else base
            AutoTokenizer.from_pretrained(str(tok_src)).save_pretrained(tmp)
            return boot(tmp, dtype=dtype, **boot_kwargs)

    return fresh
