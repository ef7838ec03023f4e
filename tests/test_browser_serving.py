"""End to end in headless Chromium: the playground from the site's navigation, two models streaming side by
side, a blind arena battle with its vote and reveal, and the leaderboard.

Everything is real: uvicorn with Gradio and Django, the inference server generating with the starter model
and a LoRA model version. The data fixtures come before ``browser`` (so the ORM never runs while
Playwright's event loop is live in this thread); the test only reads what the page shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Frame, FrameLocator, Page, expect

from tests.factories import adapter_model_version
from tests.test_browser_datasets import log_in, new_page, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ANSWER_MS = 60_000
# Collects every distinct text of a chatbot's last answer as it changes: proof that it streamed.
WATCH_ANSWER = """(selector) => {
    const seen = [];
    const root = document.querySelector(selector);
    const record = () => {
        const bubbles = root.querySelectorAll('.message.bot, [data-testid="bot"]');
        const text = bubbles.length ? bubbles[bubbles.length - 1].innerText.trim() : "";
        if (text && text !== seen[seen.length - 1]) seen.push(text);
    };
    new MutationObserver(record).observe(root, {subtree: true, childList: true, characterData: true});
    window.__answers = window.__answers || {};
    window.__answers[selector] = seen;
}"""


@pytest.fixture
def tuned(acme: Any, alice: Any, starter_model: Any, lora_adapters: list[Path]) -> Any:
    return adapter_model_version(acme, alice, starter_model, lora_adapters[0], name="support-bot")


def frame_of(page: Page, element_id: str) -> tuple[FrameLocator, Frame]:
    """The Gradio app inside the page's iframe, as a locator (to act) and a frame (to run a script)."""
    locator = page.frame_locator(f"#{element_id}")
    expect(locator.locator("#views")).to_be_visible(timeout=30_000)
    frame = next(frame for frame in page.frames if "/play/" in frame.url)
    return locator, frame


def pick(app: FrameLocator, dropdown_id: str, label: str) -> None:
    app.locator(f"#{dropdown_id} input").click()
    app.locator(f"#{dropdown_id}").get_by_role("option", name=label).click()
    expect(app.locator(f"#{dropdown_id} input")).to_have_value(label)


def test_compare_two_models_then_battle_and_read_the_leaderboard(
    studio_server: str, starter_model: Any, tuned: Any, tmp_path: Path, browser: Browser
) -> None:
    context, page = new_page(browser, studio_server, height=1100)  # both pickers' lists in view
    log_in(page, "alice")

    # --- compare: from the site's navigation, two models, one prompt, both columns stream -----------------
    page.goto("/t/acme/")
    page.get_by_role("link", name="Playground", exact=True).click()
    expect(page.get_by_role("heading", name="Playground")).to_be_visible()
    app, frame = frame_of(page, "playground-frame")
    pick(app, "compare-model-1", "atelier-starter (base)")
    pick(app, "compare-model-2", "support-bot v1")
    for column in (1, 2):
        frame.evaluate(WATCH_ANSWER, f"#compare-chat-{column}")
    app.locator("#compare-prompt textarea").fill("Tell me about the sea.")
    app.locator("#compare-send").click()

    for column in (1, 2):
        figures = app.locator(f"#compare-figures-{column}")
        expect(figures).to_contain_text("tok/s", timeout=ANSWER_MS)
        expect(figures).to_contain_text("TTFT")
        expect(app.locator(f"#compare-chat-{column}")).to_contain_text("Tell me about the sea.")
    answers = [frame.evaluate(f"() => window.__answers['#compare-chat-{column}']") for column in (1, 2)]
    for column, seen in enumerate(answers, 1):
        shown = app.locator(f"#compare-chat-{column}").inner_text()
        assert len(seen) >= 2, f"column {column}'s answer appeared at once, not streamed: {seen}; it shows {shown!r}"
    assert answers[0][-1] != answers[1][-1], "the base model and the fine-tune answered the same"
    screenshot(page, tmp_path, "playground-compare")

    # --- arena: names hidden, vote, names revealed ----------------------------------------------------------
    page.get_by_role("link", name="Arena").click()
    expect(page.get_by_role("heading", name="Arena")).to_be_visible()
    arena, _ = frame_of(page, "arena-frame")
    arena.locator("#arena-models").get_by_label("atelier-starter (base)").check()
    arena.locator("#arena-models").get_by_label("support-bot v1").check()
    arena.locator("#arena-prompt textarea").fill("What is a lighthouse?")
    arena.locator("#arena-send").click()
    for side in ("a", "b"):
        expect(arena.locator(f"#arena-{side} .message.bot").first).to_be_visible(timeout=ANSWER_MS)
    expect(arena.locator("#arena-a")).not_to_contain_text("support-bot")
    expect(arena.locator("#arena-b")).not_to_contain_text("support-bot")
    expect(arena.locator("#arena-reveal")).not_to_contain_text("support-bot")
    arena.locator("#arena-vote-a").click()
    reveal = arena.locator("#arena-reveal")
    expect(reveal).to_contain_text("support-bot v1", timeout=15_000)
    expect(reveal).to_contain_text("atelier-starter")
    screenshot(page, tmp_path, "arena-voted")

    # --- the leaderboard ranks both -------------------------------------------------------------------------
    page.get_by_role("link", name="Leaderboard").first.click()
    expect(page.get_by_role("heading", name="Leaderboard")).to_be_visible()
    table = page.locator("table")
    expect(table).to_contain_text("support-bot v1")
    expect(table).to_contain_text("atelier-starter")
    expect(page.locator("svg").first).to_be_visible()
    screenshot(page, tmp_path, "arena-leaderboard")
    context.close()


# The playground frame shows all of the Gradio app, without a scroll bar of its own and without an empty band
# below it: the frame is at least as tall as its document and ends just below the app's last block.
FRAME_FITS_ITS_CONTENT = """([taller_than, last_block]) => {
    const frame = document.querySelector("#playground-frame");
    const shown = frame.contentDocument;
    const end = shown.querySelector(last_block).getBoundingClientRect().bottom;
    return frame.clientHeight > taller_than
        && frame.clientHeight >= shown.documentElement.scrollHeight
        && frame.clientHeight - end < 100;
}"""


def test_opening_the_settings_for_every_column_grows_the_playground_frame_so_nothing_is_clipped(
    studio_server: str, alice: Any, starter_model: Any, tmp_path: Path, browser: Browser
) -> None:
    context, page = new_page(browser, studio_server)
    log_in(page, "alice")
    page.goto("/t/acme/playground/")
    app, _ = frame_of(page, "playground-frame")
    closed_height = page.locator("#playground-frame").evaluate("(frame) => frame.clientHeight")

    app.locator("#compare-all-settings").get_by_text("Settings for every column").click()
    expect(app.get_by_role("button", name="Use these settings in every column")).to_be_visible()
    page.wait_for_function(FRAME_FITS_ITS_CONTENT, arg=[closed_height, "#compare-save-panel"])
    screenshot(page, tmp_path, "playground-settings-open")
    context.close()
