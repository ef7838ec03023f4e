"""REST endpoints for deployments, usage and feedback under /api/v1/teams/<slug>/ (the /v1 OpenAI API is separate).

``POST deployments`` publishes a model version under a name, ``PATCH deployments/{id}/keys`` sets which
team API keys may call it, ``GET usage`` returns the numbers of the usage page, ``POST
playground/feedback/export`` turns the playground's thumbs up/down votes into a feedback dataset version.
Access is resolved as in the other routers: a member's token, or a team API key acting in its own team with
its role.

No ``from __future__ import annotations`` here: django-ninja reads the annotations at runtime.
"""

from datetime import date, datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Query, Router, Schema, Status

from accounts.api import Error, ObjectId, RequestBody, team_access
from accounts.http import client_ip
from accounts.models import TeamAPIKey
from accounts.permissions import TeamAccess
from accounts.roles import Perm
from serving_app import deployments, feedback
from serving_app.deployments import UsageRow
from serving_app.models import Deployment

router = Router(tags=["serving"])


# --- schemas ------------------------------------------------------------------------------------


class KeyRef(Schema):
    id: int
    name: str
    prefix: str
    requests_per_minute: int
    max_tokens: int
    active: bool


class ModelVersionRef(Schema):
    id: int
    name: str
    number: int
    kind: str


class DeploymentOut(Schema):
    id: int
    name: str = Field(description="What clients send as `model` at /v1.")
    description: str
    model_version: ModelVersionRef
    api_keys: list[KeyRef] = Field(description="The team API keys that may call it (those visible to you).")
    created_by: str | None
    created_at: datetime


class DeploymentIn(RequestBody):
    name: str = Field(max_length=60, description="Lowercase letters, digits, dots, hyphens or underscores.")
    model_version: ObjectId = Field(description="Id of a model version you may use (GET model-versions).")
    description: str = Field("", max_length=2000)
    api_keys: list[ObjectId] = Field(default_factory=list, description="Ids of team API keys that may call it.")


class KeysIn(RequestBody):
    api_keys: list[ObjectId] = Field(description="Ids of the team API keys that may call it: exactly these.")


class UsageRowOut(Schema):
    label: str
    deployment_id: int | None = None
    key_id: int | None = None
    requests: int
    rate_limited: int
    prompt_tokens: int
    completion_tokens: int


class DayOut(Schema):
    day: date
    api: int
    playground: int
    arena: int


class UsageOut(Schema):
    since: datetime
    days: list[DayOut] = Field(description="Tokens (prompt + completion) per day and source, oldest first.")
    totals: dict[str, int]
    deployments: list[UsageRowOut]
    keys: list[UsageRowOut]


class UsageFilters(Schema):
    days: int = Field(30, ge=1, le=366, description="How many days back, today included.")


class FeedbackExportOut(Schema):
    dataset_id: int = Field(description="The team's “Playground feedback” dataset.")
    number: int = Field(description="The new version's number (GET datasets/{dataset_id}/versions/{number}).")
    status: str = Field(description="The new version's validation status: it is validated in the background.")
    exported: int = Field(description="Votes that became rows (and are marked exported).")
    left_out: int = Field(description="Votes with an empty conversation or answer: they cannot make a row.")
    restricted: int = Field(description="Votes on a restricted model version: kept, not exported.")


# --- helpers ------------------------------------------------------------------------------------


def _key_ref(key: TeamAPIKey) -> dict[str, Any]:
    return {
        "id": key.pk, "name": key.name, "prefix": key.display_prefix, "requests_per_minute": key.requests_per_minute,
        "max_tokens": key.max_tokens, "active": key.is_active,
    }  # fmt: skip


def _deployment_out(access: TeamAccess, deployment: Deployment) -> dict[str, Any]:
    shown = deployments.visible_key_ids(access)
    version = deployment.model_version
    return {
        "id": deployment.pk,
        "name": deployment.name,
        "description": deployment.description,
        "model_version": {"id": version.pk, "name": version.name, "number": version.number, "kind": version.kind},
        "api_keys": [_key_ref(key) for key in deployments.keys_of(deployment) if shown is None or key.pk in shown],
        "created_by": deployment.created_by.get_username() if deployment.created_by else None,
        "created_at": deployment.created_at,
    }


def _deployment(access: TeamAccess, deployment_id: int) -> Deployment:
    return get_object_or_404(deployments.visible_deployments(access), pk=deployment_id)


def _keys(access: TeamAccess, ids: list[int]) -> list[TeamAPIKey]:
    """The team's active keys with these ids; 400 naming the ids that are not."""
    found = {key.pk: key for key in deployments.scopable_keys(access).filter(pk__in=ids)}
    missing = [str(key_id) for key_id in dict.fromkeys(ids) if key_id not in found]
    if missing:
        raise ValidationError({"api_keys": [f"no active API key {', '.join(missing)} in this team (GET keys/)"]})
    return list(found.values())


def _row_out(row: UsageRow) -> dict[str, Any]:
    return {
        "label": row.label, "deployment_id": row.deployment_id, "key_id": row.key_id, "requests": row.requests,
        "rate_limited": row.rate_limited, "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
    }  # fmt: skip


# --- deployments --------------------------------------------------------------------------------


@router.get("teams/{slug}/deployments", response={200: list[DeploymentOut], 404: Error}, summary="List deployments")
def list_deployments(request: HttpRequest, slug: str) -> list[dict[str, Any]]:
    """The team's deployments with their model version and the keys that may call them."""
    access = team_access(request, slug)
    return [_deployment_out(access, deployment) for deployment in deployments.visible_deployments(access)]


@router.post(
    "teams/{slug}/deployments",
    response={201: DeploymentOut, 400: Error, 403: Error, 404: Error},
    summary="Deploy a model version",
)
def create_deployment(request: HttpRequest, slug: str, body: DeploymentIn) -> Status:
    """Publish a model version under ``name`` for /v1 (owners and admins); ``api_keys`` may call it."""
    access = team_access(request, slug)
    access.require(Perm.MANAGE_DEPLOYMENTS)
    version = deployments.deployable_versions(access).filter(pk=body.model_version).first()
    if version is None:
        raise ValidationError(
            {"model_version": [f"no model version {body.model_version} you may use in this team (GET model-versions)"]}
        )
    deployment = deployments.create_deployment(
        access=access, name=body.name, version=version, api_keys=_keys(access, body.api_keys),
        description=body.description, ip=client_ip(request),
    )  # fmt: skip
    return Status(201, _deployment_out(access, _deployment(access, deployment.pk)))


@router.get(
    "teams/{slug}/deployments/{deployment_id}", response={200: DeploymentOut, 404: Error}, summary="Get a deployment"
)
def deployment_detail(request: HttpRequest, slug: str, deployment_id: ObjectId) -> dict[str, Any]:
    """One deployment: its model version and the keys that may call it."""
    access = team_access(request, slug)
    return _deployment_out(access, _deployment(access, deployment_id))


@router.patch(
    "teams/{slug}/deployments/{deployment_id}/keys",
    response={200: DeploymentOut, 400: Error, 403: Error, 404: Error},
    summary="Set a deployment's keys",
)
def set_deployment_keys(request: HttpRequest, slug: str, deployment_id: ObjectId, body: KeysIn) -> dict[str, Any]:
    """Make exactly ``api_keys`` the team keys that may call the deployment (owners and admins)."""
    access = team_access(request, slug)
    access.require(Perm.MANAGE_DEPLOYMENTS)
    deployment = _deployment(access, deployment_id)
    deployments.set_deployment_keys(
        access=access, deployment=deployment, api_keys=_keys(access, body.api_keys), ip=client_ip(request)
    )
    return _deployment_out(access, deployment)


@router.delete(
    "teams/{slug}/deployments/{deployment_id}",
    response={204: None, 403: Error, 404: Error},
    summary="Delete a deployment",
)
def delete_deployment(request: HttpRequest, slug: str, deployment_id: ObjectId) -> Status:
    """Remove the deployment: its name answers 404 at /v1 from then on (owners and admins)."""
    access = team_access(request, slug)
    access.require(Perm.MANAGE_DEPLOYMENTS)
    deployments.delete_deployment(access=access, deployment=_deployment(access, deployment_id), ip=client_ip(request))
    return Status(204, None)


# --- usage --------------------------------------------------------------------------------------


@router.get("teams/{slug}/usage", response={200: UsageOut, 404: Error}, summary="Team usage")
def usage(request: HttpRequest, slug: str, filters: Query[UsageFilters]) -> dict[str, Any]:
    """Tokens per day by source (api, playground, arena), and /v1 requests and tokens per deployment and key."""
    access = team_access(request, slug)
    summary = deployments.usage_summary(
        access.team, days=filters.days, visible_keys=deployments.visible_key_ids(access)
    )
    return {
        "since": summary.since,
        "days": [{"day": day.day, **day.tokens} for day in summary.days],
        "totals": summary.totals,
        "deployments": [_row_out(row) for row in summary.by_deployment],
        "keys": [_row_out(row) for row in summary.by_key],
    }


# --- playground feedback ------------------------------------------------------------------------


@router.post(
    "teams/{slug}/playground/feedback/export",
    response={201: FeedbackExportOut, 400: Error, 403: Error, 404: Error},
    summary="Export playground votes as a feedback dataset",
)
def export_feedback(request: HttpRequest, slug: str) -> Status:
    """Turn the thumbs up/down votes not exported yet into a new version of the "Playground feedback" dataset.

    The rows are prompt, completion and label (TRL's unpaired preference format, for KTO); the version is
    validated in the background like any upload. 400 when there is nothing new to export.
    """
    access = team_access(request, slug)
    result = feedback.export_feedback(access=access, ip=client_ip(request))
    version = result.version
    out = {
        "dataset_id": version.dataset_id, "number": version.number, "status": version.status,
        "exported": result.exported, "left_out": result.left_out, "restricted": result.restricted,
    }  # fmt: skip
    return Status(201, out)
