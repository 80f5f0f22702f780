"""`forgetlab report --screenshot`: the command that regenerates the README's picture.

Its own module: Playwright's sync API cannot nest inside the browser test's open session.
"""

from __future__ import annotations

import matplotlib.image
import pytest
from report_fixtures import ALL_ANALYSES, write_run
from test_report_browser import MISSING

from forgetlab.cli import main
from forgetlab.report.screenshot import screenshot

pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


def test_report_cli_screenshot_is_the_top_of_the_page(tmp_path):
    run = write_run(tmp_path / "full", "full-ft", "full", ALL_ANALYSES)
    html, png = tmp_path / "r.html", tmp_path / "r.png"
    assert main(["report", str(run), "--out", str(html), "--screenshot", str(png)]) == 0
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[:2] == (1600, 1280)  # --screenshot-height default, 1280 px wide
    assert pixels.std() > 0.05
    whole = matplotlib.image.imread(screenshot(html, tmp_path / "all.png", max_height=None))
    assert whole.shape[0] > 1600
