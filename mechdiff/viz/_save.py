"""Writing figures to disk for a paper: vector PDF plus a high-resolution PNG."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TypeAlias

from matplotlib.figure import Figure

from mechdiff.results.atomic import atomic_file

Format: TypeAlias = Literal["pdf", "png", "svg"]
_FORMATS: tuple[Format, ...] = ("pdf", "png", "svg")
_NO_DATE: dict[str, dict[str, None]] = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def save_figure(
    fig: Figure,
    path: str | os.PathLike[str],
    *,
    formats: Sequence[Format] = ("pdf", "png"),
    dpi: int = 300,
) -> list[Path]:
    """Write ``fig`` once per format (tight bounding box) and close it.

    Args:
        fig: the figure to save.
        path: the output path without suffix, e.g. ``figures/heads_ft_to_base``; a trailing
            ``.pdf`` / ``.png`` / ``.svg`` is dropped. Missing folders are created.
        formats: file formats to write.
        dpi: resolution of raster formats (PNG); at least 200.

    Returns:
        The written files, in the order of ``formats``.

    Raises:
        ValueError: an unknown format, or ``dpi < 200``.
    """
    bad = [f for f in formats if f not in _FORMATS]
    if bad or not formats:
        raise ValueError(f"formats must be a non-empty selection of {_FORMATS}, got {formats!r}")
    if dpi < 200:
        raise ValueError(f"dpi must be at least 200 for print, got {dpi}")
    stem = Path(path)
    if stem.suffix.lower().lstrip(".") in _FORMATS:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        out = stem.with_name(f"{stem.name}.{fmt}")
        # No creation date in the PDF/SVG, so re-running an analysis gives byte-identical files.
        metadata = _NO_DATE.get(fmt, {})
        with atomic_file(out) as tmp:  # a full disk or Ctrl-C never leaves a truncated file
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight", pad_inches=0.03,
                        metadata=metadata)
        written.append(out)
    _close(fig)
    return written


def _close(fig: Figure) -> None:
    """Release ``fig``: pyplot-managed figures are closed there; ours are simply left to the GC."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None and fig.canvas.manager is not None:
        pyplot.close(fig)
