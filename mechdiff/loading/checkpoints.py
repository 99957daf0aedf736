"""Checkpoint checks made before any weight is loaded.

A Hugging Face directory is checked in this order, each failure a
:class:`~mechdiff.errors.CheckpointError` naming the file and what to do:

1. ``config.json`` exists, is UTF-8 JSON and is an object;
2. the model family is a supported causal LM (:mod:`mechdiff.loading.families`);
3. weight files exist in one of the layouts ``transformers`` loads (``model.safetensors``, a
   sharded ``model.safetensors.index.json``, ``pytorch_model.bin`` or its sharded index), every
   shard the index names is present, and no safetensors file is truncated;
4. the checkpoint's tensors are the ones the architecture expects: the model is built on the
   ``meta`` device from the config (no memory, no weights) and its state-dict keys and shapes are
   compared with the tensor names and shapes read from the weight files' headers, after
   ``transformers``' own key renaming (base-model prefix, legacy names). Tensors missing from the
   checkpoint would otherwise be initialised at random without an error; tied weights
   (``lm_head.weight`` when ``tie_word_embeddings``) are legitimately absent, and the patterns the
   architecture declares ignorable (e.g. GPT-2's ``attn.bias`` masks) are ignored.

A Hugging Face model *name* is first resolved to a local snapshot (the hub cache, downloading if
a hub is reachable) and then checked the same way.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mechdiff.errors import CheckpointError
from mechdiff.loading.families import check_family

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
_SHOWN = 8  # tensor names listed per problem in a message


@dataclass(frozen=True)
class Checkpoint:
    """A local model directory that passed the checks.

    Attributes:
        path: the directory.
        config: ``config.json``, parsed.
        model_type: its ``model_type`` (a supported family).
        shapes: every tensor the weight files hold, by name as stored -> shape.
    """

    path: Path
    config: dict[str, Any]
    model_type: str
    shapes: dict[str, tuple[int, ...]]


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """Parse ``path`` as a JSON object, else :class:`CheckpointError` calling it ``what``."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({what} is not valid UTF-8 JSON: {e})") from e
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e
    if not isinstance(value, dict):
        raise CheckpointError(
            f"{path} is corrupt: {what} must be a JSON object, but it holds a "
            f"{type(value).__name__}"
        )
    return value


def check_checkpoint(path: Path) -> Checkpoint:
    """Run every check of the module docstring on a local directory; nothing is loaded."""
    if path.is_file():
        raise CheckpointError(f"{path} is a file, not a checkpoint directory: give the folder "
                              "holding config.json and the weights")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"{path} has no config.json: it is not a Hugging Face model directory (save one with "
            "model.save_pretrained(dir) and tokenizer.save_pretrained(dir))"
        )
    config = read_json_object(config_file, "config.json")
    model_type = check_family(config, path)
    shapes = _checkpoint_shapes(path)
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise CheckpointError(
            f"{path} has no tokenizer ({', '.join(_TOKENIZER_FILES)}); save the tokenizer in the "
            "same directory (tokenizer.save_pretrained(dir))"
        )
    model = meta_model(path)
    _compare_tensors(path, model, shapes)
    return Checkpoint(path, config, model_type, shapes)


def meta_model(path: Path) -> torch.nn.Module:
    """The architecture of ``path`` built on the ``meta`` device from its config (no weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(path))
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)
    except Exception as e:  # noqa: BLE001 - re-raised typed, naming the config
        raise CheckpointError(
            f"{path}/config.json does not describe a model transformers can build: "
            f"{type(e).__name__}: {e}"
        ) from e


# ------------------------------------------------------------------------------ weight files


def _checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape over the weight files ``transformers`` would load from ``path``."""
    for index_name, single, reader in (
        (SAFETENSORS_INDEX, SAFETENSORS, safetensors_shapes),
        (BIN_INDEX, BIN, bin_shapes),
    ):
        if (path / single).is_file():
            return reader(path / single)
        if (path / index_name).is_file():
            return _sharded_shapes(path / index_name, reader)
    others = sorted(p.name for p in [*path.glob("*.safetensors"), *path.glob("*.bin")])
    hint = f" ({', '.join(others)} are not names transformers loads)" if others else ""
    raise CheckpointError(
        f"{path} has a config.json but no weight files (*.safetensors, *.bin): expected "
        f"{SAFETENSORS}, {SAFETENSORS_INDEX}, {BIN} or {BIN_INDEX}{hint}"
    )


def _sharded_shapes(index: Path, reader: Any) -> dict[str, tuple[int, ...]]:
    weight_map = read_json_object(index, "a shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index} is corrupt: it has no weight_map of tensor -> shard file")
    shards = sorted(set(weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise CheckpointError(
            f"cannot load model {index.parent}: {len(missing)} of {len(shards)} shards named in "
            f"{index.name} are missing: {', '.join(missing[:_SHOWN])}"
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for shard in shards:
        held = reader(index.parent / shard)
        listed = {k for k, v in weight_map.items() if v == shard}
        if set(held) != listed:
            diff = sorted(set(held) ^ listed)
            raise CheckpointError(
                f"cannot load model {index.parent}: shard {shard} does not hold the tensors "
                f"{index.name} lists for it ({len(diff)} differ, e.g. {diff[:_SHOWN]})"
            )
        shapes.update(held)
    return shapes


def safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header; a truncated file is an error."""
    try:
        with file.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            size = file.stat().st_size
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file ({size} bytes)")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"cannot load model {file.parent}: weight file {file.name} is corrupt ({e})"
        ) from e
    if not isinstance(header, dict):
        raise CheckpointError(f"cannot load model {file.parent}: {file.name} has no tensor table")
    header.pop("__metadata__", None)
    try:
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
        shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in header.items()}
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise CheckpointError(
            f"cannot load model {file.parent}: {file.name} has a malformed tensor table ({e})"
        ) from e
    if 8 + n + end > size:
        raise CheckpointError(
            f"cannot load model {file.parent}: weight file {file.name} is truncated "
            f"({size} bytes, its header describes {8 + n + end}); copy or save it again"
        )
    return shapes


def bin_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a ``torch.save`` checkpoint, memory-mapped (no data read)."""
    try:
        try:
            sd = torch.load(file, map_location="meta", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) format cannot be memory-mapped
            sd = torch.load(file, map_location="meta", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a damaged file
        raise CheckpointError(
            f"cannot load model {file.parent}: weight file {file.name} is corrupt "
            f"({type(e).__name__}: {e})"
        ) from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(
            f"cannot load model {file.parent}: {file.name} is not a state dict of tensors"
        )
    return {k: tuple(v.shape) for k, v in sd.items()}


# ------------------------------------------------------------------------------ tensor names


def _renamer(model: torch.nn.Module, expected: dict[str, Any]) -> Any:
    """``key -> (name in the model, converted)`` the way ``transformers`` renames checkpoint keys.

    Uses transformers' own conversion mapping (legacy names, base-model prefix); where that
    internal API is unavailable, only the base-model prefix is handled.
    """
    prefix = getattr(model, "base_model_prefix", "") or None
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import (
            WeightConverter,
            WeightRenaming,
            rename_source_key,
        )

        transforms = get_model_conversion_mapping(model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]

        def rename(key: str) -> tuple[str, bool]:
            new, pattern = rename_source_key(key, renamings, converters, prefix, expected)
            if new not in expected and key in expected:
                new, pattern = rename_source_key(key, [], [], prefix, expected)
            return new, pattern is not None

    except (ImportError, AttributeError, TypeError):  # pragma: no cover - other transformers

        def rename(key: str) -> tuple[str, bool]:
            if prefix and key not in expected and f"{prefix}.{key}" in expected:
                return f"{prefix}.{key}", False
            return key, False

    return rename


def _compare_tensors(path: Path, model: torch.nn.Module, shapes: dict[str, tuple[int, ...]]) -> None:
    """Missing, unexpected and wrongly shaped tensors of a checkpoint, as one error."""
    expected = dict(model.state_dict())
    rename = _renamer(model, expected)
    present: set[str] = set()
    unexpected: list[str] = []
    wrong_shape: list[str] = []
    for key, shape in shapes.items():
        name, converted = rename(key)
        if name not in expected:
            unexpected.append(key)
            continue
        present.add(name)
        want = tuple(expected[name].shape)
        if not converted and shape != want:
            wrong_shape.append(f"{key} {list(shape)} (expected {list(want)})")
    missing = set(expected) - present
    for target, source in getattr(model, "all_tied_weights_keys", {}).items():
        if target in present or source in present:  # one of a tied pair is enough
            missing -= {target, source}
    missing_ok, unexpected_ok = _ignored_patterns(model)
    missing_list = sorted(k for k in missing if not (missing_ok and missing_ok.search(k)))
    unexpected = sorted(k for k in unexpected if not (unexpected_ok and unexpected_ok.search(k)))
    problems = []
    for label, keys in (("missing", missing_list), ("unexpected", unexpected),
                        ("with the wrong shape", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:_SHOWN]) + (f", ... ({len(keys)} in all)"
                                                if len(keys) > _SHOWN else "")
            problems.append(f"{len(keys)} tensor(s) {label}: {shown}")
    if problems:
        raise CheckpointError(
            f"cannot load model {path}: its weights do not match the architecture its "
            f"config.json describes ({type(model).__name__}): " + "; ".join(problems)
            + ". A missing tensor would be initialised at random; re-save the complete model "
            "(model.save_pretrained(dir)) or fix config.json."
        )


def _ignored_patterns(model: torch.nn.Module) -> tuple[re.Pattern | None, re.Pattern | None]:
    """The regexes ``transformers`` drops from missing / unexpected keys for this model."""
    missing = set(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())
    unexpected = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
    buffers = [name for name, _ in model.named_buffers()]
    if any(b.endswith("rotary_emb.inv_freq") for b in buffers):
        unexpected.add(r"rotary_emb\.inv_freq")
    if any(b.endswith("position_ids") for b in buffers):
        unexpected.add(r"(^|\.)position_ids$")

    def compile_(patterns: set[str]) -> re.Pattern | None:
        return re.compile("|".join(f"({p})" for p in sorted(patterns))) if patterns else None

    return compile_(missing), compile_(unexpected)


# ------------------------------------------------------------------------------ where a spec lives


def is_local(spec: Any) -> bool:
    """Whether a model spec names a local path rather than a Hugging Face model name."""
    if isinstance(spec, Path):
        return True
    if not isinstance(spec, str):
        return False
    return Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1


def local_dir(spec: str | Path) -> Path:
    """The local directory of a spec: the path itself, or the hub snapshot of a model name.

    A name is resolved through TransformerLens' aliases (``"gpt2-small"`` -> ``"gpt2"``) and
    fetched into the Hugging Face cache (configuration, tokenizer and the weights
    ``transformers`` would load; nothing is downloaded that is already cached).

    Raises:
        CheckpointError: the name cannot be resolved (no hub reachable and not cached).
    """
    if is_local(spec):
        return Path(spec).expanduser()
    name = str(spec)
    try:
        from transformer_lens.tools.model_registry.registry_io import resolve_model_alias

        name = resolve_model_alias(name) or name
    except ImportError:  # pragma: no cover - other TransformerLens versions
        pass
    patterns = ["*.json", "model*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(name, allow_patterns=patterns))
        if not any((path / f).is_file() for f in (SAFETENSORS, SAFETENSORS_INDEX)):
            path = Path(snapshot_download(name, allow_patterns=[*patterns, "pytorch_model*.bin"]))
    except Exception as e:  # noqa: BLE001 - the hub client raises many types; re-raised typed
        raise CheckpointError(
            f"cannot load model {spec!r}: it is not a local directory, and loading it by name "
            "failed (is a model hub reachable? if not, save the model locally and pass its "
            f"directory). Cause: {type(e).__name__}: {e}"
        ) from e
    return path


# ------------------------------------------------------------------- checks before any weight


def local_config(folder: str | Path, *, text: bool = False) -> dict[str, Any] | None:
    """``config.json`` of a local checkpoint folder, for checks made before loading (the
    command line's); None where it is missing, unreadable or not an object (loading reports
    those with :func:`check_checkpoint`). ``text``: a multimodal configuration's
    ``text_config``, where the language model's sizes are."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    return cfg["text_config"] if text and isinstance(cfg.get("text_config"), dict) else cfg


def check_task_tokens(spec: Any, task: Any) -> None:
    """Tokenize ``task`` with the tokenizer saved in the local checkpoint folder ``spec``, before
    any weight is loaded, so that the command line reports prompt and answer errors (words the
    tokenizer does not know, a corrupted prompt of another token length, an answer of several
    tokens, a prompt longer than the context) in a second rather than after loading both models.

    Does nothing for a hub name or a folder without a readable tokenizer or ``config.json``: the
    same checks run on the loaded pair (``Task.tokenize``), which stays the authority (the
    context length here is the configuration's, which the loaded model can only shorten).

    Raises:
        PromptError, AnswerTokenError: as :meth:`mechdiff.tasks.Task.tokenize`.
    """
    if not is_local(spec):
        return
    folder = Path(spec).expanduser()
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        return
    config = local_config(folder, text=True)
    if config is None:
        return
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except Exception:  # noqa: BLE001 - a broken folder: load_pair reports it with its own checks
        return
    n_ctx = config.get("n_positions", config.get("max_position_embeddings"))
    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 1:
        n_ctx = 2**31 - 1  # unknown here: the loaded model's context is checked after loading
    task.tokenize(tokenizer, n_ctx=n_ctx)
