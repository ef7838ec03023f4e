"""Eval suites in headless Chromium: an owner defines a suite on the team's questions from the Evals page, runs it
on the starter model and a fine-tuned version, watches the run's progress, and reads the result — per-model pass
rates, the chart, and the rows side by side with each verdict.

Everything is real: uvicorn with Django, the Celery worker that runs the eval, the inference server with the
starter model and a LoRA adapter. The data fixtures come before ``browser`` (the ORM never runs while
Playwright's event loop is live in this thread).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from tests.factories import adapter_model_version, ready_version
from tests.test_browser_datasets import log_in, new_page, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

QUESTIONS = ["What is the capital of France?", "Say hello.", "Name a colour."]
GRADERS = [{"grader": {"type": "rouge_l", "threshold": 0.0}, "pass_rate": 0.5}, {"type": "exact_match"}]
RUN_MS = 240_000


@pytest.fixture
def scene(acme: Any, alice: Any, starter_model: Any, lora_adapters: list[Path]) -> Any:
    """Acme's three questions (references no tiny model will say) and a fine-tuned version of the starter."""
    rows = [{"prompt": question, "completion": f"reference {number}"} for number, question in enumerate(QUESTIONS)]
    ready_version(acme, alice, rows, kind="instruction", name="Questions")
    return adapter_model_version(acme, alice, starter_model, lora_adapters[0], name="support-bot")


def test_define_a_suite_run_it_on_two_models_and_read_the_results(
    studio_server: str, celery_worker: None, scene: Any, tmp_path: Path, browser: Browser
) -> None:
    context, page = new_page(browser, studio_server, height=1000)
    log_in(page, "alice")
    page.goto("/t/acme/")
    page.get_by_role("link", name="Evals").first.click()
    page.get_by_role("link", name="New suite").click()
    page.get_by_label("Name").fill("Smoke test")
    page.get_by_label("Graders").fill(json.dumps(GRADERS))
    page.get_by_role("button", name="Save the suite").click()
    expect(page.locator("h1")).to_contain_text("Smoke test")

    run_on = page.locator("#run-on")
    run_on.get_by_label("atelier-starter (base)").check()
    run_on.get_by_label("support-bot v1").check()
    run_on.get_by_role("button", name="Run the suite").click()

    live = page.locator("#run-live")
    expect(live).to_contain_text("6 of 6 answers graded", timeout=RUN_MS)
    expect(live).to_contain_text("Finished")
    summaries = page.locator(".model-summary")
    expect(summaries).to_have_count(2)
    for model in ("atelier-starter (base)", "support-bot v1"):
        summary = summaries.filter(has_text=model)
        expect(summary).to_contain_text("rouge_l")
        expect(summary).to_contain_text("0 / 3")  # exact_match: no model says "reference 1"
        expect(summary).to_contain_text("below the suite")
    chart = page.locator("#pass-chart")
    expect(chart).to_contain_text("% of rows")  # the value axis, named
    # The page reloaded itself when the run ended: the rows show each model's answer and verdicts.
    rows = page.locator("#side-by-side")
    expect(rows).to_contain_text("What is the capital of France?")
    expect(rows).to_contain_text("reference 0")
    expect(rows).not_to_contain_text("not answered yet")
    expect(rows).to_contain_text("exact_match")
    screenshot(page, tmp_path, "eval-run-results")
    context.close()
