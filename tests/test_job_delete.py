"""Deleting a finished training job: the page (``training:job_delete``) and ``DELETE /api/v1/teams/<team>/jobs/<id>``.

The job's row, metrics and run files go; the model version it produced stays, with its files and lineage.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from accounts.models import AuditEvent, Team
from tests.factories import finished_job, member, sample_version
from training_app.models import BaseModel, JobStatus, ModelVersion, TrainingJob

pytestmark = pytest.mark.django_db


def launched_by(user: Any, acme: Team, base_model_row: BaseModel) -> tuple[TrainingJob, ModelVersion]:
    return finished_job(acme, user, base_model_row, sample_version(acme, user, "chat"), name="support bot")


def test_launcher_deletes_a_finished_job_and_the_model_version_stays(
    acme: Team, bob: Any, base_model_row: BaseModel, login: Any, django_capture_on_commit_callbacks: Any
) -> None:
    job, version = launched_by(bob, acme, base_model_row)
    (job.folder() / "run").mkdir(parents=True)
    (job.folder() / "run" / "train.log").write_text("step 1\n", encoding="utf-8")
    (job.folder() / "output" / "checkpoint-2").mkdir(parents=True)
    client: Client = login(bob)

    confirm = client.get(f"/t/acme/training/{job.pk}/delete")
    assert "Delete job “support bot”?" in confirm.content.decode()
    assert "stays with its files and lineage" in confirm.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/t/acme/training/{job.pk}/delete", follow=True)

    assert "Job “support bot” and its run files were deleted." in response.content.decode()
    assert not TrainingJob.objects.for_team(acme).filter(pk=job.pk).exists()
    assert not (job.folder() / "run").exists() and not (job.folder() / "output" / "checkpoint-2").exists()
    assert (job.folder() / "output" / "adapter" / "adapter_config.json").is_file()
    page = client.get(f"/t/acme/models/versions/{version.pk}/").content.decode()
    assert f'#{job.pk} support bot <span class="muted">(deleted)</span>' in page


def test_deleting_a_job_is_audited_with_its_name_and_status(
    acme: Team, bob: Any, base_model_row: BaseModel, bearer: Any
) -> None:
    job, _ = launched_by(bob, acme, base_model_row)

    assert bearer(bob).delete(f"/api/v1/teams/acme/jobs/{job.pk}").status_code == 204

    event = AuditEvent.objects.for_team(acme).get(action="job.deleted")
    assert (event.details["name"], event.details["status"], event.target_id) == (
        "support bot",
        "succeeded",
        str(job.pk),
    )


def test_an_active_job_is_refused_until_it_is_cancelled(
    acme: Team, bob: Any, base_model_row: BaseModel, bearer: Any
) -> None:
    job, _ = launched_by(bob, acme, base_model_row)
    TrainingJob.objects.for_team(acme).filter(pk=job.pk).update(status=JobStatus.RUNNING)

    response = bearer(bob).delete(f"/api/v1/teams/acme/jobs/{job.pk}")

    assert response.status_code == 400
    assert response.json()["detail"] == "the job is still running: cancel it first, then delete it"
    assert TrainingJob.objects.for_team(acme).filter(pk=job.pk).exists()


def test_a_member_cannot_delete_a_job_someone_else_launched(
    acme: Team, alice: Any, bob: Any, base_model_row: BaseModel, bearer: Any, login: Any
) -> None:
    job, _ = launched_by(alice, acme, base_model_row)

    response = bearer(bob).delete(f"/api/v1/teams/acme/jobs/{job.pk}")

    assert response.status_code == 403
    assert "Only the person who launched this job, or an admin" in response.json()["detail"]
    assert "Delete…" not in login(bob).get(f"/t/acme/training/{job.pk}/").content.decode()
    assert TrainingJob.objects.for_team(acme).filter(pk=job.pk).exists()


def test_an_admin_deletes_a_job_someone_else_launched(
    acme: Team, bob: Any, base_model_row: BaseModel, login: Any
) -> None:
    job, _ = launched_by(bob, acme, base_model_row)
    admin = member(acme, "admin", "dora")
    client: Client = login(admin)

    assert "Delete…" in client.get(f"/t/acme/training/{job.pk}/").content.decode()
    assert client.post(f"/t/acme/training/{job.pk}/delete").status_code == 302
    assert not TrainingJob.objects.for_team(acme).filter(pk=job.pk).exists()


def test_the_openapi_document_lists_job_deletion_with_its_statuses(client: Client) -> None:
    schema = client.get("/api/v1/openapi.json").json()

    operation = schema["paths"]["/api/v1/teams/{slug}/jobs/{job_id}"]["delete"]

    assert {"204", "400", "403", "404"} <= set(operation["responses"])
    assert "cancel it first" in operation["description"]
