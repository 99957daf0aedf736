"""Re-weighting vs a new skill: what cross-model patching sees in the zoo's two kinds of fine-tune.

The zoo (:mod:`mechdiff.zoo`) has a fine-tune that only re-weights a behaviour the base already
shows (``reweight``: the reversed continuation, produced by the base on ~30% of its pretraining
examples, made dominant) and one that teaches a behaviour absent from pretraining (``newskill``).
For each, every attention head (after its own W_O) and every MLP is patched in both directions:

* sufficiency (FT -> base): does this component alone carry the new behaviour into the base?
* necessity (base -> FT): does reverting this component alone undo it in the fine-tune?

and the series index (necessity total - sufficiency total, :mod:`mechdiff.compare.interaction`)
says whether the components' effects add up (re-weighting) or act in series (a new mechanism).

Results go to ``analyses_out/zoo_reweight_vs_newskill/<fine-tune>/`` (one saved
:class:`~mechdiff.pipeline.PairAnalysis` each) plus ``comparison.json``; figures to ``figures/``
(heads of both fine-tunes on one colour scale). Run:
``.venv/bin/python analyses/zoo_reweight_vs_newskill.py``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import mechdiff
from mechdiff import zoo
from mechdiff.pipeline import PairAnalysis, analyse_pair
from mechdiff.report import text
from mechdiff.viz import plot_directions, plot_gap, save_figure


@dataclass(frozen=True)
class Config:
    out: Path = Path("analyses_out/zoo_reweight_vs_newskill")
    figures: Path = Path("figures")
    finetunes: tuple[str, ...] = ("reweight", "newskill")
    n_prompts: int = 64
    seed: int = 0
    cache_dir: Path | None = None  # default: $MECHDIFF_CACHE/zoo or ~/.cache/mechdiff/zoo
    device: str = "cpu"
    progress: bool = True


SITES = {"heads": "Attention heads", "mlp": "MLP layers"}


def main(cfg: Config | None = None) -> dict[str, dict[str, float]]:
    cfg = cfg or Config()
    dirs = zoo.build(cfg.cache_dir, progress=cfg.progress)
    analyses: dict[str, PairAnalysis] = {}
    for name in cfg.finetunes:
        spec = zoo.FINETUNES[name]
        pair = mechdiff.load_pair(dirs["base"], dirs[name], device=cfg.device)
        task = zoo.task(spec.task, n=cfg.n_prompts, seed=cfg.seed)
        analyses[name] = analyse_pair(pair, task, label=name, progress=cfg.progress,
                                      mechanism=zoo.MECHANISMS[spec.mechanism])
        analyses[name].save(cfg.out / name)
        print(text.pair_table(analyses[name], 6))

    # Figures from the saved results alone; heads of both fine-tunes on one colour scale.
    saved = {name: PairAnalysis.load(cfg.out / name) for name in analyses}
    vmax = max(float(r.scores.abs().max()) for a in saved.values()
               for k, r in a.exact.items() if k.startswith("heads"))
    for name, a in saved.items():
        save_figure(plot_gap(a.gap, title=f"Behaviour gap \u00b7 {name} \u00b7 task: "
                             f"{a.gap.provenance.task}"), cfg.figures / f"zoo_{name}_gap")
        for sites in ("heads", "mlp"):
            fig = plot_directions(a.exact[f"{sites}_ft_to_base"], a.exact[f"{sites}_base_to_ft"],
                                  title=f"{SITES[sites]} \u00b7 {name}: {a.mechanism} \u00b7 task: "
                                  f"{a.gap.provenance.task}",
                                  vmax=vmax if sites == "heads" else None)
            save_figure(fig, cfg.figures / f"zoo_{name}_{sites}")

    comparison = {}
    for name, a in saved.items():
        x = a.interaction
        assert x is not None
        comparison[name] = {"gap": a.gap.gap, "sufficiency_total": x.sufficiency,
                            "necessity_total": x.necessity, "series_index": x.index,
                            "series_index_low": x.index_low, "series_index_high": x.index_high}
    (cfg.out / "comparison.json").write_text(json.dumps(
        {"config": asdict(cfg), "comparison": comparison}, indent=2, default=str))
    print(f"{'fine-tune':<10} {'gap':>7} {'suff. total':>12} {'nec. total':>11} "
          f"{'series index [95%]':>24}")
    for name, row in comparison.items():
        print(f"{name:<10} {row['gap']:>7.2f} {row['sufficiency_total']:>12.2f} "
              f"{row['necessity_total']:>11.2f} {row['series_index']:>+9.2f} "
              f"[{row['series_index_low']:+.2f}, {row['series_index_high']:+.2f}]")
    return comparison


if __name__ == "__main__":
    main()
