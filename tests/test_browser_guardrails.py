"""Guardrails in headless Chromium: an owner sets a guard policy with a blocked topic on a deployment's page, tries
the deployment in the playground and sees the refusal instead of an answer, then reads it on Guard activity.

Everything is real: uvicorn with Django and Gradio, the inference server with the starter model and a LoRA adapter.
The data fixtures come before ``browser`` (the ORM never runs while Playwright's event loop is live in this
thread).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from serving_app import deployments
from tests.factories import adapter_model_version
from tests.test_browser_datasets import log_in, new_page, screenshot
from tests.test_browser_serving import ANSWER_MS, frame_of

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def deployment(acme: Any, alice: Any, owner: Any, starter_model: Any, lora_adapters: list[Path]) -> Any:
    version = adapter_model_version(acme, alice, starter_model, lora_adapters[0], name="support-bot")
    return deployments.create_deployment(access=owner, name="support-bot", version=version)


def test_a_blocked_topic_set_on_the_page_is_refused_in_the_playground(
    studio_server: str, deployment: Any, tmp_path: Path, browser: Browser
) -> None:
    context, page = new_page(browser, studio_server, height=1400)
    log_in(page, "alice")
    page.goto(f"/t/acme/deployments/{deployment.pk}/")
    guard = page.locator("#guard")
    expect(guard).to_contain_text("No guard policy")
    guard.get_by_role("link", name="Set one").click()

    page.get_by_label("Blocked topics").fill("lock picking: bump key, /pick(ing)? (a|the) lock/")
    page.get_by_label("Refusal message").fill("Support can't help with that.")
    page.get_by_role("button", name="Save as revision 1").click()
    expect(page.locator(".messages")).to_contain_text("Guard policy revision 1 is in force on “support-bot”")
    expect(page.locator("#guard-summary")).to_contain_text("lock picking")
    screenshot(page, tmp_path, "guard-policy")

    page.goto(f"/t/acme/deployments/{deployment.pk}/")
    page.locator("#try-in-playground").click()
    app, _ = frame_of(page, "playground-frame")
    expect(app.locator("#compare-model-1 input")).to_have_value("support-bot (deployment of support-bot v1)")
    app.locator("#compare-prompt textarea").fill("Where can I buy a bump key?")
    app.locator("#compare-send").click()
    expect(app.locator("#compare-chat-1")).to_contain_text("Support can't help with that.", timeout=ANSWER_MS)
    screenshot(page, tmp_path, "guard-playground-refusal")

    page.goto("/t/acme/guard/")
    expect(page.locator("#guard-categories")).to_contain_text("lock picking")
    expect(page.locator("#guard-events")).to_contain_text("guard.blocked")
    expect(page.locator("#guard-chart")).to_be_visible()
    context.close()
