"""The layout keeps its promises: compute modules never import plotting, and the README's layout
names every package.

Each compute module is imported alone in a fresh process, which then must not hold
``matplotlib``: one new interpreter preloads the heavy third-party libraries that mechdiff builds on
(torch, transformers, TransformerLens; checked to be free of matplotlib themselves) and forks one
child per module, so every module starts from a state with no mechdiff module imported.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import mechdiff

DRAWING = ("mechdiff.viz", "mechdiff.demos", "mechdiff.cli", "mechdiff._cli", "mechdiff.report.html")
"""Modules allowed to import matplotlib: figures, and the drivers that write them."""

CHILD = r'''
import os, sys, importlib
import torch, transformers, einops, safetensors  # noqa: preloaded, shared by every child
from transformer_lens.model_bridge import TransformerBridge  # noqa
assert not [m for m in sys.modules if m.split(".")[0] == "matplotlib"], "a dependency draws"
bad = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            importlib.import_module(name)
            code = 3 if [m for m in sys.modules if m.split(".")[0] == "matplotlib"] else 0
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        bad.append(f"{name} ({'imports matplotlib' if os.waitstatus_to_exitcode(status) == 3 else 'fails to import'})")
print("\n".join(bad))
sys.exit(1 if bad else 0)
'''


def _compute_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(mechdiff.__path__,
                                                              prefix="mechdiff.")
                  if not info.name.startswith(DRAWING))


def test_the_compute_modules_cover_every_family() -> None:
    modules = _compute_modules()
    for family in ("mechdiff.patching", "mechdiff.compare", "mechdiff.pipeline",
                   "mechdiff.loading", "mechdiff.tasks", "mechdiff.results", "mechdiff.zoo",
                   "mechdiff.weights", "mechdiff.report", "mechdiff.circuits"):
        assert any(m == family or m.startswith(family + ".") for m in modules), family


def test_no_compute_module_imports_matplotlib() -> None:
    modules = _compute_modules()
    done = subprocess.run([sys.executable, "-c", CHILD, *modules], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, (f"of {len(modules)} compute modules:\n{done.stdout}"
                                  f"{done.stderr[-2000:]}")


def test_readme_layout_names_every_package() -> None:
    readme = (Path(mechdiff.__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("## Layout"):]
    for info in pkgutil.iter_modules(mechdiff.__path__):
        if info.ispkg:
            assert f"{info.name}/" in layout, f"README's layout does not describe {info.name}/"
