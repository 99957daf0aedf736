"""The ``mechdiff`` command: ``mechdiff demo`` and ``mechdiff patch``.

Both commands run the same per-pair analysis (:func:`analyse_pair`): the behaviour gap of the base
and fine-tuned model on a task, then exact cross-model patching (:func:`mechdiff.cross_patch`) of
every site of the requested kinds in the requested directions. Every result is saved with its
``save`` method (``tensors.safetensors`` + ``result.json``) so figures and tables can be rebuilt from
disk without loading a model; figures go to ``<out>/figures/`` as PDF and PNG; the components that
explain the gap are printed as a ranked table and written to ``summary.json`` and ``summary.md``.

* ``mechdiff demo`` builds (or reuses) the embedded model zoo (:mod:`mechdiff.zoo`), whose
  fine-tunes have known mechanisms, and analyses each fine-tune against the base. ``--synthetic``
  selects that controlled zoo; it is currently the default and only demo.
* ``mechdiff patch --base DIR --finetuned DIR --prompts FILE`` runs the same analysis on a user's
  own checkpoints.

Errors on bad input (:class:`mechdiff.errors.MechdiffError`) are printed as one line,
``mechdiff: error: <message>``, with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from mechdiff import viz, zoo
from mechdiff.errors import MechdiffError, OptionError
from mechdiff.gap import GapResult, behaviour_gap
from mechdiff.pair import ModelPair, load_pair
from mechdiff.patching import DIRECTIONS, Direction, PatchResult, Positions, cross_patch
from mechdiff.sites import SITE_KINDS, SiteKind
from mechdiff.tasks import METRICS, Task
from mechdiff.viz._style import SITE_NAMES

DemoName: TypeAlias = Literal["synthetic"]
DEFAULT_DEMO: DemoName = "synthetic"
"""What ``mechdiff demo`` runs without a flag. ``synthetic``: the embedded zoo."""

MECHANISMS = {
    "reweight": "re-weights an existing behaviour",
    "new_skill": "builds a new skill",
}
"""Short statements of the zoo's known mechanisms (:attr:`mechdiff.zoo.FineTuneSpec.mechanism`)."""

ROLES = {"ft->base": "sufficiency", "base->ft": "necessity"}
_DIRECTION_ALIASES: dict[str, Direction] = {
    "ft->base": "ft->base",
    "base->ft": "base->ft",
    "ft-to-base": "ft->base",
    "base-to-ft": "base->ft",
}
_HEADINGS = {"ft->base": "FT->base (suff.)", "base->ft": "base->FT (nec.)"}

Report: TypeAlias = Callable[[str], None]


# ---------------------------------------------------------------- the per-pair analysis


@dataclass(frozen=True)
class RankedComponent:
    """One component (head, MLP, ...) and the fraction of the gap it closes in each direction.

    Attributes:
        rank: 1 for the component with the largest ``|score|`` in any direction.
        component: its label (``L2H2``, ``MLP1``, ``RESID0@5``).
        sites: the site kind it belongs to (``heads``, ``mlp``, ...).
        scores: fraction of the gap closed, by direction (``ft->base``, ``base->ft``).
        effects: raw change of the mean metric, by direction.
    """

    rank: int
    component: str
    sites: str
    scores: dict[str, float]
    effects: dict[str, float]

    @property
    def strength(self) -> float:
        """The largest ``|score|`` over directions (NaN counts as 0); what the ranking sorts by."""
        return max((abs(v) for v in self.scores.values() if math.isfinite(v)), default=0.0)


@dataclass(frozen=True)
class PairAnalysis:
    """Everything :func:`analyse_pair` computed and wrote for one model pair.

    Attributes:
        label: name of the pair in tables and folders (e.g. the fine-tune's name).
        out_dir: the folder holding the saved results and ``figures/``.
        gap: the behaviour gap.
        results: patching results keyed by folder name (``heads_ft_to_base``, ...).
        figures: written figure files (PDF and PNG).
        ranking: components ranked by the largest fraction of gap they close in any direction.
        directions: the patching directions run, in order.
        mechanism: the known mechanism of the fine-tune, where one is known (the zoo's).
        description: a longer statement of what the fine-tune did, where known.
    """

    label: str
    out_dir: Path
    gap: GapResult
    results: dict[str, PatchResult]
    figures: tuple[Path, ...]
    ranking: tuple[RankedComponent, ...]
    directions: tuple[str, ...]
    mechanism: str | None = None
    description: str | None = None

    def heading(self) -> str:
        p = self.gap.provenance
        known = f": {self.mechanism}" if self.mechanism else ""
        base, ft = float(self.gap.base_metric.mean()), float(self.gap.finetuned_metric.mean())
        return (
            f"{self.label}{known}\n"
            f"  task {p.task} ({p.n_prompts} prompts), {p.metric}: base {base:.3f} -> "
            f"fine-tuned {ft:.3f} (gap {self.gap.gap:+.3f}); KL(FT||base) at the final position "
            f"{float(self.gap.kl_final.mean()):.3f}"
        )

    def table(self, k: int | None = None) -> str:
        """The ranked components as plain text (top ``k``; all by default)."""
        rows = self.ranking[:k]
        cols = "".join(f" {_HEADINGS[d]:>17}" for d in self.directions)
        lines = [self.heading(), f"  {'rank':>4}  {'component':<12}{cols}"]
        for row in rows:
            vals = "".join(f" {_fmt(row.scores[d]):>17}" for d in self.directions)
            lines.append(f"  {row.rank:>4}  {row.component:<12}{vals}")
        lines.append("  (fraction of the gap closed by patching that one component; "
                     "FT->base = sufficiency, base->FT = necessity)")
        return "\n".join(lines)

    def markdown(self, k: int | None = None) -> str:
        """The ranked components as a Markdown section."""
        p = self.gap.provenance
        known = f": {self.mechanism}" if self.mechanism else ""
        base, ft = float(self.gap.base_metric.mean()), float(self.gap.finetuned_metric.mean())
        heads = " | ".join(f"{_md_direction(d)} ({ROLES[d]})" for d in self.directions)
        lines = [f"## {self.label}{known}", ""]
        if self.description:
            lines += [self.description, ""]
        lines += [
            f"Task `{p.task}`, {p.n_prompts} prompts, metric `{p.metric}`: base {base:.3f}, "
            f"fine-tuned {ft:.3f}, gap {self.gap.gap:+.3f}. Scores are the fraction of the gap "
            "closed by patching one component.",
            "",
            f"| rank | component | {heads} |",
            "|---:|---|" + "---:|" * len(self.directions),
        ]
        for row in self.ranking[:k]:
            vals = " | ".join(_fmt(row.scores[d]) for d in self.directions)
            lines.append(f"| {row.rank} | {row.component} | {vals} |")
        return "\n".join(lines) + "\n"

    def summary(self, k: int | None = None) -> dict[str, Any]:
        """A JSON-ready summary: gap, ranking, where results and figures are."""
        p = self.gap.provenance
        return {
            "label": self.label,
            "mechanism": self.mechanism,
            "description": self.description,
            "base": p.base,
            "finetuned": p.finetuned,
            "task": p.task,
            "n_prompts": p.n_prompts,
            "metric": p.metric,
            "prompts_hash": p.prompts_hash,
            "processing": p.processing,
            "gap": {
                "base": float(self.gap.base_metric.mean()),
                "finetuned": float(self.gap.finetuned_metric.mean()),
                "gap": self.gap.gap,
                "kl_final": float(self.gap.kl_final.mean()),
                "kl_mean": float(self.gap.kl_mean.mean()),
                "message": self.gap.message,
            },
            "ranking": [
                {"rank": r.rank, "component": r.component, "sites": r.sites,
                 "scores": r.scores, "effects": r.effects}
                for r in self.ranking[:k]
            ],
            "results": {name: str(self.out_dir / name) for name in ["gap", *self.results]},
            "figures": [str(f) for f in self.figures],
        }


def analyse_pair(
    pair: ModelPair,
    task: Task,
    out_dir: str | Path,
    *,
    label: str,
    directions: Sequence[Direction] = DIRECTIONS,
    sites: Sequence[SiteKind] = ("heads", "mlp"),
    progress: bool = True,
    positions: Positions = "all",
    batch_size: int = 64,
    prompt_batch_size: int = 32,
    mechanism: str | None = None,
    description: str | None = None,
) -> PairAnalysis:
    """Behaviour gap, then exact cross-model patching of every site kind in every direction.

    Writes ``<out_dir>/gap/``, ``<out_dir>/<sites>_<ft_to_base|base_to_ft>/`` (each a saved
    result) and ``<out_dir>/figures/`` (``gap``, and one figure per site kind: both directions
    side by side on one colour scale when both were run).

    Args:
        pair: the base and fine-tuned models.
        task: prompts and metric.
        out_dir: where results and figures go (created if missing).
        label: the pair's name in titles and tables.
        directions: ``"ft->base"`` (sufficiency) and/or ``"base->ft"`` (necessity).
        sites: site kinds to patch (``heads``, ``attn``, ``mlp``, ``resid``).
        progress: show progress bars.
        positions: ``"all"`` (every position at once) or ``"each"`` (one position at a time).
        batch_size: sequences per patched forward (see :func:`mechdiff.cross_patch`).
        prompt_batch_size: prompts captured at once.
        mechanism: the fine-tune's known mechanism, if any (recorded in tables and summaries).
        description: a longer statement of the fine-tune, if any.

    Returns:
        A :class:`PairAnalysis`.

    Raises:
        ZeroGapError: the two models behave the same on the task.
        MechdiffError: any other bad input, before patching starts.
    """
    directions = tuple(dict.fromkeys(directions))
    sites = tuple(dict.fromkeys(sites))
    if not directions or not sites:
        raise OptionError("give at least one direction and one site kind")
    out = Path(out_dir)
    fig_dir = out / "figures"
    # Titles name the pair, and the task where it is not the same name.
    about = label if label == task.name else f"{label} \u00b7 task: {task.name}"
    gap = behaviour_gap(pair, task)
    gap.save(out / "gap")
    figures = viz.save_figure(viz.plot_gap(gap, title=f"Behaviour gap \u00b7 {about}"),
                              fig_dir / "gap")
    results: dict[str, PatchResult] = {}
    for kind in sites:
        pair_results = {}
        for direction in directions:
            result = cross_patch(pair, task, sites=kind, direction=direction, positions=positions,
                                 batch_size=batch_size, prompt_batch_size=prompt_batch_size,
                                 progress=progress)
            name = f"{kind}_{_slug(direction)}"
            result.save(out / name)
            results[name] = pair_results[direction] = result
        site_name = SITE_NAMES.get(kind, kind)
        if len(pair_results) == 2:
            fig = viz.plot_directions(
                pair_results["ft->base"], pair_results["base->ft"],
                title=f"{site_name} \u00b7 {about}",
            )
            figures += viz.save_figure(fig, fig_dir / kind)
        else:
            (direction, result), = pair_results.items()
            fig = viz.plot_patch(result)
            figures += viz.save_figure(fig, fig_dir / f"{kind}_{_slug(direction)}")
    return PairAnalysis(
        label=label, out_dir=out, gap=gap, results=results, figures=tuple(figures),
        ranking=rank_components(results.values(), directions), directions=directions,
        mechanism=mechanism, description=description,
    )


def rank_components(
    results: Iterable[PatchResult], directions: Sequence[str] = DIRECTIONS
) -> tuple[RankedComponent, ...]:
    """Merge patching results into one ranking of components.

    Each component gets one row with its score in every direction (NaN where a direction was not
    run); rows are sorted by the largest ``|score|`` over directions.

    Args:
        results: patching results (any site kinds, any directions).
        directions: the directions to report, in column order.
    """
    rows: dict[str, dict[str, Any]] = {}
    for result in results:
        labels = result.labels()
        scores, effects = result.scores.flatten().tolist(), result.effects.flatten().tolist()
        for lab, s, e in zip(labels, scores, effects, strict=True):
            row = rows.setdefault(lab, {"sites": result.sites, "scores": {}, "effects": {}})
            row["scores"][result.direction] = float(s)
            row["effects"][result.direction] = float(e)
    unranked = [
        RankedComponent(
            rank=0, component=lab, sites=row["sites"],
            scores={d: row["scores"].get(d, math.nan) for d in directions},
            effects={d: row["effects"].get(d, math.nan) for d in directions},
        )
        for lab, row in rows.items()
    ]
    unranked.sort(key=lambda r: r.strength, reverse=True)
    return tuple(
        RankedComponent(i, r.component, r.sites, r.scores, r.effects)
        for i, r in enumerate(unranked, 1)
    )


def write_summary(
    out: Path, analyses: Sequence[PairAnalysis], *, top: int, meta: dict[str, Any]
) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.md`` (the ranked tables) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    data = {**meta, "pairs": {a.label: a.summary() for a in analyses}}
    json_path, md_path = out / "summary.json", out / "summary.md"
    json_path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    title = meta.get("title", "mechdiff summary")
    md = [f"# {title}", "", meta.get("intro", ""), ""]
    md += [a.markdown(top) for a in analyses]
    md_path.write_text("\n".join(md), encoding="utf-8")
    return json_path, md_path


def _fmt(score: float) -> str:
    """A score with 3 decimals; ``-0.000`` is shown as ``0.000``, a missing one as ``-``."""
    if not math.isfinite(score):
        return "-"
    text = f"{score:.3f}"
    return text[1:] if text == "-0.000" else text


def _slug(direction: str) -> str:
    return direction.replace("->", "_to_")


def _md_direction(direction: str) -> str:
    return {"ft->base": "FT\u2192base", "base->ft": "base\u2192FT"}[direction]


# ---------------------------------------------------------------- demo


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
    both directions) into ``<out>/<fine-tune>/``, and writes ``<out>/summary.json`` and
    ``<out>/summary.md``.

    Args:
        out: output folder.
        cache_dir: the zoo cache (default ``$MECHDIFF_CACHE/zoo`` or ``~/.cache/mechdiff/zoo``).
        n_prompts: prompts per task.
        seed: seed of the task prompts.
        top: rows per ranked table.
        device: where to run the models.
        progress: show progress bars.
        report: called with each fine-tune's ranked table as soon as it is ready.
    """
    if n_prompts < 1:
        raise OptionError(f"n_prompts must be at least 1, got {n_prompts}")
    out = Path(out)
    start = time.perf_counter()
    dirs = zoo.build(cache_dir, progress=progress)
    analyses = []
    bar = tqdm(list(zoo.FINETUNES.items()), desc="mechdiff demo", disable=not progress)
    try:
        for name, spec in bar:
            bar.set_postfix_str(name)
            pair = load_pair(dirs["base"], dirs[name], device=device)
            task = zoo.task(spec.task, n=n_prompts, seed=seed)
            analysis = analyse_pair(
                pair, task, out / name, label=name, progress=progress,
                mechanism=MECHANISMS.get(spec.mechanism, spec.mechanism),
                description=spec.description,
            )
            analyses.append(analysis)
            if report is not None:
                report(analysis.table(top))
    finally:
        bar.close()
    write_summary(out, analyses, top=top, meta={
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
        "seconds": round(time.perf_counter() - start, 1),
    })
    return analyses


DEMOS: dict[str, Callable[..., list[PairAnalysis]]] = {"synthetic": run_demo_synthetic}


# ---------------------------------------------------------------- argument parsing and main


def _direction(text: str) -> Direction:
    try:
        return _DIRECTION_ALIASES[text]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"invalid direction {text!r}; choose ft->base or base->ft (shell-safe: ft-to-base, "
            "base-to-ft)"
        ) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechdiff",
        description="What did fine-tuning change inside this model? Cross-model activation "
        "patching of a base and a fine-tuned model.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{demo,patch}")

    demo = sub.add_parser(
        "demo", help="analyse the embedded model zoo (fine-tunes with known mechanisms)",
        description="Build (or reuse) the embedded zoo and analyse every fine-tune against the "
        "base: behaviour gap, heads and MLPs patched in both directions, ranked tables, figures.",
    )
    demo.add_argument("--synthetic", dest="demo", action="store_const", const="synthetic",
                      default=DEFAULT_DEMO,
                      help="run on the controlled synthetic zoo (small GPT-2-style models trained "
                      "offline with known mechanisms); currently the default")
    demo.add_argument("--out", type=Path, default=Path("mechdiff_out"),
                      help="output folder (default: mechdiff_out)")
    demo.add_argument("--cache", type=Path, default=None,
                      help="zoo cache folder (default: $MECHDIFF_CACHE/zoo or ~/.cache/mechdiff/zoo)")
    demo.add_argument("--n-prompts", type=_positive, default=64, help="prompts per task (default 64)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the task prompts (default 0)")
    demo.add_argument("--top", type=_positive, default=10, help="rows per ranked table (default 10)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    patch = sub.add_parser(
        "patch", help="analyse your own base and fine-tuned checkpoints",
        description="Behaviour gap and exact cross-model patching of a base and a fine-tuned "
        "checkpoint on your prompts. Prompt files: .jsonl (one {\"prompt\", \"answer\", "
        "\"wrong_answer\"} object per line), .json ({\"prompts\": [...], \"answers\": [...], ...}) "
        "or plain text (one prompt per line; task-free KL metric).",
    )
    patch.add_argument("--base", required=True, help="base model: a local HF directory")
    patch.add_argument("--finetuned", required=True,
                       help="fine-tuned model: a local HF directory or LoRA adapter directory")
    patch.add_argument("--prompts", required=True, type=Path, help="prompt file (.jsonl, .json, .txt)")
    patch.add_argument("--sites", nargs="+", choices=SITE_KINDS, default=["heads", "mlp"],
                       help="site kinds to patch (default: heads mlp)")
    patch.add_argument("--direction", nargs="+", type=_direction, default=list(DIRECTIONS),
                       metavar="DIRECTION",
                       help="ft->base (sufficiency) and/or base->ft (necessity); default both. "
                       "Quote them in a shell, or write ft-to-base / base-to-ft")
    patch.add_argument("--positions", choices=("all", "each"), default="all",
                       help="patch every position at once (all, default) or one at a time (each)")
    patch.add_argument("--metric", choices=METRICS, default=None,
                       help="default: logit_diff with wrong answers, logprob with answers only, "
                       "else kl")
    patch.add_argument("--out", type=Path, default=Path("mechdiff_out"),
                       help="output folder (default: mechdiff_out)")
    patch.add_argument("--batch-size", type=_positive, default=64,
                       help="sequences per patched forward; bounds memory (default 64)")
    patch.add_argument("--device", choices=("cpu", "cuda"), default=None,
                       help="default: cuda if available, else cpu")
    patch.add_argument("--top", type=_positive, default=10, help="rows in the ranked table (default 10)")
    patch.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise _UsageError(f"output path {out} exists and is not a folder; pass another --out")


class _UsageError(MechdiffError):
    """A command-line argument is unusable (reported like every other MechdiffError)."""


def _cmd_demo(args: argparse.Namespace, report: Report) -> int:
    _check_out(args.out)
    start = time.perf_counter()
    analyses = DEMOS[args.demo](
        args.out, cache_dir=args.cache, n_prompts=args.n_prompts, seed=args.seed, top=args.top,
        progress=not args.quiet, report=report,
    )
    report(f"\n{len(analyses)} fine-tunes analysed in {time.perf_counter() - start:.0f} s; "
           f"results, figures and summary.md in {args.out}/")
    return 0


def _cmd_patch(args: argparse.Namespace, report: Report) -> int:
    _check_out(args.out)
    extra = {} if args.metric is None else {"metric": args.metric}
    task = Task.from_file(args.prompts, **extra)  # prompt errors before any model is loaded
    pair = load_pair(args.base, args.finetuned, device=args.device)
    analysis = analyse_pair(
        pair, task, args.out, label=task.name, directions=args.direction, sites=args.sites,
        progress=not args.quiet, positions=args.positions, batch_size=args.batch_size,
    )
    write_summary(args.out, [analysis], top=args.top, meta={
        "title": f"mechdiff patch: {task.name}",
        "intro": f"Base `{pair.base_id}`, fine-tuned `{pair.finetuned_id}`.",
        "positions": args.positions,
    })
    report(analysis.table(args.top))
    report(f"\nresults, figures and summary.md in {args.out}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mechdiff`` command line; returns the exit status.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse reports usage errors itself (status 2), --help status 0
        return int(e.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    report: Report = tqdm.write
    try:
        with _hf_progress(enabled=not args.quiet):
            if args.command == "demo":
                return _cmd_demo(args, report)
            return _cmd_patch(args, report)
    except MechdiffError as e:
        return _fail(str(e))
    except OSError as e:  # unwritable output folder, full disk, ...
        return _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    except KeyboardInterrupt:
        print("mechdiff: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _hf_progress(*, enabled: bool) -> Iterator[None]:
    """Silence transformers' own progress bars (weight loading) when asked; restore them after."""
    was = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not enabled:
            hf_logging.enable_progress_bar()


def _fail(message: str) -> int:
    print("mechdiff: error: " + " ".join(message.split()), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
