"""A PNG of a report page as a browser draws it (the README's picture of the report).

Uses Debian's chromium (/usr/bin/chromium, or $FORGETLAB_CHROMIUM) driven by Playwright: the
page is opened from disk, so this also proves it needs no network.
"""

from __future__ import annotations

import os
from pathlib import Path

from forgetlab.atomic import atomic_write_bytes
from forgetlab.errors import ForgetlabError

# Headless in a container as root: no sandbox, no GPU; nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> Path:
    return Path(os.environ.get("FORGETLAB_CHROMIUM", "/usr/bin/chromium"))


def screenshot(html: Path, png: Path, width: int = 1280, max_height: int | None = 1600) -> Path:
    """Render `html` at `width` px and save the top `max_height` px (None: the whole page)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise ForgetlabError(f"a screenshot needs playwright (pip install playwright): {e}") from e
    browser_path = chromium_path()
    if not browser_path.is_file():
        raise ForgetlabError(
            f"a screenshot needs chromium at {browser_path} (apt-get install chromium, or set "
            "FORGETLAB_CHROMIUM)"
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(browser_path), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(Path(html).resolve().as_uri(), wait_until="load")
            height = page.evaluate("document.documentElement.scrollHeight")
            clip = {"x": 0, "y": 0, "width": width, "height": min(height, max_height or height)}
            data = page.screenshot(full_page=True, clip=clip)
        finally:
            browser.close()
    atomic_write_bytes(png, data)
    return Path(png)
