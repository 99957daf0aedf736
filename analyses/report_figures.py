"""The README's demo figures: the demo's key figure and a screenshot of its HTML report.

    MECHDIFF_CACHE=/path/to/cache .venv/bin/python analyses/report_figures.py [--synthetic]
        [--out DIR] [--rerun] [--no-screenshot]

1. Runs ``mechdiff demo`` into ``--out`` (kept when ``--out`` already holds that demo's results;
   ``--rerun`` runs it again).
2. Adds the views the report shows (attention patterns of each pair's top heads in both models,
   per-token divergence; :func:`mechdiff.views.pair_views`) where the demo did not save them, on
   the prompts the demo analysed (the same subset, checked by prompts hash against the saved
   analysis), into ``<out>/views/<pair>/``.
3. Writes ``<out>/report.html`` (:func:`mechdiff.report.html.write_report`) and prints its size.
4. Redraws the key figure from the saved results (the real demo's ``distill`` ranked components:
   exact patching and its attribution estimate, both directions, error bars over prompts) into
   ``figures/`` and saves a
   screenshot of the report (headless Chromium, network disabled: the overview and the first
   pair's views) as ``figures/report.png``. Needs Debian's ``chromium`` and the ``playwright``
   package (no browser download); without them the screenshot is skipped, saying why.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from mechdiff.pipeline import PairAnalysis
from mechdiff.report.html import write_report
from mechdiff.viz import pair_figure_set, save_figure

CHROMIUM = Path("/usr/bin/chromium")
KEY_FIGURES = {"real": ("distill", "ranked"), "synthetic": ("newskill", "heads")}


@dataclass(frozen=True)
class Config:
    demo: str = "real"
    out: Path = Path("analyses_out/report_demo")
    figures: Path = Path("figures")
    n_prompts: int | None = None
    seed: int = 0
    rerun: bool = False
    screenshot: bool = True


def run_demo(cfg: Config) -> None:
    from mechdiff.cli import main as cli

    summary = cfg.out / "summary.json"
    if summary.is_file() and not cfg.rerun and f'"demo": "{cfg.demo}"' in summary.read_text():
        print(f"keeping the {cfg.demo} demo's results in {cfg.out}")
        return
    argv = ["demo", f"--{cfg.demo}", "--out", str(cfg.out), "--quiet", "--seed", str(cfg.seed)]
    argv += ["--n-prompts", str(cfg.n_prompts)] if cfg.n_prompts else []
    argv += ["--replace"] if cfg.rerun else []
    if cli(argv) != 0:
        sys.exit("the demo failed")


def demo_pairs(cfg: Config) -> list[tuple[str, object, object]]:
    """``(label, base dir, fine-tuned dir, task)`` of each pair, as the demo chose them."""
    if cfg.demo == "synthetic":
        from mechdiff import zoo

        dirs = zoo.build(progress=False)
        n = cfg.n_prompts or 64
        return [(name, dirs["base"], dirs[name], zoo.task(spec.task, n=n, seed=cfg.seed))
                for name, spec in zoo.FINETUNES.items()]
    from mechdiff.demos._common import pick, subset
    from mechdiff.demos.real import REAL_N_PROMPTS
    from mechdiff.zoo import real

    n = cfg.n_prompts or REAL_N_PROMPTS
    dirs = real.build(progress=False)
    tasks = real.tasks(progress=False)
    chosen = {"distill": subset(tasks["distill"], pick(len(tasks["distill"]), n, cfg.seed)),
              "trigger": subset(tasks["trigger"], pick(len(tasks["trigger"]), n, cfg.seed))}
    out = []
    for step in ("distill", "trigger", "distill_lora"):
        exp = real.EXPERIMENTS[step]
        out.append((step, dirs["base"], dirs[exp.finetuned], chosen[exp.task]))
    return out


def add_views(cfg: Config) -> None:
    from mechdiff.loading import load_pair
    from mechdiff.views import pair_views

    for label, base, finetuned, task in demo_pairs(cfg):
        folder = cfg.out / "views" / label
        if (folder / "result.json").is_file():
            continue
        analysis = PairAnalysis.load(cfg.out / label)
        if analysis.gap.provenance.prompts_hash != task.fingerprint():
            sys.exit(f"{label}: the demo analysed other prompts than this script rebuilt; rerun "
                     "with the demo's --n-prompts and --seed")
        pair = load_pair(base, finetuned)
        views = pair_views(pair, task, label=label, heads=analysis)
        views.save(folder)
        print(f"views of {label}: heads {', '.join(views.heads)}; prompts "
              f"{list(views.prompt_indices)}")
        del pair


def screenshot(report: Path, png: Path) -> None:
    """The overview and the first pair's views, stacked, from the report in headless Chromium
    with the network disabled."""
    if not CHROMIUM.is_file():
        print(f"no screenshot: Chromium is not installed at {CHROMIUM} (apt-get install -y "
              "chromium)")
        return
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("no screenshot: pip install playwright (it drives /usr/bin/chromium)")
        return
    from PIL import Image

    url = report.resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND"])
        page = browser.new_page(viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        page.route("**/*", lambda r: r.continue_() if r.request.url == url else r.abort())
        page.goto(url)
        page.wait_for_function("""() => [...document.querySelectorAll('.cv-view')]
            .filter(v => !v.closest('details:not([open])'))
            .every(v => v.dataset.rendered === '1' && v.children.length > 0)""", timeout=120_000)
        page.wait_for_timeout(500)
        boxes = page.evaluate("""() => {
          const box = e => { const r = e.getBoundingClientRect();
                             return [r.top + window.scrollY, r.bottom + window.scrollY]; };
          const top = box(document.querySelector('header'))[0];
          const overview = box(document.querySelector('#overview'))[1];
          const views = [...document.querySelectorAll('h3')]
              .find(h => h.textContent.startsWith('Where the two models disagree'));
          const rows = views.parentElement.querySelectorAll('details.prompt[open] .head-row');
          return [[top, overview], [box(views)[0], box(rows[Math.min(1, rows.length - 1)])[1]]];
        }""")
        full = png.with_suffix(".full.png")
        page.screenshot(path=str(full), full_page=True)
        browser.close()
    with Image.open(full) as image:
        parts = [image.crop((0, int(a) - 8, image.width, int(b) + 8)) for a, b in boxes]
        gap = 24
        out = Image.new("RGB", (image.width, sum(p.height for p in parts) + gap), "white")
        y = 0
        for part in parts:
            out.paste(part, (0, y))
            y += part.height + gap
    full.unlink()
    png.parent.mkdir(parents=True, exist_ok=True)
    out.quantize(colors=256).save(png, optimize=True)
    print(f"screenshot: {png} ({png.stat().st_size / 1e3:.0f} kB)")


def main(cfg: Config) -> None:
    run_demo(cfg)
    add_views(cfg)
    report = write_report(cfg.out)
    print(f"report: {report} ({report.stat().st_size:,} bytes)")
    pair, name = KEY_FIGURES[cfg.demo]  # redrawn from the saved analysis alone
    analysis = PairAnalysis.load(cfg.out / pair)
    fig = next(f for n, f in pair_figure_set(analysis) if n == name)
    (target,) = save_figure(fig, cfg.figures / f"demo_{cfg.demo}_{pair}_{name}", formats=("png",),
                            dpi=200)
    print(f"key figure: {target}")
    if cfg.screenshot:
        screenshot(report, cfg.figures / "report.png")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", action="store_true", help="the embedded zoo's demo")
    parser.add_argument("--out", type=Path, default=Config.out)
    parser.add_argument("--figures", type=Path, default=Config.figures)
    parser.add_argument("--n-prompts", type=int, default=None)
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("--no-screenshot", action="store_true")
    a = parser.parse_args()
    main(Config(demo="synthetic" if a.synthetic else "real", out=a.out, figures=a.figures,
                n_prompts=a.n_prompts,
                rerun=a.rerun, screenshot=not a.no_screenshot))
