"""The report opened as a person would: in headless Chromium with the network disabled. Every
circuitsvis view is drawn (the DOM holds the rendered components: canvases with pixels on them,
coloured token spans reading the prompt's tokens, not empty divs), nothing left the page for
another address, no script failed, and a full-page screenshot is saved as an artefact.

Needs Debian's ``chromium`` (``apt-get install -y chromium``; ``make setup`` installs it) and the
``playwright`` Python package, which drives that browser through ``executable_path`` (no browser
download: never run ``playwright install``). Skipped, saying which is missing, where either is.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from mechdiff.report.html import write_report

CHROMIUM = Path(os.environ.get("MECHDIFF_CHROMIUM", "/usr/bin/chromium"))
OFFLINE_ARGS = [
    "--no-sandbox",  # CI containers run as root
    "--proxy-server=127.0.0.1:9",  # any request that gets past the route below goes nowhere
    "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-default-apps", "--disable-extensions",
]
DRAWN = """() => {
  const views = [...document.querySelectorAll('.cv-view')];
  return views.length > 0 && views.every(v => v.dataset.rendered === '1' && v.children.length > 0);
}"""


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"Chromium is not installed at {CHROMIUM}: install Debian's package "
                    "(apt-get install -y chromium; make setup does) to run the browser test")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is not installed: pip install "
        "playwright (it drives /usr/bin/chromium; no browser download is needed)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=OFFLINE_ARGS)
        try:
            yield b
        finally:
            b.close()


class Opened:
    """A page opened offline, with every request it made and every error it raised."""

    def __init__(self, browser, path: Path) -> None:  # noqa: ANN001
        self.url = path.as_uri()
        self.context = browser.new_context(viewport={"width": 1280, "height": 900},
                                           offline=True, service_workers="block")
        self.requests: list[str] = []
        self.blocked: list[str] = []
        self.errors: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.context.route("**/*", self._only_the_page)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}")
                     if m.type == "error" else None)
        self.page.goto(self.url, wait_until="load")

    def _only_the_page(self, route) -> None:  # noqa: ANN001
        if route.request.url == self.url or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.blocked.append(route.request.url)
            route.abort()


def test_the_harness_catches_requests_for_other_addresses(browser, tmp_path: Path) -> None:
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><img src="https://example.com/a.png">'
                    '<script>fetch("http://10.1.2.3/x").catch(() => {});</script>')
    opened = Opened(browser, page)
    opened.page.wait_for_timeout(500)
    assert "https://example.com/a.png" in opened.blocked
    assert "http://10.1.2.3/x" in opened.blocked
    opened.context.close()


def test_report_draws_every_view_offline(browser, results_dir: Path, tmp_path: Path) -> None:
    report = write_report(results_dir, tmp_path / "report.html", top=5)
    opened = Opened(browser, report)
    page, url = opened.page, opened.url
    page.wait_for_function("""() => [...document.querySelectorAll('.cv-view')]
        .filter(v => !v.closest('details:not([open])'))
        .every(v => v.dataset.rendered === '1' && v.children.length > 0)""", timeout=60_000)
    page.evaluate("() => window.mechdiffDrawAll()")  # also the views in closed <details>
    page.wait_for_function(DRAWN, timeout=60_000)

    data = json.loads(page.eval_on_selector("#mechdiff-views-data", "e => e.textContent"))
    drawn = page.evaluate("""() => [...document.querySelectorAll('.cv-view')].map(v => {
      const canvas = v.querySelector('canvas');
      let inked = 0;
      if (canvas && canvas.width && canvas.height) {
        const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        for (let i = 3; i < px.length; i += 4) if (px[i] > 0) inked++;
      }
      return {id: v.id, component: v.dataset.component, canvas: !!canvas, inked: inked,
              text: v.textContent, spans: v.querySelectorAll('span').length};
    })""")
    assert len(drawn) == len(data["views"]) > 0
    for view in drawn:
        spec = data["views"][view["id"]]
        tokens = data["tokens"][spec["tokens"]]
        if view["component"] == "AttentionPattern":
            assert view["canvas"] and view["inked"] > 100, view
        else:
            assert view["spans"] >= len(tokens), view
            text = view["text"].replace("\n", "")
            assert all(t in text for t in tokens), (tokens, text)  # "<bos>" as text, not a tag
    assert {v["component"] for v in drawn} == {"AttentionPattern", "ColoredTokens",
                                                "ColoredTokensMulti"}
    assert not opened.errors, opened.errors
    assert not opened.blocked, f"the page asked for other addresses: {opened.blocked}"
    assert set(opened.requests) == {url}, opened.requests
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 50_000
    keep = os.environ.get("MECHDIFF_ARTEFACTS")
    if keep:  # CI uploads this folder
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "report.png")
    opened.context.close()
