"""End to end in headless Chromium: configure a fine-tune with a preset, read the estimate, launch, watch
the live loss chart move as the real trainer runs in the Celery worker, and open the finished model version.

The data fixtures come before ``browser`` (as in the other browser tests), so the ORM never runs while
Playwright's event loop is live in this thread; the test itself only reads what the page shows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from tests.factories import sample_version
from tests.test_browser_datasets import log_in, new_page, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# The trainer starts (imports, loading) and trains in the worker while the page polls every 2 s.
TRAINING_MS = 240_000


@pytest.fixture
def chat_version(alice: Any, acme: Any) -> Any:
    return sample_version(acme, alice, "chat", name="Support chats")


def test_configure_launch_watch_and_open_the_model_version(
    studio_server: str,
    celery_worker: None,
    starter_model: Any,
    chat_version: Any,
    tmp_path: Path,
    browser: Browser,
) -> None:
    context, page = new_page(browser, studio_server)
    log_in(page, "alice")

    page.goto("/t/acme/training/new")
    expect(page.get_by_role("heading", name="New fine-tune")).to_be_visible()
    # QLoRA is offered but explained away on this CPU-only studio.
    expect(page.locator("#preset-qlora")).to_be_disabled()
    expect(page.locator("#presets")).to_contain_text("needs an NVIDIA GPU with CUDA")

    page.get_by_label("Name").fill("support assistant")
    dataset = page.locator("select[name=dataset_version] option", has_text="Support chats v1")
    page.locator("select[name=dataset_version]").select_option(value=dataset.get_attribute("value"))
    page.locator("label[for=preset-quick-lora]").click()
    page.locator("#advanced summary").click()
    page.locator("[name=max_steps]").fill("30")
    page.locator("[name=max_seq_length]").fill("128")
    page.locator("[name=max_seq_length]").dispatch_event("change")

    estimate = page.locator("#estimate")
    expect(estimate).to_contain_text("Fits", timeout=15_000)
    expect(estimate).to_contain_text("3.95M")  # the starter model's parameters
    expect(estimate).to_contain_text("30 optimizer steps")
    screenshot(page, tmp_path, "training-new")

    page.get_by_role("button", name="Launch fine-tune").click()
    expect(page).to_have_url(re.compile(r"/t/acme/training/\d+/$"))
    expect(page.locator("h1")).to_contain_text("support assistant")

    # The loss chart appears with the first logged steps and then moves as training goes on.
    loss_path = page.locator("#charts svg path").first
    expect(loss_path).to_be_attached(timeout=TRAINING_MS)
    first = loss_path.get_attribute("d")
    expect(loss_path).not_to_have_attribute("d", first or "", timeout=TRAINING_MS)
    expect(page.locator(".progress-bar").first).to_be_visible()
    screenshot(page, tmp_path, "training-live")

    expect(page.locator(".pill.large")).to_have_text("Succeeded", timeout=TRAINING_MS)
    expect(page.locator("#evaluation")).to_contain_text("Validation loss")
    page.locator(".model-link a").click()
    expect(page).to_have_url(re.compile(r"/t/acme/models/versions/\d+/$"))
    expect(page.locator("h1")).to_contain_text("support assistant")
    expect(page.locator("body")).to_contain_text("Support chats v1")
    expect(page.get_by_role("link", name=re.compile("Download"))).to_be_visible()
    screenshot(page, tmp_path, "training-model-version")
    context.close()
