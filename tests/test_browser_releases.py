"""Releasing a new version in headless Chromium: an owner gives a deployment a gate (an eval suite), checks a
candidate version against it, runs the missing suite from the deployment's page, then publishes the candidate as a
canary, promotes it to all traffic and rolls back in one click, reading the release history.

Everything is real: uvicorn with Django, the Celery worker that runs the eval, the inference server with the
starter model and two LoRA adapters. The data fixtures come before ``browser`` (the ORM never runs while
Playwright's event loop is live in this thread).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from playwright.sync_api import Browser, expect

from accounts import services as account_services
from evals_app.models import EvalSuite
from serving_app import deployments
from tests.factories import adapter_model_version, ready_version
from tests.test_browser_datasets import log_in, new_page, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

RUN_S = 240


@pytest.fixture
def scene(acme: Any, alice: Any, owner: Any, starter_model: Any, lora_adapters: list[Path]) -> tuple[Any, str]:
    """support-bot serving v1 (one adapter), v2 (the other) not published, a suite any answer passes, and the
    plaintext of a key that may call support-bot."""
    rows = [{"prompt": question, "completion": "an answer"} for question in ("Say hello.", "Name a colour.")]
    questions = ready_version(acme, alice, rows, kind="instruction", name="Questions")
    EvalSuite.objects.create(
        team=acme, name="Smoke", dataset_version=questions, created_by=alice,
        graders=[{"grader": {"type": "rouge_l", "threshold": 0.0}, "pass_rate": 0.5}],
    )  # fmt: skip
    current = adapter_model_version(acme, alice, starter_model, lora_adapters[0], name="support-bot")
    adapter_model_version(acme, alice, starter_model, lora_adapters[1], name="support-bot")
    key, plaintext = account_services.create_team_api_key(access=owner, name="canary probe")
    return deployments.create_deployment(access=owner, name="support-bot", version=current, api_keys=[key]), plaintext


def call_v1(studio_server: str, api_key: str, times: int) -> None:
    """``times`` short chat completions of support-bot through the studio's /v1, as a client sends them."""
    client = OpenAI(base_url=f"{studio_server}/v1", api_key=api_key, max_retries=0)
    for _ in range(times):
        answer = client.chat.completions.create(
            model="support-bot", messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0
        )
        assert answer.choices[0].message.content is not None


def test_gate_a_candidate_run_its_suite_release_it_as_a_canary_promote_and_roll_back(
    studio_server: str, celery_worker: None, scene: tuple[Any, str], tmp_path: Path, browser: Browser
) -> None:
    deployment, api_key = scene
    context, page = new_page(browser, studio_server, height=1400)
    log_in(page, "alice")
    page.goto(f"/t/acme/deployments/{deployment.pk}/")
    releases = page.locator("#releases")
    expect(releases).to_contain_text("No gate")

    releases.get_by_role("link", name="Require eval suites").click()
    page.get_by_label("Smoke", exact=True).check()
    page.get_by_label("Smoke: at least this % of rows").fill("50")
    page.get_by_role("button", name="Save the gate").click()
    expect(releases.locator("#gate")).to_contain_text("at least 50 % of rows pass every grader")

    releases.locator("#candidate").select_option(label="support-bot v2")
    releases.get_by_role("button", name="Check").click()
    report = page.locator("#gate-report")
    expect(report).to_contain_text("not measured yet")
    expect(report).to_contain_text("never run on support-bot v2")

    report.get_by_role("button", name="Run the missing suites on support-bot v2").click()
    expect(page.locator(".messages")).to_contain_text("Started “Smoke” on support-bot v2")
    deadline = time.monotonic() + RUN_S
    while "passes the gate" not in (report.text_content() or "") and time.monotonic() < deadline:
        time.sleep(2)
        page.reload()
    expect(report).to_contain_text("passes the gate")
    expect(report).to_contain_text("100% of rows pass every grader")

    promote = page.locator("#promote")
    promote.get_by_label("Version").select_option(label="support-bot v2 (LoRA adapter of atelier-starter)")
    promote.get_by_label("Canary share (%)").fill("30")
    promote.get_by_role("button", name="Promote").click()
    expect(page.locator("#canary")).to_contain_text("support-bot v2 takes 30 %")
    expect(page.locator("#canary-traffic")).to_contain_text("canary")

    # Clients keep calling support-bot: each request is answered by one of the two versions, and counted for it.
    call_v1(studio_server, api_key, 12)
    page.reload()
    traffic = page.locator("#canary-traffic tbody tr")
    counts = [int(traffic.nth(row).locator("td").nth(2).inner_text()) for row in range(2)]
    assert sum(counts) == 12, counts
    screenshot(page, tmp_path, "deployment-canary")

    page.get_by_role("button", name="Promote the canary to all traffic").click()
    expect(page.locator("#canary")).to_have_count(0)
    expect(page.locator("#serving-version")).to_contain_text("support-bot v2")

    page.get_by_role("button", name="Roll back to support-bot v1").click()
    expect(page.locator("#serving-version")).to_contain_text("support-bot v1")
    history = page.locator("#release-history tbody tr")
    expect(history).to_have_count(4)
    for row, change in enumerate(("Rolled back", "Promoted", "Canary started", "Deployed")):
        expect(history.nth(row)).to_contain_text(change)
    expect(history.nth(2)).to_contain_text("passed")  # the gate's verdict when the canary started
    screenshot(page, tmp_path, "deployment-release-history")
    context.close()
