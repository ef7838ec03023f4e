"""The new layouts through the site: tool calls and feedback drawn in the row preview, unused fields and the label
balance on the version page, plain text split as chosen, and the mapping form's preview of three rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accounts.permissions import resolve_access
from datasets_app import services
from datasets_app.models import VersionStatus
from tests.factories import member
from tests.test_datasets import jsonl, upload, upload_file

LAYOUTS = Path(__file__).parent / "fixtures" / "layouts"


def page(client: Any, version: Any, part: str = "") -> str:
    return client.get(f"/t/acme/datasets/{version.dataset_id}/v{version.number}/{part}").content.decode()


def test_tool_calls_are_drawn_as_cards_with_their_arguments(alice: Any, login: Any) -> None:
    version = upload(resolve_access(alice, "acme"), (LAYOUTS / "openai_tools.jsonl").read_bytes(), name="tools.jsonl")
    assert version.status == VersionStatus.READY

    rows = page(login(alice), version, "rows/")

    assert "2 tools declared: <code>get_weather</code>, <code>set_timer</code>" in rows
    assert "<code>get_weather</code>(city, unit (optional))" in rows
    assert 'calls <code>get_weather</code> <span class="muted">(call_1)</span>' in rows
    assert "&quot;city&quot;: &quot;Lyon&quot;" in rows
    assert "tool result · get_weather" in rows  # the result names the call it answers (by its id)


def test_reasoning_and_untrained_turns_are_marked(alice: Any, login: Any) -> None:
    version = upload(resolve_access(alice, "acme"), (LAYOUTS / "openai_parts.jsonl").read_bytes(), name="parts.jsonl")

    rows = page(login(alice), version, "rows/")

    assert '<details class="reasoning"><summary>Reasoning</summary>12 x 12 = 144.</details>' in rows
    assert 'class="bubble assistant untrained"' in rows and "not trained on" in rows


def test_feedback_rows_say_thumbs_up_or_down_and_the_balance_is_drawn(alice: Any, login: Any) -> None:
    version = upload(resolve_access(alice, "acme"), (LAYOUTS / "feedback.jsonl").read_bytes(), name="fb.jsonl")
    assert (version.status, version.kind) == (VersionStatus.READY, "feedback")
    assert version.stats["labels"] == {"good": 1, "bad": 1}
    client = login(alice)

    rows = page(client, version, "rows/")
    detail = page(client, version)

    assert "Thumbs up: a good answer, learn from it" in rows and "Thumbs down: an answer to avoid" in rows
    assert 'id="label-balance"' in detail and "1 good and 1 bad answers." in detail
    assert 'id="unused"' in detail and "<td><code>id</code></td><td>2</td>" in detail


def test_images_make_a_version_invalid_with_the_reason(alice: Any, login: Any) -> None:
    version = upload(resolve_access(alice, "acme"), (LAYOUTS / "images.jsonl").read_bytes(), name="img.jsonl")

    assert (version.status, version.row_count) == (VersionStatus.INVALID, 1)
    assert "needs images, audio or video, and this studio trains text-only models" in page(login(alice), version)


def test_a_text_file_is_split_into_lines_when_asked(alice: Any, login: Any) -> None:
    response = login(alice).post(
        "/t/acme/datasets/",
        {"name": "Notes", "text_split": "lines", "file": upload_file("notes.md", (LAYOUTS / "notes.md").read_bytes())},
        headers={"X-Requested-With": "XMLHttpRequest"},
    )
    assert response.status_code == 200, response.content
    version = services.versions_of(services.visible_datasets(resolve_access(alice, "acme")).get()).get()
    services.run_validation(version.pk)
    version.refresh_from_db()

    assert (version.status, version.kind, version.row_count) == (VersionStatus.READY, "text", 4)
    assert version.recipe["text_split"] == "lines"


def test_a_text_file_that_is_not_utf8_is_never_ready(alice: Any) -> None:
    content = "Première ligne.\n\nDeuxième ligne.\n".encode("latin-1")
    version = upload(resolve_access(alice, "acme"), b"Fine first line.\n\n" + content, name="notes.txt")

    assert version.status == VersionStatus.INVALID
    assert "a plain text file must be UTF-8 throughout. Reading stopped there." in version.report["summary"]


def test_the_mapping_form_previews_three_mapped_rows_before_applying(alice: Any, login: Any) -> None:
    rows = [{"question": f"Q{n}?", "answer": f"A{n}.", "verdict": n % 2 == 0} for n in range(5)]
    version = upload(resolve_access(alice, "acme"), jsonl(rows), name="qa.jsonl")
    assert version.status == VersionStatus.NEEDS_MAPPING
    client = login(alice)
    url = f"/t/acme/datasets/{version.dataset_id}/v1/mapping/preview/"
    choice = {"kind": "feedback", "column_prompt": "question", "column_completion": "answer", "column_label": "verdict"}

    preview = client.post(url, choice).content.decode()
    refused = client.post(url, {**choice, "column_label": ""}).content.decode()

    assert preview.count('class="row-card preview"') == 3
    assert "Q0?" in preview and "Q2?" in preview and "Q3?" not in preview
    assert "Thumbs up" in preview and "Thumbs down" in preview
    assert "A feedback dataset needs a column for: label." in refused
    version.refresh_from_db()
    assert version.status == VersionStatus.NEEDS_MAPPING  # a preview applies nothing


def test_the_mapping_preview_shows_each_rows_problems(alice: Any, login: Any) -> None:
    rows = [{"question": "Q?", "answer": "A.", "verdict": "perhaps"}]
    version = upload(resolve_access(alice, "acme"), jsonl(rows), name="qa.jsonl")
    choice = {"kind": "feedback", "column_prompt": "question", "column_completion": "answer", "column_label": "verdict"}

    preview = login(alice).post(f"/t/acme/datasets/{version.dataset_id}/v1/mapping/preview/", choice)

    assert "Line 1" in preview.content.decode()
    assert "The label &#x27;label&#x27; (column &#x27;verdict&#x27;) is &#x27;perhaps&#x27;" in preview.content.decode()


def test_the_api_takes_a_feedback_mapping(alice: Any, login: Any) -> None:
    rows = [{"question": "Q?", "answer": "A.", "verdict": True}, {"question": "Q?", "answer": "B.", "verdict": False}]
    version = upload(resolve_access(alice, "acme"), jsonl(rows), name="qa.jsonl")
    body = {"kind": "feedback", "mapping": {"prompt": "question", "completion": "answer", "label": "verdict"}}

    response = login(alice).post(
        f"/api/v1/teams/acme/datasets/{version.dataset_id}/versions/1/mapping",
        json.dumps(body),
        content_type="application/json",
    )
    services.run_validation(version.pk)
    version.refresh_from_db()

    assert response.status_code == 200, response.content
    assert (version.status, version.kind, version.row_count) == (VersionStatus.READY, "feedback", 2)


def test_a_ready_upload_can_be_read_another_way_as_a_new_version(alice: Any, login: Any) -> None:
    rows = [{"prompt": "2+2?", "completion": "4", "label": True}, {"prompt": "2+2?", "completion": "5", "label": False}]
    version = upload(resolve_access(alice, "acme"), jsonl(rows), name="rated.jsonl")
    assert (version.status, version.kind) == (VersionStatus.READY, "feedback")
    client = login(alice)
    assert "Read this file another way" in page(client, version)

    response = client.post(
        f"/t/acme/datasets/{version.dataset_id}/v1/mapping/",
        {"kind": "instruction", "column_prompt": "prompt", "column_completion": "completion"},
    )
    child = services.versions_of(version.dataset).get(number=2)
    services.run_validation(child.pk)
    child.refresh_from_db()

    assert response.url == f"/t/acme/datasets/{version.dataset_id}/v2/"
    assert (child.parent_id, child.recipe["remapped_from"]) == (version.pk, 1)
    assert (child.status, child.kind, child.report["unused"]) == (VersionStatus.READY, "instruction", {"label": 2})
    assert child.source_path.read_bytes() == version.source_path.read_bytes()
    version.refresh_from_db()
    assert (version.status, version.kind, version.row_count) == (VersionStatus.READY, "feedback", 2)


def test_a_viewer_is_not_offered_another_reading(alice: Any, login: Any) -> None:
    access = resolve_access(alice, "acme")
    version = upload(access, jsonl([{"prompt": "Hi", "completion": "Hello", "label": True}]), name="rated.jsonl")
    viewer = member(access.team, "viewer")

    assert "Read this file another way" not in page(login(viewer), version)


def test_the_api_reads_a_validated_upload_another_way_as_a_new_version(alice: Any, login: Any) -> None:
    rows = [{"prompt": "2+2?", "completion": "4", "label": True}]
    version = upload(resolve_access(alice, "acme"), jsonl(rows), name="rated.jsonl")
    body = {"kind": "instruction", "mapping": {"prompt": "prompt", "completion": "completion"}}

    response = login(alice).post(
        f"/api/v1/teams/acme/datasets/{version.dataset_id}/versions/1/mapping",
        json.dumps(body),
        content_type="application/json",
    )

    assert response.status_code == 200, response.content
    assert (response.json()["number"], response.json()["kind"]) == (2, "instruction")
    version.refresh_from_db()
    assert version.kind == "feedback"
