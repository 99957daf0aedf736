"""``mechdiff demo`` (the default): the real model SmolLM2-135M-Instruct and its fine-tunes
(:mod:`mechdiff.zoo.real`).

Per fine-tune, exact and attribution patching side by side (:func:`~mechdiff.pipeline.analyse_pair`
with both methods); for the distillation, the prompted base as a third model
(:func:`~mechdiff.compare.compare_prompted_base`); for the LoRA distillation, attribution patching
compared with the full fine-tune's (:func:`~mechdiff.compare.compare_finetunes`); for every fine-tune,
the circuit of its task in the base and in the fine-tune, their comparison and the verdict
(:func:`~mechdiff.pipeline.analyse_circuits`). The driver only
calls analyses, saves their results, draws figures from them and prints their tables.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
from transformer_lens.model_bridge import TransformerBridge

from mechdiff import zoo
from mechdiff._progress import progress_bar
from mechdiff._runtime import torch_threads
from mechdiff.choices import REAL_N_PROMPTS
from mechdiff.compare import (
    FinetuneComparison,
    PromptedBaseComparison,
    compare_finetunes,
    compare_prompted_base,
)
from mechdiff.demos._common import (
    REAL_FIGURE_FORMATS,
    Report,
    equal_length,
    pick,
    quiet,
    subset,
)
from mechdiff.errors import VerdictWarning, check_count
from mechdiff.loading import LoadInfo, ModelPair, load_model, load_pair
from mechdiff.patching import PatchResult, activation_patch, cross_patch
from mechdiff.pipeline import CircuitAnalysis, PairAnalysis, analyse_circuits, analyse_pair
from mechdiff.pipeline.pair import result_key
from mechdiff.report import markdown, text
from mechdiff.report.html import REPORT_NAME, write_report
from mechdiff.report.sections import render_markdown
from mechdiff.report.summary import (
    circuits_summary,
    finetunes_summary,
    prompted_summary,
    write_summary,
)
from mechdiff.tasks import Task
from mechdiff.views import pair_views
from mechdiff.viz import circuit_figures, pair_figures, prompted_figure

REAL_THREADS: int | None = None
"""torch threads of the real demo; ``None`` keeps torch's default (one per core). Measured on 2
idle cores: all-heads patching of 2 prompts took 10.6 s with 2 threads and 20 s with 1. (With
another process busy on the same cores, 2 threads spin-wait and can be several times slower;
pass ``threads=1`` to :func:`run_demo_real` there.)"""
REAL_STEPS = ("distill", "trigger", "distill_lora")
"""Experiments of :data:`mechdiff.zoo.real.EXPERIMENTS` the real demo analyses, in order."""
REAL_EXACT = ("distill", "trigger")
"""Experiments of :data:`mechdiff.zoo.real.EXPERIMENTS` patched exactly as well as by attribution;
the others (``distill_lora``) get the gap and attribution patching only."""
REAL_SITES = ("heads", "attn", "mlp")
"""Site kinds of the real demo: every head, every attention layer, every MLP."""
REAL_EXACT_TOP = 20
"""Heads patched exactly per direction: the strongest by attribution (all 270 heads, exactly, is
the full sweep of ``analyses/real_full_sweep.py``); attention layers and MLPs are patched exactly
whole, so the series index sums over them."""
REAL_CIRCUIT_METHOD = "eap"
"""Edge attribution of the real demo's circuits: EAP (two forwards and a backward per model for
all 70,651 edges); ``mechdiff circuits`` defaults to EAP-IG, about ``steps`` times that."""
REAL_CROSS_TOP = 10
"""Edges patched for real across models per fine-tune (by estimated share of the gap)."""
PROFILE_KINDS = ("attn", "mlp")
"""Site kinds of the prompted-base comparison's per-layer profiles."""


def run_demo_real(
    out: str | Path,
    *,
    cache_dir: str | Path | None = None,
    n_prompts: int = REAL_N_PROMPTS,
    seed: int = 0,
    top: int = 10,
    device: str | None = "cpu",
    progress: bool = True,
    report: Report | None = None,
    threads: int | None = REAL_THREADS,
) -> list[PairAnalysis]:
    """The demo on the real model (SmolLM2-135M-Instruct and its fine-tunes).

    Builds the real zoo if it is not cached (conversion and fine-tuning, minutes, once), then:

    * ``distill`` and ``trigger`` (:data:`REAL_EXACT`): behaviour gap; exact and attribution
      patching of every head and MLP in both directions, side by side, with their agreement.
    * the prompted base as the third model: the base patched persona-prompted into unprompted
      (attention layers and MLPs) beside the distilled model patched into the base.
    * ``distill_lora``: gap and attribution patching, compared with the full distillation's.
    * every fine-tune: the circuit of its task in the base and in the fine-tune (EAP over all
      edges, faithfulness curves by real edge ablation), each run inside the other model, the
      verdict, and the edges carrying the gap (:func:`analyse_circuits`).

    Writes ``<out>/<experiment>/`` (each a saved :class:`PairAnalysis`),
    ``<out>/comparisons/{prompted_base,distill_lora_vs_distill}/``,
    ``<out>/circuits/<experiment>/`` (each a saved :class:`CircuitAnalysis`), figures under
    ``<out>/figures/``, ``<out>/summary.json`` / ``summary.md``; ``<out>/views/<experiment>/``
    (attention patterns of its top heads and per-token divergence,
    :func:`mechdiff.views.pair_views`), and last ``<out>/report.html``
    (:func:`mechdiff.report.html.write_report`).

    Args:
        out: output folder (the command line wraps it in a transactional output folder).
        cache_dir: the real zoo cache (default ``$MECHDIFF_CACHE/real``).
        n_prompts: prompts per task (a deterministic subset chosen with ``seed``); the
            circuits take as many prompts of the task's most common token length
            (:func:`~mechdiff.demos._common.equal_length`: mean ablation is exact per position
            only over prompts of one length).
        seed: seed of the subset.
        top: rows per ranked table.
        device: where to run the models.
        progress: show progress bars.
        report: called with each table and reading as soon as it is ready.
        threads: torch threads while the demo runs (restored after); ``None`` leaves them.
    """
    from mechdiff.zoo import real

    check_count("n_prompts", n_prompts, minimum=1)
    if threads is not None:
        check_count("threads", threads, minimum=1)
    say = report or quiet
    out = Path(out)
    start = time.perf_counter()
    analyses: dict[str, PairAnalysis] = {}
    circuits: list[CircuitAnalysis] = []
    circuit_s = 0.0  # the circuits' share of the run (analyses, saving, figures)
    circuit_tasks: dict[str, Task] = {}  # per task: n prompts of one token length (equal_length)
    prompted: PromptedBaseComparison | None = None
    lora: FinetuneComparison | None = None
    # A first run builds the zoo on two cores: the first fine-tune here, the others in a second
    # process while this one analyses (on one thread then: two would spin-wait on a busy core).
    with real.building(cache_dir, order=[real.EXPERIMENTS[s].finetuned for s in REAL_STEPS],
                       here=1, progress=progress) as zoo_build, torch_threads(threads), \
            progress_bar(total=len(REAL_STEPS), desc="mechdiff demo (real)", enabled=progress,
                         leave=True) as bar:
        own_threads = torch.get_num_threads()
        base_dir = zoo_build.get("base")
        tasks = real.tasks(cache_dir, progress=progress)
        keep = pick(len(tasks["distill"]), n_prompts, seed)
        chosen = {
            "distill": subset(tasks["distill"], keep),
            "distill_prompted": subset(tasks["distill_prompted"], keep),
            "trigger": subset(tasks["trigger"], pick(len(tasks["trigger"]), n_prompts, seed)),
        }
        base, base_info = load_model(base_dir, device=device)
        for step in REAL_STEPS:
            bar.set_postfix_str(step)
            exp = real.EXPERIMENTS[step]
            ft_dir = zoo_build.get(exp.finetuned)
            torch.set_num_threads(1 if zoo_build.busy() else own_threads)
            pair = _real_pair(base, base_info, base_dir, ft_dir, device)
            task = chosen[exp.task]
            exact = step in REAL_EXACT
            analysis = analyse_pair(
                pair, task, label=step, progress=progress, sites=REAL_SITES,
                methods=("exact", "attribution") if exact else ("attribution",),
                exact_top={"heads": REAL_EXACT_TOP} if exact else None,
                mechanism=zoo.MECHANISMS.get(exp.mechanism, exp.mechanism),
                description=real.FINETUNES[exp.finetuned].description,
            )
            analyses[step] = analysis
            analysis.save(out / step)
            pair_views(pair, task, label=step, heads=analysis).save(out / "views" / step)
            pair_figures(analysis, out / "figures" / step, formats=REAL_FIGURE_FORMATS)
            say(text.pair_table(analysis, top))
            if step == "distill":
                prompted = _prompted_base(pair, analysis, task, chosen["distill_prompted"],
                                          str(base_dir), progress)
                prompted.save(out / "comparisons" / "prompted_base")
                prompted_figure(prompted, out / "figures" / "prompted_base",
                                title="Where the system prompt acts vs where distillation acts "
                                f"\u00b7 {task.name}", formats=REAL_FIGURE_FORMATS)
                say("\n" + text.prompted_text(prompted))
            elif exp.prompted_task == "distill_prompted" and "distill" in analyses:
                ref = analyses["distill"]
                lora = compare_finetunes(
                    analysis.estimates, ref.estimates, label=step, reference_label="distill",
                    gaps={step: analysis.gap.gap, "distill": ref.gap.gap},
                    layers=ref.changed_layers,
                )
                lora.save(out / "comparisons" / f"{step}_vs_distill")
                say("\n" + text.finetunes_text(lora))
            if exp.task not in circuit_tasks:
                circuit_tasks[exp.task] = equal_length(
                    tasks[exp.task], base.tokenizer, int(base.cfg.n_ctx), n_prompts, seed)
            ctask = circuit_tasks[exp.task]
            same_task = [c for c in circuits if c.comparison.provenance.prompts_hash
                         == ctask.fingerprint()]  # distill_lora: the distillation's base side
            circuit_start = time.perf_counter()
            with warnings.catch_warnings():  # its verdict text says why it is a preview
                warnings.simplefilter("ignore", VerdictWarning)
                circ = analyse_circuits(pair, ctask, label=step, method=REAL_CIRCUIT_METHOD,
                                        cross_top=REAL_CROSS_TOP, progress=progress,
                                        mechanism=analysis.mechanism,
                                        base_from=same_task[0] if same_task else None,
                                        cross_curves=False)  # the time budget: markers only
            circ.save(out / "circuits" / step)
            circuit_figures(circ, out / "figures" / step / "circuits", formats=REAL_FIGURE_FORMATS)
            circuits.append(circ)
            circuit_s += time.perf_counter() - circuit_start
            say("\n" + circ.summary())
            del pair
            bar.update(1)
    sections = [markdown.prompted_section(prompted)] if prompted else []
    sections += [markdown.finetunes_section(lora)] if lora else []
    sections += [render_markdown(c) for c in circuits]
    write_summary(out, list(analyses.values()), top=top, sections=sections, meta={
        "title": "mechdiff demo: SmolLM2-135M-Instruct and its fine-tunes",
        "intro": (
            "Context distillation (`distill`, full and LoRA) re-weights a behaviour the base shows "
            "under a system prompt; a planted trigger (`trigger`) is a new behaviour. Heads "
            "(patched after their own W_O) and MLPs are ranked by the fraction of the behaviour "
            "gap that patching each one alone closes, exactly and by attribution patching, with "
            "95% bootstrap intervals over prompts."
        ),
        "demo": "real",
        "real_zoo": str(base_dir.parent),
        "n_prompts": n_prompts,
        "seed": seed,
        "threads": threads,
        "prompted_base": prompted_summary(prompted) if prompted else None,
        "lora_vs_full": finetunes_summary(lora) if lora else None,
        "circuits": {c.label: circuits_summary(c) for c in circuits},
        "seconds": round(time.perf_counter() - start, 1),
        "circuit_seconds": round(circuit_s, 1),
    })
    say(f"\ncircuits: {circuit_s / 60:.1f} of the demo's {(time.perf_counter() - start) / 60:.1f} "
        "minutes (their analyses, results and figures)")
    write_report(out, out / REPORT_NAME, top=top)
    return list(analyses.values())


def _prompted_base(pair: ModelPair, distilled: PairAnalysis, task: Task, prompted_task: Task,
                   base_id: str, progress: bool) -> PromptedBaseComparison:
    """The base patched prompted -> unprompted per layer, beside the distilled model -> base."""
    prompted: dict[str, PatchResult] = {}
    finetuned: dict[str, PatchResult] = {}
    for kind in PROFILE_KINDS:
        prompted[kind] = activation_patch(pair.base, prompted_task, sites=kind, positions="all",
                                          progress=progress, model_id=base_id)
        done = distilled.exact.get(result_key(kind, "ft->base"))
        finetuned[kind] = done if done is not None else cross_patch(
            pair, task, sites=kind, direction="ft->base", progress=progress)
    return compare_prompted_base(prompted, finetuned, changed_layers=distilled.changed_layers)


def _real_pair(base: TransformerBridge, base_info: LoadInfo, base_dir: Path, finetuned: Path,
               device: str | None) -> ModelPair:
    """A pair sharing the already-loaded base bridge, both processed the same way; a LoRA adapter
    is merged into the base (the zoo's own hash marker ties the adapter to its base, so a moved
    cache is not a mismatch)."""
    adapter = (finetuned / "adapter_config.json").is_file()
    ft, _ = load_model(finetuned, base=base_dir if adapter else None, device=device,
                       skip=base_info.processing_skipped, allow_adapter_mismatch=adapter)
    return load_pair(base, ft)
