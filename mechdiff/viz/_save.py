"""Writing figures to disk for a paper (vector PDF and SVG, a high-resolution PNG) and into web
pages (:func:`figure_svg`: SVG text to inline in HTML).

Files are reproducible: no creation date inside, and SVG element ids derived from a fixed salt
(``svg.hashsalt``, set for the one save only) instead of a random one, so saving the same figure
twice gives the same bytes.
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TypeAlias

import matplotlib
from matplotlib.figure import Figure

from mechdiff.results.atomic import atomic_file

Format: TypeAlias = Literal["pdf", "png", "svg"]
FORMATS: tuple[Format, ...] = ("pdf", "png", "svg")
"""Every format :func:`save_figure` writes, and its default."""
_NO_DATE: dict[str, dict[str, None]] = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}


def save_figure(
    fig: Figure,
    path: str | os.PathLike[str],
    *,
    formats: Sequence[Format] = FORMATS,
    dpi: int = 300,
) -> list[Path]:
    """Write ``fig`` once per format (tight bounding box) and close it.

    Args:
        fig: the figure to save.
        path: the output path without suffix, e.g. ``figures/heads_ft_to_base``; a trailing
            ``.pdf`` / ``.png`` / ``.svg`` is dropped. Missing folders are created.
        formats: file formats to write (default all three: PDF and SVG for papers and
            slides, PNG for READMEs and quick looks).
        dpi: resolution of raster formats (PNG); at least 200.

    Returns:
        The written files, in the order of ``formats``.

    Raises:
        ValueError: an unknown format, or ``dpi < 200``.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"formats must be a non-empty selection of {FORMATS}, got {formats!r}")
    if dpi < 200:
        raise ValueError(f"dpi must be at least 200 for print, got {dpi}")
    stem = Path(path)
    if stem.suffix.lower().lstrip(".") in FORMATS:
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        out = stem.with_name(f"{stem.name}.{fmt}")
        # No creation date in the PDF/SVG, so re-running an analysis gives byte-identical files.
        metadata = _NO_DATE.get(fmt, {})
        # rc_context restores rcParams afterwards: the salt only makes SVG ids reproducible.
        with atomic_file(out) as tmp, matplotlib.rc_context({"svg.hashsalt": stem.name}):
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


def figure_svg(fig: Figure, *, prefix: str, close: bool = True) -> str:
    """``fig`` as SVG markup to inline in an HTML page (no XML prolog).

    Text stays text (``svg.fonttype = "none"``: searchable, about half the size of glyph paths).
    Every element id and every reference to one (``url(#...)``, ``href="#..."``) is prefixed
    with ``prefix``, so several figures inlined in one page never share an id: give each figure
    of a page its own prefix. matplotlib's global settings are restored afterwards.
    """
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": prefix, "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", pad_inches=0.03,
                    metadata={"Date": None})
    if close:
        _close(fig)
    text = buf.getvalue()
    start = text.find("<svg")
    text = text[start:] if start >= 0 else text
    seen: dict[str, int] = {}

    def unique(m: re.Match[str]) -> str:  # matplotlib repeats ids of identical images
        n = seen[m.group(2)] = seen.get(m.group(2), 0) + 1
        return f'{m.group(1)}="{prefix}-{m.group(2)}' + (f'-{n}"' if n > 1 else '"')

    text = _ID.sub(unique, text)
    text = _HREF.sub(lambda m: f'{m.group(1)}="#{prefix}-{m.group(2)}"', text)
    return _URL.sub(lambda m: f"url(#{prefix}-{m.group(1)})", text)


_ID = re.compile(r'\b(id)="([^"]+)"')
_HREF = re.compile(r'((?:xlink:)?href)="#([^"]+)"')
_URL = re.compile(r"url\(#([^)]+)\)")
