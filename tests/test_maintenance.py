"""Maintenance: "Retrain on the new version" re-runs the deployment's job on newer data, runs the gate on the result
and proposes it; a deployment can ask for it on every new version of its data (beat's ``tick``).

The jobs here are rows (their training is tested in tests/test_training_jobs.py): a retrain's job is finished by
hand, as the worker would, so each step of the retrain is seen. The gate reads eval runs stored with a real run's
summary, as in tests/test_releases.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent, Team
from accounts.permissions import TeamAccess
from datasets_app.models import DatasetVersion, VersionStatus
from evals_app import gates, maintenance
from evals_app.models import EvalRun, EvalSuite, Retrain
from serving_app import deployments, releases
from serving_app.models import Deployment
from tests.factories import CARD_USES, finished_job, sample_version
from tests.test_releases import finished_run
from training_app.models import BaseModel, JobStatus, ModelVersion, TrainingJob

Login = Callable[[Any], Client]

pytestmark = pytest.mark.django_db


def next_version(previous: DatasetVersion) -> DatasetVersion:
    """A ready version of the same dataset after ``previous``, with the same rows (what an upload makes)."""
    version = DatasetVersion.objects.create(
        team=previous.team, dataset=previous.dataset, number=previous.number + 1, created_by=previous.created_by,
        status=VersionStatus.READY, kind=previous.kind, row_count=previous.row_count, parent=previous,
        recipe={"step": "upload", "filename": "more.jsonl"}, source_name="more.jsonl",
    )  # fmt: skip
    version.folder().mkdir(parents=True, exist_ok=True)
    version.rows_path.write_bytes(previous.rows_path.read_bytes())
    return version


def finish(job: TrainingJob, *, status: str = JobStatus.SUCCEEDED) -> ModelVersion | None:
    """What the worker does when the job ends: its status and, when it succeeded, its model version."""
    TrainingJob.objects.for_team(job.team).filter(pk=job.pk).update(
        status=status, finished_at=timezone.now(), message="" if status == JobStatus.SUCCEEDED else "Out of memory."
    )
    if status != JobStatus.SUCCEEDED:
        return None
    number = ModelVersion.objects.for_team(job.team).filter(name=job.name).count() + 1
    return ModelVersion.objects.create(
        team=job.team, name=job.name, number=number, job=job, base_model=job.base_model,
        kind=ModelVersion.Kind.ADAPTER, path=str(job.folder()), created_by=job.created_by, **CARD_USES,
    )  # fmt: skip


@pytest.fixture
def trained(acme: Team, alice: Any, base_model_row: BaseModel) -> tuple[TrainingJob, ModelVersion]:
    return finished_job(acme, alice, base_model_row, sample_version(acme, alice, "chat", name="Support chats"))


@pytest.fixture
def deployment(owner: TeamAccess, trained: tuple[TrainingJob, ModelVersion]) -> Deployment:
    return deployments.create_deployment(access=owner, name="support-bot", version=trained[1])


@pytest.fixture
def suite(acme: Team, alice: Any) -> EvalSuite:
    return EvalSuite.objects.create(
        team=acme, name="faq answers", dataset_version=sample_version(acme, alice, "chat"),
        graders=[{"grader": {"type": "contains", "substring": "refund"}, "pass_rate": 0.8}], created_by=alice,
    )  # fmt: skip


def _retrain(owner: TeamAccess, deployment: Deployment, trained: tuple[TrainingJob, ModelVersion]) -> Retrain:
    next_version(trained[0].dataset_version)
    return maintenance.retrain(access=owner, deployment=deployment)


# --- starting -----------------------------------------------------------------------------------


def test_without_newer_data_there_is_nothing_to_retrain_on(owner: TeamAccess, deployment: Deployment) -> None:
    with pytest.raises(ValidationError) as error:
        maintenance.retrain(access=owner, deployment=deployment)
    assert error.value.message_dict["dataset_version"] == [
        "No ready version of “Support chats” newer than v1 (what support bot v1 was trained on): upload or curate "
        "one first."
    ]


def test_retrain_runs_the_same_settings_on_the_newest_data_as_a_clone_of_the_job(
    owner: TeamAccess, deployment: Deployment, trained: tuple[TrainingJob, ModelVersion]
) -> None:
    source, _ = trained
    attempt = _retrain(owner, deployment, trained)

    job = TrainingJob.objects.for_team(deployment.team).get(pk=attempt.job_id)
    assert attempt.status == Retrain.Status.TRAINING and attempt.source_job == source
    assert job.dataset_version.number == 2 and job.dataset_version.dataset_id == source.dataset_version.dataset_id
    assert job.cloned_from == source and job.base_model == source.base_model
    assert job.config == source.config and job.name == "support bot (retrained on v2)"
    (event,) = AuditEvent.objects.for_team(deployment.team).filter(action="deployment.retrain_started")
    assert event.details["job"] == job.pk and event.details["trigger"] == "manual"


def test_the_same_data_version_is_not_retrained_on_twice(
    owner: TeamAccess, deployment: Deployment, trained: tuple[TrainingJob, ModelVersion]
) -> None:
    attempt = _retrain(owner, deployment, trained)

    with pytest.raises(ValidationError) as error:
        maintenance.retrain(access=owner, deployment=deployment, dataset_version=attempt.dataset_version)
    assert "already retrained on v2" in error.value.messages[0]


# --- following it -------------------------------------------------------------------------------


def test_a_retrain_that_passes_its_gate_is_proposed_then_marked_promoted(
    owner: TeamAccess, deployment: Deployment, trained: tuple[TrainingJob, ModelVersion], suite: EvalSuite
) -> None:
    gates.set_gate(access=owner, deployment=deployment, suites=[(suite.pk, 0.8)])
    attempt = _retrain(owner, deployment, trained)
    assert maintenance.advance(attempt).status == Retrain.Status.TRAINING  # the job has not finished

    version = finish(attempt.job)
    maintenance.advance(attempt)
    assert attempt.status == Retrain.Status.GATING and attempt.model_version == version
    (run_id,) = attempt.runs
    run = EvalRun.objects.for_team(deployment.team).get(pk=run_id)
    assert f"version:{version.pk}" in run.model_keys  # the gate's suite, started on the new version
    assert maintenance.advance(attempt).status == Retrain.Status.GATING  # its run has not finished

    passing = finished_run(suite, version, 0.9)
    EvalRun.objects.for_team(deployment.team).filter(pk=run_id).update(
        status=EvalRun.Status.SUCCEEDED, model_keys=passing.model_keys, summary=passing.summary
    )
    maintenance.advance(attempt)
    assert attempt.status == Retrain.Status.PROPOSED and attempt.gate["passed"]

    releases.promote(access=owner, deployment=deployment, version=version)
    assert maintenance.advance(attempt).status == Retrain.Status.PROMOTED


def test_a_retrain_that_fails_its_gate_is_blocked_with_the_reason(
    owner: TeamAccess, deployment: Deployment, trained: tuple[TrainingJob, ModelVersion], suite: EvalSuite
) -> None:
    gates.set_gate(access=owner, deployment=deployment, suites=[(suite.pk, 0.8)])
    attempt = _retrain(owner, deployment, trained)
    version = finish(attempt.job)
    maintenance.advance(attempt)
    EvalRun.objects.for_team(deployment.team).filter(pk__in=attempt.runs).delete()
    finished_run(suite, version, 0.4)

    maintenance.advance(attempt)

    assert attempt.status == Retrain.Status.BLOCKED
    assert attempt.detail == "Suite “faq answers” ≥ 80%: failed (40% of rows pass every grader in run " + (
        f"{EvalRun.objects.for_team(deployment.team).get().pk})"
    )


def test_a_failed_job_fails_the_retrain_saying_why(
    owner: TeamAccess, deployment: Deployment, trained: tuple[TrainingJob, ModelVersion]
) -> None:
    attempt = _retrain(owner, deployment, trained)
    finish(attempt.job, status=JobStatus.FAILED)

    maintenance.advance(attempt)

    assert attempt.status == Retrain.Status.FAILED and attempt.detail == "The training job failed. Out of memory."


# --- on new data, by itself ---------------------------------------------------------------------


def test_new_data_starts_one_retrain_where_the_deployment_asks_for_it(
    owner: TeamAccess, deployment: Deployment, trained: tuple[TrainingJob, ModelVersion]
) -> None:
    assert maintenance.tick()["started"] == 0
    maintenance.set_automatic(access=owner, deployment=deployment, enabled=True)
    assert maintenance.tick()["started"] == 0  # no newer data yet

    newer = next_version(trained[0].dataset_version)
    assert maintenance.tick()["started"] == 1
    assert maintenance.tick()["started"] == 0  # not twice for the same version
    (attempt,) = maintenance.retrains_of(deployment)
    assert attempt.dataset_version == newer and attempt.trigger == Retrain.Trigger.AUTOMATIC


def test_a_version_not_made_by_a_job_cannot_retrain_automatically(
    owner: TeamAccess, acme: Team, alice: Any, base_model_row: BaseModel
) -> None:
    uploaded = ModelVersion.objects.create(
        team=acme, name="imported", number=1, base_model=base_model_row, kind=ModelVersion.Kind.ADAPTER, path="/x",
        created_by=alice, **CARD_USES,
    )  # fmt: skip
    deployment = deployments.create_deployment(access=owner, name="imported-bot", version=uploaded)

    with pytest.raises(ValidationError) as error:
        maintenance.set_automatic(access=owner, deployment=deployment, enabled=True)
    assert "not made by a finished training job" in error.value.message_dict["retrain_on_new_data"][0]


# --- page and API -------------------------------------------------------------------------------


def test_the_deployment_page_offers_the_retrain_and_starts_it(
    alice: Any, login: Login, deployment: Deployment, trained: tuple[TrainingJob, ModelVersion]
) -> None:
    newer = next_version(trained[0].dataset_version)
    client = login(alice)
    page = client.get(reverse("serving:deployment", args=["acme", deployment.pk])).content.decode()
    assert "Newer data: v2." in page and 'id="retrain"' in page

    response = client.post(reverse("evals:retrain", args=["acme", deployment.pk]), {"dataset_version": newer.pk})

    assert response.status_code == 302
    page = client.get(reverse("serving:deployment", args=["acme", deployment.pk])).content.decode()
    assert 'id="retrains"' in page and "Support chats v2" in page and "Training" in page


def test_the_api_retrains_lists_and_schedules(
    alice: Any, login: Login, deployment: Deployment, trained: tuple[TrainingJob, ModelVersion]
) -> None:
    next_version(trained[0].dataset_version)
    client = login(alice)
    base = f"/api/v1/teams/acme/deployments/{deployment.pk}"

    started = client.post(f"{base}/retrains", "", content_type="application/json")
    assert started.status_code == 201 and started.json()["status"] == "training"
    assert [entry["id"] for entry in client.get(f"{base}/retrains").json()] == [started.json()["id"]]
    schedule = client.put(f"{base}/retrain-schedule", json.dumps({"enabled": True}), content_type="application/json")
    assert schedule.json() == {"enabled": True}
    assert Deployment.objects.for_team(deployment.team).get(pk=deployment.pk).retrain_on_new_data


def test_a_version_not_made_by_a_job_has_no_data_to_retrain_on(
    alice: Any, login: Login, owner: TeamAccess, acme: Team, base_model_row: BaseModel
) -> None:
    uploaded = ModelVersion.objects.create(
        team=acme, name="imported", number=1, base_model=base_model_row, kind=ModelVersion.Kind.ADAPTER, path="/x",
        created_by=alice, **CARD_USES,
    )  # fmt: skip
    deployment = deployments.create_deployment(access=owner, name="imported-bot", version=uploaded)

    response = login(alice).post(
        f"/api/v1/teams/acme/deployments/{deployment.pk}/retrains", json.dumps({"dataset_version": 1}),
        content_type="application/json",
    )  # fmt: skip

    assert response.status_code == 400 and "newer than what it serves" in response.json()["detail"]
