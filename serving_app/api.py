"""REST endpoints for deployments, usage and feedback under /api/v1/teams/<slug>/ (the /v1 OpenAI API is separate).

``POST deployments`` publishes a model version under a name, ``PATCH deployments/{id}/keys`` sets which
team API keys may call it; ``POST deployments/{id}/promote`` publishes another version through the deployment's
gate (to all traffic or as a canary), ``POST deployments/{id}/rollback`` returns to a version it served before,
``POST deployments/{id}/canary/stop`` ends a canary and ``GET deployments/{id}/releases`` is the promotion
history; ``GET usage`` returns the numbers of the usage page, ``POST
playground/feedback/export`` turns the playground's thumbs up/down votes into a feedback dataset version.
Access is resolved as in the other routers: a member's token, or a team API key acting in its own team with
its role.

No ``from __future__ import annotations`` here: django-ninja reads the annotations at runtime.
"""

from datetime import date, datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Query, Router, Schema, Status
from ninja.pagination import paginate

from accounts import costs
from accounts.api import Error, ObjectId, Pagination, RequestBody, team_access
from accounts.http import client_ip
from accounts.models import TeamAPIKey
from accounts.permissions import TeamAccess
from accounts.roles import Perm
from serving_app import completions, deployments, feedback, releases
from serving_app.deployments import UsageRow
from serving_app.models import Deployment, Release, StoredCompletion
from training_app.models import ModelVersion
from training_app.services import visible_versions

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


class CanaryOut(Schema):
    model_version: ModelVersionRef
    share: int = Field(description="Percent of /v1 requests the canary answers.")


class DeploymentOut(Schema):
    id: int
    name: str = Field(description="What clients send as `model` at /v1.")
    description: str
    model_version: ModelVersionRef
    canary: CanaryOut | None = Field(description="The version taking a share of requests while it proves itself.")
    gate: dict[str, Any] = Field(description="What a version must pass to be published here (PUT .../gate).")
    store_completions: bool = Field(description="Whether /v1 exchanges are kept (redacted).")
    completion_retention_days: int
    api_keys: list[KeyRef] = Field(description="The team API keys that may call it (those visible to you).")
    created_by: str | None
    created_at: datetime


class PromoteIn(RequestBody):
    model_version: ObjectId = Field(description="Id of a model version you may use (GET model-versions).")
    canary_share: int = Field(
        0, strict=True, ge=0, le=releases.MAX_CANARY_SHARE, description="0: all traffic; 1–99: a canary."
    )
    override_reason: str = Field(
        "", max_length=1000, description="Publish a version that fails the gate (deployments.override): why."
    )


class RollbackIn(RequestBody):
    model_version: ObjectId | None = Field(
        None, description="A version the deployment served before; default: the one the current version replaced."
    )


class CompletionStorageIn(RequestBody):
    store: bool = Field(strict=True, description="Keep each /v1 exchange, redacted, for distillation and fine-tuning.")
    retention_days: int = Field(
        30, strict=True, ge=1, le=completions.MAX_RETENTION_DAYS, description="Days a stored one is kept."
    )


class StoredCompletionOut(Schema):
    id: int
    created_at: datetime
    model_version_id: int | None
    model_version: str
    messages: list[dict[str, Any]] = Field(description="The conversation sent, redacted.")
    answer: str = Field(description="The answer given, redacted.")
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    redactions: dict[str, int] = Field(description="What the PII scan replaced, per kind.")
    exported_at: datetime | None

    @staticmethod
    def resolve_model_version(completion: StoredCompletion) -> str:
        return completion.version_label


class CompletionExportOut(Schema):
    dataset_id: int
    number: int = Field(description="The new dataset version's number.")
    status: str = Field(description="Its validation status: validated in the background.")
    exported: int
    left_out: int = Field(description="Exchanges ending in tool calls, or empty: they make no chat row.")


class GateCheckOut(Schema):
    name: str
    passed: bool | None = Field(description="None: not measured on the version yet.")
    detail: str
    url: str


class ReleaseOut(Schema):
    id: int
    action: str = Field(description="created, promoted, rolled_back, canary_started or canary_stopped.")
    model_version_id: int | None
    model_version: str = Field(description="The version's label (kept when the version is deleted).")
    previous_version_id: int | None
    previous_version: str
    canary_share: int
    gate: dict[str, Any] = Field(description='{"passed": bool, "checks": [...]} when a gate was checked.')
    overridden: bool
    reason: str
    created_by: str | None
    created_at: datetime

    @staticmethod
    def resolve_model_version(release: Release) -> str:
        return release.version_label

    @staticmethod
    def resolve_previous_version(release: Release) -> str:
        return release.previous_label

    @staticmethod
    def resolve_created_by(release: Release) -> str | None:
        return release.created_by.get_username() if release.created_by else None


class DeploymentCreated(DeploymentOut):
    budget_warning: str | None = Field(
        description="Set while this month's spend is past the team's soft budget (the deployment is still made): the "
        "message the pages show, naming the spend, the limits and the Costs page."
    )


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


def _version_ref(version: ModelVersion) -> dict[str, Any]:
    return {"id": version.pk, "name": version.name, "number": version.number, "kind": version.kind}


def _deployment_out(access: TeamAccess, deployment: Deployment) -> dict[str, Any]:
    shown = deployments.visible_key_ids(access)
    canary = deployment.canary_version
    return {
        "id": deployment.pk,
        "name": deployment.name,
        "description": deployment.description,
        "model_version": _version_ref(deployment.model_version),
        "canary": {"model_version": _version_ref(canary), "share": deployment.canary_share} if canary else None,
        "gate": deployment.gate or {},
        "store_completions": deployment.store_completions,
        "completion_retention_days": deployment.completion_retention_days,
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
    response={201: DeploymentCreated, 400: Error, 403: Error, 404: Error},
    summary="Deploy a model version",
)
def create_deployment(request: HttpRequest, slug: str, body: DeploymentIn) -> Status:
    """Publish a model version under ``name`` for /v1 (owners and admins); ``api_keys`` may call it. A version whose
    model card lacks its intended use, out-of-scope uses or known limitations gets 400 (PATCH model-versions/{id})."""
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
    budget = costs.budget_status(access.team)
    warning = budget.message if budget.state == "warning" else None
    return Status(201, {**_deployment_out(access, _deployment(access, deployment.pk)), "budget_warning": warning})


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


def _version_to_publish(access: TeamAccess, version_id: int) -> ModelVersion:
    version = deployments.deployable_versions(access).filter(pk=version_id).first()
    if version is None:
        message = f"no model version {version_id} you may use in this team (GET model-versions)"
        raise ValidationError({"model_version": [message]})
    return version


@router.post(
    "teams/{slug}/deployments/{deployment_id}/promote",
    response={200: DeploymentOut, 400: Error, 403: Error, 404: Error},
    summary="Promote a version",
)
def promote(request: HttpRequest, slug: str, deployment_id: ObjectId, body: PromoteIn) -> dict[str, Any]:
    """Publish a version to all traffic (``canary_share`` 0) or as a canary, through the deployment's gate (owners
    and admins). A version failing the gate gets 400 listing the failed checks, unless an owner gives
    ``override_reason``; the release history keeps the gate's report and the reason. A version whose model card is
    incomplete (intended use, out of scope, known limitations) gets 400, with no override."""
    access = team_access(request, slug)
    access.require(Perm.MANAGE_DEPLOYMENTS)
    deployment = _deployment(access, deployment_id)
    releases.promote(
        access=access, deployment=deployment, version=_version_to_publish(access, body.model_version),
        canary_share=body.canary_share, override_reason=body.override_reason, ip=client_ip(request),
    )  # fmt: skip
    return _deployment_out(access, _deployment(access, deployment_id))


@router.get(
    "teams/{slug}/deployments/{deployment_id}/gate-check/{version_id}",
    response={200: list[GateCheckOut], 400: Error, 404: Error},
    summary="Check a version against the gate",
)
def gate_check(request: HttpRequest, slug: str, deployment_id: ObjectId, version_id: ObjectId) -> list[Any]:
    """What the deployment's gate says of a model version now: each check passed, failed or not measured."""
    access = team_access(request, slug)
    deployment = _deployment(access, deployment_id)
    version = get_object_or_404(visible_versions(access, "view"), pk=version_id)
    return list(releases.check_gate(deployment, version).checks)


@router.post(
    "teams/{slug}/deployments/{deployment_id}/rollback",
    response={200: DeploymentOut, 400: Error, 403: Error, 404: Error},
    summary="Roll back a deployment",
)
def rollback(
    request: HttpRequest, slug: str, deployment_id: ObjectId, body: RollbackIn | None = None
) -> dict[str, Any]:
    """All traffic back to a version the deployment served before (default: the one the current version
    replaced); ends any canary. No gate: the version served this deployment already (owners and admins)."""
    access = team_access(request, slug)
    access.require(Perm.MANAGE_DEPLOYMENTS)
    deployment = _deployment(access, deployment_id)
    chosen = body.model_version if body is not None else None
    version = _version_to_publish(access, chosen) if chosen is not None else None
    releases.rollback(access=access, deployment=deployment, version=version, ip=client_ip(request))
    return _deployment_out(access, _deployment(access, deployment_id))


@router.post(
    "teams/{slug}/deployments/{deployment_id}/canary/stop",
    response={200: DeploymentOut, 400: Error, 403: Error, 404: Error},
    summary="Stop a deployment's canary",
)
def stop_canary(request: HttpRequest, slug: str, deployment_id: ObjectId) -> dict[str, Any]:
    """End the running canary: the current version answers all traffic again (owners and admins)."""
    access = team_access(request, slug)
    access.require(Perm.MANAGE_DEPLOYMENTS)
    releases.stop_canary(access=access, deployment=_deployment(access, deployment_id), ip=client_ip(request))
    return _deployment_out(access, _deployment(access, deployment_id))


@router.get(
    "teams/{slug}/deployments/{deployment_id}/releases",
    response={200: list[ReleaseOut], 404: Error},
    summary="A deployment's release history",
)
def list_releases(request: HttpRequest, slug: str, deployment_id: ObjectId) -> list[Release]:
    """Every change of what the deployment serves, newest first, with the gate's report and any override."""
    access = team_access(request, slug)
    return releases.history(_deployment(access, deployment_id))


@router.put(
    "teams/{slug}/deployments/{deployment_id}/completions/storage",
    response={200: DeploymentOut, 400: Error, 403: Error, 404: Error},
    summary="Set completion storage",
)
def set_completion_storage(
    request: HttpRequest, slug: str, deployment_id: ObjectId, body: CompletionStorageIn
) -> dict[str, Any]:
    """Turn storing the deployment's /v1 exchanges on or off and set their retention (owners and admins)."""
    access = team_access(request, slug)
    access.require(Perm.MANAGE_DEPLOYMENTS)
    deployment = _deployment(access, deployment_id)
    completions.set_storage(
        access=access, deployment=deployment, store=body.store, retention_days=body.retention_days,
        ip=client_ip(request),
    )  # fmt: skip
    return _deployment_out(access, _deployment(access, deployment_id))


@router.get(
    "teams/{slug}/deployments/{deployment_id}/completions",
    response={200: list[StoredCompletionOut], 403: Error, 404: Error},
    summary="List stored completions",
)
@paginate(Pagination)
def list_stored_completions(request: HttpRequest, slug: str, deployment_id: ObjectId) -> QuerySet[StoredCompletion]:
    """The deployment's stored exchanges, newest first (owners and admins: they hold what clients sent)."""
    access = team_access(request, slug)
    access.require(Perm.MANAGE_DEPLOYMENTS)
    return completions.stored(_deployment(access, deployment_id)).order_by("-created_at", "-pk")


@router.post(
    "teams/{slug}/deployments/{deployment_id}/completions/export",
    response={201: CompletionExportOut, 400: Error, 403: Error, 404: Error},
    summary="Export stored completions as a dataset",
)
def export_stored_completions(request: HttpRequest, slug: str, deployment_id: ObjectId) -> Status:
    """The stored completions not exported yet as a new version of the chat dataset "<name> completions", whose
    description names the deployment and the versions that answered. 400 when there is nothing to export."""
    access = team_access(request, slug)
    access.require(Perm.MANAGE_DEPLOYMENTS)
    export = completions.export_completions(
        access=access, deployment=_deployment(access, deployment_id), ip=client_ip(request)
    )
    version = export.version
    return Status(201, {
        "dataset_id": version.dataset_id, "number": version.number, "status": version.status,
        "exported": export.exported, "left_out": export.left_out,
    })  # fmt: skip


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
