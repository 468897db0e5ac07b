"""A real headless Chromium for the tests that look at what a person sees (Label Studio, the report).

Loaded by tests/conftest.py through ``pytest_plugins``.

- ``chromium``: one browser per test session: Debian's ``chromium`` (``scripts/browser.sh`` installs it;
  ``DEFECTLOOP_TEST_CHROMIUM`` names another binary) driven by Playwright for Python. Playwright never
  downloads a browser here. A missing browser fails the test naming it; nothing is skipped.
- ``page``: a fresh context and page per test, 1366x768 (the smallest screen annotators use), with the
  browser console's errors collected in ``page.console_errors``.
- ``artifacts``: ``test-artifacts/<test name>/`` in the checkout (git-ignored), kept after the run:
  screenshots go there, for people (and CI) to look at.
- ``image_states``: what the browser made of every ``<img>`` matching a selector (decoded or not).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_VARIABLE = "DEFECTLOOP_TEST_CHROMIUM"
VIEWPORT = {"width": 1366, "height": 768}
# Without these, Chromium phones home at start (refused here, many connections at a time) and may stall.
_QUIET_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
]


def chromium_executable() -> str:
    """The Chromium binary the tests drive; fails the test naming how to get it when it is missing."""
    configured = os.environ.get(CHROMIUM_VARIABLE)
    found = configured or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).is_file():
        pytest.fail(
            f"no Chromium at {found!r}: the browser tests need Debian's chromium "
            f"(`bash scripts/browser.sh` installs it; {CHROMIUM_VARIABLE} names another binary)",
            pytrace=False,
        )
    return found


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """A headless Chromium shared by the test session (a Playwright ``Browser``)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright for Python is not installed: run `bash scripts/setup.sh`", pytrace=False)
    executable = chromium_executable()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=_QUIET_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A new page at 1366x768 in its own context; ``page.console_errors`` lists the console's errors."""
    context = chromium.new_context(viewport=VIEWPORT, device_scale_factor=1)
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.console_errors = errors
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """``test-artifacts/<test name>/``, emptied at the test's start and kept after it."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:100]
    folder = ARTIFACTS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def image_states(page: Any, selector: str = "img") -> list[dict[str, Any]]:
    """For each ``<img>`` matching ``selector``: its src, whether it finished loading, its natural size.

    An image that failed to load or decode has ``naturalWidth == 0`` once ``complete`` is true.
    """
    states: list[dict[str, Any]] = page.eval_on_selector_all(
        selector,
        """els => els.map(el => ({src: el.currentSrc || el.src, complete: el.complete,
                                   naturalWidth: el.naturalWidth, naturalHeight: el.naturalHeight,
                                   width: el.getBoundingClientRect().width,
                                   height: el.getBoundingClientRect().height}))""",
    )
    return states


def wait_for_decoded_images(page: Any, selector: str, count: int, timeout_ms: int = 30_000) -> None:
    """Wait until at least ``count`` images matching ``selector`` are loaded and decoded."""
    page.wait_for_function(
        """([selector, count]) => {
            const done = [...document.querySelectorAll(selector)]
                .filter(el => el.complete && el.naturalWidth > 0);
            return done.length >= count;
        }""",
        arg=[selector, count],
        timeout=timeout_ms,
    )
