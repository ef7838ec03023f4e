"""End to end in headless Chromium against the real ASGI app and a real Celery worker: drop a chat file on
the datasets page, watch it validate, keep the valid rows, deduplicate, browse, download; and a member who
is not named on a restricted dataset neither sees it listed nor opens it.

Everything is checked the way a user would notice it: the address bar, the visible text, the downloaded
file. As in ``test_browser_e2e.py``, the ``browser`` fixture is requested after the data fixtures, so the
ORM never runs while Playwright's event loop is live in this thread.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.factories import PASSWORD, ready_version

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Where the screenshots are copied so a person can look at them after the run.
SHARED_SCREENS = Path("/tmp/atelier-screens")
# Validation and curation run in the worker and the page polls every second: allow for a busy machine.
BACKGROUND_WORK_MS = 30_000

EMAIL = "jane.doe@example.com"
EMPTY_TURN_LINE = 11  # the line of support.jsonl whose assistant turn is empty
EMAIL_ROW = 6  # the row holding the e-mail (numbered from 1, the same in every version)
CONVERSATIONS = 5_000  # distinct conversations; the file adds one with an empty turn and one duplicate
VALID_ROWS = CONVERSATIONS + 1  # the duplicate is valid: validation keeps it, deduplication removes it
TOPICS = ("account", "address", "billing", "card", "delivery", "invoice", "login", "order", "parcel", "password")
TOPICS += ("refund", "reset", "return", "shipping", "size", "subscription", "tracking", "upgrade", "warranty")

# A MutationObserver that notes, in sessionStorage (it survives the redirect), every text the upload
# progress shows and whether the progress element was ever visible.
WATCH_UPLOAD_PROGRESS = """() => {
    const progress = document.getElementById("upload-progress");
    const label = progress.querySelector("p");
    sessionStorage.setItem("progress-texts", "[]");
    sessionStorage.setItem("progress-shown", "no");
    new MutationObserver(() => {
        if (!progress.hidden) sessionStorage.setItem("progress-shown", "yes");
        const texts = JSON.parse(sessionStorage.getItem("progress-texts"));
        if (label.textContent && texts[texts.length - 1] !== label.textContent) {
            texts.push(label.textContent);
            sessionStorage.setItem("progress-texts", JSON.stringify(texts));
        }
    }).observe(progress, { attributes: true, childList: true, subtree: true, characterData: true });
}"""

# A DataTransfer carrying a File built in the page, as the operating system hands one to a real drop.
DATA_TRANSFER_WITH_FILE = """([name, body]) => {
    const transfer = new DataTransfer();
    transfer.items.add(new File([body], name, { type: "application/jsonl" }));
    return transfer;
}"""


def new_page(browser: Browser, base_url: str, *, height: int = 720) -> tuple[BrowserContext, Page]:
    """A fresh context (its own cookies, downloads allowed) and a page in it; relative URLs use the server.

    ``height``: the window's height. Playwright cannot scroll the site's page to reach a Gradio dropdown's list
    that opens below the fold inside the (content-sized) playground frame, as a person's mouse wheel would.
    """
    context = browser.new_context(base_url=base_url, accept_downloads=True, viewport={"width": 1280, "height": height})
    return context, context.new_page()


def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot in ``tmp_path``, copied to SHARED_SCREENS."""
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    SHARED_SCREENS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHARED_SCREENS / path.name)
    return path


def log_in(page: Page, username: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#user-menu summary")).to_contain_text(username)


def conversation(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def support_jsonl() -> str:
    """About 3 MB of varied support chats, then an empty answer on line 11 and a duplicate at the end."""
    words = random.Random(7)
    rows = [
        conversation(
            f"Ticket {n}: a question about my {words.choice(TOPICS)}.",
            f"Answer {n}: " + " ".join(words.choices(TOPICS, k=words.randint(30, 90))) + ".",
        )
        for n in range(1, CONVERSATIONS + 1)
    ]
    rows[EMAIL_ROW - 1]["messages"][0]["content"] = f"Please write to {EMAIL} about my order."
    rows.insert(EMPTY_TURN_LINE - 1, conversation("What are your opening hours?", ""))
    rows.append(rows[2])  # an exact duplicate of line 3
    return "".join(json.dumps(row) + "\n" for row in rows)


def number(n: int) -> str:
    """``n`` as a pattern that accepts it with or without thousands separators ("5001" or "5,001")."""
    return f"{n:,}".replace(",", ",?")


def version_status(page: Page) -> Any:
    """The status badge of the version on show (its tab: the page shows one badge per version)."""
    return page.locator(".version-tabs a[aria-current=page]")


def fact(page: Page, term: str) -> Any:
    """The value next to ``term`` in a version's facts (``<dt>term</dt><dd>value</dd>``)."""
    return page.locator(f"dl.facts dt:text-is('{term}') + dd")


def test_owner_drops_a_chat_file_keeps_valid_rows_deduplicates_browses_and_downloads(
    alice: Any, celery_worker: None, studio_server: str, browser: Browser, tmp_path: Path
) -> None:
    context, page = new_page(browser, studio_server)
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    body = support_jsonl()
    assert 2_500_000 < len(body) < 3_500_000

    # 1. Alice logs in and opens the datasets page from the main navigation.
    log_in(page, "alice")
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Datasets").click()
    expect(page).to_have_url(f"{studio_server}/t/acme/datasets/")
    expect(page.get_by_role("heading", name="Datasets", level=1)).to_be_visible()
    expect(page.locator("#datasets")).to_contain_text("No datasets yet.")

    # 2. She drops support.jsonl on the drop zone: its name and size show, the name field fills itself.
    page.evaluate(WATCH_UPLOAD_PROGRESS)
    transfer = page.evaluate_handle(DATA_TRANSFER_WITH_FILE, ["support.jsonl", body])
    dropzone = page.locator("#dropzone")
    for event in ("dragenter", "dragover"):
        dropzone.dispatch_event(event, {"dataTransfer": transfer})
    expect(dropzone).to_have_class(re.compile(r"\bdragging\b"))
    dropzone.dispatch_event("drop", {"dataTransfer": transfer})
    expect(dropzone).not_to_have_class(re.compile(r"\bdragging\b"))
    expect(page.locator("#chosen-file")).to_have_text(f"support.jsonl · {len(body.encode()) / 1048576:.1f} MB")
    expect(page.get_by_label("Name", exact=True)).to_have_value("support")
    expect(page.locator("#upload-progress")).to_be_hidden()
    page.get_by_role("button", name="Upload and validate").click()

    # 3. The version page says "Validating…", then refreshes itself to show what is wrong and what is in it.
    expect(page).to_have_url(re.compile(rf"^{re.escape(studio_server)}/t/acme/datasets/\d+/v1/$"))
    version_1_url = page.url
    shown = page.evaluate("() => sessionStorage.getItem('progress-shown')")
    texts = page.evaluate("() => JSON.parse(sessionStorage.getItem('progress-texts'))")
    assert shown == "yes", "the upload progress bar never became visible"
    assert any(re.fullmatch(r"Uploading… \d{1,3}% \(\d+\.\d of \d+\.\d MB\)", text) for text in texts), texts
    assert texts[-1] == "Uploaded. Validating…", texts
    expect(page.get_by_role("heading", level=1)).to_contain_text("support v1")
    # "Validating…" shows only while the worker runs (it may already be done): wait for the outcome.
    expect(version_status(page).locator(".pill")).to_have_text("Has problems", timeout=BACKGROUND_WORK_MS)
    expect(page).to_have_url(version_1_url)
    report = page.locator("#report")
    valid, total = number(VALID_ROWS), number(VALID_ROWS + 1)
    expect(report).to_contain_text(re.compile(rf"Kept {valid} of {total} rows; dropped 1: 1 row with an empty turn\."))
    expect(fact(page, "Rows")).to_have_text(re.compile(rf"^{valid} valid of {total}$"))
    empty_turn = report.locator("tbody tr").filter(has_text="empty_turn")
    expect(empty_turn).to_have_count(1)
    expect(empty_turn).to_contain_text("A turn is empty or only whitespace.")
    expect(empty_turn.locator(".examples li")).to_have_text(
        f"line {EMPTY_TURN_LINE}, messages[1]: Turn 2 (assistant) is empty."
    )
    stats = page.locator("#stats")
    expect(stats.get_by_role("heading", name="What is in it")).to_be_visible()
    expect(stats.locator("svg[role=img][aria-label^='Tokens per row']")).to_be_visible()
    email_row = stats.locator("#pii tbody tr").filter(has=page.locator("td", has_text=re.compile("^email$")))
    expect(email_row).to_contain_text(f"row {EMAIL_ROW}: j***@example.com")
    expect(stats).not_to_contain_text(EMAIL)
    expect(page.locator("#rows .row-card")).to_have_count(20)
    screenshot(page, tmp_path, "datasets-03-has-problems")

    # 4. She keeps only the valid rows: version 2, ready.
    page.get_by_role("button", name=re.compile(rf"^Keep only the {valid} valid rows")).click()
    expect(page).to_have_url(re.compile(r"/v2/$"))
    expect(page.locator(".messages")).to_contain_text(re.compile(rf"Version 2 keeps the {valid} valid rows\."))
    expect(version_status(page).locator(".pill")).to_have_text("Ready")
    expect(fact(page, "Rows")).to_have_text(re.compile(rf"^{valid}$"))

    # 5. She removes the exact duplicates: version 3 curates in the background, then refreshes itself.
    curate = page.locator("#curate")
    expect(curate.get_by_label("Which")).to_have_value("exact")
    curate.get_by_role("button", name="Deduplicate").click()
    expect(page).to_have_url(re.compile(r"/v3/$"))
    version_3_url = page.url
    expect(version_status(page).locator(".pill")).to_have_text("Ready", timeout=BACKGROUND_WORK_MS)
    expect(page).to_have_url(version_3_url)
    expect(fact(page, "Rows")).to_have_text(re.compile(rf"^{number(CONVERSATIONS)}$"))
    step_card = page.locator(".card").filter(has=page.get_by_role("heading", name="What the step did"))
    expect(step_card.locator("dt:text-is('removed') + dd")).to_have_text("1")
    expect(page.get_by_role("navigation", name="Versions").get_by_role("link")).to_have_count(3)
    rows = page.locator("#rows")
    expect(rows.locator(".row-card")).to_have_count(20)
    screenshot(page, tmp_path, "datasets-05-deduplicated")

    # 6. The rows read as chat bubbles; typing in the search box narrows them down.
    expect(rows.locator(".bubble.user").first).to_be_visible()
    expect(rows.locator(".bubble.assistant").first).to_be_visible()
    rows.get_by_label("Search rows").press_sequentially("jane.doe")
    expect(rows.locator(".row-card")).to_have_count(1)
    expect(rows.locator(f"#row-{EMAIL_ROW} .bubble.user")).to_contain_text("Please write to")
    screenshot(page, tmp_path, "datasets-06-rows-search")

    # 7. "Download JSONL" gives one line per row of version 3.
    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download JSONL").click()
    download = download_info.value
    assert download.suggested_filename == "support-v3.jsonl"
    lines = Path(download.path()).read_text(encoding="utf-8").splitlines()
    assert len(lines) == CONVERSATIONS
    assert len(set(lines)) == CONVERSATIONS
    assert script_errors == []

    context.close()


@pytest.fixture
def restricted_dataset(acme: Any, alice: Any) -> Any:
    """A ready dataset of alice's that only owners, admins and named members may see."""
    version = ready_version(acme, alice, [{"text": "Quarterly salaries."}], name="Payroll")
    version.dataset.restricted = True
    version.dataset.save(update_fields=["restricted"])
    return version.dataset


def test_member_neither_sees_nor_opens_a_restricted_dataset_not_shared_with_him(
    restricted_dataset: Any, bob: Any, studio_server: str, browser: Browser
) -> None:
    context, page = new_page(browser, studio_server)
    log_in(page, "bob")

    response = page.goto("/t/acme/datasets/")
    assert response is not None and response.status == 200
    expect(page.get_by_role("heading", name="Datasets", level=1)).to_be_visible()
    expect(page.locator("#datasets")).not_to_contain_text("Payroll")
    expect(page.locator("#datasets")).to_contain_text("No datasets yet.")

    dataset_url = f"/t/acme/datasets/{restricted_dataset.pk}/"
    for address in (dataset_url, f"{dataset_url}v1/"):
        response = page.goto(address)
        assert response is not None and response.status == 404
        expect(page.get_by_role("heading", name="Not found")).to_be_visible()
        expect(page.locator("main")).not_to_contain_text("Payroll")
    # Nor do the addresses behind the page's buttons give the rows away (same cookies as the page).
    for address in (f"{dataset_url}v1/rows/", f"{dataset_url}v1/download.jsonl", f"{dataset_url}v1/source/"):
        response = context.request.get(address)
        assert response.status == 404, address
        assert "Quarterly salaries" not in response.text()

    context.close()


@pytest.fixture
def question_answer_version(alice: Any) -> Any:
    """An uploaded file whose columns (question, answer) the studio cannot place: it needs a column mapping."""
    from accounts.permissions import resolve_access
    from tests.test_datasets import jsonl, upload

    rows = [{"question": f"Q{number}?", "answer": f"A{number}."} for number in range(3)]
    return upload(resolve_access(alice, "acme"), jsonl(rows), name="qa.jsonl")


def test_mapping_form_shows_only_the_column_pickers_of_the_chosen_kind(
    question_answer_version: Any, studio_server: str, tmp_path: Path, browser: Browser
) -> None:
    context, page = new_page(browser, studio_server)
    log_in(page, "alice")
    page.goto(f"/t/acme/datasets/{question_answer_version.dataset_id}/v1/")
    form = page.locator("form.mapping-form")

    form.get_by_label("Kind").select_option("preference")
    for field in ("prompt", "chosen", "rejected"):
        expect(form.get_by_label(f"Column for “{field}”")).to_be_visible()
    for field in ("completion", "messages", "text"):
        expect(form.get_by_label(f"Column for “{field}”")).to_be_hidden()
    screenshot(page, tmp_path, "dataset-mapping-preference")
    context.close()


# The layouts other tools write, uploaded as files: tool calls in ShareGPT's spelling, answers rated good or bad.
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIMER = {
    "name": "set_timer",
    "description": "Start a kitchen timer.",
    "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}}, "required": ["minutes"]},
}
CITIES = ("Paris", "Lagos", "Lima", "Oslo", "Pune", "Quito")
FEEDBACK_ROWS = 24  # half of them rated good


def sharegpt_tools_jsonl() -> str:
    """Six weather questions and six timers, each a call, the tool's answer and the reply (``tools`` a string)."""
    rows = []
    for n, city in enumerate(CITIES):
        call = {"name": "get_weather", "arguments": {"city": city}}
        rows.append([f"Weather in {city}?", call, {"temp_c": 10 + n}, f"It is {10 + n} °C in {city}."])
        call = {"name": "set_timer", "arguments": {"minutes": n + 2}}
        rows.append([f"Set a {n + 2} minute timer.", call, {"ok": True}, f"Your {n + 2} minute timer runs."])
    return "".join(
        json.dumps({
            "tools": json.dumps([WEATHER, TIMER]),
            "conversations": [
                {"from": "human", "value": question},
                {"from": "function_call", "value": json.dumps(call)},
                {"from": "observation", "value": json.dumps(result)},
                {"from": "gpt", "value": reply},
            ],
        }) + "\n"
        for question, call, result, reply in rows
    )  # fmt: skip


def feedback_jsonl() -> str:
    """Answers to sums, the right ones labelled good and the wrong ones bad, with a field the studio does not use."""
    rows = []
    for n in range(FEEDBACK_ROWS):
        good = n % 2 == 0
        answer = f"{n} + {n} = {2 * n}." if good else f"{n} + {n} = {2 * n + 1}."
        messages = [{"role": "user", "content": f"What is {n} + {n}?"}, {"role": "assistant", "content": answer}]
        rows.append({"messages": messages, "label": good, "annotator": f"rater-{n % 3}"})
    return "".join(json.dumps(row) + "\n" for row in rows)


def upload_file(page: Page, name: str, body: str) -> None:
    """Choose ``name`` with the page's file picker and upload it; wait for the validated version."""
    page.goto("/t/acme/datasets/")
    page.locator("#id_file").set_input_files({"name": name, "mimeType": "application/jsonl", "buffer": body.encode()})
    expect(page.get_by_label("Name", exact=True)).to_have_value(name.rsplit(".", 1)[0])
    page.get_by_role("button", name="Upload and validate").click()
    expect(page).to_have_url(re.compile(r"/t/acme/datasets/\d+/v1/$"))
    expect(version_status(page).locator(".pill")).to_have_text("Ready", timeout=BACKGROUND_WORK_MS)


def test_tool_calls_and_rated_answers_show_as_cards_and_labels_and_train_with_kto(
    alice: Any, starter_model: Any, celery_worker: None, studio_server: str, browser: Browser, tmp_path: Path
) -> None:
    from tests.test_browser_training import TRAINING_MS

    context, page = new_page(browser, studio_server, height=900)
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    log_in(page, "alice")

    # 1. A ShareGPT tool-call file: the calls show as cards under the tools the row declares.
    upload_file(page, "kitchen-tools.jsonl", sharegpt_tools_jsonl())
    expect(fact(page, "Kind")).to_contain_text("Chat")
    expect(fact(page, "Rows")).to_have_text("12")
    expect(page.locator("#unused")).to_have_count(0)  # every field of the file is carried
    first = page.locator("#rows .row-card").first
    expect(first.locator("details.tools summary")).to_have_text("2 tools declared: get_weather, set_timer")
    call = first.locator(".bubble.assistant .tool-call").first
    expect(call.locator(".tool-call-name")).to_contain_text("calls get_weather")
    expect(call.locator("pre")).to_contain_text('"city": "Paris"')
    expect(first.locator(".bubble.tool .role")).to_have_text("tool result · get_weather")
    expect(first.locator(".bubble.assistant").last).to_contain_text("It is 10 °C in Paris.")
    chart = page.locator("svg[role=img][aria-label^='Calls by tool']")
    expect(chart).to_be_visible()
    expect(page.locator("#stats")).to_contain_text("12 rows with tool calls.")
    screenshot(page, tmp_path, "datasets-tool-calls")

    # 2. A feedback file: each answer says in words whether it is one to learn from; the balance is drawn,
    #    and the field the studio does not train on is listed, not dropped in silence.
    upload_file(page, "sum-ratings.jsonl", feedback_jsonl())
    expect(fact(page, "Kind")).to_contain_text("Feedback")
    rows = page.locator("#rows")
    expect(rows.locator(".feedback.good h4").first).to_have_text("Thumbs up: a good answer, learn from it")
    expect(rows.locator(".feedback.bad h4").first).to_have_text("Thumbs down: an answer to avoid")
    expect(rows.locator(".row-card").nth(1).locator(".feedback.bad")).to_contain_text("1 + 1 = 3.")
    expect(page.locator("#label-balance")).to_contain_text("12 good and 12 bad answers.")
    expect(page.locator("#label-balance svg[role=img]")).to_be_visible()
    expect(page.locator("#unused")).to_contain_text("annotator")
    expect(page.locator("#unused")).to_contain_text(str(FEEDBACK_ROWS))
    screenshot(page, tmp_path, "datasets-feedback")

    # 3. "Fine-tune on this version" opens the form on the goal that trains on rated answers: KTO; the
    #    estimate repeats what the data leaves out.
    page.get_by_role("link", name="Fine-tune on this version").click()
    expect(page.get_by_label("Feedback tuning (KTO)")).to_be_checked()
    page.get_by_label("Name").fill("sums with feedback")
    page.locator("#advanced summary").click()
    page.locator("[name=max_steps]").fill("6")
    page.locator("[name=max_seq_length]").fill("64")
    page.locator("[name=max_seq_length]").dispatch_event("change")
    estimate = page.locator("#estimate")
    expect(estimate).to_contain_text("6 optimizer steps", timeout=15_000)
    expect(estimate.locator("#data-unused")).to_contain_text(f"annotator ({FEEDBACK_ROWS} rows)")
    screenshot(page, tmp_path, "training-new-kto")
    page.get_by_role("button", name="Launch fine-tune").click()

    # 4. The KTO job runs in the worker to the end and its loss is drawn.
    expect(page).to_have_url(re.compile(r"/t/acme/training/\d+/$"))
    expect(page.locator("h1")).to_contain_text("sums with feedback")
    expect(page.locator("main")).to_contain_text("KTO")
    expect(page.locator(".pill.large")).to_have_text("Succeeded", timeout=TRAINING_MS)
    expect(page.locator("#charts svg path").first).to_be_attached()
    screenshot(page, tmp_path, "training-kto-done")
    assert script_errors == []
    context.close()
