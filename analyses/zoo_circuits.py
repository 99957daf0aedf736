"""Circuits of the zoo's re-weighting and new-skill fine-tunes, and the verdict on each.

For each fine-tune of the zoo (:mod:`mechdiff.zoo`), on its task: edge attribution (EAP-IG) over
every edge of the base and of the fine-tune, each model's faithfulness curve by real edge ablation,
each model's circuit run inside the other model, the share of the gap the base circuit's paths
carry, and the verdict ("re-used and strengthened" / "new mechanism" / "mixed") with bootstrap
intervals over prompts (:func:`mechdiff.pipeline.analyse_circuits`). The zoo's mechanisms are known
by construction: ``reweight`` re-weights a behaviour the base has, ``newskill`` builds a new one.

Results go to ``analyses_out/zoo_circuits/<fine-tune>/`` (one saved
:class:`~mechdiff.pipeline.CircuitAnalysis` each) plus ``verdicts.json``; figures, drawn from the
saved results alone, to ``figures/circuits_<fine-tune>_{faithfulness,circuit_graph}.*``. Run:
``MECHDIFF_CACHE=... .venv/bin/python analyses/zoo_circuits.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import mechdiff
from mechdiff import zoo
from mechdiff.pipeline import CircuitAnalysis, analyse_circuits
from mechdiff.viz import plot_circuit_graph, plot_faithfulness, save_figure


@dataclass(frozen=True)
class Config:
    out: Path = Path("analyses_out/zoo_circuits")
    figures: Path = Path("figures")
    finetunes: tuple[str, ...] = ("reweight", "reweight_seed1", "newskill")
    n_prompts: int = 64
    seed: int = 0
    method: str = "eap_ig"
    cache_dir: Path | None = None  # default: $MECHDIFF_CACHE/zoo or ~/.cache/mechdiff/zoo
    device: str = "cpu"
    progress: bool = True


def main(cfg: Config | None = None) -> dict[str, dict]:
    cfg = cfg or Config()
    dirs = zoo.build(cfg.cache_dir, progress=cfg.progress)
    for name in cfg.finetunes:
        spec = zoo.FINETUNES[name]
        pair = mechdiff.load_pair(dirs["base"], dirs[name], device=cfg.device)
        task = zoo.task(spec.task, n=cfg.n_prompts, seed=cfg.seed)
        result = analyse_circuits(pair, task, label=name, method=cfg.method,
                                  progress=cfg.progress,
                                  mechanism=zoo.MECHANISMS[spec.mechanism])
        result.save(cfg.out / name)
        print(result.summary(), "\n")

    verdicts = {}
    for name in cfg.finetunes:  # figures and numbers from the saved results alone
        c = CircuitAnalysis.load(cfg.out / name).comparison
        save_figure(plot_faithfulness(c), cfg.figures / f"circuits_{name}_faithfulness")
        save_figure(plot_circuit_graph(c), cfg.figures / f"circuits_{name}_circuit_graph")
        v = c.verdict
        verdicts[name] = {"mechanism": zoo.FINETUNES[name].mechanism, "verdict": v.label,
                          "frequency": v.frequency[v.label], "numbers": v.numbers,
                          "intervals": v.intervals}
    (cfg.out / "verdicts.json").write_text(json.dumps(
        {"config": {k: str(v) for k, v in asdict(cfg).items()}, "verdicts": verdicts},
        indent=2), encoding="utf-8")
    return verdicts


if __name__ == "__main__":
    main()
