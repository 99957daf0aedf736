"""Re-weighting vs a new skill: what cross-model patching sees in the zoo's two kinds of fine-tune.

The zoo (:mod:`mechdiff.zoo`) has a fine-tune that only re-weights a behaviour the base already
shows (``reweight``: the reversed continuation, produced by the base on ~30% of its pretraining
examples, made dominant) and one that teaches a behaviour absent from pretraining (``newskill``).
For each, every attention head (after its own W_O) and every MLP is patched in both directions:

* sufficiency (FT -> base): does this component alone carry the new behaviour into the base?
* necessity (base -> FT): does reverting this component alone undo it in the fine-tune?

Results go to ``mechdiff_out/analyses/zoo_reweight_vs_newskill/`` (one saved result per analysis,
plus ``comparison.json``), figures to ``figures/`` (heads on one colour scale for both fine-tunes).
Run: ``.venv/bin/python analyses/zoo_reweight_vs_newskill.py``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import mechdiff
from mechdiff import zoo
from mechdiff.viz import plot_directions, plot_gap, save_figure


@dataclass(frozen=True)
class Config:
    out: Path = Path("mechdiff_out/analyses/zoo_reweight_vs_newskill")
    figures: Path = Path("figures")
    finetunes: tuple[str, ...] = ("reweight", "newskill")
    n_prompts: int = 64
    seed: int = 0
    cache_dir: Path | None = None  # default: $MECHDIFF_CACHE/zoo or ~/.cache/mechdiff/zoo
    device: str = "cpu"
    progress: bool = True


SITES = {"heads": "Attention heads", "mlp": "MLP layers"}
MECHANISMS = {"reweight": "re-weights an existing behaviour", "new_skill": "builds a new skill"}


def main(cfg: Config | None = None) -> dict[str, dict[str, float]]:
    cfg = cfg or Config()
    dirs = zoo.build(cfg.cache_dir, progress=cfg.progress)
    results: dict[str, dict[str, mechdiff.PatchResult]] = {}
    comparison: dict[str, dict[str, float]] = {}
    for name in cfg.finetunes:
        spec = zoo.FINETUNES[name]
        pair = mechdiff.load_pair(dirs["base"], dirs[name], device=cfg.device)
        task = zoo.task(spec.task, n=cfg.n_prompts, seed=cfg.seed)
        gap = mechdiff.behaviour_gap(pair, task)
        gap.save(cfg.out / name / "gap")
        save_figure(plot_gap(gap, title=f"Behaviour gap \u00b7 {name} \u00b7 task: {task.name}"),
                    cfg.figures / f"zoo_{name}_gap")
        results[name] = {}
        for sites in ("heads", "mlp"):
            for direction in ("ft->base", "base->ft"):
                r = mechdiff.cross_patch(pair, task, sites=sites, direction=direction,
                                         progress=cfg.progress)
                key = f"{sites}_{direction.replace('->', '_to_')}"
                r.save(cfg.out / name / key)
                results[name][key] = r
        row = {"gap": gap.gap}
        for direction in ("ft_to_base", "base_to_ft"):
            scores = [results[name][f"{s}_{direction}"].scores.flatten() for s in ("heads", "mlp")]
            flat = [float(x) for t in scores for x in t]
            row[f"max_{direction}"] = max(flat)
            row[f"sum_{direction}"] = sum(flat)
        comparison[name] = row

    # Heads of both fine-tunes on one colour scale, so colours compare across figures.
    vmax = max(float(r.scores.abs().max()) for per in results.values()
               for k, r in per.items() if k.startswith("heads"))
    for name, per in results.items():
        for sites in ("heads", "mlp"):
            fig = plot_directions(per[f"{sites}_ft_to_base"], per[f"{sites}_base_to_ft"],
                                  title=f"{SITES[sites]} \u00b7 {name}: "
                                  f"{MECHANISMS[zoo.FINETUNES[name].mechanism]} \u00b7 "
                                  f"task: {per[f'{sites}_ft_to_base'].provenance.task}",
                                  vmax=vmax if sites == "heads" else None)
            save_figure(fig, cfg.figures / f"zoo_{name}_{sites}")

    (cfg.out / "comparison.json").write_text(json.dumps(
        {"config": asdict(cfg), "comparison": comparison}, indent=2, default=str))
    print(f"{'fine-tune':<10} {'gap':>7} {'max suff.':>10} {'max nec.':>9} {'sum suff.':>10} "
          f"{'sum nec.':>9}")
    for name, row in comparison.items():
        print(f"{name:<10} {row['gap']:>7.2f} {row['max_ft_to_base']:>10.3f} "
              f"{row['max_base_to_ft']:>9.3f} {row['sum_ft_to_base']:>10.3f} "
              f"{row['sum_base_to_ft']:>9.3f}")
    return comparison


if __name__ == "__main__":
    main()
