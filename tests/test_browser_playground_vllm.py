"""The playground on vLLM, in headless Chromium: columns (and the arena's two sides) stream at the same time,
a column with a JSON schema answers JSON that matches it, and a column with tools shows the model's call as a
card. Then the streaming client against the vLLM-backed inference server: a forced tool call, rendered as the
column renders it, and ``engine_of`` naming vLLM.

Everything is real: uvicorn with Gradio and Django, the inference server forwarding to vLLM, the starter model,
a LoRA model version of it and the tool-tuned model (a full fine-tune, served by a vLLM server of its own). The
data fixtures come before ``browser`` (so the ORM never runs while Playwright's event loop is live in this thread);
the browser tests only read what the page shows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from asgiref.sync import async_to_sync
from playwright.sync_api import Browser, Frame, FrameLocator, Locator, expect

from accounts.permissions import resolve_access
from serving_app import catalog
from serving_app.engine.client import StreamUpdate, stream_chat
from serving_app.inference import engine_of
from serving_app.ui.compare import tool_call_message
from tests.factories import adapter_model_version, full_model_version
from tests.test_browser_datasets import log_in, new_page, screenshot
from tests.test_browser_serving import frame_of, pick
from training_app.engine.tool_samples import TOOLS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ANSWER_MS = 90_000
BASE, TUNED, TOOL_HELPER = "atelier-starter (base)", "support-bot v1", "tool-helper v1"
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
# The arguments of the starter model's generic ``set_reminder`` tool (training_app/engine/corpus.py).
REMINDER_SCHEMA = {
    "type": "object",
    "properties": {"task": {"type": "string", "maxLength": 40}, "day": {"type": "string", "enum": DAYS}},
    "required": ["task", "day"],
    "additionalProperties": False,
}
# A reminder with a task from a list: vLLM's grammar bounds every answer that follows it, whatever the weights (it
# does not enforce a free string's maxLength, and a starter model that pads free text with spaces runs past
# max_tokens inside the string; the starter model built on some machines does).
BOUNDED_REMINDER = {
    **REMINDER_SCHEMA,
    "properties": {
        "task": {"type": "string", "enum": ["water the plants", "call the bank"]},
        "day": {"type": "string", "enum": DAYS},
    },
}
SHORT_REMINDER = {
    "type": "function",
    "function": {
        "name": "set_reminder",
        "description": "Remind the user to do something on a day of the week.",
        "parameters": BOUNDED_REMINDER,
    },
}
# A tool of the studio's tool sample, which the tool-tuned model learnt to call (the starter model alone calls a tool
# now and then: what it learnt of the format in pretraining differs from machine to machine).
[ADD_CALENDAR_EVENT] = [tool for tool in TOOLS if tool["function"]["name"] == "add_calendar_event"]

# Records what the watched elements show each time any of them changes: ``window.__seen`` is a list of
# snapshots, each a list of their texts. A chatbot (an "answer" element) shows its last answer bubble.
WATCH = """(watched) => {
    const shown = ([selector, kind]) => {
        const root = document.querySelector(selector);
        if (kind !== "answer") return root.innerText.trim();
        const bubbles = root.querySelectorAll('.message.bot, [data-testid="bot"]');
        return bubbles.length ? bubbles[bubbles.length - 1].innerText.trim() : "";
    };
    const seen = [];
    const record = () => {
        const snapshot = watched.map(shown);
        if (JSON.stringify(snapshot) !== JSON.stringify(seen[seen.length - 1])) seen.push(snapshot);
    };
    const observer = new MutationObserver(record);
    for (const [selector] of watched)
        observer.observe(document.querySelector(selector), {subtree: true, childList: true, characterData: true});
    window.__seen = seen;
}"""


@pytest.fixture
def tool_helper(acme: Any, alice: Any, starter_model: Any, deployed_tool_tuned_path: Path) -> Any:
    """The starter model fine-tuned on the studio's tool sample (a full model version): it calls the sample's tools,
    ``add_calendar_event`` among them, with well-formed calls."""
    return full_model_version(acme, alice, starter_model, deployed_tool_tuned_path, name="tool-helper")


@pytest.fixture
def tuned(
    acme: Any, alice: Any, starter_model: Any, lora_adapters: list[Path], vllm_inference_server: str,
    vllm_registry: Path,
) -> Any:  # fmt: skip
    """A LoRA version of the starter model, already loaded into vLLM. The first request for an adapter waits while
    vLLM loads it, so on a busy machine the base model's whole answer could come before the adapter's first token,
    and a test watching both stream at once would see them one after the other."""
    version = adapter_model_version(acme, alice, starter_model, lora_adapters[0], name="support-bot")
    servable = catalog.servable_version(version)
    catalog.publish([servable], vllm_registry)
    question = {"model": servable.served_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    httpx.post(f"{vllm_inference_server}/v1/chat/completions", json=question, timeout=120).raise_for_status()
    return version


# A complete answer's figures line (while it streams, the line counts tokens "so far").
ANSWERED_ON_VLLM = re.compile(r"TTFT .+ · \d+ tokens?( · .+)? · served by vLLM")


def finished(figures: str) -> bool:
    """Whether a column's figures line is a complete answer's."""
    return ANSWERED_ON_VLLM.fullmatch(figures) is not None


def open_compare(browser: Browser, server: str, *models: str) -> tuple[Any, Any, FrameLocator, Frame]:
    context, page = new_page(browser, server, height=1100)  # the pickers' lists in view
    log_in(page, "alice")
    page.goto("/t/acme/playground/")
    app, frame = frame_of(page, "playground-frame")
    for number, label in enumerate(models, start=1):
        pick(app, f"compare-model-{number}", label)
    return context, page, app, frame


def use_in_every_column(app: FrameLocator, *, max_tokens: int, temperature: float = 0.7) -> None:
    """Set these in the "every column" panel and copy them to each column (whose settings are left open)."""
    for column in (1, 2):
        app.locator(f"#compare-column-{column}").get_by_text("Settings", exact=True).click()
    app.locator("#compare-all-settings").get_by_text("Settings for every column").click()
    for field, value in (("max-tokens", max_tokens), ("temperature", temperature)):
        type_number(app.locator(f"#compare-{field}-all input[data-testid='number-input']"), value)
    app.locator("#compare-apply-all").click()
    for column in (1, 2):  # copied by the server: wait for it before sending
        for field, value in (("max-tokens", max_tokens), ("temperature", temperature)):
            number = app.locator(f"#compare-{field}-{column} input[data-testid='number-input']")
            expect(number).to_have_value(str(value), timeout=15_000)


def type_number(number: Locator, value: float) -> None:
    """Type a value into a slider's number box and commit it. A box that has just been shown can still be
    re-rendered with its initial value, which undoes what was typed: then it is typed again."""
    for attempt in range(3):
        number.fill(str(value))
        number.press("Enter")
        number.blur()  # Gradio commits a number on blur: until then the server would copy the old one
        try:
            expect(number).to_have_value(str(value), timeout=3_000)
            return
        except AssertionError:
            if attempt == 2:
                raise


def send(app: FrameLocator, prompt: str) -> None:
    app.locator("#compare-prompt textarea").fill(prompt)
    app.locator("#compare-send").click()


def wait_until_answered(app: FrameLocator, *numbers: int) -> None:
    for number in numbers:
        expect(app.locator(f"#compare-figures-{number}")).to_have_text(ANSWERED_ON_VLLM, timeout=ANSWER_MS)


def test_two_columns_on_vllm_stream_at_the_same_time(
    vllm_studio_server: str, starter_model: Any, tuned: Any, tmp_path: Path, browser: Browser
) -> None:
    context, page, app, frame = open_compare(browser, vllm_studio_server, BASE, TUNED)
    use_in_every_column(app, max_tokens=48)
    watched = [["#compare-chat-1", "answer"], ["#compare-chat-2", "answer"]]
    frame.evaluate(WATCH, [*watched, ["#compare-figures-1", "text"], ["#compare-figures-2", "text"]])
    send(app, "Tell me about the sea.")
    wait_until_answered(app, 1, 2)

    seen: list[list[str]] = frame.evaluate("() => window.__seen")
    both_streaming = [
        (first, second)
        for first, second, first_figures, second_figures in seen
        if first and second and not finished(first_figures) and not finished(second_figures)
    ]
    assert both_streaming, f"no moment with both answers partly there: {seen}"
    for column in (0, 1):
        assert len({snapshot[column] for snapshot in seen if snapshot[column]}) >= 2, "an answer came at once"
    assert not [snapshot for snapshot in seen if "Waiting for column" in " ".join(snapshot)], "a column waited"
    screenshot(page, tmp_path, "playground-vllm-compare")
    context.close()


def test_a_json_schema_column_answers_matching_json_and_a_tools_column_shows_the_call(
    vllm_studio_server: str, alice: Any, starter_model: Any, tool_helper: Any, tmp_path: Path, browser: Browser
) -> None:
    context, page, app, _ = open_compare(browser, vllm_studio_server, BASE, TOOL_HELPER)
    use_in_every_column(app, max_tokens=64, temperature=0)
    for number, field, value in ((1, "schema", BOUNDED_REMINDER), (2, "tools", [ADD_CALENDAR_EVENT])):
        app.locator(f"#compare-{field}-{number} textarea").fill(json.dumps(value, indent=2))
    send(app, "Add 'Dentist appointment' to my calendar on 2026-12-10.")
    # The tool-tuned model is a base model of its own: its vLLM server starts on this first request (a minute or
    # more on 2 busy cores).
    wait_until_answered(app, 1)
    expect(app.locator("#compare-figures-2")).to_have_text(ANSWERED_ON_VLLM, timeout=300_000)

    answer = app.locator("#compare-chat-1").locator('.message.bot, [data-testid="bot"]').last.inner_text()
    jsonschema.validate(json.loads(answer), BOUNDED_REMINDER)
    tools_column = app.locator("#compare-chat-2")
    expect(tools_column).to_contain_text("Tool call: add_calendar_event")
    expect(tools_column).to_contain_text('"date":')
    expect(app.locator("#compare-figures-2")).to_contain_text("1 tool call")
    screenshot(page, tmp_path, "playground-vllm-schema-and-tools")
    context.close()


def test_the_arenas_two_answers_stream_at_the_same_time_on_vllm(
    vllm_studio_server: str, starter_model: Any, tuned: Any, browser: Browser
) -> None:
    context, page = new_page(browser, vllm_studio_server)
    log_in(page, "alice")
    page.goto("/t/acme/arena/")
    arena, frame = frame_of(page, "arena-frame")
    for label in (BASE, TUNED):
        arena.locator("#arena-models").get_by_label(label).check()
    frame.evaluate(WATCH, [["#arena-a", "answer"], ["#arena-b", "answer"], ["#arena-status", "text"]])
    arena.locator("#arena-prompt textarea").fill("Tell me about the sea.")
    arena.locator("#arena-send").click()
    expect(arena.locator("#arena-status")).to_contain_text("Both answers are in", timeout=ANSWER_MS)

    seen: list[list[str]] = frame.evaluate("() => window.__seen")
    assert any(a and b and "answering" in status for a, b, status in seen), f"never both streaming: {seen}"
    context.close()


# --- the streaming client against vLLM ------------------------------------------------------------------------


def test_a_forced_tool_call_streams_and_renders_as_a_card(vllm_inference_server: str) -> None:
    forced = {"type": "function", "function": {"name": "set_reminder"}}

    async def run() -> list[StreamUpdate]:
        messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
        stream = stream_chat(
            vllm_inference_server, "starter", messages, max_tokens=128, temperature=0, tools=[SHORT_REMINDER],
            tool_choice=forced,
        )  # fmt: skip
        return [update async for update in stream]

    updates = async_to_sync(run)()
    [call] = updates[-1].tool_calls
    assert call.name == "set_reminder" and call.id
    jsonschema.validate(json.loads(call.arguments), BOUNDED_REMINDER)
    assert len([update for update in updates if update.tool_calls]) >= 2, "the arguments should stream in pieces"

    card = tool_call_message(call)
    assert card["metadata"]["title"] == "Tool call: set\\_reminder"
    assert card["content"].startswith("```json\n{\n") and '  "day": ' in card["content"]


def test_engine_of_a_model_on_vllm_says_vllm(
    vllm_inference_server: str, vllm_registry: Path, settings: Any, alice: Any, starter_model: Any
) -> None:
    settings.INFERENCE_URL, settings.INFERENCE_REGISTRY = vllm_inference_server, vllm_registry
    servable = catalog.resolve_model(resolve_access(alice, "acme"), f"base:{starter_model.pk}")
    engine = engine_of(servable)
    assert (engine.name, engine.concurrent, engine.label) == ("vllm", True, "served by vLLM")
