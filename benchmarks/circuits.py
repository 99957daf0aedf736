"""mechdiff.circuits benchmark: edge attribution against TransformerLens 4.3, faithfulness-curve
cost, and the real model's timings.

    python benchmarks/circuits.py [--quick] [--rows edges curve compute real] [--n 8] [--t 23]
                                  [--real-prompts 16] [--device cpu|cuda] [--json out.json]

Rows (each runs mechdiff and, where one exists, a peer on the same model and prompts, in this
process; speed is reported here, never asserted in tests):

* ``edges``: every edge of the GPT-2-small-shaped random model (:mod:`fixture`; 32,491 edges) on
  ``n`` prompts of ``t`` tokens. mechdiff's EAP (corrupted ablation) against TL 4.3's
  ``attribution_patch(..., EdgeAttributionConfig(granularity="edge"))``, which loops over examples
  and scores position-resolved edges in Python dicts. The two compute the same numbers when our
  clean prompts are TL's corrupted ones (TL scores the denoising direction); their largest
  disagreement is printed. mechdiff's EAP-IG (5 steps) and mean ablation are timed too.
* ``curve``: a faithfulness curve (10 MIB fractions, one forward per circuit and prompt batch, plus
  the full model and the empty circuit) on the same model, in units of one plain forward.
* ``compute``: the same calls' arithmetic, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (matrix products: every linear layer, attention, the contraction), in units of one plain
  forward's count: forward-equivalents that do not depend on the machine or its load. Wall-time
  ratios on a 2-core CPU also pay for the memory-bound elementwise work the count leaves out.
* ``real``: SmolLM2-135M (``$MECHDIFF_CACHE/real``, or ``/work/cache/real``): base and distilled,
  ``--real-prompts`` chat prompts of the ``distill`` task: EAP and EAP-IG per model, a curve per
  model, the whole :func:`compare_circuits` (what a demo would run), and cross-model edge
  attribution with exact patching of the top 20 edges.

Wall times are medians of the repeats; on a shared machine the process CPU time is printed too.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import json
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fixture  # noqa: E402

import mechdiff  # noqa: E402
from mechdiff import circuits  # noqa: E402

CACHE = HERE / ".cache" / "gpt2-small-random"


@dataclass
class Row:
    name: str
    shape: str
    call: str
    seconds: float
    cpu_seconds: float
    peer: str = ""
    peer_seconds: float | None = None
    check: str = ""
    max_abs_diff: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return None if self.peer_seconds is None else self.peer_seconds / self.seconds


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, Any]:
    """Wall and process-CPU seconds of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - w0, time.process_time() - c0, out


def plain_forward_s(model, ids: torch.Tensor, device: torch.device) -> float:
    with torch.inference_mode():
        model(ids)
        best = min(timed(lambda: model(ids), device)[0] for _ in range(3))
    return best


def floor_s(model, clean: torch.Tensor, corrupt: torch.Tensor, answers, wrong,
            device: torch.device) -> float:
    """EAP's floor with corrupted prompts: the two forwards and the one backward it is made of,
    with nothing else: a forward of the corrupted prompts, a forward of the clean ones with
    gradients, both unembedded at the read position only (as EAP's are), and the backward pass
    of the logit difference down to the embedding. Best of three."""
    from mechdiff import _engine

    rows = torch.arange(clean.shape[0], device=device)
    last = torch.full_like(rows, clean.shape[1] - 1)
    a, w = torch.as_tensor(answers, device=device), torch.as_tensor(wrong, device=device)
    read = {_engine.UNEMBED_IN: lambda x: x[rows, last][:, None]}

    def run() -> None:
        with torch.no_grad(), _engine.forward_hooks(model, read):
            model(corrupt)
        leaf: list[torch.Tensor] = []

        def embed(x: torch.Tensor) -> torch.Tensor:
            leaf.append(x.detach().requires_grad_(True))
            return leaf[0]

        with torch.enable_grad(), _engine.forward_hooks(model, {**read, "hook_embed": embed}):
            logits = model(clean)[:, 0].float()
        torch.autograd.backward((logits[rows, a] - logits[rows, w]).sum(), inputs=leaf)

    run()
    return min(timed(run, device)[0] for _ in range(3))


def flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """Floating-point operations of ``fn()`` (matrix products), in total and per operator."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    per_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return counter.get_total_flops(), per_op


def tl_edges(model, clean: torch.Tensor, corrupt: torch.Tensor, answers, wrong, graph):
    """TL 4.3 edge attribution, summed over positions and averaged over examples, in our edge
    order. TL differentiates through the weights' graph: parameters need ``requires_grad``."""
    from transformer_lens.tools.analysis.attribution_patching import (
        EdgeAttributionConfig,
        attribution_patch,
    )

    params = list(model.parameters())
    for p in params:
        p.requires_grad_(True)
    out = torch.zeros(graph.n_edges)
    try:
        for i in range(clean.shape[0]):
            def metric(logits, a=int(answers[i]), w=int(wrong[i])):
                return logits[0, -1, a].float() - logits[0, -1, w].float()

            res = attribution_patch(model, clean[i:i + 1], corrupt[i:i + 1], metric,
                                    EdgeAttributionConfig(granularity="edge"))
            for (w, r), v in res.edge_scores.items():
                out[graph.tl_edge(w, r)] += v / clean.shape[0]
    finally:
        for p in params:
            p.requires_grad_(False)
    return out


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.rows: list[Row] = []
        self.meta: dict[str, Any] = {}
        self.compute_rows: list[dict[str, Any]] = []

    def gpt2(self):
        if not hasattr(self, "model"):
            base_dir, _ = fixture.build_pair_dirs(CACHE)
            self.model = mechdiff.load_pair(str(base_dir), str(base_dir),
                                            device=self.device).base
            self.prompts = fixture.make_prompts(self.args.n, self.args.t, seed=0)
            self.graph = circuits.graph_of(self.model)
            self.fwd_s = plain_forward_s(self.model, self.prompts.clean.to(self.device),
                                         self.device)
            log(f"GPT-2-small-shaped model: {self.graph.n_edges} edges; one plain forward of "
                f"{self.prompts.shape}: {self.fwd_s:.3f} s")
            self.meta["gpt2_forward_s"] = round(self.fwd_s, 4)
        return self.model

    # -- rows ----------------------------------------------------------------------------------
    def edges(self) -> None:
        model = self.gpt2()
        p = self.prompts
        # Our clean prompts are TL's corrupted ones: the same number, TL's denoising sign.
        swapped = mechdiff.Task(p.corrupted.tolist(), answers=p.answers.tolist(),
                                wrong_answers=p.wrong.tolist(), corrupted=p.clean.tolist(),
                                name=f"bench{p.shape}")
        run = lambda **kw: circuits.edge_attribution(  # noqa: E731
            model, swapped, ablation="corrupted", progress=False, **kw)
        run(method="eap")  # warm-up
        wall, cpu, ours = timed(lambda: run(method="eap"), self.device)
        dev = self.device
        floor = floor_s(model, p.corrupted.to(dev), p.clean.to(dev), p.answers, p.wrong, dev)
        log(f"mechdiff EAP: {wall:.2f} s; its floor (2 forwards + 1 backward): {floor:.2f} s")
        peer_wall = diff = None
        if not self.args.quick or self.args.t * self.args.n <= 64:
            dev = self.device
            peer_wall, _, theirs = timed(lambda: tl_edges(
                model, p.clean.to(dev), p.corrupted.to(dev), p.answers, p.wrong, self.graph),
                dev)
            diff = float((ours.scores.float().cpu() - theirs).abs().max())
            log(f"TL edge attribution: {peer_wall:.2f} s, max |diff| {diff:.2e}")
        self.rows.append(Row(
            "edges (EAP, all edges)", p.shape, "circuits.edge_attribution(method='eap', "
            "ablation='corrupted')", wall, cpu, "TL 4.3 attribution_patch(granularity='edge')",
            peer_wall, "edge scores, TL's summed over positions", diff,
            [f"{self.graph.n_edges} edges; {wall / self.fwd_s:.1f} plain-forward equivalents; "
             f"{wall / floor:.2f} x its floor, the two forwards and one backward alone "
             f"({floor:.3f} s, {floor / self.fwd_s:.1f} plain forwards)"]))
        for label, kw in (("EAP-IG 5 steps", {"method": "eap_ig", "steps": 5}),):
            wall, cpu, _ = timed(lambda kw=kw: run(**kw), self.device)
            self.rows.append(Row(f"edges ({label})", p.shape, f"edge_attribution({kw})", wall,
                                 cpu, notes=[f"{wall / self.fwd_s:.1f} forward-equivalents"]))
        mean_task = mechdiff.Task(p.clean.tolist(), answers=p.answers.tolist(),
                                  wrong_answers=p.wrong.tolist())
        wall, cpu, _ = timed(lambda: circuits.edge_attribution(
            model, mean_task, method="eap", ablation="mean", progress=False), self.device)
        self.rows.append(Row("edges (EAP, mean ablation)", p.shape, "edge_attribution(ablation="
                             "'mean')", wall, cpu,
                             notes=[f"{wall / self.fwd_s:.1f} forward-equivalents"]))

    def curve(self) -> None:
        model = self.gpt2()
        p = self.prompts
        task = p.corrupted_task()
        scores = circuits.edge_attribution(model, task, method="eap", ablation="corrupted",
                                           progress=False)
        wall, cpu, curve = timed(lambda: circuits.faithfulness_curve(
            model, task, scores, circuit_batch=2, progress=False), self.device)
        n_fwd = len(curve.fractions) + 2  # circuits, the empty circuit, the full model
        self.rows.append(Row(
            "faithfulness curve", p.shape, "circuits.faithfulness_curve(10 MIB fractions)",
            wall, cpu, notes=[
                f"{wall / self.fwd_s:.1f} plain-forward equivalents for {n_fwd} runs "
                f"({wall / self.fwd_s / n_fwd:.2f} per intervened run); CPR {curve.cpr:.3f}, "
                f"CMD {curve.cmd:.3f}"]))

    def compute(self) -> None:
        model = self.gpt2()
        p = self.prompts
        dev = self.device
        ids = p.clean.to(dev)

        def forward() -> None:
            with torch.inference_mode():
                model(ids)

        unit, _ = flops(forward)
        corrupted = mechdiff.Task(p.corrupted.tolist(), answers=p.answers.tolist(),
                                  wrong_answers=p.wrong.tolist(), corrupted=p.clean.tolist(),
                                  name=f"bench{p.shape}")
        mean = mechdiff.Task(p.clean.tolist(), answers=p.answers.tolist(),
                             wrong_answers=p.wrong.tolist(), name=f"bench{p.shape}")
        scores = circuits.edge_attribution(model, corrupted, method="eap", ablation="corrupted",
                                           progress=False)  # also the per-model checks, once
        calls = [
            ("EAP, corrupted", lambda: circuits.edge_attribution(
                model, corrupted, method="eap", ablation="corrupted", progress=False)),
            ("EAP, mean ablation", lambda: circuits.edge_attribution(
                model, mean, method="eap", ablation="mean", progress=False)),
            ("EAP-IG 5 steps, corrupted", lambda: circuits.edge_attribution(
                model, corrupted, method="eap_ig", steps=5, ablation="corrupted",
                progress=False)),
            ("faithfulness curve", lambda: circuits.faithfulness_curve(
                model, corrupted, scores, circuit_batch=2, progress=False)),
        ]
        self.compute_rows.append({"name": "plain forward", "shape": p.shape,
                                  "gflop": unit / 1e9, "fwd_eq": 1.0, "per_op": {}})
        for name, fn in calls:
            total, per_op = flops(fn)
            self.compute_rows.append({"name": name, "shape": p.shape, "gflop": total / 1e9,
                                      "fwd_eq": total / unit, "per_op": per_op})
            log(f"compute: {name}: {total / 1e9:.1f} GFLOP, {total / unit:.2f} forwards")

    def real(self) -> None:
        from mechdiff.zoo import real

        root = Path(os.environ.get("MECHDIFF_CACHE", "/work/cache")) / "real"
        dirs = sorted(root.glob("*/base"))
        if not dirs:
            log(f"no cached real model under {root}; skipping the real rows")
            return
        base_dir = dirs[-1]
        ft_dir = base_dir.parent / "distilled"
        t0 = time.perf_counter()
        pair = mechdiff.load_pair(base_dir, ft_dir, device=self.device)
        self.meta["real_load_s"] = round(time.perf_counter() - t0, 1)
        task = real.tasks(root, progress=False)["distill"]
        n = min(self.args.real_prompts, len(task))
        task = mechdiff.Task(task.prompts[:n], task.answers[:n], task.wrong_answers[:n],
                             name="real/distill")
        graph = circuits.graph_of(pair.base)
        tokens = task.tokenize(pair.tokenizer, n_ctx=pair.n_ctx)
        fwd = plain_forward_s(pair.base, tokens.tokens.to(self.device), self.device)
        self.meta["real_forward_s"] = round(fwd, 3)
        shape = f"{n} chat prompts x {int(tokens.lengths.min())}-{int(tokens.lengths.max())}"
        log(f"SmolLM2: {graph.n_edges} edges; one plain forward of {shape}: {fwd:.2f} s")
        kw = {"progress": False, "prompt_batch_size": 16}
        for name, model in (("base", pair.base), ("distilled", pair.finetuned)):
            # the first call on a model pays one-off costs (the process's first backward pass,
            # fresh memory, per-model checks): reported, and the row is a repeat call, as the
            # plain forward it is compared with is
            cold, _, _ = timed(lambda m=model: circuits.edge_attribution(
                m, task, method="eap", **kw), self.device)
            wall, cpu, scores = timed(lambda m=model: circuits.edge_attribution(
                m, task, method="eap", **kw), self.device)
            self.rows.append(Row(f"real: EAP ({name})", shape, "edge_attribution(eap, mean)",
                                 wall, cpu, notes=[
                                     f"{wall / fwd:.1f} forward-equivalents (a repeat call; the "
                                     f"first on this model {cold:.2f} s, {cold / fwd:.1f})"]))
            if "compute" in self.args.rows:
                ids = tokens.tokens.to(self.device)

                def forward(m=model, ids=ids) -> None:
                    with torch.inference_mode():
                        m(ids)

                unit, _ = flops(forward)
                total, per_op = flops(lambda m=model: circuits.edge_attribution(
                    m, task, method="eap", **kw))
                self.compute_rows.append({"name": f"real: EAP, mean ({name})", "shape": shape,
                                          "gflop": total / 1e9, "fwd_eq": total / unit,
                                          "per_op": per_op})
            wall, cpu, _ = timed(lambda m=model: circuits.edge_attribution(
                m, task, method="eap_ig", steps=5, **kw), self.device)
            self.rows.append(Row(f"real: EAP-IG 5 ({name})", shape, "edge_attribution(eap_ig)",
                                 wall, cpu, notes=[f"{wall / fwd:.1f} forward-equivalents"]))
            wall, cpu, curve = timed(lambda m=model, s=scores: circuits.faithfulness_curve(
                m, task, s, circuit_batch=1, **kw), self.device)
            self.rows.append(Row(f"real: curve ({name})", shape, "faithfulness_curve", wall, cpu,
                                 notes=[f"{wall / fwd:.1f} forward-equivalents; CPR "
                                        f"{curve.cpr:.3f}, CMD {curve.cmd:.3f}"]))
        wall, cpu, cmp = timed(lambda: circuits.compare_circuits(
            pair, task, method="eap", circuit_batch=1, n_boot=200, **kw), self.device)
        self.rows.append(Row("real: compare_circuits (eap)", shape, "compare_circuits", wall, cpu,
                             notes=[f"{wall / fwd:.1f} forward-equivalents; verdict "
                                    f"{cmp.verdict.label}"]))
        log(cmp.summary())
        wall, cpu, x = timed(lambda: circuits.cross_edge_attribution(
            pair, task, exact_top=20, circuit_batch=2, progress=False), self.device)
        self.rows.append(Row("real: cross_edge_attribution", shape, "ft->base, eap, 20 exact",
                             wall, cpu, notes=[f"every edge at once: {x.all_edges:.3f}"]))
        log(x.table(5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", nargs="+", default=["edges", "curve", "compute", "real"],
                    choices=["edges", "curve", "compute", "real"])
    ap.add_argument("--quick", action="store_true", help="2 prompts x 8 tokens, 4 real prompts")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--t", type=int, default=23)
    ap.add_argument("--real-prompts", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.n, args.t, args.real_prompts = 2, 8, 4
    bench = Bench(args)
    bench.meta.update(threads=torch.get_num_threads(), machine=platform.machine(),
                      cpus=os.cpu_count(), torch=torch.__version__)
    for row in args.rows:
        getattr(bench, row)()
    bench.meta["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"{'row':<34} {'shape':<26} {'wall s':>8} {'cpu s':>8} {'peer s':>9} {'ratio':>7} "
          f"{'max diff':>9}")
    for r in bench.rows:
        peer = "" if r.peer_seconds is None else f"{r.peer_seconds:9.2f}"
        ratio = "" if r.ratio is None else f"{r.ratio:7.1f}"
        diff = "" if r.max_abs_diff is None else f"{r.max_abs_diff:9.1e}"
        print(f"{r.name:<34} {r.shape:<26} {r.seconds:8.2f} {r.cpu_seconds:8.2f} {peer:>9} "
              f"{ratio:>7} {diff:>9}")
        for note in r.notes:
            print(f"    {note}")
        if r.peer:
            print(f"    peer: {r.peer}; compared: {r.check}")
    if bench.compute_rows:
        print(f"\n{'compute (FlopCounterMode)':<34} {'shape':<26} {'GFLOP':>8} {'forwards':>9}")
        for c in bench.compute_rows:
            ops = ", ".join(f"{k.removeprefix('aten.')} {v / 1e9:.1f}"
                            for k, v in sorted(c["per_op"].items()))
            print(f"{c['name']:<34} {c['shape']:<26} {c['gflop']:8.1f} {c['fwd_eq']:9.2f}"
                  + (f"\n    {ops}" if ops else ""))
    print("meta:", json.dumps(bench.meta))
    if args.json:
        args.json.write_text(json.dumps({"meta": bench.meta,
                                         "rows": [asdict(r) for r in bench.rows],
                                         "compute": bench.compute_rows}, indent=2))


if __name__ == "__main__":
    main()
