"""Process-level settings a command or a training run changes for its duration."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

import torch


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the system has one (a container or
    ``taskset`` limit), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (``None``: unchanged), restoring the caller's count
    afterwards (also on exceptions)."""
    before = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be at least 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fixed_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Give glibc a fixed mmap threshold for this process (for commands: the process is ours).

    By default glibc raises the threshold after every large free, after which freed activation
    buffers stay in its heap and count as resident memory: patching a GPT-2-small pair kept
    726 MB resident where 307 MB were needed. Equivalent to ``MALLOC_MMAP_THRESHOLD_=1048576``;
    a no-op off glibc or when that variable is set.
    """
    name = ctypes.util.find_library("c")
    if not name or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
