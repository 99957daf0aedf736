"""``mechdiff demo --synthetic``: the embedded zoo (:mod:`mechdiff.zoo`), whose fine-tunes have known
mechanisms, each analysed against the base with :func:`~mechdiff.pipeline.analyse_pair` (components)
and :func:`~mechdiff.pipeline.analyse_circuits` (circuits and the verdict)."""

from __future__ import annotations

import time
from pathlib import Path

from mechdiff import zoo
from mechdiff._progress import progress_bar
from mechdiff.demos._common import FIGURE_FORMATS, Report, quiet
from mechdiff.errors import check_count
from mechdiff.loading import load_pair
from mechdiff.pipeline import CircuitAnalysis, PairAnalysis, analyse_circuits, analyse_pair
from mechdiff.report import text
from mechdiff.report.html import REPORT_NAME, write_report
from mechdiff.report.sections import render_markdown
from mechdiff.report.summary import circuits_summary, write_summary
from mechdiff.views import pair_views
from mechdiff.viz import circuit_figures, pair_figures


def run_demo_synthetic(
    out: str | Path,
    *,
    cache_dir: str | Path | None = None,
    n_prompts: int = 64,
    seed: int = 0,
    top: int = 10,
    device: str | None = "cpu",
    progress: bool = True,
    report: Report | None = None,
) -> list[PairAnalysis]:
    """The demo on the embedded zoo: each fine-tune against the base, mechanisms known.

    Builds the zoo if it is not cached (minutes, once), then for every fine-tune in
    :data:`mechdiff.zoo.FINETUNES` runs :func:`analyse_pair` on its zoo task (heads and MLPs,
    both directions, exact); writes each analysis to ``<out>/<fine-tune>/``, the views of its
    top heads and tokens to ``<out>/views/<fine-tune>/`` (:func:`mechdiff.views.pair_views`), its
    figures to ``<out>/figures/<fine-tune>/``; its circuits in both models, their comparison and
    the verdict (:func:`~mechdiff.pipeline.analyse_circuits`, EAP-IG) to
    ``<out>/circuits/<fine-tune>/`` with figures under ``<out>/figures/<fine-tune>/circuits/``;
    ``<out>/summary.json`` / ``summary.md``, and last
    ``<out>/report.html`` (:func:`mechdiff.report.html.write_report`).

    Args:
        out: output folder (the command line wraps it in a transactional output folder).
        cache_dir: the zoo cache (default ``$MECHDIFF_CACHE/zoo`` or ``~/.cache/mechdiff/zoo``).
        n_prompts: prompts per task.
        seed: seed of the task prompts.
        top: rows per ranked table.
        device: where to run the models.
        progress: show progress bars.
        report: called with each fine-tune's ranked table as soon as it is ready.
    """
    check_count("n_prompts", n_prompts, minimum=1)
    say = report or quiet
    out = Path(out)
    start = time.perf_counter()
    dirs = zoo.build(cache_dir, progress=progress)
    analyses = []
    circuits: list[CircuitAnalysis] = []
    with progress_bar(total=len(zoo.FINETUNES), desc="mechdiff demo", enabled=progress,
                      leave=True) as bar:
        for name, spec in zoo.FINETUNES.items():
            bar.set_postfix_str(name)
            pair = load_pair(dirs["base"], dirs[name], device=device)
            task = zoo.task(spec.task, n=n_prompts, seed=seed)
            analysis = analyse_pair(
                pair, task, label=name, progress=progress,
                mechanism=zoo.MECHANISMS.get(spec.mechanism, spec.mechanism),
                description=spec.description,
            )
            analysis.save(out / name)
            pair_views(pair, task, label=name, heads=analysis).save(out / "views" / name)
            pair_figures(analysis, out / "figures" / name, formats=FIGURE_FORMATS)
            analyses.append(analysis)
            say(text.pair_table(analysis, top))
            circ = analyse_circuits(pair, task, label=name, progress=progress,
                                    mechanism=analysis.mechanism)
            circ.save(out / "circuits" / name)
            circuit_figures(circ, out / "figures" / name / "circuits", formats=FIGURE_FORMATS)
            circuits.append(circ)
            say("\n" + circ.summary())
            bar.update(1)
    write_summary(out, analyses, top=top, sections=[render_markdown(c) for c in circuits], meta={
        "title": "mechdiff demo: the embedded zoo",
        "intro": (
            "Each fine-tune of the zoo's base model was built with a known mechanism. The tables "
            "rank attention heads (patched after their own W_O) and MLPs by the fraction of the "
            "behaviour gap that patching each one alone closes."
        ),
        "demo": "synthetic",
        "zoo": str(dirs["base"].parent),
        "n_prompts": n_prompts,
        "seed": seed,
        "circuits": {c.label: circuits_summary(c) for c in circuits},
        "seconds": round(time.perf_counter() - start, 1),
    })
    write_report(out, out / REPORT_NAME, top=top)
    return analyses
