"""The command line's implementation (see :mod:`mechdiff.cli`, its entry point, which imports this
module only once it can handle Ctrl-C)."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from mechdiff._progress import report as print_line
from mechdiff._signals import (
    describe,
    interrupt_for,
    last_interrupt,
    raise_if_interrupted,
    terminate_as_interrupt,
)
from mechdiff.choices import (
    ABLATIONS,
    DEFAULT_DEMO,
    METHODS,
    METRICS,
    REAL_N_PROMPTS,
    SITE_KINDS,
)
from mechdiff.directions import ALIASES, DIRECTIONS, Direction
from mechdiff.errors import MechdiffError, check_seed

# The parser needs only the light modules above: --help and bad options are answered before
# torch, transformers and TransformerLens are imported (inside main, once the arguments parse).
# The commands import what they run.

# ---------------------------------------------------------------- argument parsing


def _direction(text: str) -> Direction:
    try:
        return ALIASES[text]
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


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    try:
        return check_seed(value)
    except MechdiffError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command (``mechdiff: error:``),
    with where to read the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mechdiff: error: {message} (see {self.prog} --help)\n")


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("mechdiff_out"),
                        help="output folder (default: mechdiff_out); written whole on success, "
                        "left as it was on failure or Ctrl-C")
    parser.add_argument("--replace", action="store_true",
                        help="replace the output of a different earlier run in --out whole (never "
                        "mixed with it); without it such a folder is refused. Re-running the same "
                        "command with the same inputs and options needs no flag")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_models(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="base model: a local HF directory")
    parser.add_argument("--finetuned", required=True,
                        help="fine-tuned model: a local HF directory or LoRA adapter directory")
    parser.add_argument("--prompts", required=True, type=Path,
                        help="prompt file: .jsonl, .json or .txt (any case); schema in the "
                        "README's prompt-file section")


def _add_loading(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=("float32", "float64", "bfloat16", "float16"),
                        default="float32", help="parameter dtype (default float32)")
    parser.add_argument("--processing", choices=("compat", "none"), default="compat",
                        help="compat: TransformerLens weight processing, checked to keep the "
                        "logits (steps that would not are left out and recorded); none: raw "
                        "weights")
    parser.add_argument("--allow-adapter-mismatch", action="store_true",
                        help="merge a LoRA adapter whose adapter_config.json names another base "
                        "(a moved or renamed copy of the same base)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mechdiff",
        description="What did fine-tuning change inside this model? Cross-model activation "
        "patching of a base and a fine-tuned model, and the circuit of a behaviour in both.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{demo,patch,circuits,report}")

    demo = sub.add_parser(
        "demo", help="analyse a real model's fine-tunes (default) or the synthetic zoo",
        description="By default: SmolLM2-135M-Instruct (converted offline) and its fine-tunes "
        "(context distillation, full and LoRA; a planted trigger): behaviour gaps, exact and "
        "attribution patching of every head and MLP in both directions, the prompted base as a "
        "third model, ranked tables and figures. The first run converts and fine-tunes (minutes, "
        "cached). --synthetic: the embedded zoo of small models with known mechanisms.",
    )
    which = demo.add_mutually_exclusive_group()
    which.add_argument("--real", dest="demo", action="store_const", const="real",
                       help="run on SmolLM2-135M-Instruct and its fine-tunes (the default)")
    which.add_argument("--synthetic", dest="demo", action="store_const", const="synthetic",
                       help="run on the controlled synthetic zoo (small GPT-2-style models "
                       "trained offline with known mechanisms)")
    demo.set_defaults(demo=DEFAULT_DEMO)
    demo.add_argument("--cache", type=Path, default=None,
                      help="model cache folder (default: $MECHDIFF_CACHE/real, or "
                      "$MECHDIFF_CACHE/zoo with --synthetic; without MECHDIFF_CACHE under "
                      "~/.cache/mechdiff)")
    demo.add_argument("--n-prompts", type=_positive, default=None,
                      help=f"prompts per task (default {REAL_N_PROMPTS} for the real model, which "
                      "keeps a run from the cache within about 5 minutes on 2 CPU cores; 64 with "
                      "--synthetic)")
    demo.add_argument("--seed", type=_seed, default=0, help="seed of the task prompts (default 0)")
    demo.add_argument("--top", type=_positive, default=10, help="rows per ranked table (default 10)")
    _add_output(demo)

    patch = sub.add_parser(
        "patch", help="analyse your own base and fine-tuned checkpoints",
        description="Behaviour gap and exact cross-model patching of a base and a fine-tuned "
        "checkpoint on your prompts. Prompt files are UTF-8, suffix in any case, parsed strictly "
        "(errors name the file and line): .jsonl (one {\"prompt\", \"answer\", \"wrong_answer\", "
        "\"corrupted\"} object per line, the same keys on every line, blank lines allowed), .json "
        "(one object {\"prompts\": [...], \"answers\": [...], \"wrong_answers\": [...], "
        "\"corrupted\": [...], \"metric\": ..., \"name\": ..., \"prepend_bos\": ...}) or .txt "
        "(one prompt per line; task-free KL metric).",
    )
    _add_models(patch)
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
    patch.add_argument("--batch-size", type=_positive, default=64,
                       help="sequences per patched forward; bounds memory (default 64)")
    _add_loading(patch)
    patch.add_argument("--top", type=_positive, default=10, help="rows in the ranked table (default 10)")
    _add_output(patch)

    circ = sub.add_parser(
        "circuits", help="discover the circuit in both models, compare them, give a verdict",
        description="Edge attribution (EAP or EAP-IG) over every edge of both models' graphs "
        "(input, every head's q/k/v inputs, every MLP, logits), each model's circuit chosen as "
        "the smallest fraction of edges faithful by real edge ablation (or --edges N), the two "
        "circuits compared (shared / new / dropped, each run inside the other model, the base "
        "circuit's paths carrying the fine-tuned outputs) and a verdict: re-used and "
        "strengthened, new mechanism, mixed, or undetermined (a number it rests on is not "
        "defined, the base circuit is empty or the whole graph, fewer than 8 prompts, or fewer "
        "than half of the prompt resamples agree), with bootstrap intervals over prompts. Also "
        "each edge's share of the behaviour gap, the strongest patched for real. Prompt files "
        "as for mechdiff patch (answers and wrong answers for a logit difference).",
    )
    _add_models(circ)
    circ.add_argument("--method", choices=METHODS, default="eap_ig",
                      help="edge attribution: eap_ig (integrated gradients, default) or eap")
    circ.add_argument("--steps", type=_positive, default=None,
                      help="integration steps of eap_ig (default 5; eap takes none)")
    circ.add_argument("--edges", type=_positive, default=None, metavar="N",
                      help="each model's circuit is its N strongest edges (pruned) instead of "
                      "the smallest MIB fraction of edges faithful within 0.2")
    circ.add_argument("--ablation", choices=ABLATIONS, default="mean",
                      help="what an ablated edge carries: the mean over the prompts (default) or "
                      "the task's corrupted prompts (needs 'corrupted' in the prompt file)")
    circ.add_argument("--cross-top", type=int, default=50, metavar="K",
                      help="edges patched for real across models, by estimated share of the gap "
                      "(default 50; 0: estimates only)")
    circ.add_argument("--batch-size", type=_positive, default=16,
                      help="prompts per forward; bounds memory (default 16)")
    circ.add_argument("--no-cross-curves", dest="cross_curves", action="store_false",
                      help="do not run each model's circuits at every fraction inside the other "
                      "model (two faithfulness curves fewer; the two chosen circuits are still "
                      "cross-evaluated)")
    circ.add_argument("--seed", type=_seed, default=0, help="seed of the bootstrap (default 0)")
    _add_loading(circ)
    _add_output(circ)

    report = sub.add_parser(
        "report", help="write one self-contained HTML report of a results folder",
        description="One HTML file from the results a mechdiff command saved (mechdiff demo, "
        "mechdiff patch, or any folder of saved results): behaviour gaps, figures, ranked tables "
        "(exact and attribution side by side, with intervals), circuitsvis views, readings, and "
        "the provenance of every result. The page loads nothing from the network; no model is "
        "loaded.",
    )
    report.add_argument("results_dir", type=Path, metavar="RESULTS_DIR",
                        help="a folder mechdiff wrote results to (e.g. the --out of mechdiff demo)")
    report.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                        help="the HTML file to write (default: RESULTS_DIR/report.html)")
    report.add_argument("--top", type=_positive, default=10,
                        help="rows per ranked table (default 10)")
    return parser


# ---------------------------------------------------------------- commands


def _resolve_inputs(args: argparse.Namespace) -> None:
    """Local model folders and the prompt file as absolute paths, so that the run's identity
    (``mechdiff_run.json``) and the results' provenance say where the models were: relative
    names made a run from another folder with other models look like the same run (its
    output silently replaced the first's) and left provenance reading ``base``."""
    from mechdiff.loading.checkpoints import is_local

    for name in ("base", "finetuned"):
        spec = getattr(args, name)
        if is_local(spec):
            setattr(args, name, str(Path(spec).expanduser().resolve()))
    args.prompts = Path(args.prompts).expanduser().resolve()


def _file_digest(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return "unreadable"


def _cmd_demo(args: argparse.Namespace) -> int:
    from mechdiff.demos import DEMOS
    from mechdiff.report.html import REPORT_NAME
    from mechdiff.results.folder import OutputFolder, RunSpec

    start = time.perf_counter()
    chosen = {} if args.n_prompts is None else {"n_prompts": args.n_prompts}
    spec = RunSpec(command="demo", inputs={"cache": str(args.cache or "default")},
                   options={"demo": args.demo, "n_prompts": args.n_prompts, "seed": args.seed,
                            "top": args.top})
    with OutputFolder(args.out, run=spec, replace=args.replace) as work:
        analyses = DEMOS[args.demo](
            work, cache_dir=args.cache, seed=args.seed, top=args.top, progress=not args.quiet,
            report=print_line, **chosen,
        )
    print_line(f"\n{len(analyses)} fine-tunes analysed in {time.perf_counter() - start:.0f} s; "
               f"results, figures and summary.md in {args.out}/")
    print_line(f"report: {(args.out / REPORT_NAME).resolve()}")
    return 0


def _cmd_patch(args: argparse.Namespace) -> int:
    from mechdiff.loading.checkpoints import check_task_tokens
    from mechdiff.pipeline import analyse_pair
    from mechdiff.report import text
    from mechdiff.report.html import REPORT_NAME, write_report
    from mechdiff.report.summary import write_summary
    from mechdiff.results.folder import OutputFolder, RunSpec
    from mechdiff.tasks import Task
    from mechdiff.views import pair_views
    from mechdiff.viz import pair_figures

    _resolve_inputs(args)
    extra = {} if args.metric is None else {"metric": args.metric}
    task = Task.from_file(args.prompts, **extra)  # prompt errors before any model is loaded
    check_task_tokens(args.base, task)  # and token errors, with the base's tokenizer
    spec = RunSpec(
        command="patch",
        inputs={"base": args.base, "finetuned": args.finetuned, "prompts": str(args.prompts),
                "prompts_sha256": _file_digest(args.prompts)},
        options={"sites": args.sites, "direction": args.direction, "positions": args.positions,
                 "metric": args.metric, "batch_size": args.batch_size, "top": args.top,
                 "dtype": args.dtype, "processing": args.processing},
    )
    with OutputFolder(args.out, run=spec, replace=args.replace) as work:
        pair = _load(args)
        analysis = analyse_pair(  # a zero gap is reported here, before anything is written
            pair, task, label=task.name, directions=args.direction, sites=args.sites,
            progress=not args.quiet, positions=args.positions, batch_size=args.batch_size,
        )
        analysis.save(work / "analysis")
        pair_views(pair, task, label=task.name,
                   heads=analysis if "heads" in args.sites else ()).save(work / "views")
        pair_figures(analysis, work / "figures")
        write_summary(work, [analysis], top=args.top, meta={
            "title": f"mechdiff patch: {task.name}",
            "intro": f"Base `{pair.base_id}`, fine-tuned `{pair.finetuned_id}`.",
            "positions": args.positions,
        })
        write_report(work, work / REPORT_NAME, top=args.top)
    print_line(text.pair_table(analysis, args.top))
    print_line(f"\nresults, figures and summary.md in {args.out}/")
    print_line(f"report: {(args.out / REPORT_NAME).resolve()}")
    return 0


def _cmd_circuits(args: argparse.Namespace) -> int:
    from mechdiff.circuits._prep import check_ablation_prompts, check_behaviour_metric
    from mechdiff.circuits.graph import graph_of_config, parallel_in_config
    from mechdiff.loading.checkpoints import check_task_tokens
    from mechdiff.pipeline import analyse_circuits
    from mechdiff.report.html import REPORT_NAME, write_report
    from mechdiff.report.sections import render_markdown
    from mechdiff.report.summary import circuits_summary, write_summary
    from mechdiff.results.folder import OutputFolder, RunSpec
    from mechdiff.tasks import Task
    from mechdiff.viz import circuit_figures

    if args.cross_top < 0:
        return _fail(f"--cross-top must be 0 or more, got {args.cross_top}")
    if args.method == "eap" and args.steps is not None:
        return _fail("--steps is for --method eap_ig (integration steps); eap takes the "
                     "gradient at the clean run only: drop --steps or use --method eap_ig")
    steps = (args.steps or 5) if args.method == "eap_ig" else 1
    _resolve_inputs(args)
    task = Task.from_file(args.prompts)  # prompt errors before any model is loaded
    check_ablation_prompts(task, args.ablation)
    check_task_tokens(args.base, task)  # and token errors, with the base's tokenizer
    check_behaviour_metric(task)
    parallel = parallel_in_config(args.base)  # graph_of refuses it after loading otherwise
    if parallel:
        return _fail(f"{args.base}: {parallel} (config.json), so a head does not feed its own "
                     "block's MLP; mechdiff circuits supports sequential (GPT-2 / LLaMA-style) "
                     "blocks only")
    graph = graph_of_config(args.base)  # None for a hub id: the check runs after loading
    if args.edges is not None and graph is not None and args.edges > graph.n_edges:
        return _fail(f"--edges {args.edges} is more than the {graph.n_edges} edges of "
                     f"{args.base}'s graph (config.json: {graph.n_layers} layers, "
                     f"{graph.n_heads} heads, {graph.n_kv_heads} key-value heads)")
    spec = RunSpec(
        command="circuits",
        inputs={"base": args.base, "finetuned": args.finetuned, "prompts": str(args.prompts),
                "prompts_sha256": _file_digest(args.prompts)},
        options={"method": args.method, "steps": steps, "edges": args.edges,
                 "ablation": args.ablation, "cross_top": args.cross_top,
                 "cross_curves": args.cross_curves, "batch_size": args.batch_size,
                 "seed": args.seed, "dtype": args.dtype, "processing": args.processing},
    )
    with OutputFolder(args.out, run=spec, replace=args.replace) as work:
        pair = _load(args)
        analysis = analyse_circuits(
            pair, task, label=task.name, method=args.method, steps=steps,
            ablation=args.ablation, edges=args.edges, cross_top=args.cross_top,
            cross_curves=args.cross_curves, seed=args.seed, prompt_batch_size=args.batch_size,
            progress=not args.quiet,
        )
        analysis.save(work / "circuits")
        circuit_figures(analysis, work / "figures")
        write_summary(work, [], top=10, meta={
            "title": f"mechdiff circuits: {task.name}",
            "intro": f"Base `{pair.base_id}`, fine-tuned `{pair.finetuned_id}`.",
            "circuits": circuits_summary(analysis),
        }, sections=[render_markdown(analysis)])
        write_report(work, work / REPORT_NAME)
    print_line(analysis.summary())
    print_line(f"\nresults, figures and summary.md in {args.out}/")
    print_line(f"report: {(args.out / REPORT_NAME).resolve()}")
    return 0


def _load(args: argparse.Namespace) -> Any:
    import torch

    from mechdiff.loading import load_pair

    return load_pair(args.base, args.finetuned, device=args.device,
                     dtype=getattr(torch, args.dtype), processing=args.processing,
                     allow_adapter_mismatch=args.allow_adapter_mismatch)


def _cmd_report(args: argparse.Namespace) -> int:
    from mechdiff.report.html import write_report

    path = write_report(args.results_dir, args.output, top=args.top)
    print_line(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
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
    target = _target(args)
    before = _stamp(target)
    try:
        with terminate_as_interrupt(), _one_line_warnings():
            try:
                return _run_command(args)
            except (MechdiffError, OSError):
                raise
            except Exception:
                signum = last_interrupt()
                if signum is None:
                    raise
                # An interrupt that library code swallowed, and an error it caused (seen: numpy
                # left half-imported by Ctrl-C, then a RecursionError): the interrupt happened.
                raise interrupt_for(signum) from None
    except MechdiffError as e:
        return _fail(str(e))
    except OSError as e:  # unwritable output folder, full disk, ...
        return _fail(f"{e.strerror or e}: {e.filename}" if e.filename else str(e))
    except KeyboardInterrupt as e:
        return _interrupted(e, target, before)


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Warnings as one line each, ``mechdiff: warning: ...``, like the command's errors
    (Python's format adds the source line of the call, meaningless to a command's user)."""
    import warnings

    def one_line(message: Warning | str, category: type[Warning], filename: str, *_: Any,
                 **__: Any) -> str:
        path = filename.replace("\\", "/")
        if category.__module__.startswith("mechdiff") or "/mechdiff/" in path:
            return f"mechdiff: warning: {message}\n"
        found = re.search(r"(?:site|dist)-packages/([A-Za-z0-9_]+)", path)
        return f"mechdiff: warning from {found.group(1) if found else Path(path).stem}: {message}\n"

    before = warnings.formatwarning
    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = before


def _run_command(args: argparse.Namespace) -> int:
    from mechdiff._runtime import fixed_mmap_threshold  # imports torch: seconds

    raise_if_interrupted()  # one that an import swallowed: stop before using what it broke
    fixed_mmap_threshold()
    with _hf_progress(enabled=not getattr(args, "quiet", False)):
        if args.command == "demo":
            return _cmd_demo(args)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "circuits":
            return _cmd_circuits(args)
        return _cmd_patch(args)


def _target(args: argparse.Namespace) -> Path:
    """What the command writes: its output folder, or the report's file."""
    if args.command == "report":  # write_report's default: report.html in the results folder
        return Path(args.output or Path(args.results_dir) / "report.html")
    return Path(args.out)


def _stamp(path: Path) -> tuple[int, int] | None:
    """Identity of ``path`` (inode, modification time; None if absent): an atomic replacement
    changes it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _interrupted(e: KeyboardInterrupt, target: Path, before: tuple[int, int] | None) -> int:
    """Report an interrupt (one line) and return its exit status: 130, or 128 + n for signal n.

    The output is written in one atomic step, so it is either this run's whole output (the
    signal came after it was written) or exactly what it was before; the line says which.
    """
    what, status = describe(e)
    after = _stamp(target)
    if after is not None and after != before:
        where = f"{target} holds this run's complete output (written before the signal came)"
    elif target.suffix == ".html":
        where = f"{target} was left as it was"
    else:
        where = "the output folder was left as it was"
    print(f"mechdiff: {what}; {where}", file=sys.stderr)
    return status


@contextlib.contextmanager
def _hf_progress(*, enabled: bool) -> Iterator[None]:
    """Silence transformers' own progress bars (weight loading) when asked; restore them after."""
    from transformers.utils import logging as hf_logging

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


__all__ = ["DEFAULT_DEMO", "build_parser", "main"]

