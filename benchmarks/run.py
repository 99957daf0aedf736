"""mechdiff's benchmark: exact patching timed against TransformerLens in one process.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--json out.json] [--profile]
                             [--rows heads_all per_position memory attribution]

Every row runs mechdiff and a peer on the same GPT-2-small-shaped models and the same prompts, in
this process, and prints times, the ratio peer/mechdiff, the cost floor, peak memory and, where the
two compute the same numbers, their largest disagreement. See benchmarks/README.md for what each row
measures. Speed is reported here, never asserted in tests.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: silences TL's loops too

import argparse
import cProfile
import json
import platform
import pstats
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixture  # noqa: E402
import peers  # noqa: E402

import mechdiff  # noqa: E402

HERE = Path(__file__).resolve().parent
MMAP_THRESHOLD = 1 << 20  # bytes; the memory row's glibc MALLOC_MMAP_THRESHOLD_
ROWS = ("heads_all", "per_position", "memory", "attribution", "hooks")  # methods of Bench, run in order
CACHE = HERE / ".cache" / "gpt2-small-random"


# ---------------------------------------------------------------------------------------------
# measuring


def _status_kb(key: str) -> int | None:
    try:
        m = re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is None:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    return kb / 1024


def reset_peak() -> bool:
    """Reset the process's peak RSS (Linux ``VmHWM``); CUDA peak stats too."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    """Peak RSS since the last :func:`reset_peak` (or since start if it could not reset)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kb / 1024


@dataclass
class Timed:
    times: list[float]
    result: Any = None
    peak_rss_mb: float | None = None  # peak RSS during the calls minus RSS before them
    peak_cuda_mb: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> Timed:
    """Run ``fn`` ``repeats`` times (after any warm-up done by the caller); median wall time."""
    before = rss_mb()
    reset_peak()
    times, result = [], None
    for _ in range(repeats):
        peers.sync(device)
        t0 = time.perf_counter()
        result = fn()
        peers.sync(device)
        times.append(time.perf_counter() - t0)
    cuda = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return Timed(times, result, peak_mb() - before, cuda)


def forward_costs(pair: mechdiff.ModelPair, tokens: torch.Tensor, batch_size: int,
                  repeats: int) -> tuple[float, float]:
    """Fastest time of one plain HF forward of ``tokens`` (no hooks), and of the transformer body
    (blocks only, no unembedding) per copy of ``tokens`` when run as mechdiff runs it: as many
    stacked copies as fit in ``batch_size`` sequences."""
    hf = pair.base.original_model
    k = max(1, batch_size // tokens.shape[0])
    tiled = tokens.repeat(k, 1)
    device = tokens.device
    full, body = [], []
    with torch.inference_mode():
        hf(tokens, use_cache=False)
        hf.transformer(tiled, use_cache=False)
        for _ in range(repeats):  # interleaved, so load changes hit both alike
            peers.sync(device)
            t0 = time.perf_counter()
            hf(tokens, use_cache=False)
            peers.sync(device)
            t1 = time.perf_counter()
            hf.transformer(tiled, use_cache=False)
            peers.sync(device)
            t2 = time.perf_counter()
            full.append(t1 - t0)
            body.append((t2 - t1) / k)
    # min, not median: a floor is the fastest the plain model was seen to run (on a shared or
    # virtualised machine the same forward can take several times longer for a while)
    return min(full), min(body)


def suffix_count(n_layers: int, n_patches_per_layer: int) -> float:
    """Forward-equivalents of the batched suffix algorithm: sum_L patches * (n_layers - L) / n_layers."""
    return sum(n_patches_per_layer * (n_layers - layer) / n_layers for layer in range(n_layers))


# ---------------------------------------------------------------------------------------------
# rows


@dataclass
class Row:
    name: str
    shape: str
    mechdiff_call: str
    mechdiff_s: float
    repeats: int
    peer: str
    peer_s: float | None
    peer_sampled: str = ""  # "36/144" when the peer loop was timed on a sample and scaled
    floor_s: float | None = None  # forward-equivalents x one full forward
    body_floor_s: float | None = None  # 2 captures + forward-equivalents x blocks-only cost
    floor_fwds: float | None = None
    peak_rss_mb: float | None = None
    peak_cuda_mb: float | None = None
    check: str = ""  # what was compared
    max_abs_diff: float | None = None
    notes: list[str] = field(default_factory=list)
    mechdiff_times: list[float] = field(default_factory=list)
    peer_patch_times: list[float] = field(default_factory=list)  # one per sampled peer forward

    @property
    def ratio(self) -> float | None:
        return None if self.peer_s is None else self.peer_s / self.mechdiff_s


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.quick = args.quick
        self.device = torch.device(args.device)
        self.rows: list[Row] = []
        self.meta: dict[str, Any] = {}

    # -- setup ---------------------------------------------------------------------------------
    def load(self) -> None:
        t0 = time.perf_counter()
        self.dirs = fixture.build_pair_dirs(CACHE)
        t1 = time.perf_counter()
        self.pair = mechdiff.load_pair(*map(str, self.dirs), device=self.device)
        t2 = time.perf_counter()
        self.meta.update(build_s=round(t1 - t0, 1), load_s=round(t2 - t1, 1),
                         rss_after_load_mb=round(rss_mb()))
        log(f"pair ready (build/cache {t1 - t0:.1f}s, load {t2 - t1:.1f}s): {self.pair}")
        # warm-up: each code path once on a tiny task (lazy inits, allocator, oneDNN kernels)
        tiny = fixture.make_prompts(1, 3, seed=99)
        mechdiff.cross_patch(self.pair, tiny.cross_task(), sites="heads", progress=False)
        mechdiff.activation_patch(self.pair.base, tiny.corrupted_task(), sites="resid",
                                  positions="each", progress=False)
        self.meta["warmup_s"] = round(time.perf_counter() - t2, 1)

    def prompts(self, n: int, t: int) -> fixture.Prompts:
        p = fixture.make_prompts(n, t)
        return fixture.Prompts(*(x.to(self.device) for x in (p.clean, p.corrupted, p.answers, p.wrong)))

    def floors(self, prompts: fixture.Prompts, patches_per_layer: int,
               per_position: bool = False) -> tuple[float, float, float]:
        """Forward-equivalents of the cost floor, and the two floors in seconds.

        Per-position patches at position ``p`` need only positions ``>= p`` recomputed: the
        count is scaled by the mean suffix length, ``(t + 1) / (2 t)`` of a full sequence.
        """
        cfg = self.pair.cfg
        f_full, f_body = forward_costs(self.pair, prompts.clean, 64, 3 if self.quick else 5)
        self.meta.setdefault("forward_s", {})[prompts.shape] = {"full": f_full, "body_per_copy": f_body}
        n = suffix_count(int(cfg.n_layers), patches_per_layer)
        if per_position:
            t = int(prompts.clean.shape[1])
            n *= (t + 1) / (2 * t)
        return n, n * f_full, 2 * f_full + n * f_body

    # -- row 1 -----------------------------------------------------------------------------------
    def heads_all(self) -> None:
        p = self.prompts(8, 20)
        L, H = self.pair.n_layers, self.pair.n_heads
        task = p.cross_task()
        log("row 1: all-heads FT->base patching, 8x20")
        md = timed(lambda: mechdiff.cross_patch(self.pair, task, sites="heads",
                                                direction="ft->base", progress=False),
                   1 if self.quick else 3, self.device)
        n_fwd, floor, body_floor = self.floors(p, H)
        per_layer = 1 if self.quick else 3
        index = [(layer, h) for layer in range(L) for h in peers.spread(H, per_layer, layer)]
        metric = peers.logit_diff_metric(p.answers, p.wrong)
        tl = peers.tl_heads_all_pos(self.pair.base, p.clean, p.corrupted, metric, index, L * H)
        naive = peers.naive_cross_heads(self.pair.base, self.pair.finetuned, p.clean, metric,
                                        index, L * H)
        ours = md.result.patched.mean(-1)
        diff = max(abs(float(ours[li, h]) - float(v)) for (li, h), v in zip(index, naive.values, strict=True))
        common = dict(shape=p.shape, mechdiff_s=md.median, repeats=len(md.times), floor_s=floor,
                      body_floor_s=body_floor, floor_fwds=n_fwd, peak_rss_mb=md.peak_rss_mb,
                      peak_cuda_mb=md.peak_cuda_mb)
        call = 'cross_patch(sites="heads")'
        self.rows.append(Row("all heads, all pos", mechdiff_call=call,
                             peer="TL get_act_patch_attn_head_out_all_pos (1 model)",
                             peer_s=tl.total_s, peer_sampled=f"{tl.n_sampled}/{tl.n_total}",
                             mechdiff_times=md.times, peer_patch_times=tl.patch_times, **common))
        self.rows.append(Row("all heads, all pos", mechdiff_call=call,
                             peer="naive cross-model loop (1 fwd/head)", peer_s=naive.total_s,
                             peer_sampled=f"{naive.n_sampled}/{naive.n_total}",
                             check="cross_patch vs naive loop, sampled heads", max_abs_diff=diff,
                             mechdiff_times=md.times, peer_patch_times=naive.patch_times, **common))
        self.meta["heads_all_times"] = md.times
        if self.args.profile:
            self.profile(task)

    # -- row 5 -----------------------------------------------------------------------------------
    def hooks(self) -> None:
        """mechdiff's raw forward hooks against TransformerLens's ``model.hooks()`` context
        manager, swapped into the same engine, interleaved (the choice of DESIGN: TL's context
        managers are used where they cost < 5%)."""
        import contextlib

        from mechdiff import _engine

        p = self.prompts(8, 20)
        task = p.cross_task()
        raw = _engine.forward_hooks

        @contextlib.contextmanager
        def tl_hooks(model, hooks):  # type: ignore[no-untyped-def]
            with model.hooks(fwd_hooks=[(name, (lambda x, hook, f=fn: f(x)))
                                        for name, fn in hooks.items()]):
                yield

        def run() -> mechdiff.PatchResult:
            return mechdiff.cross_patch(self.pair, task, sites="heads", progress=False)

        log("row 5: raw hooks vs TransformerLens model.hooks(), all heads 8x20")
        times: dict[str, list[float]] = {"raw": [], "tl": []}
        results = {}
        for _ in range(1 if self.quick else 3):
            for name, impl in (("raw", raw), ("tl", tl_hooks)):
                _engine.forward_hooks = impl
                try:
                    t0 = time.perf_counter()
                    results[name] = run()
                    times[name].append(time.perf_counter() - t0)
                finally:
                    _engine.forward_hooks = raw
        diff = float((results["raw"].scores - results["tl"].scores).abs().max())
        raw_s, tl_s = statistics.median(times["raw"]), statistics.median(times["tl"])
        self.rows.append(Row("hook mechanism", mechdiff_call="raw register_forward_hook",
                             peer="TL model.hooks() in the same engine", shape=p.shape,
                             mechdiff_s=raw_s, peer_s=tl_s, repeats=len(times["raw"]),
                             check="scores raw vs TL hooks", max_abs_diff=diff,
                             notes=[f"TL hooks cost {100 * (tl_s / raw_s - 1):+.1f}% "
                                    "(the engine keeps raw hooks if > +5%)"]))

    def profile(self, task: mechdiff.Task) -> None:
        prof = cProfile.Profile()
        prof.enable()
        mechdiff.cross_patch(self.pair, task, sites="heads", progress=False)
        prof.disable()
        stats = pstats.Stats(prof, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(15)
        stats.sort_stats("cumulative").print_stats("mechdiff|modeling_gpt2|activations", 20)

    # -- row 2 -----------------------------------------------------------------------------------
    def per_position(self) -> None:
        n, t = (8, 8) if self.quick else (8, 20)
        p = self.prompts(n, t)
        L = self.pair.n_layers
        log(f"row 2: per-position residual patching, {p.shape}")
        metric = peers.logit_diff_metric(p.answers, p.wrong)
        n_fwd, floor, body_floor = self.floors(p, t, per_position=True)
        md1 = timed(lambda: mechdiff.activation_patch(self.pair.base, p.corrupted_task(),
                                                      sites="resid", positions="each",
                                                      progress=False), 1, self.device)
        md2 = timed(lambda: mechdiff.cross_patch(self.pair, p.cross_task(), sites="resid",
                                                 positions="each", progress=False), 1, self.device)
        per_layer = 2 if self.quick else 5
        index = [(layer, pos) for layer in range(L) for pos in peers.spread(t, per_layer, layer)]
        tl = peers.tl_resid_pre(self.pair.base, p.clean, p.corrupted, metric, index, L * t)
        ours = md1.result.patched.mean(-1)  # [layer, pos]
        diff = max(abs(float(ours[li, q]) - float(v)) for (li, q), v in zip(index, tl.values, strict=True))
        peer = "TL get_act_patch_resid_pre (1 model)"
        sample = f"{tl.n_sampled}/{tl.n_total}"
        for md, call, check in (
            (md1, 'activation_patch(sites="resid", positions="each")',
             f"vs TL resid_pre, {len(index)} (layer,pos) cells"),
            (md2, 'cross_patch(sites="resid", positions="each")', ""),
        ):
            self.rows.append(Row("resid, each pos", p.shape, call, md.median, len(md.times), peer,
                                 tl.total_s, sample, floor, body_floor, n_fwd, md.peak_rss_mb,
                                 md.peak_cuda_mb, check, diff if check else None,
                                 mechdiff_times=md.times, peer_patch_times=tl.patch_times))

        # per-position heads: 12x more patches; a smaller prompt set keeps it affordable
        n, t = (2, 4) if self.quick else (4, 8)
        p = self.prompts(n, t)
        H = self.pair.n_heads
        log(f"row 2b: per-position head patching, {p.shape}")
        metric = peers.logit_diff_metric(p.answers, p.wrong)
        n_fwd, floor, body_floor = self.floors(p, t * H, per_position=True)
        md1 = timed(lambda: mechdiff.activation_patch(self.pair.base, p.corrupted_task(),
                                                      sites="heads", positions="each",
                                                      progress=False), 1, self.device)
        md2 = timed(lambda: mechdiff.cross_patch(self.pair, p.cross_task(), sites="heads",
                                                 positions="each", progress=False), 1, self.device)
        index = [(layer, pos, h) for layer in range(L) for pos in peers.spread(t, 2, layer)
                 for h in peers.spread(H, 1 if self.quick else 2, layer + pos)]
        tl = peers.tl_heads_by_pos(self.pair.base, p.clean, p.corrupted, metric, index, L * t * H)
        ours = md1.result.patched.mean(-1)  # [layer, head, pos]
        diff = max(abs(float(ours[li, h, q]) - float(v)) for (li, q, h), v in zip(index, tl.values, strict=True))
        peer = "TL get_act_patch_attn_head_out_by_pos (1 model)"
        sample = f"{tl.n_sampled}/{tl.n_total}"
        for md, call, check in (
            (md1, 'activation_patch(sites="heads", positions="each")',
             f"vs TL head_out_by_pos, {len(index)} cells"),
            (md2, 'cross_patch(sites="heads", positions="each")', ""),
        ):
            self.rows.append(Row("heads, each pos", p.shape, call, md.median, len(md.times), peer,
                                 tl.total_s, sample, floor, body_floor, n_fwd, md.peak_rss_mb,
                                 md.peak_cuda_mb, check, diff if check else None,
                                 mechdiff_times=md.times, peer_patch_times=tl.patch_times))

    # -- attribution ------------------------------------------------------------------------------
    def attribution(self) -> None:
        """mechdiff.attribute against one forward of each model (goal: attribution <= 4x) and
        TL's single-model attribution patching."""
        p = self.prompts(8, 20)
        task = p.cross_task()
        steps = 5
        log(f"attribution rows: all heads, {p.shape}")
        repeats = 1 if self.quick else 3
        tiny = fixture.make_prompts(1, 3, seed=99)  # warm-up: autograd's first backward
        mechdiff.attribute(self.pair, tiny.cross_task(), sites="heads", progress=False)
        with torch.inference_mode():  # one forward of each model (bridge, no hooks), fastest
            n = 3 if self.quick else 5
            f_base = min(timed(lambda: self.pair.base(p.clean), n, self.device).times)
            f_ft = min(timed(lambda: self.pair.finetuned(p.clean), n, self.device).times)
        both = f_base + f_ft
        self.meta["attribution_fwd_s"] = {"base": f_base, "finetuned": f_ft}
        note = (f"floor here = one forward of base + one of fine-tuned ({both:.2f} s); "
                "goal for attribution: md/floor <= 4")
        for call, kw in (('attribute(sites="heads")', {}),
                         (f'attribute(sites="heads", method="integrated_gradients", steps={steps})',
                          dict(method="integrated_gradients", steps=steps))):
            md = timed(lambda kw=kw: mechdiff.attribute(self.pair, task, sites="heads",
                                                        progress=False, **kw),
                       repeats, self.device)
            name = "attribution" if not kw else f"integrated gradients (steps={steps})"
            self.rows.append(Row(name, p.shape, call, md.median, len(md.times), "-", None,
                                 floor_s=both, floor_fwds=2, peak_rss_mb=md.peak_rss_mb,
                                 peak_cuda_mb=md.peak_cuda_mb, notes=[note],
                                 mechdiff_times=md.times))
        # single model, clean/corrupted: the quantity TL's attribution_patch computes
        from mechdiff.patching import attribute_single

        md = timed(lambda: attribute_single(self.pair.base, p.corrupted_task(), sites="heads",
                                            positions="each", progress=False),
                   repeats, self.device)
        tl_s, tl_nodes = peers.tl_attribution(self.pair.base, p.clean, p.corrupted, p.answers,
                                              p.wrong)
        ours = md.result.effects  # [layer, head, pos]
        diff = max(abs(float(ours[n.layer, n.head, n.position]) - v)
                   for n, v in tl_nodes.items() if n.kind == "attn_head_out")
        self.rows.append(Row(
            "attribution, 1 model", p.shape, 'attribute_single(sites="heads", positions="each")',
            md.median, len(md.times), "TL tools attribution_patch (node; + embed, mlp)", tl_s,
            floor_s=2 * f_base, floor_fwds=2, peak_rss_mb=md.peak_rss_mb,
            check="attribute_single vs TL attribution_patch, every (layer, head, pos)",
            max_abs_diff=diff, mechdiff_times=md.times,
            notes=["floor here = two forwards of the base (clean and corrupted)"]))

    # -- row 3 -----------------------------------------------------------------------------------
    def memory(self) -> None:
        n = self.args.memory_prompts
        if n is None:
            n = 256 if self.device.type == "cuda" else (0 if self.quick else 32)
        if n <= 0:
            log("row 3: memory row skipped (CPU --quick; pass --memory-prompts N to run it)")
            self.meta["memory"] = "skipped"
            return
        t = 32
        pbs = self.args.memory_batch
        log(f"row 3: peak memory, all heads, {n}x{t}, prompt_batch_size={pbs} (child process)")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", str(n), str(t),
               "--device", self.args.device, "--memory-batch", str(pbs)]
        # glibc raises its mmap threshold after every large free, after which freed blocks stay
        # in the heap and count as resident; a fixed threshold hands them back (see README).
        env = os.environ | {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
        line = (out.stdout.strip().splitlines() or [""])[-1]
        try:
            res = json.loads(line)
        except json.JSONDecodeError:
            log(f"memory child failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
            self.meta["memory"] = "failed"
            return
        self.meta["memory"] = res
        self.rows.append(Row(
            "memory: all heads, streamed", f"{n}x{t}",
            f'cross_patch(sites="heads", prompt_batch_size={pbs})',
            res["seconds"], 1, "-", None, peak_rss_mb=res["peak_rss_mb"] - res["rss_after_load_mb"],
            peak_cuda_mb=res.get("peak_cuda_mb"),
            notes=[f"RSS after loading the pair {res['rss_after_load_mb']:.0f} MB, peak during "
                   f"patching {res['peak_rss_mb']:.0f} MB (MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD})"]))

    # -- output ----------------------------------------------------------------------------------
    def table(self) -> str:
        def f(x: float | None, fmt: str = ".1f") -> str:
            return "-" if x is None else format(x, fmt)

        head = (f"{'workload':<24} {'shape':>6} {'mechdiff call':<50} {'md s':>7} {'peer':<48} "
                f"{'peer s':>8} {'peer/md':>7} {'floor s':>8} {'md/floor':>8} {'body fl s':>9} "
                f"{'md/body':>7} {'dRSS MB':>8} {'max|diff|':>9}")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            peer_s = f(r.peer_s) + ("*" if r.peer_sampled else "")
            lines.append(
                f"{r.name:<24} {r.shape:>6} {r.mechdiff_call:<50} {f(r.mechdiff_s):>7} "
                f"{r.peer:<48} {peer_s:>8} {f(r.ratio, '.2f'):>7} {f(r.floor_s):>8} "
                f"{f(r.floor_s and r.mechdiff_s / r.floor_s, '.2f'):>8} {f(r.body_floor_s):>9} "
                f"{f(r.body_floor_s and r.mechdiff_s / r.body_floor_s, '.2f'):>7} "
                f"{f(r.peak_rss_mb, '.0f'):>8} {f(r.max_abs_diff, '.1e'):>9}"
            )
            if r.peak_cuda_mb is not None:
                lines.append(f"{'':<24} peak CUDA memory allocated: {r.peak_cuda_mb:.0f} MB")
            lines.extend(f"{'':<24} {note}" for note in r.notes)
        lines.append("")
        lines.append("* peer loop timed on a sample of its patched forwards (each a full forward of "
                     "the same cost) and scaled to the full count; the 'peer_sampled' field of "
                     "--json gives sampled/total.")
        lines.append("floor = forward-equivalents x one plain HF forward; body floor = 2 capture "
                     "forwards + forward-equivalents x blocks-only cost (mechdiff unembeds only "
                     "the read position). md/floor < 1 is possible: the floor counts full forwards.")
        for r in self.rows:
            if r.check:
                lines.append(f"check ({r.name}): {r.check}: max |mechdiff - peer| = "
                             f"{r.max_abs_diff:.2e} ({'OK' if r.max_abs_diff < 1e-4 else 'MISMATCH'}"
                             " at 1e-4)")
        return "\n".join(lines)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1)
    except (OSError, AttributeError):
        cpu = platform.processor() or "?"
    info = {"cpu": cpu, "nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("transformers", "transformer-lens"):
        try:
            info[dist.replace("-", "_")] = version(dist)
        except PackageNotFoundError:
            info[dist.replace("-", "_")] = "?"
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import psutil

        # measured while this process is idle: how busy other processes keep the machine
        info["busy_pct_before"] = psutil.cpu_percent(interval=1.0)
    except ImportError:
        pass
    return info


def memory_child(n: int, t: int, device: str, prompt_batch_size: int) -> None:
    """Row 3 in a fresh process, so its peak RSS is its own: load, reset peak, patch, report."""
    dev = torch.device(device)
    base_dir, ft_dir = fixture.build_pair_dirs(CACHE)
    pair = mechdiff.load_pair(str(base_dir), str(ft_dir), device=dev)
    p = fixture.make_prompts(n, t, seed=1)
    task = p.cross_task()
    after = rss_mb()
    reset_peak()
    peers.sync(dev)
    t0 = time.perf_counter()
    mechdiff.cross_patch(pair, task, sites="heads", prompt_batch_size=prompt_batch_size,
                         progress=False)
    peers.sync(dev)
    res = {"n_prompts": n, "n_tokens": t, "seconds": time.perf_counter() - t0,
           "rss_after_load_mb": after, "peak_rss_mb": peak_mb()}
    if dev.type == "cuda":
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller shapes and samples (< 3 min on 2 CPU cores)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--memory-prompts", type=int, default=None,
                    help="prompts for the memory row (default: 256 on cuda, 32 on cpu, skipped with --quick on cpu)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--profile", action="store_true", help="cProfile the all-heads row (to stderr)")
    ap.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS),
                    help="run only these rows (default: all)")
    ap.add_argument("--memory-batch", type=int, default=16,
                    help="prompt_batch_size of the memory row: prompts are streamed in batches of "
                         "this many, so it sets the peak (default 16)")
    ap.add_argument("--_memory-child", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory_child:
        memory_child(*args._memory_child, args.device, args.memory_batch)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")

    start = time.perf_counter()
    bench = Bench(args)
    bench.meta["machine"] = machine()
    bench.load()
    for row in args.rows:
        getattr(bench, row)()
    bench.meta["total_s"] = round(time.perf_counter() - start, 1)
    m = bench.meta["machine"]
    print(f"mechdiff {mechdiff.__version__} benchmark ({'quick' if args.quick else 'full'}, "
          f"{args.device}) on {m['cpu']}, nproc {m['nproc']}, torch {m['torch']} "
          f"({m['torch_threads']} threads), transformers {m.get('transformers')}, "
          f"transformer-lens {m.get('transformer_lens')}; total {bench.meta['total_s']}s")
    busy = m.get("busy_pct_before")
    if busy is not None:
        print(f"CPU busy with other processes before the run: {busy:.0f}%; load average at the "
              f"end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if busy > 25:
            print("WARNING: other processes were using the CPU; with torch's default thread "
                  "count, contention slows small kernels erratically. Timings and ratios from a "
                  "busy machine are not reliable: rerun on an idle one.")
    print(bench.table())
    if args.json:
        args.json.write_text(json.dumps(
            {"meta": bench.meta, "rows": [asdict(r) | {"ratio": r.ratio} for r in bench.rows]},
            indent=1, default=str))


if __name__ == "__main__":
    main()
