"""The HTML report in a real headless Chromium (Playwright): it opens from disk with no
network, no errors, and every figure decoded and laid out.

Needs Debian's chromium (/usr/bin/chromium, or FORGETLAB_CHROMIUM) and the playwright
package; CI installs both. Skipped, with the reason, only when one of them is missing.
"""

from __future__ import annotations

import numpy as np
import pytest
from report_fixtures import ALL_ANALYSES, XSS_NAME, write_lm_run, write_run

from forgetlab.report.page import build_report
from forgetlab.report.screenshot import CHROMIUM_ARGS, chromium_path

CHROMIUM = chromium_path()

try:
    from playwright.sync_api import sync_playwright
except ImportError as error:
    sync_playwright = None
    MISSING = f"playwright not installed: {error} (pip install 'playwright>=1.40')"
else:
    MISSING = (
        None
        if CHROMIUM.is_file()
        else f"chromium not installed: {CHROMIUM} not found (apt-get install chromium)"
    )

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")

# scatter + rank90 + source-target, 7 for the full run, accuracy + loss for the XSS-named one,
# accuracy, curves, probes, loss and diversity for the decoder run
N_FIGURES = 17


@pytest.fixture(scope="module")
def opened(tmp_path_factory):
    """The report loaded in Chromium, with everything the page logged or requested."""
    root = tmp_path_factory.mktemp("browser")
    runs = [
        write_run(root / "full", "full-ft", "full", ALL_ANALYSES),
        write_run(root / "xss", XSS_NAME, "lora", matrices="single"),
        write_lm_run(root / "lm", "lm-full", "full"),
    ]
    out = build_report(runs, root / "report.html")
    events: dict[str, list[str]] = {"console": [], "pageerror": [], "request": [], "dialog": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on(
                "console",
                lambda m: events["console"].append(m.text) if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: events["pageerror"].append(str(e)))
            page.on("request", lambda r: events["request"].append(r.url))
            page.on("dialog", lambda d: (events["dialog"].append(d.message), d.dismiss()))
            page.goto(out.as_uri(), wait_until="load")
            yield page, events, root
        finally:
            browser.close()


def test_no_console_or_page_errors(opened):
    page, events, _ = opened
    assert events["console"] == []
    assert events["pageerror"] == []
    assert events["dialog"] == []  # the XSS-named run's alert(1) never ran
    assert page.evaluate("document.scripts.length") == 0
    assert page.title().startswith("forgetlab report: full-ft, <script>")  # escaped, shown


def test_no_network_request(opened):
    _, events, _ = opened
    assert events["request"], "the page load itself should be seen"
    remote = [u for u in events["request"] if not u.startswith(("file:", "data:"))]
    assert remote == []


def test_every_image_is_decoded_and_laid_out(opened):
    page, _, _ = opened
    images = page.eval_on_selector_all(
        "img",
        """els => els.map(e => {
            const box = e.getBoundingClientRect();
            return {id: e.id, complete: e.complete, natural: e.naturalWidth,
                    width: box.width, height: box.height};
        })""",
    )
    assert len(images) == N_FIGURES
    for img in images:
        assert img["complete"] and img["natural"] > 0, img
        assert img["width"] > 0 and img["height"] > 0, img


def test_full_page_screenshot_is_not_blank(opened):
    import matplotlib.image

    page, _, root = opened
    shot = root / "screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 100_000
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] > 2000 and pixels.shape[1] >= 1280  # the whole page, not a viewport
    assert pixels.std() > 0.05
    colours = np.unique(pixels[::7, ::7, :3].reshape(-1, 3), axis=0)
    assert len(colours) > 100  # text, heatmaps and lines, not a flat page
