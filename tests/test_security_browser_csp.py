"""In headless Chromium, the Content-Security-Policy blocks nothing the studio itself needs.

Chromium reports every blocked script, style, image or connection on the console (the playground's frame
included): the site's pages and the Gradio app at /play/ must load and work with no such report.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.test_browser_datasets import log_in, new_page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PAGES = (
    "/",
    "/t/acme/",
    "/t/acme/keys/",
    "/t/acme/datasets/",
    "/t/acme/training/",
    "/t/acme/training/new",
    "/t/acme/models/",
    "/t/acme/deployments/",
    "/t/acme/usage/",
    "/accounts/tokens/",
    "/api/v1/docs",
)


def watch_csp(page: Page) -> list[str]:
    """The CSP violations Chromium reports on the console from now on, in the page and its frames."""
    reports: list[str] = []
    page.on(
        "console", lambda message: reports.append(message.text) if "Content Security Policy" in message.text else None
    )
    return reports


def test_site_pages_load_without_csp_violations(studio_server: str, alice: Any, browser: Browser) -> None:
    _, page = new_page(browser, studio_server)
    reports = watch_csp(page)
    log_in(page, "alice")
    blocked = {}
    for path in PAGES:
        page.goto(path)
        page.wait_for_load_state("networkidle")
        if reports:
            blocked[path] = list(reports)
            reports.clear()
    assert not blocked


def test_playground_frame_works_without_csp_violations(studio_server: str, alice: Any, browser: Browser) -> None:
    _, page = new_page(browser, studio_server)
    reports = watch_csp(page)
    log_in(page, "alice")
    page.goto("/t/acme/playground/")
    app = page.frame_locator("#playground-frame")
    expect(app.locator("#views")).to_be_visible(timeout=30_000)
    expect(app.locator("#compare-notice")).to_contain_text("No model is ready", timeout=30_000)
    assert reports == []
