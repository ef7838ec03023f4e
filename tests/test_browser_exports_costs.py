"""Exports and costs in headless Chromium: an owner exports a fine-tune's documents bundle from its version page
and downloads it once the Celery job is done, then reads the month's spend on the Costs page, sets a hard budget
below it, and finds the launch form saying new launches are refused.

Everything is real: uvicorn with Django, the Celery worker that makes the export, the starter model and a LoRA
adapter. The data fixtures come before ``browser`` (the ORM never runs while Playwright's event loop is live).
"""

from __future__ import annotations

import datetime
import time
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Browser, expect

from accounts import costs
from tests.factories import adapter_model_version
from tests.test_browser_datasets import log_in, new_page, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

EXPORT_S = 240


@pytest.fixture
def version(acme: Any, alice: Any, starter_model: Any, lora_adapters: list[Path]) -> Any:
    """A fine-tune of the team, and three GPU-hours of training spent this month at 2.00 per GPU-hour."""
    acme.gpu_hour_price = Decimal("2.00")
    acme.save(update_fields=["gpu_hour_price"])
    end = timezone.now()
    costs.record_spend(
        team=acme, kind="training", source_id=1, label="support bot", period_start=end - datetime.timedelta(hours=3),
        period_end=end, accelerator="cuda", devices=1,
    )  # fmt: skip
    return adapter_model_version(acme, alice, starter_model, lora_adapters[0], name="support-bot")


def test_export_a_bundle_then_read_costs_and_set_a_budget_that_stops_launches(
    studio_server: str, celery_worker: None, version: Any, tmp_path: Path, browser: Browser
) -> None:
    context, page = new_page(browser, studio_server, height=1400)
    log_in(page, "alice")

    page.goto(f"/t/acme/models/versions/{version.pk}/")
    exports = page.locator("#exports")
    exports.get_by_label("Format").select_option("bundle")
    exports.get_by_role("button", name="Export").click()
    expect(page.locator(".messages")).to_contain_text("queued")
    deadline = time.monotonic() + EXPORT_S
    while not exports.get_by_role("link", name="Download").count() and time.monotonic() < deadline:
        time.sleep(2)
        page.reload()
    with page.expect_download() as download:
        exports.get_by_role("link", name="Download").click()
    saved = tmp_path / "bundle.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert sorted(archive.namelist()) == ["LICENSE.txt", "README.md", "eval-report.json", "guard-policy.json"]
    screenshot(page, tmp_path, "version-export")

    page.goto("/t/acme/costs/")
    expect(page.locator("#cost-total")).to_contain_text("6.00")
    expect(page.locator("#cost-training")).to_contain_text("support bot")
    page.locator("#budget").get_by_label("Hard limit").fill("5")
    page.locator("#budget").get_by_role("button", name="Save the budget").click()
    expect(page.locator("#cost-budget")).to_contain_text("hard 5.00")
    screenshot(page, tmp_path, "costs")

    page.goto("/t/acme/training/new")
    expect(page.locator("#budget-banner")).to_be_visible()
    context.close()
