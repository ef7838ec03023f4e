"""REST endpoints for guard policies: ``GET``/``PUT deployments/{id}/guard-policy`` (every member reads, owners and
admins write), ``GET deployments/{id}/guard-policy/revisions`` and ``GET guard-activity`` (what the team's
policies did, counted per day). See ``serving_app.guardrails``.

No ``from __future__ import annotations`` here: django-ninja reads the annotations at runtime.
"""

from datetime import date, datetime
from typing import Any

from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Query, Router, Schema

from accounts.api import Error, ObjectId, RequestBody, team_access
from accounts.http import client_ip
from accounts.roles import Perm
from serving_app import deployments, guardrails
from serving_app.models import GuardPolicy

router = Router(tags=["guardrails"])


class TopicIO(Schema):
    name: str = Field(max_length=80)
    terms: list[str] = Field(default_factory=list, max_length=500)
    patterns: list[str] = Field(default_factory=list, max_length=100)


class GuardPolicyOut(Schema):
    revision: int
    enabled: bool
    redact_input_pii: bool
    redact_output_pii: bool
    blocked_topics: list[TopicIO]
    guard_model_key: str = Field(description="A model key (`base:<id>` or `version:<id>`) or empty: no guard model.")
    guard_model_label: str
    guard_prompt: str
    guard_checks: str = Field(description="input, output or both: what the guard model is asked about.")
    max_answer_chars: int | None
    refusal_message: str
    fail_closed: bool


class GuardPolicyIn(RequestBody):
    """Any of the policy's settings; those left out keep their value (or the default, for a new policy)."""

    enabled: bool | None = None
    redact_input_pii: bool | None = None
    redact_output_pii: bool | None = None
    blocked_topics: list[TopicIO] | None = None
    guard_model_key: str | None = Field(None, max_length=40)
    guard_prompt: str | None = Field(None, max_length=8000)
    guard_checks: str | None = None
    max_answer_chars: int | None = Field(None, ge=0, description="0 removes the cap.")
    refusal_message: str | None = Field(None, max_length=1000)
    fail_closed: bool | None = None


class RevisionOut(Schema):
    revision: int
    document: dict[str, Any]
    created_by: str | None
    created_at: datetime


class GuardCategoryOut(Schema):
    action: str
    stage: str
    category: str
    count: int


class GuardActivityOut(Schema):
    days: list[date]
    per_day: dict[str, list[int]] = Field(description="Action → one count per day (a finding counts once).")
    totals: dict[str, int]
    categories: list[GuardCategoryOut]


def _policy(request: HttpRequest, slug: str, deployment_id: int) -> GuardPolicy:
    access = team_access(request, slug)
    deployment = get_object_or_404(deployments.visible_deployments(access), pk=deployment_id)
    policy = guardrails.policy_of(deployment)
    if policy is None:
        raise Http404("This deployment has no guard policy yet: PUT one.")
    return policy


@router.get(
    "teams/{slug}/deployments/{deployment_id}/guard-policy",
    response={200: GuardPolicyOut, 403: Error, 404: Error},
    summary="A deployment's guard policy",
)
def get_guard_policy(request: HttpRequest, slug: str, deployment_id: ObjectId) -> dict[str, Any]:
    return guardrails.document(_policy(request, slug, deployment_id))


@router.put(
    "teams/{slug}/deployments/{deployment_id}/guard-policy",
    response={200: GuardPolicyOut, 400: Error, 403: Error, 404: Error},
    summary="Set a deployment's guard policy",
)
def put_guard_policy(request: HttpRequest, slug: str, deployment_id: ObjectId, body: GuardPolicyIn) -> dict[str, Any]:
    """Create or change the policy (owners and admins); each change is a new revision, the old one kept."""
    access = team_access(request, slug)
    access.require(Perm.MANAGE_DEPLOYMENTS)
    deployment = get_object_or_404(deployments.visible_deployments(access), pk=deployment_id)
    settings = body.model_dump(exclude_none=True)
    if settings.get("max_answer_chars") == 0:
        settings["max_answer_chars"] = None
    policy = guardrails.save_policy(access=access, deployment=deployment, settings=settings, ip=client_ip(request))
    return guardrails.document(policy)


@router.get(
    "teams/{slug}/deployments/{deployment_id}/guard-policy/revisions",
    response={200: list[RevisionOut], 403: Error, 404: Error},
    summary="A guard policy's revisions",
)
def list_guard_revisions(request: HttpRequest, slug: str, deployment_id: ObjectId) -> list[dict[str, Any]]:
    return [
        {"revision": r.revision, "document": r.document, "created_at": r.created_at,
         "created_by": r.created_by.get_username() if r.created_by else None}
        for r in guardrails.revisions(_policy(request, slug, deployment_id))
    ]  # fmt: skip


class ActivityQuery(Schema):
    days: int = Field(30, ge=1, le=365)
    deployment: int | None = Field(None, ge=1)


@router.get("teams/{slug}/guard-activity", response={200: GuardActivityOut, 403: Error, 404: Error},
            summary="What the team's guard policies did")  # fmt: skip
def guard_activity(request: HttpRequest, slug: str, query: Query[ActivityQuery]) -> dict[str, Any]:
    """Blocks, redactions, cuts and failed checks per day over ``days`` days (of one deployment if given)."""
    access = team_access(request, slug)
    deployment = (
        get_object_or_404(deployments.visible_deployments(access), pk=query.deployment) if query.deployment else None
    )
    activity = guardrails.activity(access.team, days=query.days, deployment=deployment)
    return {
        "days": activity.days, "per_day": activity.per_day, "totals": dict(activity.totals),
        "categories": [{"action": a, "stage": s, "category": c, "count": n} for a, s, c, n in activity.categories],
    }  # fmt: skip
