"""Screenshots of every console page, taken by Debian's Chromium through Playwright."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

PAGES = ("feed", "calls", "lights", "subscriber", "effect")


def chromium() -> str | None:
    """Return the path of the system's Chromium, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def take(url: str, out_dir: Path, *, user: str, password: str, lang: str = "en",
         width: int = 1440, height: int = 900) -> list[Path] | str:
    """Sign in at console `url` and save a PNG of each page in `out_dir`; a reason string when it cannot."""
    browser_path = chromium()
    if browser_path is None:
        return "no chromium installed (apt-get install chromium, or make system-deps)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    out_dir.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{url}/login")
            page.evaluate(f"localStorage.setItem('churnlight.lang', '{lang}')")
            page.fill("input[name=user]", user)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            for name in PAGES:
                if name == "subscriber":
                    # The newest red light in the feed, or the top of the call list.
                    page.goto(f"{url}/feed?kind=red_light")
                    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
                    link = page.locator("#feed td.msisdn a")
                    if link.count() == 0:
                        page.goto(f"{url}/calls")
                        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
                        link = page.locator("#calls td.msisdn a")
                    if link.count():
                        link.first.click()
                    else:
                        page.goto(f"{url}/subscriber")
                else:
                    page.goto(f"{url}/{name}")
                page.wait_for_selector("body[data-ready='1']", timeout=30_000)
                page.wait_for_timeout(300)  # plotly's transitions
                path = out_dir / f"console-{name}.png"
                page.screenshot(path=str(path), full_page=True)
                shots.append(path)
        finally:
            browser.close()
    return shots
