"""The demos ``mechdiff demo`` runs: thin drivers that call analyses, save their results, draw
figures from them and print their tables.

* :func:`run_demo_real` (:mod:`.real`, the default): SmolLM2-135M-Instruct and its fine-tunes.
* :func:`run_demo_synthetic` (:mod:`.synthetic`, ``--synthetic``): the embedded zoo.
"""

from collections.abc import Callable, Sequence

from mechdiff.choices import DEFAULT_DEMO, DemoName
from mechdiff.demos.real import REAL_N_PROMPTS, run_demo_real
from mechdiff.demos.synthetic import run_demo_synthetic
from mechdiff.pipeline import PairAnalysis

DEMOS: dict[str, Callable[..., Sequence[PairAnalysis]]] = {
    "real": run_demo_real,
    "synthetic": run_demo_synthetic,
}
"""The demos ``mechdiff demo`` can run, by name (``--real``, the default, and ``--synthetic``)."""

__all__ = ["DEFAULT_DEMO", "DEMOS", "REAL_N_PROMPTS", "DemoName", "run_demo_real",
           "run_demo_synthetic"]
