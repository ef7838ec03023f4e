"""REST endpoints for deployment gates under /api/v1/teams/<slug>/deployments/{id}/.

``GET gate`` reads what a deployment requires and ``PUT gate`` sets it (``deployments.manage``): eval suites with
the share of rows a version must pass (or ``null`` for each grader's own pass rate), the forgetting check, and the
largest bias-probe gap. ``POST gate/runs`` starts the required suites a version was never run through
(``evals.run``). Checking a version and promoting it are the serving API's (``gate-check``, ``promote``).

``POST retrains`` trains the deployment's model again on a newer version of its data, then runs the gate and
proposes the new version (``training.launch`` and ``evals.run``); ``GET retrains`` lists them with their status;
``PUT retrain-schedule`` turns retraining on each new data version on or off (``deployments.manage``).

No ``from __future__ import annotations`` here: django-ninja reads the annotations at runtime.
"""

from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status

from accounts.api import Error, ObjectId, RequestBody, team_access
from accounts.http import client_ip
from accounts.permissions import TeamAccess
from accounts.roles import Perm
from evals_app import gates, maintenance
from evals_app.models import Retrain
from serving_app import deployments
from serving_app.models import Deployment

router = Router(tags=["evals"])


class SuiteRequirementIn(RequestBody):
    suite: ObjectId = Field(description="An eval suite's id (GET eval-suites/).")
    min_pass_rate: float | None = Field(
        None,
        strict=True,
        description="Share of rows (0–1) that must pass every grader; null: each grader's own pass rate.",
    )


class GateIn(RequestBody):
    suites: list[SuiteRequirementIn] = Field(default_factory=list, max_length=gates.MAX_SUITES)
    forgetting: bool = Field(False, strict=True, description="Require the forgetting check to pass.")
    max_bias_gap: float | None = Field(
        None, strict=True, description="Largest bias-probe gap between groups (0–1); null: none."
    )


class SuiteRequirementOut(Schema):
    suite: int
    name: str
    min_pass_rate: float | None


class GateOut(Schema):
    suites: list[SuiteRequirementOut]
    missing_suites: list[str] = Field(description="Required suites deleted since: the gate fails until edited.")
    forgetting: bool
    max_bias_gap: float | None


class GateRunsIn(RequestBody):
    model_version: ObjectId = Field(description="The version to run the gate's suites on.")


class StartedRunOut(Schema):
    id: int
    suite_id: int
    models: list[str]


def _deployment(access: TeamAccess, deployment_id: int) -> Deployment:
    return get_object_or_404(deployments.visible_deployments(access), pk=deployment_id)


def _gate_out(gate: gates.Gate) -> dict[str, Any]:
    return {
        "suites": [{"suite": r.suite.pk, "name": r.suite.name, "min_pass_rate": r.min_pass_rate} for r in gate.suites],
        "missing_suites": gate.missing_suites,
        "forgetting": gate.forgetting,
        "max_bias_gap": gate.max_bias_gap,
    }


@router.get("teams/{slug}/deployments/{deployment_id}/gate", response={200: GateOut, 404: Error}, summary="Get a gate")
def get_gate(request: HttpRequest, slug: str, deployment_id: ObjectId) -> dict[str, Any]:
    """What a version must pass before it is published to the deployment."""
    access = team_access(request, slug)
    return _gate_out(gates.gate_of(_deployment(access, deployment_id)))


@router.put(
    "teams/{slug}/deployments/{deployment_id}/gate",
    response={200: GateOut, 400: Error, 403: Error, 404: Error},
    summary="Set a gate",
)
def set_gate(request: HttpRequest, slug: str, deployment_id: ObjectId, body: GateIn) -> dict[str, Any]:
    """Require exactly these suites, the forgetting check and bias limit (owners and admins); audited."""
    access = team_access(request, slug)
    deployment = _deployment(access, deployment_id)
    gate = gates.set_gate(
        access=access, deployment=deployment,
        suites=[(entry.suite, entry.min_pass_rate) for entry in body.suites],
        forgetting=body.forgetting, max_bias_gap=body.max_bias_gap, ip=client_ip(request),
    )  # fmt: skip
    return _gate_out(gate)


@router.post(
    "teams/{slug}/deployments/{deployment_id}/gate/runs",
    response={201: list[StartedRunOut], 400: Error, 403: Error, 404: Error},
    summary="Run the gate's missing suites",
)
def run_missing(request: HttpRequest, slug: str, deployment_id: ObjectId, body: GateRunsIn) -> Status:
    """Start every required suite the version has no finished or running run of (beside the current version)."""
    access = team_access(request, slug)
    access.require(Perm.RUN_EVALS)
    deployment = _deployment(access, deployment_id)
    version = deployments.deployable_versions(access).filter(pk=body.model_version).first()
    if version is None:
        raise ValidationError({"model_version": [f"no model version {body.model_version} you may use in this team"]})
    runs = gates.run_missing(access=access, deployment=deployment, version=version, ip=client_ip(request))
    return Status(201, [{"id": run.pk, "suite_id": run.suite_id, "models": run.model_keys} for run in runs])


class RetrainIn(RequestBody):
    dataset_version: ObjectId | None = Field(
        None, description="A ready version of the current version's dataset, newer than it; default: the newest."
    )


class RetrainOut(Schema):
    id: int
    dataset_version_id: int
    source_job_id: int | None
    job_id: int | None
    model_version_id: int | None
    status: str = Field(description="training, gating, proposed, blocked, promoted or failed.")
    trigger: str
    gate: dict[str, Any]
    detail: str
    created_at: datetime


class ScheduleIn(RequestBody):
    enabled: bool = Field(strict=True, description="Retrain on each new ready version of the deployment's data.")


@router.post(
    "teams/{slug}/deployments/{deployment_id}/retrains",
    response={201: RetrainOut, 400: Error, 403: Error, 404: Error},
    summary="Retrain on newer data",
)
def start_retrain(request: HttpRequest, slug: str, deployment_id: ObjectId, body: RetrainIn | None = None) -> Status:
    """Re-run the current version's job on a newer version of its data; the gate runs on the result."""
    access = team_access(request, slug)
    access.require(Perm.LAUNCH_TRAINING)
    access.require(Perm.RUN_EVALS)
    deployment = _deployment(access, deployment_id)
    version = None
    if body is not None and body.dataset_version is not None:
        version = maintenance.newer_versions(deployment).filter(pk=body.dataset_version).first()
        if version is None:
            raise ValidationError(
                {"dataset_version": ["not a ready version of this deployment's data newer than what it serves"]}
            )
    attempt = maintenance.retrain(access=access, deployment=deployment, dataset_version=version, ip=client_ip(request))
    return Status(201, attempt)


@router.get(
    "teams/{slug}/deployments/{deployment_id}/retrains",
    response={200: list[RetrainOut], 404: Error},
    summary="List a deployment's retrains",
)
def list_retrains(request: HttpRequest, slug: str, deployment_id: ObjectId) -> list[Retrain]:
    """The deployment's retrains, newest first."""
    access = team_access(request, slug)
    return list(maintenance.retrains_of(_deployment(access, deployment_id)))


@router.put(
    "teams/{slug}/deployments/{deployment_id}/retrain-schedule",
    response={200: ScheduleIn, 400: Error, 403: Error, 404: Error},
    summary="Retrain on new data automatically",
)
def set_schedule(request: HttpRequest, slug: str, deployment_id: ObjectId, body: ScheduleIn) -> dict[str, Any]:
    """Turn retraining on each new ready version of the deployment's data on or off (owners and admins)."""
    access = team_access(request, slug)
    deployment = _deployment(access, deployment_id)
    maintenance.set_automatic(access=access, deployment=deployment, enabled=body.enabled, ip=client_ip(request))
    return {"enabled": deployment.retrain_on_new_data}
