"""Loading options, checked before anything is read from disk: processing, device, dtype.

Each check raises :class:`~mechdiff.errors.OptionError` naming the option, the value given and
the values allowed, so a wrong ``--device`` is never blamed on a checkpoint.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias, get_args

import torch

from mechdiff.errors import OptionError

Processing: TypeAlias = Literal["compat", "none"]
ProcessingStep: TypeAlias = Literal[
    "fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"
]
PROCESSING_STEPS: tuple[ProcessingStep, ...] = get_args(ProcessingStep)
"""The steps of ``"compat"`` processing, in the order TransformerLens applies them (the flags of
``TransformerBridge.enable_compatibility_mode``)."""

DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_processing(processing: Any) -> Processing:
    """``processing`` if it is ``"compat"`` or ``"none"``, else :class:`OptionError`."""
    if processing not in get_args(Processing):
        raise OptionError(
            f"processing must be 'compat' (TransformerLens weight processing, checked) or 'none' "
            f"(raw weights), got {processing!r}"
        )
    return processing


def check_steps(skip: Any, *, name: str = "skip") -> tuple[ProcessingStep, ...]:
    """``skip`` as a tuple of processing steps in TransformerLens order, else :class:`OptionError`."""
    if isinstance(skip, str) or not isinstance(skip, (tuple, list, set, frozenset)):
        raise OptionError(
            f"{name} must be a sequence of processing steps {PROCESSING_STEPS}, got {skip!r}"
        )
    unknown = [s for s in skip if s not in PROCESSING_STEPS]
    if unknown:
        raise OptionError(
            f"{name} has unknown processing steps {unknown}; the steps are {PROCESSING_STEPS}"
        )
    return tuple(s for s in PROCESSING_STEPS if s in skip)


def check_dtype(dtype: Any) -> torch.dtype:
    """``dtype`` if it is a floating torch dtype mechdiff loads models in, else :class:`OptionError`."""
    if not isinstance(dtype, torch.dtype) or dtype not in DTYPES:
        allowed = ", ".join(str(d) for d in DTYPES)
        raise OptionError(
            f"dtype must be a floating-point torch dtype ({allowed}), got {dtype!r}"
        )
    return dtype


def resolve_device(device: Any) -> torch.device:
    """The device to load onto: ``None`` means CUDA if available, else the CPU.

    Raises:
        OptionError: not a device torch knows, or one this machine does not have (CUDA without a
            GPU, ``cuda:3`` with one GPU, MPS off Apple silicon).
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise OptionError(
            f"device must be a string like 'cpu', 'cuda' or 'cuda:1', or a torch.device; got "
            f"{type(device).__name__} {device!r}"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise OptionError(
            f"device {device!r} is not a device torch knows; use 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from e
    if dev.type not in _DEVICE_TYPES:
        raise OptionError(
            f"device {device!r}: mechdiff loads models on {', '.join(_DEVICE_TYPES)}, not "
            f"{dev.type!r}"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(
                f"device {device!r} was asked but CUDA is not available here (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use device='cpu' "
                "(on the command line, --device cpu)"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise OptionError(
                f"device {device!r} does not exist: {count} CUDA device(s) visible "
                f"(cuda:0 to cuda:{count - 1})"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError(f"device {device!r} was asked but MPS is not available here")
    return dev


def check_flag(value: Any, name: str) -> bool:
    """``value`` if it is a bool, else :class:`OptionError` (``1`` or ``"yes"`` are refused)."""
    if not isinstance(value, bool):
        raise OptionError(f"{name} must be True or False, got {value!r}")
    return value
