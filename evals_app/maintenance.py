"""Maintenance: keep a deployment's model current as its data changes.

"Retrain on the new version" (``retrain``) takes the job that trained the deployment's current version, runs its
settings again on a newer ready version of the same dataset (``training_app.services.retrain``), and follows the
new job: once its model version exists, the deployment's gate suites are run on it (``gates.run_missing``); once
they finish, the gate decides — the version is *proposed* (the deployment's page offers to promote it) or
*blocked* (with the report). Nothing is promoted by itself: a person promotes, through the same gate, with
``serving_app.releases.promote``; the retrain then reads *promoted*.

A deployment with ``retrain_on_new_data`` gets this automatically: beat calls ``tick`` every minute, which starts
a retrain for each new ready version of the watched dataset (acting as the deployment's creator, as long as they
may still train) and advances every retrain in flight. ``tick`` is idempotent: every step is a conditional
update or guarded by the one-retrain-per-data-version constraint.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from accounts import audit
from accounts.models import Team
from accounts.permissions import TeamAccess, resolve_access
from accounts.roles import Perm
from datasets_app.models import DatasetVersion
from evals_app import gates
from evals_app.models import EvalRun, Retrain
from serving_app import releases
from serving_app.models import Deployment
from training_app import services as training_services
from training_app.models import JobStatus, ModelVersion, TrainingJob

log = logging.getLogger(__name__)

FAILED_JOB_STATUSES = (JobStatus.FAILED, JobStatus.CANCELLED)


def source_job(deployment: Deployment) -> TrainingJob | None:
    """The finished job that trained the deployment's current version (None for a version made otherwise)."""
    job_id = ModelVersion.objects.for_team(deployment.team).filter(pk=deployment.model_version_id).values("job_id")
    return TrainingJob.objects.for_team(deployment.team).filter(pk__in=job_id, status=JobStatus.SUCCEEDED).first()


def newer_versions(deployment: Deployment) -> QuerySet[DatasetVersion]:
    """Ready versions of the current version's dataset newer than the one it was trained on, newest first."""
    job = source_job(deployment)
    trained_on = job.dataset_version if job is not None else None
    if trained_on is None:
        return DatasetVersion.objects.for_team(deployment.team).none()
    return (
        DatasetVersion.objects.for_team(deployment.team)
        .filter(dataset_id=trained_on.dataset_id, number__gt=trained_on.number, status="ready")
        .order_by("-number")
    )


def retrains_of(deployment: Deployment) -> QuerySet[Retrain]:
    return (
        Retrain.objects.for_team(deployment.team)
        .filter(deployment=deployment)
        .select_related("dataset_version__dataset", "job", "model_version")
    )


def retrain(
    *,
    access: TeamAccess,
    deployment: Deployment,
    dataset_version: DatasetVersion | None = None,
    trigger: str = Retrain.Trigger.MANUAL,
    ip: str | None = None,
) -> Retrain:
    """Train the deployment's model again on ``dataset_version`` (default: the newest ready version of its data).

    Needs ``training.launch`` (the job) and ``evals.run`` (the gate's suites, later). Raises ``ValidationError``
    keyed by ``deployment`` or ``dataset_version`` saying what is missing.
    """
    access.require(Perm.LAUNCH_TRAINING)
    access.require(Perm.RUN_EVALS)
    job = source_job(deployment)
    trained_on = job.dataset_version if job is not None else None
    if job is None or trained_on is None:
        raise ValidationError(
            {"deployment": f"“{deployment.name}” serves {deployment.model_version}, which no finished training job "
             "of this team made on a dataset that still exists: there are no settings to train again."}
        )  # fmt: skip
    newer = newer_versions(deployment)
    target = dataset_version or newer.first()
    if target is None or not newer.filter(pk=target.pk).exists():
        raise ValidationError(
            {"dataset_version": f"No ready version of “{trained_on.dataset.name}” newer than v{trained_on.number} "
             f"(what {deployment.model_version} was trained on): upload or curate one first."}
        )  # fmt: skip
    if Retrain.objects.for_team(access.team).filter(deployment=deployment, dataset_version=target).exists():
        raise ValidationError(
            {"dataset_version": f"“{deployment.name}” was already retrained on v{target.number}: see its retrains."}
        )
    try:
        with transaction.atomic():
            new_job = training_services.retrain(access=access, job=job, dataset_version=target, ip=ip)
            attempt = Retrain.objects.create(
                team=access.team, deployment=deployment, source_job=job, dataset_version=target, job=new_job,
                trigger=trigger, created_by=access.user,
            )  # fmt: skip
            audit.record(
                "deployment.retrain_started", access=access, target=deployment, ip=ip, job=new_job.pk,
                source_job=job.pk, dataset_version=target.pk, trigger=trigger,
            )  # fmt: skip
    except IntegrityError as error:  # a concurrent retrain on the same version won the race
        message = f"“{deployment.name}” is already retraining on v{target.number}."
        raise ValidationError({"dataset_version": message}) from error
    return attempt


# --- following a retrain ------------------------------------------------------------------------


def advance(attempt: Retrain) -> Retrain:
    """Move a retrain on as far as its job, runs and gate allow (safe to call any number of times)."""
    if attempt.status == Retrain.Status.TRAINING:
        _after_training(attempt)
    if attempt.status == Retrain.Status.GATING:
        _after_gating(attempt)
    if attempt.status == Retrain.Status.PROPOSED:
        deployment = Deployment.objects.for_team(attempt.team).filter(pk=attempt.deployment_id).first()
        if deployment is not None and deployment.model_version_id == attempt.model_version_id:
            _set(attempt, Retrain.Status.PROPOSED, status=Retrain.Status.PROMOTED)
    return attempt


def _set(attempt: Retrain, expected: str, **fields: Any) -> bool:
    """Update ``attempt`` if it is still in ``expected`` (two ticks never both act on one step)."""
    fields["updated_at"] = timezone.now()
    changed = Retrain.objects.for_team(attempt.team).filter(pk=attempt.pk, status=expected).update(**fields)
    if changed:
        for name, value in fields.items():
            setattr(attempt, name, value)
    return bool(changed)


def _access(attempt: Retrain) -> TeamAccess | None:
    try:
        return resolve_access(attempt.created_by, attempt.team.slug)
    except Http404:
        return None


def _after_training(attempt: Retrain) -> None:
    job = TrainingJob.objects.for_team(attempt.team).filter(pk=attempt.job_id).first()
    if job is None or job.status in FAILED_JOB_STATUSES:
        detail = f"The training job {'was deleted' if job is None else job.get_status_display().lower()}."
        if job is not None and job.message:
            detail += f" {job.message}"
        _set(attempt, Retrain.Status.TRAINING, status=Retrain.Status.FAILED, detail=detail)
        return
    version = ModelVersion.objects.for_team(attempt.team).filter(job=job).first()
    if version is None:
        return  # still training
    deployment = Deployment.objects.for_team(attempt.team).get(pk=attempt.deployment_id)
    access = _access(attempt)
    runs: list[EvalRun] = []
    if access is not None and access.can(Perm.RUN_EVALS):
        runs = gates.run_missing(access=access, deployment=deployment, version=version)
    _set(
        attempt, Retrain.Status.TRAINING, status=Retrain.Status.GATING, model_version=version,
        runs=[run.pk for run in runs],
    )  # fmt: skip


def _after_gating(attempt: Retrain) -> None:
    running = EvalRun.objects.for_team(attempt.team).filter(
        pk__in=attempt.runs, status__in=(EvalRun.Status.QUEUED, EvalRun.Status.RUNNING)
    )
    if running.exists():
        return
    deployment = Deployment.objects.for_team(attempt.team).get(pk=attempt.deployment_id)
    version = ModelVersion.objects.for_team(attempt.team).filter(pk=attempt.model_version_id).first()
    if version is None:
        _set(attempt, Retrain.Status.GATING, status=Retrain.Status.FAILED, detail="The new version was deleted.")
        return
    report = releases.check_gate(deployment, version)
    if report.passed:
        _set(attempt, Retrain.Status.GATING, status=Retrain.Status.PROPOSED, gate=report.as_json())
        return
    waiting = [check for check in report.checks if check.passed is None and check.detail.startswith("running")]
    if waiting:
        return  # a measurement someone else started is still running
    _set(attempt, Retrain.Status.GATING, status=Retrain.Status.BLOCKED, gate=report.as_json(), detail=report.summary())


# --- beat ---------------------------------------------------------------------------------------


def tick() -> dict[str, int]:
    """Start the retrains new data calls for, and advance those in flight (beat, every minute)."""
    started = advanced = 0
    for team in Team.objects.all():
        for deployment in Deployment.objects.for_team(team).filter(retrain_on_new_data=True):
            started += _start_automatic(deployment)
        for attempt in Retrain.objects.for_team(team).filter(
            status__in=(Retrain.Status.TRAINING, Retrain.Status.GATING, Retrain.Status.PROPOSED)
        ):
            before = attempt.status
            try:
                advance(attempt)
            except Exception:  # one broken retrain must not stop the others
                log.exception("retrain %s could not advance", attempt.pk)
            advanced += attempt.status != before
    return {"started": started, "advanced": advanced}


def _start_automatic(deployment: Deployment) -> int:
    newest = newer_versions(deployment).first()
    if (
        newest is None
        or Retrain.objects.for_team(deployment.team).filter(deployment=deployment, dataset_version=newest).exists()
    ):
        return 0
    try:
        access = resolve_access(deployment.created_by, deployment.team.slug)
        retrain(access=access, deployment=deployment, dataset_version=newest, trigger=Retrain.Trigger.AUTOMATIC)
    except (Http404, PermissionDenied, ValidationError) as error:
        log.warning("automatic retrain of %s on %s not started: %s", deployment.pk, newest.pk, error)
        return 0
    return 1


def set_automatic(*, access: TeamAccess, deployment: Deployment, enabled: bool, ip: str | None = None) -> None:
    """Turn automatic retraining on new data on or off for ``deployment`` (admins); audited."""
    access.require(Perm.MANAGE_DEPLOYMENTS)
    if enabled and source_job(deployment) is None:
        raise ValidationError(
            {"retrain_on_new_data": f"{deployment.model_version} was not made by a finished training job of this "
             "team: there are no settings to train again."}
        )  # fmt: skip
    with transaction.atomic():
        Deployment.objects.for_team(access.team).filter(pk=deployment.pk).update(retrain_on_new_data=enabled)
        audit.record("deployment.retrain_schedule_changed", access=access, target=deployment, ip=ip, enabled=enabled)
    deployment.retrain_on_new_data = enabled
