"""The validation and curation tasks claim their version first: a second delivery of the same task (Celery may
deliver twice) leaves the version and its rows file alone, and a claim left by a task that died can be taken over."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from accounts.permissions import resolve_access
from datasets_app import services
from datasets_app.models import DatasetVersion, VersionStatus

ROWS = "".join(
    json.dumps({"messages": [{"role": "user", "content": f"Q{n}?"}, {"role": "assistant", "content": f"A{n}."}]}) + "\n"
    for n in range(3)
).encode()


def uploaded(alice: Any) -> DatasetVersion:
    """A fresh upload, still ``validating`` (its task has not run)."""
    access = resolve_access(alice, "acme")
    upload = SimpleUploadedFile("chat.jsonl", ROWS, content_type="application/octet-stream")
    return services.upload_dataset(access=access, name="Chats", upload=upload)


def test_a_second_delivery_leaves_a_version_being_validated_alone(alice: Any) -> None:
    version = uploaded(alice)
    assert services.claim_version(version.pk, VersionStatus.VALIDATING) is not None  # the first delivery

    services.run_validation(version.pk)  # the duplicate

    version.refresh_from_db()
    assert version.status == VersionStatus.VALIDATING
    assert not version.rows_path.exists()


def test_a_claim_left_by_a_dead_task_is_taken_over(alice: Any, settings: Any) -> None:
    version = uploaded(alice)
    stale = timezone.now() - timedelta(seconds=settings.DATASET_TASK_LEASE_SECONDS + 1)
    DatasetVersion.objects.unscoped().filter(pk=version.pk).update(claimed_at=stale)

    services.run_validation(version.pk)

    version.refresh_from_db()
    assert version.status == VersionStatus.READY
    assert version.row_count == 3


def test_only_one_of_two_claims_wins(alice: Any) -> None:
    version = uploaded(alice)

    claims = [services.claim_version(version.pk, VersionStatus.VALIDATING) for _ in range(2)]

    assert [claim is not None for claim in claims] == [True, False]


def test_a_second_delivery_leaves_a_version_being_curated_alone(alice: Any) -> None:
    parent = uploaded(alice)
    services.run_validation(parent.pk)
    parent.refresh_from_db()
    child = services.curate(access=resolve_access(alice, "acme"), version=parent, step="dedupe", params={})
    assert services.claim_version(child.pk, VersionStatus.PROCESSING) is not None  # the first delivery

    services.run_curation(child.pk)  # the duplicate

    child.refresh_from_db()
    assert child.status == VersionStatus.PROCESSING
    assert not child.rows_path.exists()
