"""Headless Chromium for the UI tests, driven by Playwright, with a screenshot at each step.

The browser is the system's Chromium (Debian's package at ``/usr/bin/chromium``, which ``make browser``
installs), never one that Playwright downloads. Screenshots go to ``test-output/screenshots/`` in the
checkout, named after the test and the step, so that a failed run leaves pictures of what the browser showed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output" / "screenshots"
# Generous for a loaded two-core machine. Playwright's timeouts are in milliseconds.
WAIT_MS = 30_000
VIEWPORT = {"width": 1400, "height": 900}


@dataclass(frozen=True)
class Screenshots:
    """Saves numbered full-page screenshots of one test under ``folder``."""

    folder: Path
    prefix: str

    def take(self, page: Any, step: str) -> Path:
        """Save a screenshot of ``page`` as ``<test>-<nn>-<step>.png`` and return its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        number = len(list(self.folder.glob(f"{self.prefix}-*.png"))) + 1
        path = self.folder / f"{self.prefix}-{number:02d}-{_slug(step)}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-").lower() or "step"


def launch_chromium(playwright: Any) -> Any:
    """Launch the system's Chromium headless through Playwright, or fail naming the package to install."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium package (make browser) to run the UI tests")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the test module, closed at its end."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page in its own browser context (no cookies shared between tests)."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(WAIT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Screenshots:
    """The screenshot taker of the current test, whose earlier pictures from an older run are removed."""
    prefix = _slug(request.node.name)
    for old in SCREENSHOTS.glob(f"{prefix}-*.png"):
        old.unlink()
    return Screenshots(SCREENSHOTS, prefix)
