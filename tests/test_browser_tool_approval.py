"""Privileges end to end in headless Chromium: an owner defines an HTTP tool on the Tools page, grants it on a
deployment, triggers it from the playground — the starter model tuned on the studio's tool sample calls it — and
the column waits for approval until an admin, in a second browser context, approves the exact call in the inbox;
then the call runs (the loopback server the operator allow-listed receives it), its result flows back into the
model's answer, and the Tool activity page shows the whole trail.

Everything is real: uvicorn with Gradio and Django, the inference server forwarding to vLLM, the tools worker
(no database URL). The data fixtures come before ``browser`` (the ORM never runs while Playwright's event loop is
live in this thread); the browser steps only use and read the pages.
"""

from __future__ import annotations

import json
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from accounts.roles import Role
from serving_app import deployments
from tests import test_tool_execute
from tests.factories import full_model_version, member
from tests.test_browser_datasets import log_in, new_page, screenshot
from tests.test_browser_playground_vllm import ANSWER_MS, ANSWERED_ON_VLLM, type_number
from tests.test_browser_serving import frame_of, pick
from tests.test_tool_execute import RecordingServer

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
loopback_server = test_tool_execute.loopback_server

# The calendar tool the tuned model learnt to call (training_app/engine/tool_samples.py), as a team HTTP tool.
CALENDAR_PARAMETERS = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "date": {"type": "string", "description": "The day, as YYYY-MM-DD."}},
    "required": ["title", "date"],
}
PROMPT = "Add 'Dentist appointment' to my calendar on 2026-12-10."
DEPLOYMENT = "assistant"


@pytest.fixture
def scene(acme: Any, alice: Any, starter_model: Any, deployed_tool_tuned_path: Path) -> Any:
    """Acme's deployment of the tool-tuned model (a full fine-tune), and Adele, an admin who approves."""
    member(acme, Role.ADMIN, "adele")
    version = full_model_version(acme, alice, starter_model, deployed_tool_tuned_path, name="tool-helper")
    from accounts.permissions import resolve_access

    return deployments.create_deployment(access=resolve_access(alice, "acme"), name=DEPLOYMENT, version=version)


def define_calendar_tool(page: Page, url: str) -> None:
    page.goto("/t/acme/tools/new/http/")
    page.get_by_label("Name", exact=True).fill("add_calendar_event")
    page.get_by_label("Description").fill("Add an event to the user's calendar.")
    page.get_by_label("Risk").select_option("write")
    page.get_by_label("Parameters (JSON Schema)").fill(json.dumps(CALENDAR_PARAMETERS, indent=2))
    page.get_by_label("HTTP method").select_option("POST")
    # The loopback server answers as the tool sample's calendar did (``{"created": true, …}``), which the tool-tuned
    # model learned to answer in words after.
    page.get_by_label("URL", exact=True).fill(f"{url}/calendar")
    page.get_by_label("JSON body arguments").fill("title, date")
    page.get_by_role("button", name="Save the tool").click()
    expect(page.locator("h1")).to_contain_text("add_calendar_event")


def grant_to_deployment(page: Page) -> None:
    page.get_by_role("link", name="Grant to a deployment…").click()
    page.get_by_label("Deployment").select_option(label=DEPLOYMENT)
    page.get_by_role("button", name="Grant the tool").click()
    expect(page.locator("body")).to_contain_text(DEPLOYMENT)


def test_a_write_tool_triggered_in_the_playground_runs_once_a_second_member_approves_it(
    vllm_studio_server: str, tools_worker: Popen[bytes], loopback_server: RecordingServer, scene: Any,
    tmp_path: Path, browser: Browser,
) -> None:  # fmt: skip
    loopback_server.requests.clear()
    context, page = new_page(browser, vllm_studio_server, height=1100)
    log_in(page, "alice")
    define_calendar_tool(page, f"http://127.0.0.1:{loopback_server.server_port}")
    grant_to_deployment(page)

    page.goto("/t/acme/playground/")
    app, _ = frame_of(page, "playground-frame")
    pick(app, "compare-model-1", f"{DEPLOYMENT} (deployment of tool-helper v1)")
    app.locator("#compare-column-1").get_by_text("Settings", exact=True).click()
    type_number(app.locator("#compare-temperature-1 input[data-testid='number-input']"), 0)
    type_number(app.locator("#compare-max-tokens-1 input[data-testid='number-input']"), 96)
    app.locator("#compare-prompt textarea").fill(PROMPT)
    app.locator("#compare-send").click()

    column, figures = app.locator("#compare-chat-1"), app.locator("#compare-figures-1")
    # The tuned model's own vLLM server starts on this first request (a minute or more on 2 busy cores).
    try:
        expect(column).to_contain_text("Studio tool: add_calendar_event · waiting for approval", timeout=300_000)
    except AssertionError as error:  # the figures line says why a column failed
        raise AssertionError(f"{error}\nThe column's figures: {figures.inner_text()}") from None
    expect(figures).to_contain_text("Waiting for approval of add_calendar_event")
    expect(column.get_by_role("link", name="Approvals inbox")).to_be_visible()
    assert loopback_server.requests == []  # nothing ran before a person decided
    screenshot(page, tmp_path, "playground-tool-waiting-for-approval")

    approver_context, approver = new_page(browser, vllm_studio_server)
    log_in(approver, "adele")
    approver.goto("/t/acme/tools/approvals/")
    pending = approver.locator("#pending-approvals")
    expect(pending).to_contain_text("add_calendar_event")
    expect(pending).to_contain_text("alice")  # who asked
    expect(pending).to_contain_text('"title":')  # the exact arguments
    screenshot(approver, tmp_path, "approvals-inbox-pending-call")
    pending.get_by_role("button", name="Approve").first.click()
    expect(approver.locator("body")).to_contain_text("The call of “add_calendar_event” was approved.")
    approver_context.close()

    expect(column).to_contain_text("approved by adele · ran · status 200", timeout=60_000)
    expect(figures).to_have_text(ANSWERED_ON_VLLM, timeout=ANSWER_MS)
    [request] = loopback_server.requests
    assert (request.method, request.path) == ("POST", "/calendar")
    assert set(json.loads(request.body)) == {"title", "date"}
    screenshot(page, tmp_path, "playground-tool-approved-and-answered")

    page.goto("/t/acme/tools/activity/")
    trail = page.locator("main")
    for step in ("Executed", "Approved", "add_calendar_event", "adele", "via playground"):
        expect(trail).to_contain_text(step)
    context.close()
