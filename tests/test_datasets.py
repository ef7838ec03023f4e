"""Datasets through the site and the API: upload, validation, versions, sharing, export and deletion."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import Http404
from django.test import Client

from accounts.models import AuditEvent, Membership
from accounts.permissions import resolve_access
from accounts.roles import Role
from accounts.services import share_object
from datasets_app import services
from datasets_app.engine.rows import read_rows_file
from datasets_app.models import Dataset, DatasetVersion, VersionStatus
from tests.factories import member, ready_version

CHAT_ROWS = [
    {"messages": [{"role": "user", "content": f"Question {n}?"}, {"role": "assistant", "content": f"Answer {n}."}]}
    for n in range(5)
]


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def upload_file(name: str, content: bytes) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


def upload(access: Any, content: bytes, name: str = "chat.jsonl", **fields: Any) -> DatasetVersion:
    """Upload through the service and run the validation the task would run."""
    version = services.upload_dataset(
        access=access, name=fields.pop("title", "Support chats"), upload=upload_file(name, content), **fields
    )
    services.run_validation(version.pk)
    version.refresh_from_db()
    return version


# --- upload and validation ----------------------------------------------------------------------


def test_upload_page_stores_the_file_and_queues_validation(
    alice: Any, login: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        response = login(alice).post(
            "/t/acme/datasets/",
            {"name": "Chats", "file": upload_file("chat.jsonl", jsonl(CHAT_ROWS))},
            headers={"X-Requested-With": "XMLHttpRequest"},
        )
    version = DatasetVersion.objects.unscoped().get()
    assert response.json() == {"redirect": f"/t/acme/datasets/{version.dataset_id}/v1/"}
    assert version.status == VersionStatus.VALIDATING
    assert version.source_path.read_bytes() == jsonl(CHAT_ROWS)
    assert len(callbacks) == 1  # the validation task, enqueued only once the upload committed
    assert AuditEvent.objects.filter(action="dataset.uploaded").count() == 1


def test_valid_upload_becomes_a_ready_hashed_version(alice: Any) -> None:
    version = upload(resolve_access(alice, "acme"), jsonl(CHAT_ROWS))
    assert (version.status, version.kind, version.row_count) == (VersionStatus.READY, "chat", 5)
    assert len(version.content_hash) == 64
    rows, more = services.read_rows(version, limit=2)
    assert [number for number, _ in rows] == [1, 2] and more
    assert rows[0][1]["messages"][1] == {"role": "assistant", "content": "Answer 0."}


def test_version_page_shows_the_status_badge_once(alice: Any, login: Any) -> None:
    version = upload(resolve_access(alice, "acme"), jsonl(CHAT_ROWS))
    html = login(alice).get(f"/t/acme/datasets/{version.dataset_id}/v1/").content.decode()
    assert html.count('<span class="pill ready">Ready</span>') == 1


def test_version_page_renders_chat_bubbles_and_search(alice: Any, login: Any) -> None:
    version = upload(resolve_access(alice, "acme"), jsonl(CHAT_ROWS))
    client = login(alice)
    page = client.get(f"/t/acme/datasets/{version.dataset_id}/v1/").content.decode()
    assert "Ready" in page and version.content_hash in page
    rows = client.get(f"/t/acme/datasets/{version.dataset_id}/v1/rows/", {"q": "Answer 3"}).content.decode()
    assert 'class="bubble assistant"' in rows and "Answer 3." in rows and "Answer 2." not in rows


def test_problems_are_reported_by_line_and_valid_rows_can_be_kept(alice: Any, login: Any) -> None:
    content = jsonl(CHAT_ROWS[:2]) + b'{"messages": [{"role": "user", "content": "  "}]}\n{"messages": [NaN]}\n'
    version = upload(resolve_access(alice, "acme"), content)
    assert version.status == VersionStatus.INVALID
    assert version.row_count == 2 and version.report["total_rows"] == 4
    lines = sorted(e["line"] for p in version.report["problems"].values() for e in p["examples"])
    assert lines == [3, 4]
    page = login(alice).get(f"/t/acme/datasets/{version.dataset_id}/v1/").content.decode()
    assert "Keep only the 2 valid rows" in page
    response = login(alice).post(f"/t/acme/datasets/{version.dataset_id}/v1/keep-valid/")
    child = DatasetVersion.objects.for_team(version.team).get(number=2)
    assert response["Location"] == f"/t/acme/datasets/{version.dataset_id}/v2/"
    assert (child.status, child.row_count, child.parent_id) == (VersionStatus.READY, 2, version.pk)
    assert child.recipe["step"] == "keep_valid_rows" and sum(child.recipe["dropped"].values()) == 2


def test_problems_table_counts_rows_not_findings(alice: Any, login: Any) -> None:
    two_empty_turns = {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": " "}]}
    version = upload(resolve_access(alice, "acme"), jsonl([*CHAT_ROWS[:2], two_empty_turns, two_empty_turns]))
    page = login(alice).get(f"/t/acme/datasets/{version.dataset_id}/v1/").content.decode()
    row = page[page.index('<code class="muted">empty_turn</code>') :]
    assert row.split("<td>")[1].split("</td>")[0] == "2"  # two rows, four empty turns


def test_version_without_valid_rows_shows_no_content_hash(alice: Any, login: Any) -> None:
    version = upload(resolve_access(alice, "acme"), b'{"messages": [NaN]}\n')
    page = login(alice).get(f"/t/acme/datasets/{version.dataset_id}/v1/").content.decode()
    assert version.status == VersionStatus.INVALID and version.content_hash == ""
    assert "Content hash" not in page and "e3b0c442" not in page


def test_upload_over_the_size_limit_is_refused_and_nothing_is_stored(alice: Any, login: Any, settings: Any) -> None:
    settings.DATASET_UPLOAD_MAX_BYTES = 100
    response = login(alice).post(
        "/t/acme/datasets/",
        {"name": "Big", "file": upload_file("big.jsonl", jsonl(CHAT_ROWS))},
        headers={"X-Requested-With": "XMLHttpRequest"},
    )
    assert response.status_code == 400
    assert "uploads are limited to" in response.json()["errors"]["file"][0]
    assert not Dataset.objects.unscoped().exists()
    assert not list(Path(settings.MEDIA_ROOT).rglob("*.jsonl"))


def test_team_storage_quota_is_enforced(alice: Any, acme: Any, bearer: Any) -> None:
    acme.storage_quota_bytes = 600
    acme.save()
    upload(resolve_access(alice, "acme"), jsonl(CHAT_ROWS))  # ~500 bytes stored twice (file + rows)
    response = bearer(alice).post(
        "/api/v1/teams/acme/datasets/", {"name": "More", "file": upload_file("more.jsonl", jsonl(CHAT_ROWS))}
    )
    assert response.status_code == 400
    assert "storage quota" in response.json()["errors"]["file"][0]
    assert Dataset.objects.for_team(acme).count() == 1


def test_viewer_cannot_upload(acme: Any, login: Any) -> None:
    viewer = member(acme, Role.VIEWER, "vera")
    response = login(viewer).post("/t/acme/datasets/", {"name": "x", "file": upload_file("a.jsonl", b"{}\n")})
    assert response.status_code == 403
    assert not Dataset.objects.for_team(acme).exists()


# --- sharing and restriction --------------------------------------------------------------------


def test_restricted_dataset_is_invisible_to_other_members_until_shared(
    alice: Any, bob: Any, acme: Any, login: Any, bearer: Any
) -> None:
    version = ready_version(acme, alice, [{"text": "salary table"}], name="HR notes")
    Dataset.objects.for_team(acme).filter(pk=version.dataset_id).update(restricted=True)
    url = f"/t/acme/datasets/{version.dataset_id}/v1/"
    assert login(bob).get(url).status_code == 404
    assert "HR notes" not in login(bob).get("/t/acme/datasets/").content.decode()
    assert bearer(bob).get("/api/v1/teams/acme/datasets/").json() == []
    share_object(
        access=resolve_access(alice, "acme"), obj=version.dataset, member=Membership.objects.get(user=bob), level="view"
    )
    assert login(bob).get(url).status_code == 200
    assert [d["name"] for d in bearer(bob).get("/api/v1/teams/acme/datasets/").json()] == ["HR notes"]
    assert login(bob).post(f"/t/acme/datasets/{version.dataset_id}/delete/").status_code == 403


# --- export and deletion ------------------------------------------------------------------------


def test_csv_export_neutralises_formula_cells(alice: Any, acme: Any, login: Any) -> None:
    dangerous = ['=HYPERLINK("http://x")', "+1+1", "-2", "@SUM(A1)", "\tTab", "\rReturn", "plain"]
    version = ready_version(acme, alice, [{"text": text} for text in dangerous])
    response = login(alice).get(f"/t/acme/datasets/{version.dataset_id}/v1/download.csv")
    cells = [row[0] for row in csv.reader(io.StringIO(b"".join(response.streaming_content).decode()))]
    assert cells[0] == "text"
    assert cells[1:] == ["'" + text for text in dangerous[:-1]] + ["plain"]
    assert AuditEvent.objects.filter(action="dataset.exported").count() == 1


def test_jsonl_download_is_the_normalized_rows(alice: Any, acme: Any, bearer: Any) -> None:
    version = ready_version(acme, alice, [{"text": "one"}, {"text": "two"}])
    response = bearer(alice).get(f"/api/v1/teams/acme/datasets/{version.dataset_id}/versions/1/download")
    assert b"".join(response.streaming_content) == version.rows_path.read_bytes()


def test_deleting_a_dataset_leaves_no_rows_or_files_only_a_tombstone(
    alice: Any, acme: Any, login: Any, django_capture_on_commit_callbacks: Any
) -> None:
    version = upload(resolve_access(alice, "acme"), jsonl(CHAT_ROWS))
    folder = version.dataset.storage_dir()
    assert folder.exists()
    with django_capture_on_commit_callbacks(execute=True):
        login(alice).post(f"/t/acme/datasets/{version.dataset_id}/delete/")
    assert not Dataset.objects.unscoped().exists() and not DatasetVersion.objects.unscoped().exists()
    assert not folder.exists()
    tombstone = AuditEvent.objects.get(action="dataset.deleted")
    assert tombstone.details["versions"] == [{"number": 1, "content_hash": version.content_hash}]


# --- the API ------------------------------------------------------------------------------------


def test_api_upload_then_rows(alice: Any, bearer: Any) -> None:
    client: Client = bearer(alice)
    created = client.post(
        "/api/v1/teams/acme/datasets/", {"name": "Chats", "file": upload_file("chat.jsonl", jsonl(CHAT_ROWS))}
    )
    assert created.status_code == 201
    dataset_id = created.json()["id"]
    services.run_validation(DatasetVersion.objects.unscoped().get().pk)
    detail = client.get(f"/api/v1/teams/acme/datasets/{dataset_id}/versions/1").json()
    assert (detail["status"], detail["row_count"]) == ("ready", 5)
    rows = client.get(f"/api/v1/teams/acme/datasets/{dataset_id}/versions/1/rows", {"limit": 2, "offset": 3}).json()
    assert [row["_n"] for row in rows["rows"]] == [4, 5] and rows["has_more"] is False


def test_api_returns_the_version_id_that_jobs_take(alice: Any, acme: Any, bearer: Any) -> None:
    version = ready_version(acme, alice, [{"text": "one"}])
    detail = bearer(alice).get(f"/api/v1/teams/acme/datasets/{version.dataset_id}").json()
    assert detail["latest"]["id"] == version.pk and detail["versions"][0]["id"] == version.pk


def test_rename_of_a_dataset_deleted_meanwhile_gets_404(alice: Any, acme: Any) -> None:
    access = resolve_access(alice, "acme")
    version = ready_version(acme, alice, [{"text": "one"}])
    stale = Dataset.objects.for_team(acme).get(pk=version.dataset_id)
    services.delete_dataset(access=access, dataset=Dataset.objects.for_team(acme).get(pk=version.dataset_id))
    with pytest.raises(Http404):
        services.update_dataset(access=access, dataset=stale, name="Renamed")


def test_api_ambiguous_columns_need_a_mapping(alice: Any, bearer: Any) -> None:
    rows = [{"question": f"Q{n}?", "answer": f"A{n}."} for n in range(3)]
    version = upload(resolve_access(alice, "acme"), jsonl(rows), name="qa.jsonl")
    assert version.status == VersionStatus.NEEDS_MAPPING
    response = bearer(alice).post(
        f"/api/v1/teams/acme/datasets/{version.dataset_id}/versions/1/mapping",
        data=json.dumps({"kind": "instruction", "mapping": {"prompt": "question", "completion": "answer"}}),
        content_type="application/json",
    )
    assert response.status_code == 200
    services.run_validation(version.pk)
    version.refresh_from_db()
    assert (version.status, version.kind, version.row_count) == (VersionStatus.READY, "instruction", 3)
    assert services.read_rows(version)[0][0][1]["prompt"] == "Q0?"


def test_api_mapping_to_a_missing_column_names_it(alice: Any, bearer: Any) -> None:
    rows = [{"question": "Q?", "answer": "A."}]
    version = upload(resolve_access(alice, "acme"), jsonl(rows), name="qa.jsonl")
    response = bearer(alice).post(
        f"/api/v1/teams/acme/datasets/{version.dataset_id}/versions/1/mapping",
        data=json.dumps({"kind": "instruction", "mapping": {"prompt": "question", "completion": "reply"}}),
        content_type="application/json",
    )
    assert response.status_code == 400
    assert "reply" in response.json()["errors"]["mapping"][0]


# --- a real worker ------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_worker_validates_an_upload(celery_worker: None, alice: Any, acme: Any, settings: Any) -> None:
    version = services.upload_dataset(
        access=resolve_access(alice, "acme"), name="Chats", upload=upload_file("chat.jsonl", jsonl(CHAT_ROWS))
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        version.refresh_from_db()
        if version.status != VersionStatus.VALIDATING:
            break
        time.sleep(0.2)
    assert (version.status, version.row_count) == (VersionStatus.READY, 5)


# --- statistics and curation --------------------------------------------------------------------

PII_ROWS = [
    {
        "messages": [
            {"role": "user", "content": "Mail me at jane.doe@example.com please."},
            {"role": "assistant", "content": "Noted."},
        ]
    },
    *CHAT_ROWS,
    CHAT_ROWS[0],  # an exact duplicate
]


def test_statistics_are_computed_and_drawn(alice: Any, login: Any) -> None:
    version = upload(resolve_access(alice, "acme"), jsonl(PII_ROWS))
    stats = version.stats
    assert stats["rows"] == 7
    assert stats["exact_duplicates"]["count"] == 1
    assert stats["roles"]["user"] == 7 and stats["roles"]["assistant"] == 7
    assert stats["pii"]["email"]["count"] == 1
    page = login(alice).get(f"/t/acme/datasets/{version.dataset_id}/v1/").content.decode()
    assert 'aria-label="Tokens per row (rows):' in page
    start = page.index('aria-label="Tokens per row')
    chart = page[start : page.index("</svg>", start)]
    y_labels = re.findall(r'text-anchor="end" dominant-baseline="middle">([^<]*)</text>', chart)
    assert y_labels[0] == "0" and len(y_labels) >= 2  # a y axis from zero with round ticks
    counts = [int(count) for count in re.findall(r'<text class="count"[^>]*>([\d,]+)</text>', chart)]
    assert sum(counts) == 7  # every row counted once, each bar's count written on it
    assert ">rows</text>" in chart and ">tokens in the row</text>" in chart  # both axes say what they count
    assert "jane.doe@example.com" not in page  # examples are masked


def curated(access: Any, version: DatasetVersion, step: str, **params: Any) -> DatasetVersion:
    child = services.curate(access=access, version=version, step=step, params=params)
    services.run_curation(child.pk)
    child.refresh_from_db()
    return child


def test_dedupe_makes_a_new_version_without_the_duplicate(alice: Any) -> None:
    access = resolve_access(alice, "acme")
    version = upload(access, jsonl(PII_ROWS))
    child = curated(access, version, "dedupe", mode="exact")
    assert (child.number, child.status, child.row_count, child.parent_id) == (2, "ready", 6, version.pk)
    assert child.recipe["summary"]["removed"] == 1
    assert child.stats["exact_duplicates"]["count"] == 0
    version.refresh_from_db()
    assert version.row_count == 7  # the parent is untouched


def test_redaction_replaces_personal_data_with_placeholders(alice: Any) -> None:
    access = resolve_access(alice, "acme")
    child = curated(access, upload(access, jsonl(PII_ROWS)), "redact_pii")
    text = child.rows_path.read_text()
    assert "jane.doe@example.com" not in text and "[EMAIL]" in text
    assert {kind: found["count"] for kind, found in child.stats["pii"].items() if found["count"]} == {}


def test_split_holds_out_the_documented_share(alice: Any) -> None:
    access = resolve_access(alice, "acme")
    rows = [{"text": f"paragraph {n}"} for n in range(50)]
    child = curated(access, upload(access, jsonl(rows), name="corpus.jsonl"), "split", validation_fraction=0.2, seed=7)
    assert child.row_count == 40
    assert len(child.validation_path.read_text().splitlines()) == 10
    again = curated(access, upload(access, jsonl(rows), name="corpus.jsonl"), "split", validation_fraction=0.2, seed=7)
    assert again.validation_path.read_text() == child.validation_path.read_text()


def test_bad_curation_parameters_name_the_field(alice: Any, bearer: Any) -> None:
    version = upload(resolve_access(alice, "acme"), jsonl(CHAT_ROWS))
    url = f"/api/v1/teams/acme/datasets/{version.dataset_id}/versions/1/curate"
    response = bearer(alice).post(
        url,
        data=json.dumps({"step": "filter_length", "params": {"min_tokens": 50, "max_tokens": 10}}),
        content_type="application/json",
    )
    assert response.status_code == 400
    assert "below the minimum" in response.json()["errors"]["max_tokens"][0]
    split = bearer(alice).post(
        url, data=json.dumps({"step": "split", "params": {"validation_fraction": 1.5}}), content_type="application/json"
    )
    assert split.status_code == 400 and "validation_fraction" in split.json()["errors"]
    assert DatasetVersion.objects.for_team(version.team).count() == 1


def test_curation_through_the_page(alice: Any, login: Any) -> None:
    version = upload(resolve_access(alice, "acme"), jsonl(PII_ROWS))
    response = login(alice).post(
        f"/t/acme/datasets/{version.dataset_id}/v1/curate/", {"step": "dedupe", "mode": "exact"}
    )
    assert response["Location"] == f"/t/acme/datasets/{version.dataset_id}/v2/"
    child = DatasetVersion.objects.for_team(version.team).get(number=2)
    assert child.status == VersionStatus.PROCESSING
    assert AuditEvent.objects.filter(action="dataset.curated").count() == 1


# --- samples and mixing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "kind", "rows"),
    [("chat", "chat", 60), ("instruction", "instruction", 60), ("preference", "preference", 40), ("text", "text", 60)],
)
def test_each_sample_validates_cleanly(alice: Any, login: Any, sample: str, kind: str, rows: int) -> None:
    response = login(alice).post("/t/acme/datasets/samples/", {"sample": sample})
    version = DatasetVersion.objects.unscoped().get()
    assert response["Location"] == f"/t/acme/datasets/{version.dataset_id}/v1/"
    services.run_validation(version.pk)
    version.refresh_from_db()
    assert (version.status, version.kind, version.row_count) == (VersionStatus.READY, kind, rows)


def test_empty_datasets_page_offers_the_samples(alice: Any, login: Any) -> None:
    page = login(alice).get("/t/acme/datasets/").content.decode()
    assert "Try a sample" in page and 'value="preference"' in page


def test_mixing_two_datasets_with_weights(alice: Any, acme: Any, bearer: Any) -> None:
    open_data = ready_version(acme, alice, [{"text": f"open {n}"} for n in range(300)], name="Open")
    private = ready_version(acme, alice, [{"text": f"private {n}"} for n in range(1000)], name="Private")
    response = bearer(alice).post(
        "/api/v1/teams/acme/datasets/mix",
        data=json.dumps(
            {
                "name": "Blend",
                "seed": 1,
                "sources": [
                    {"dataset_id": open_data.dataset_id, "weight": 0.25},
                    {"dataset_id": private.dataset_id, "weight": 0.75},
                ],
            }
        ),
        content_type="application/json",
    )
    assert response.status_code == 201
    mixed = DatasetVersion.objects.for_team(acme).get(dataset__name="Blend")
    services.run_curation(mixed.pk)
    mixed.refresh_from_db()
    texts = [row["text"] for row in read_rows_file(mixed.rows_path)]
    assert (mixed.status, mixed.row_count) == (VersionStatus.READY, 1200)
    assert sum(text.startswith("open") for text in texts) == 300
    assert sum(text.startswith("private") for text in texts) == 900
    assert mixed.recipe["sources"][0]["content_hash"] == open_data.content_hash


def test_mixing_different_kinds_is_refused(alice: Any, acme: Any, bearer: Any) -> None:
    text = ready_version(acme, alice, [{"text": "a"}, {"text": "b"}], name="Text")
    chat = ready_version(acme, alice, CHAT_ROWS, kind="chat", name="Chat")
    response = bearer(alice).post(
        "/api/v1/teams/acme/datasets/mix",
        data=json.dumps(
            {"sources": [{"dataset_id": text.dataset_id, "weight": 1}, {"dataset_id": chat.dataset_id, "weight": 1}]}
        ),
        content_type="application/json",
    )
    assert response.status_code == 400
    assert "one kind" in response.json()["errors"]["sources"][0]


def test_owner_restricts_a_dataset_later_and_members_lose_sight_of_it(
    alice: Any, bob: Any, acme: Any, login: Any, bearer: Any
) -> None:
    version = ready_version(acme, alice, [{"text": "draft"}], name="Drafts")
    assert bearer(bob).get("/api/v1/teams/acme/datasets/").json()[0]["name"] == "Drafts"
    response = login(alice).post(
        f"/t/acme/datasets/{version.dataset_id}/edit/", {"name": "Board drafts", "restricted": "on"}
    )
    assert response.status_code == 302
    assert bearer(bob).get("/api/v1/teams/acme/datasets/").json() == []
    event = AuditEvent.objects.get(action="dataset.updated")
    assert event.details == {"name": "Board drafts", "restricted": True}


def test_member_may_rename_but_not_restrict(alice: Any, bob: Any, acme: Any, bearer: Any) -> None:
    version = ready_version(acme, alice, [{"text": "draft"}], name="Drafts")
    url = f"/api/v1/teams/acme/datasets/{version.dataset_id}"
    renamed = bearer(bob).patch(url, data=json.dumps({"name": "Notes"}), content_type="application/json")
    assert renamed.status_code == 200 and renamed.json()["name"] == "Notes"
    restricted = bearer(bob).patch(url, data=json.dumps({"restricted": True}), content_type="application/json")
    assert restricted.status_code == 403
    assert not Dataset.objects.for_team(acme).get().restricted


def test_mapping_form_on_the_page_resolves_an_ambiguous_file(alice: Any, login: Any) -> None:
    rows = [{"question": f"Q{n}?", "answer": f"A{n}."} for n in range(3)]
    version = upload(resolve_access(alice, "acme"), jsonl(rows), name="qa.jsonl")
    client = login(alice)
    url = f"/t/acme/datasets/{version.dataset_id}/v1/"
    page = client.get(url).content.decode()
    assert "Which column holds what?" in page and "<code>question</code>" in page
    incomplete = client.post(url + "mapping/", {"kind": "instruction", "column_prompt": "question"}, follow=True)
    assert any("needs a column for: completion" in str(m) for m in incomplete.context["messages"])
    client.post(url + "mapping/", {"kind": "instruction", "column_prompt": "question", "column_completion": "answer"})
    services.run_validation(version.pk)
    version.refresh_from_db()
    assert (version.status, version.kind, version.row_count) == (VersionStatus.READY, "instruction", 3)


def test_mapping_form_error_reads_without_the_form_key(alice: Any, login: Any) -> None:
    rows = [{"question": f"Q{n}?", "answer": f"A{n}."} for n in range(3)]
    version = upload(resolve_access(alice, "acme"), jsonl(rows), name="qa.jsonl")
    url = f"/t/acme/datasets/{version.dataset_id}/v1/"
    page = login(alice).post(url + "mapping/", {"kind": "preference", "column_prompt": "question"}, follow=True)
    html = page.content.decode()
    assert "A preference dataset needs a column for: chosen, rejected." in html and "__all__" not in html


def test_mapping_pickers_name_the_kinds_that_use_them(alice: Any, login: Any) -> None:
    rows = [{"question": f"Q{n}?", "answer": f"A{n}."} for n in range(3)]
    version = upload(resolve_access(alice, "acme"), jsonl(rows), name="qa.jsonl")
    html = login(alice).get(f"/t/acme/datasets/{version.dataset_id}/v1/").content.decode()
    assert 'name="column_prompt" data-kinds="instruction preference feedback"' in html
    assert 'name="column_text" data-kinds="text"' in html and "js/mapping-form.js" in html


def test_mapping_can_be_tried_again_after_it_left_problems(alice: Any, login: Any) -> None:
    rows = [{"question": f"Q{n}?", "answer": f"A{n}.", "note": ""} for n in range(3)]
    version = upload(resolve_access(alice, "acme"), jsonl(rows), name="qa.jsonl")
    client = login(alice)
    url = f"/t/acme/datasets/{version.dataset_id}/v1/"
    client.post(url + "mapping/", {"kind": "instruction", "column_prompt": "question", "column_completion": "note"})
    services.run_validation(version.pk)
    html = client.get(url).content.decode()
    assert "Try another mapping" in html and "selected>note</option>" in html
    client.post(url + "mapping/", {"kind": "instruction", "column_prompt": "question", "column_completion": "answer"})
    services.run_validation(version.pk)
    version.refresh_from_db()
    assert (version.status, version.row_count) == (VersionStatus.READY, 3)
    assert "Try another mapping" not in client.get(url).content.decode()


def test_a_word_document_is_refused_naming_the_accepted_formats(alice: Any, login: Any) -> None:
    response = login(alice).post(
        "/t/acme/datasets/",
        {"name": "Notes", "file": upload_file("notes.docx", b"PK\x03\x04 a zipped document")},
        headers={"X-Requested-With": "XMLHttpRequest"},
    )
    assert response.status_code == 400 and not DatasetVersion.objects.unscoped().exists()
    assert response.json()["errors"]["file"] == [
        "notes.docx is not a supported format; upload JSON Lines, JSON, CSV, Parquet or plain text."
    ]


def test_problem_of_the_whole_file_shows_no_line_number(alice: Any, login: Any) -> None:
    version = upload(resolve_access(alice, "acme"), b"")
    html = login(alice).get(f"/t/acme/datasets/{version.dataset_id}/v1/").content.decode()
    assert "<li>The file holds no rows.</li>" in html and "line None" not in html


def test_mixing_from_the_list_page_weights(alice: Any, acme: Any, login: Any) -> None:
    first = ready_version(acme, alice, [{"text": f"a {n}"} for n in range(10)], name="A")
    second = ready_version(acme, alice, [{"text": f"b {n}"} for n in range(10)], name="B")
    response = login(alice).post(
        "/t/acme/datasets/mix/",
        {f"weight_{first.dataset_id}": "0.5", f"weight_{second.dataset_id}": "0.5", "name": "AB", "seed": "3"},
    )
    mixed = DatasetVersion.objects.for_team(acme).get(dataset__name="AB")
    assert response["Location"] == f"/t/acme/datasets/{mixed.dataset_id}/v1/"
    services.run_curation(mixed.pk)
    mixed.refresh_from_db()
    assert (mixed.status, mixed.row_count) == (VersionStatus.READY, 20)
