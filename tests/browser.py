"""The browser tests' fixture and steps (a pytest plugin, loaded by conftest): Debian's Chromium,
driven by Playwright's sync API, and logging in through the login page."""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def _chromium():
    """One Chromium a module: launching it costs 1 to 3 s, and each test gets fresh contexts anyway.
    Not a session: Playwright's sync API keeps an event loop running in this thread while it lives."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs an event loop in this thread
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-background-networking"]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def browser(_chromium):
    """The module's Chromium; every context (and page) a test opens is closed at its end, so no page
    of one test polls the server, or keeps its cookies, into the next."""
    yield _chromium
    for context in list(_chromium.contexts):
        context.close()


def log_in(page, live_server, username, password):
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
