"""Tenant isolation sweep: an outsider gets 404 on every team route, and changes nothing.

Every Django URL pattern with a ``team_slug`` and every API operation with a ``{slug}`` is found by
walking the URL resolver and the django-ninja routers, and must have an entry in ``SWEEP`` saying how
to fill its other parameters with acme's objects (a meta-test fails on a route missing from the
table, or on a stale entry). The outsider is charlie, owner of globex: signed in for the pages, with
his personal token, and with a globex team API key, for the API. The same table drives the converse
attack: acme's owner naming globex's objects under /t/acme/ finds nothing.

Both teams and their objects are built once for the module (``teams``); each test runs in a savepoint
that is rolled back, so a write that got through would show in that test's ``team_state`` and nowhere
else. Pages are swept with GET and POST: ``TeamScopeMiddleware`` answers in ``process_view``, before any
view is dispatched and whatever the method, and CSRF treats every unsafe method alike, so PUT, PATCH and
DELETE are swept on one route and the middleware's ordering is proven directly
(``test_team_scope_answers_outsiders_before_the_view_runs`` and its neighbours).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.http import Http404, HttpRequest, HttpResponse
from django.test import Client, RequestFactory, override_settings
from django.urls import reverse

from accounts import services
from accounts.middleware import TeamScopeMiddleware
from accounts.models import (
    Invitation,
    Membership,
    Team,
    TeamAPIKey,
)
from accounts.permissions import resolve_access, resolve_key_access
from accounts.roles import Role
from datasets_app.models import DatasetVersion
from evals_app.models import Distillation, EvalRun, EvalSuite, ProbeRun, ProbeSet
from exports_app.models import ModelExport
from serving_app.models import ArenaBattle, Comparison, Deployment, PlaygroundVote, PromptPreset
from tests.factories import finished_job, http_tool_form, member, ready_version, sample_tool, sql_tool_form
from tests.routes import API_ROOT, api_team_operations, page_team_routes, team_state
from tools_app import services as tool_services
from tools_app.models import McpServer, Tool, ToolApproval, ToolGrant
from training_app import presets
from training_app.models import BaseModel, ModelVersion, TrainingJob

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

PAGE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Django masks the CSRF token afresh in every response (64 letters and digits): not a difference.
CSRF_TOKEN = re.compile(rb"\b[A-Za-z0-9]{64}\b")
# The CSP nonce is fresh in every response too (in ``nonce="…"`` attributes and htmx's config).
CSP_NONCE = re.compile(rb'(nonce="|Nonce": ")[A-Za-z0-9+/=_-]+')


# --- a team's objects, and how each route is filled with them -----------------------------------


@dataclass(frozen=True)
class TeamObjects:
    """One of each thing a team route can name, all belonging to one team."""

    team: Team
    member: Membership  # a plain member (bob in acme)
    invitation: Invitation  # pending
    key: TeamAPIKey  # shared with that member at the "view" level
    version: DatasetVersion  # version 1 of a ready, unrestricted dataset
    model: BaseModel  # a base model of the team's own
    job: TrainingJob  # a finished job on ``version``
    model_version: ModelVersion  # the job's model version (unrestricted)
    deployment: Deployment  # ``model_version`` published, callable with ``key``
    comparison: Comparison  # saved by the owner, opened to the whole team
    preset: PromptPreset
    battle: ArenaBattle  # an owner's arena battle, not voted yet
    tool: Tool  # an HTTP tool
    grant: ToolGrant  # the tool granted to the deployment, triggered by the key
    approval: ToolApproval  # a call of the tool through the key, waiting for approval
    mcp_server: McpServer  # registered, its tools not imported
    eval_suite: EvalSuite  # on ``version``, one exact_match grader
    eval_run: EvalRun  # of ``eval_suite`` on ``model_version``, queued
    probe_set: ProbeSet  # two templates, two groups of one category
    probe_run: ProbeRun  # of ``probe_set`` on ``model_version``, queued
    distillation: Distillation  # ``model_version`` answering ``version``, queued
    export: ModelExport | None = None  # a queued bundle export of ``model_version``


def _nothing(objects: TeamObjects) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Probe:
    """How to fill a team route's other parameters, and the body a request sends to try a change."""

    params: Callable[[TeamObjects], dict[str, Any]] = _nothing
    body: Callable[[TeamObjects], dict[str, Any]] = _nothing


def _member_id(o: TeamObjects) -> dict[str, Any]:
    return {"membership_id": o.member.pk}


def _invitation_id(o: TeamObjects) -> dict[str, Any]:
    return {"invitation_id": o.invitation.pk}


def _key_id(o: TeamObjects) -> dict[str, Any]:
    return {"key_id": o.key.pk}


def _username(o: TeamObjects) -> dict[str, Any]:
    return {"username": o.member.user.get_username()}


def _key_and_username(o: TeamObjects) -> dict[str, Any]:
    return {**_key_id(o), **_username(o)}


def _dataset_id(o: TeamObjects) -> dict[str, Any]:
    return {"dataset_id": o.version.dataset_id}


def _version(o: TeamObjects) -> dict[str, Any]:
    return {"dataset_id": o.version.dataset_id, "number": o.version.number}


def _model_id(o: TeamObjects) -> dict[str, Any]:
    return {"model_id": o.model.pk}


def _job_id(o: TeamObjects) -> dict[str, Any]:
    return {"job_id": o.job.pk}


def _model_version_id(o: TeamObjects) -> dict[str, Any]:
    return {"version_id": o.model_version.pk}


def _model_version_key(o: TeamObjects) -> dict[str, Any]:
    return {"key": f"version:{o.model_version.pk}"}


def _deployment_id(o: TeamObjects) -> dict[str, Any]:
    return {"deployment_id": o.deployment.pk}


def _distillation_id(o: TeamObjects) -> dict[str, Any]:
    return {"distillation_id": o.distillation.pk}


def _export_id(o: TeamObjects) -> dict[str, Any]:
    return {"export_id": o.export.pk if o.export else 0}


def _distill_body(o: TeamObjects) -> dict[str, Any]:
    return {"name": "planted", "teacher": f"version:{o.model_version.pk}", "prompts": o.version.pk}


def _promote_body(o: TeamObjects) -> dict[str, Any]:
    """A canary of the team's own version (the deployment already serves it: the attacker's change is the share)."""
    return {"model_version": o.model_version.pk, "canary_share": 50, "override_reason": "planted"}


def _comparison_id(o: TeamObjects) -> dict[str, Any]:
    return {"comparison_id": o.comparison.pk}


def _preset_id(o: TeamObjects) -> dict[str, Any]:
    return {"preset_id": o.preset.pk}


def _tool_id(o: TeamObjects) -> dict[str, Any]:
    return {"tool_id": o.tool.pk}


def _grant_id(o: TeamObjects) -> dict[str, Any]:
    return {"tool_id": o.tool.pk, "grant_id": o.grant.pk}


def _grant_body(o: TeamObjects) -> dict[str, Any]:
    return {"deployment": o.deployment.pk, "roles": ["viewer"], "api_keys": [o.key.pk], "approval": "never",
            "argument_constraints": ""}  # fmt: skip


def _server_id(o: TeamObjects) -> dict[str, Any]:
    return {"server_id": o.mcp_server.pk}


def _server_body(o: TeamObjects) -> dict[str, Any]:
    return {"name": "planted", "url": "https://attacker.example/mcp", "timeout_s": 10, "max_response_bytes": 100_000}


def _suite_id(o: TeamObjects) -> dict[str, Any]:
    return {"suite_id": o.eval_suite.pk}


def _run_id(o: TeamObjects) -> dict[str, Any]:
    return {"run_id": o.eval_run.pk}


def _suite_form(o: TeamObjects) -> dict[str, Any]:
    return {"name": "planted", "dataset_version": o.version.pk, "graders": '[{"type": "exact_match"}]'}


def _probe_set_id(o: TeamObjects) -> dict[str, Any]:
    return {"set_id": o.probe_set.pk}


def _probe_set_form(o: TeamObjects) -> dict[str, Any]:
    groups = "gender / women: a woman\ngender / men: a man"
    return {"name": "planted", "templates": "Describe {person}.", "groups": groups}


def _probe_set_body(o: TeamObjects) -> dict[str, Any]:
    pairs = (("women", "a woman"), ("men", "a man"))
    groups = [{"category": "gender", "group": name, "terms": [term]} for name, term in pairs]
    return {"name": "planted", "templates": ["Describe {person}."], "groups": groups}


def _policy_body(o: TeamObjects) -> dict[str, Any]:
    return {"max_perplexity_increase": 9, "max_pass_rate_drop": 1, "max_bias_gap": 1}


def _approval_id(o: TeamObjects) -> dict[str, Any]:
    return {"approval_id": o.approval.public_id}


def _launch(o: TeamObjects) -> dict[str, Any]:
    return {"name": "planted", "base_model": o.model.pk, "dataset_version": o.version.pk, "pool": "idle",
            "settings": {"max_steps": 1}}  # fmt: skip


def _launch_form(o: TeamObjects) -> dict[str, Any]:
    settings = {key.replace(".", "__"): value for key, value in presets.defaults().items() if value is not None}
    return {"name": "planted", "base_model": o.model.pk, "dataset_version": o.version.pk, "pool": "idle", **settings}


def _download(o: TeamObjects) -> dict[str, Any]:
    return {**_version(o), "fmt": "jsonl"}


Route = str | tuple[str, str]
PLANTED_PRESET = {"name": "planted", "system_prompt": "Obey Mallory.", "temperature": 0.7, "top_p": 1, "max_tokens": 64}

# Django routes by URL name; API operations by (method, path). The bodies ask for the most damaging
# change each route can make, so a missing check would show up as a changed database.
SWEEP: dict[Route, Probe] = {
    "team_dashboard": Probe(),
    "accounts:team_home": Probe(),
    "accounts:team_settings": Probe(
        body=lambda o: {"name": "Taken over", "currency": "USD", "acceptable_use_policy": "Taken over"}
    ),
    "accounts:audit_log": Probe(),
    "accounts:invitation_create": Probe(body=lambda o: {"role": Role.OWNER, "email": "mallory@example.com"}),
    "accounts:invitation_revoke": Probe(params=_invitation_id),
    "accounts:member_role": Probe(params=_member_id, body=lambda o: {"role": Role.VIEWER}),
    "accounts:member_remove": Probe(params=_member_id),
    "accounts:api_keys": Probe(body=lambda o: {"name": "exfiltrate", "role": Role.MEMBER}),
    "accounts:api_key_detail": Probe(params=_key_id),
    "accounts:api_key_revoke": Probe(params=_key_id),
    "accounts:api_key_share": Probe(params=_key_id, body=lambda o: {"member": o.member.pk, "level": "change"}),
    "serving:key_deployments": Probe(params=_key_id, body=lambda o: {"deployments": []}),
    ("GET", "/api/v1/teams/{slug}/"): Probe(),
    ("GET", "/api/v1/teams/{slug}/members/"): Probe(),
    ("PATCH", "/api/v1/teams/{slug}/members/{username}"): Probe(params=_username, body=lambda o: {"role": "viewer"}),
    ("DELETE", "/api/v1/teams/{slug}/members/{username}"): Probe(params=_username),
    ("GET", "/api/v1/teams/{slug}/invitations/"): Probe(),
    ("POST", "/api/v1/teams/{slug}/invitations/"): Probe(body=lambda o: {"role": "owner", "email": ""}),
    ("DELETE", "/api/v1/teams/{slug}/invitations/{invitation_id}"): Probe(params=_invitation_id),
    ("GET", "/api/v1/teams/{slug}/keys/"): Probe(),
    ("POST", "/api/v1/teams/{slug}/keys/"): Probe(
        body=lambda o: {"name": "exfiltrate", "role": "member", "accept_acceptable_use": True}
    ),
    ("DELETE", "/api/v1/teams/{slug}/keys/{key_id}"): Probe(params=_key_id),
    ("POST", "/api/v1/teams/{slug}/keys/{key_id}/shares"): Probe(
        params=_key_id, body=lambda o: {"username": o.member.user.get_username(), "level": "change"}
    ),
    ("DELETE", "/api/v1/teams/{slug}/keys/{key_id}/shares/{username}"): Probe(params=_key_and_username),
    ("GET", "/api/v1/teams/{slug}/audit-events/"): Probe(),
    "training:models": Probe(),
    "training:model_detail": Probe(params=_model_id),
    "training:model_add_hub": Probe(body=lambda o: {"repo_id": "mallory/planted"}),
    "training:model_retry": Probe(params=_model_id),
    "training:model_delete": Probe(params=_model_id),
    "training:list": Probe(),
    "training:compare": Probe(),
    "training:new": Probe(body=_launch_form),
    "training:estimate": Probe(body=_launch_form),
    "training:job": Probe(params=_job_id),
    "training:cancel": Probe(params=_job_id),
    "training:job_delete": Probe(params=_job_id),
    "training:config": Probe(params=_job_id),
    "training:version": Probe(params=_model_version_id),
    "training:version_card": Probe(
        params=_model_version_id, body=lambda o: {"intended_use": "Taken over", "out_of_scope": "Taken over"}
    ),
    "training:version_download": Probe(params=_model_version_id),
    "training:version_delete": Probe(params=_model_version_id),
    "training:version_share": Probe(
        params=_model_version_id, body=lambda o: {"member": o.member.pk, "level": "change"}
    ),
    "datasets:list": Probe(body=lambda o: {"name": "planted"}),
    "datasets:sample": Probe(body=lambda o: {"sample": "chat"}),
    "datasets:mix": Probe(body=lambda o: {f"weight_{o.version.dataset_id}": "1", "name": "planted"}),
    "datasets:detail": Probe(params=_dataset_id),
    "datasets:upload_version": Probe(params=_dataset_id),
    "datasets:delete": Probe(params=_dataset_id),
    "datasets:edit": Probe(params=_dataset_id, body=lambda o: {"name": "Taken over", "restricted": "on"}),
    "datasets:share": Probe(params=_dataset_id, body=lambda o: {"member": o.member.pk, "level": "change"}),
    "datasets:version": Probe(params=_version),
    "datasets:rows": Probe(params=_version),
    "datasets:mapping": Probe(params=_version, body=lambda o: {"kind": "text", "column_text": "text"}),
    "datasets:mapping_preview": Probe(params=_version, body=lambda o: {"kind": "text", "column_text": "text"}),
    "datasets:keep_valid": Probe(params=_version),
    "datasets:curate": Probe(params=_version, body=lambda o: {"step": "redact_pii"}),
    "datasets:source": Probe(params=_version),
    "datasets:download": Probe(params=_download),
    ("GET", "/api/v1/teams/{slug}/datasets/"): Probe(),
    ("POST", "/api/v1/teams/{slug}/datasets/"): Probe(body=lambda o: {"name": "planted"}),
    ("POST", "/api/v1/teams/{slug}/datasets/samples"): Probe(body=lambda o: {"sample": "chat"}),
    ("POST", "/api/v1/teams/{slug}/datasets/mix"): Probe(
        body=lambda o: {"sources": [{"dataset_id": o.version.dataset_id, "weight": 1}] * 2}
    ),
    ("GET", "/api/v1/teams/{slug}/datasets/{dataset_id}"): Probe(params=_dataset_id),
    ("DELETE", "/api/v1/teams/{slug}/datasets/{dataset_id}"): Probe(params=_dataset_id),
    ("PATCH", "/api/v1/teams/{slug}/datasets/{dataset_id}"): Probe(
        params=_dataset_id, body=lambda o: {"name": "Taken over", "restricted": True}
    ),
    ("POST", "/api/v1/teams/{slug}/datasets/{dataset_id}/versions/"): Probe(params=_dataset_id),
    ("GET", "/api/v1/teams/{slug}/datasets/{dataset_id}/versions/{number}"): Probe(params=_version),
    ("GET", "/api/v1/teams/{slug}/datasets/{dataset_id}/versions/{number}/rows"): Probe(params=_version),
    ("POST", "/api/v1/teams/{slug}/datasets/{dataset_id}/versions/{number}/mapping"): Probe(
        params=_version, body=lambda o: {"kind": "text", "mapping": {"text": "text"}}
    ),
    ("POST", "/api/v1/teams/{slug}/datasets/{dataset_id}/versions/{number}/keep-valid"): Probe(params=_version),
    ("POST", "/api/v1/teams/{slug}/datasets/{dataset_id}/versions/{number}/curate"): Probe(
        params=_version, body=lambda o: {"step": "redact_pii"}
    ),
    ("GET", "/api/v1/teams/{slug}/datasets/{dataset_id}/versions/{number}/download"): Probe(params=_version),
    ("GET", "/api/v1/teams/{slug}/base-models"): Probe(),
    ("GET", "/api/v1/teams/{slug}/base-models/{model_id}"): Probe(params=_model_id),
    ("POST", "/api/v1/teams/{slug}/base-models"): Probe(body=lambda o: {"repo_id": "mallory/planted"}),
    ("POST", "/api/v1/teams/{slug}/base-models/{model_id}/retry"): Probe(params=_model_id),
    ("DELETE", "/api/v1/teams/{slug}/base-models/{model_id}"): Probe(params=_model_id),
    ("GET", "/api/v1/teams/{slug}/training/settings"): Probe(),
    ("POST", "/api/v1/teams/{slug}/training/estimate"): Probe(body=_launch),
    ("GET", "/api/v1/teams/{slug}/jobs"): Probe(),
    ("POST", "/api/v1/teams/{slug}/jobs"): Probe(body=_launch),
    ("GET", "/api/v1/teams/{slug}/jobs/{job_id}"): Probe(params=_job_id),
    ("GET", "/api/v1/teams/{slug}/jobs/{job_id}/config.yaml"): Probe(params=_job_id),
    ("GET", "/api/v1/teams/{slug}/jobs/{job_id}/logs"): Probe(params=_job_id),
    ("GET", "/api/v1/teams/{slug}/jobs/{job_id}/metrics"): Probe(params=_job_id),
    ("POST", "/api/v1/teams/{slug}/jobs/{job_id}/cancel"): Probe(params=_job_id),
    ("DELETE", "/api/v1/teams/{slug}/jobs/{job_id}"): Probe(params=_job_id),
    ("POST", "/api/v1/teams/{slug}/jobs/{job_id}/clone"): Probe(params=_job_id, body=lambda o: {"name": "planted"}),
    ("GET", "/api/v1/teams/{slug}/model-versions"): Probe(),
    ("GET", "/api/v1/teams/{slug}/model-versions/{version_id}"): Probe(params=_model_version_id),
    ("PATCH", "/api/v1/teams/{slug}/model-versions/{version_id}"): Probe(
        params=_model_version_id, body=lambda o: {"intended_use": "Taken over", "out_of_scope": "Taken over"}
    ),
    ("GET", "/api/v1/teams/{slug}/model-versions/{version_id}/card"): Probe(params=_model_version_id),
    ("GET", "/api/v1/teams/{slug}/model-versions/{version_id}/download"): Probe(params=_model_version_id),
    ("DELETE", "/api/v1/teams/{slug}/model-versions/{version_id}"): Probe(params=_model_version_id),
    "serving:playground": Probe(),
    "serving:model_engine": Probe(params=_model_version_key),
    "serving:comparisons": Probe(),
    "serving:comparison": Probe(params=_comparison_id),
    "serving:comparison_share": Probe(params=_comparison_id, body=lambda o: {"member": o.member.pk, "level": "change"}),
    "serving:comparison_delete": Probe(params=_comparison_id),
    "serving:presets": Probe(body=lambda o: PLANTED_PRESET),
    "serving:preset_delete": Probe(params=_preset_id),
    "serving:feedback_export": Probe(),
    "serving:arena": Probe(),
    "serving:leaderboard": Probe(),
    "serving:arena_export": Probe(),
    "serving:deployments": Probe(
        body=lambda o: {"name": "planted", "model_version": o.model_version.pk, "api_keys": o.key.pk}
    ),
    "serving:deployment": Probe(params=_deployment_id),
    "serving:deployment_keys": Probe(params=_deployment_id, body=lambda o: {"api_keys": []}),
    "serving:deployment_delete": Probe(params=_deployment_id),
    "serving:usage": Probe(),
    ("GET", "/api/v1/teams/{slug}/deployments"): Probe(),
    ("POST", "/api/v1/teams/{slug}/deployments"): Probe(
        body=lambda o: {"name": "planted", "model_version": o.model_version.pk, "api_keys": [o.key.pk]}
    ),
    ("GET", "/api/v1/teams/{slug}/deployments/{deployment_id}"): Probe(params=_deployment_id),
    ("PATCH", "/api/v1/teams/{slug}/deployments/{deployment_id}/keys"): Probe(
        params=_deployment_id, body=lambda o: {"api_keys": []}
    ),
    ("DELETE", "/api/v1/teams/{slug}/deployments/{deployment_id}"): Probe(params=_deployment_id),
    "serving:deployment_promote": Probe(params=_deployment_id, body=_promote_body),
    "evals:retrain": Probe(params=_deployment_id, body=lambda o: {"dataset_version": o.version.pk}),
    "evals:retrain_schedule": Probe(params=_deployment_id, body=lambda o: {"enabled": "on"}),
    ("POST", "/api/v1/teams/{slug}/deployments/{deployment_id}/retrains"): Probe(
        params=_deployment_id, body=lambda o: {"dataset_version": o.version.pk}
    ),
    ("GET", "/api/v1/teams/{slug}/deployments/{deployment_id}/retrains"): Probe(params=_deployment_id),
    ("PUT", "/api/v1/teams/{slug}/deployments/{deployment_id}/retrain-schedule"): Probe(
        params=_deployment_id, body=lambda o: {"enabled": True}
    ),
    "evals:distillations": Probe(body=_distill_body),
    "evals:distillation": Probe(params=_distillation_id),
    "evals:distillation_compare": Probe(params=_distillation_id, body=lambda o: {"suite": o.eval_suite.pk}),
    ("GET", "/api/v1/teams/{slug}/distillations"): Probe(),
    ("POST", "/api/v1/teams/{slug}/distillations"): Probe(body=_distill_body),
    ("GET", "/api/v1/teams/{slug}/distillations/{distillation_id}"): Probe(params=_distillation_id),
    ("POST", "/api/v1/teams/{slug}/distillations/{distillation_id}/compare"): Probe(
        params=_distillation_id, body=lambda o: {"suite": o.eval_suite.pk}
    ),
    "serving:deployment_completions": Probe(
        params=_deployment_id, body=lambda o: {"store": "on", "retention_days": 365}
    ),
    "serving:deployment_completions_export": Probe(params=_deployment_id),
    ("PUT", "/api/v1/teams/{slug}/deployments/{deployment_id}/completions/storage"): Probe(
        params=_deployment_id, body=lambda o: {"store": True, "retention_days": 365}
    ),
    ("GET", "/api/v1/teams/{slug}/deployments/{deployment_id}/completions"): Probe(params=_deployment_id),
    ("POST", "/api/v1/teams/{slug}/deployments/{deployment_id}/completions/export"): Probe(params=_deployment_id),
    "serving:deployment_rollback": Probe(params=_deployment_id),
    "serving:deployment_stop_canary": Probe(params=_deployment_id),
    "evals:gate": Probe(params=_deployment_id, body=lambda o: {"forgetting": "on"}),
    "evals:gate_run": Probe(params=_deployment_id, body=lambda o: {"version": o.model_version.pk}),
    "serving:deployment_guard": Probe(
        params=_deployment_id, body=lambda o: {"refusal_message": "planted", "guard_checks": "both"}
    ),
    "serving:guard_activity": Probe(),
    ("GET", "/api/v1/teams/{slug}/deployments/{deployment_id}/guard-policy"): Probe(params=_deployment_id),
    ("PUT", "/api/v1/teams/{slug}/deployments/{deployment_id}/guard-policy"): Probe(
        params=_deployment_id, body=lambda o: {"refusal_message": "planted"}
    ),
    ("GET", "/api/v1/teams/{slug}/deployments/{deployment_id}/guard-policy/revisions"): Probe(params=_deployment_id),
    ("GET", "/api/v1/teams/{slug}/guard-activity"): Probe(),
    "evals:guard_tests": Probe(params=_deployment_id),
    "evals:guard_test_run": Probe(params=_deployment_id, body=lambda o: {"suite": o.eval_suite.pk}),
    "evals:guard_gate": Probe(
        params=_deployment_id,
        body=lambda o: {
            "suite": o.eval_suite.pk,
            "require": "on",
            "max_false_positive_rate": 10,
            "max_false_negative_rate": 10,
        },
    ),
    ("GET", "/api/v1/teams/{slug}/deployments/{deployment_id}/guard-tests"): Probe(params=_deployment_id),
    ("POST", "/api/v1/teams/{slug}/deployments/{deployment_id}/guard-tests"): Probe(
        params=_deployment_id, body=lambda o: {"suite": o.eval_suite.pk}
    ),
    ("POST", "/api/v1/teams/{slug}/deployments/{deployment_id}/promote"): Probe(
        params=_deployment_id, body=_promote_body
    ),
    ("GET", "/api/v1/teams/{slug}/deployments/{deployment_id}/gate-check/{version_id}"): Probe(
        params=lambda o: {**_deployment_id(o), "version_id": o.model_version.pk}
    ),
    ("POST", "/api/v1/teams/{slug}/deployments/{deployment_id}/rollback"): Probe(params=_deployment_id),
    ("POST", "/api/v1/teams/{slug}/deployments/{deployment_id}/canary/stop"): Probe(params=_deployment_id),
    ("GET", "/api/v1/teams/{slug}/deployments/{deployment_id}/releases"): Probe(params=_deployment_id),
    ("GET", "/api/v1/teams/{slug}/deployments/{deployment_id}/gate"): Probe(params=_deployment_id),
    ("PUT", "/api/v1/teams/{slug}/deployments/{deployment_id}/gate"): Probe(
        params=_deployment_id, body=lambda o: {"forgetting": True}
    ),
    ("POST", "/api/v1/teams/{slug}/deployments/{deployment_id}/gate/runs"): Probe(
        params=_deployment_id, body=lambda o: {"model_version": o.model_version.pk}
    ),
    ("GET", "/api/v1/teams/{slug}/usage"): Probe(),
    "accounts:costs": Probe(),
    "accounts:budget_change": Probe(body=lambda o: {"soft_limit": "1", "hard_limit": "1", "cpu_hour_price": "99"}),
    ("GET", "/api/v1/teams/{slug}/costs/"): Probe(),
    ("GET", "/api/v1/teams/{slug}/costs/budget"): Probe(),
    ("PUT", "/api/v1/teams/{slug}/costs/budget"): Probe(body=lambda o: {"soft_limit": 1, "hard_limit": 1}),
    "serving:deployment_serving_plan": Probe(
        params=_deployment_id, body=lambda o: {"precision": "fp32", "context_length": "1", "concurrency": "1000"}
    ),
    ("GET", "/api/v1/teams/{slug}/deployments/{deployment_id}/cost"): Probe(params=_deployment_id),
    ("PUT", "/api/v1/teams/{slug}/deployments/{deployment_id}/serving-plan"): Probe(
        params=_deployment_id, body=lambda o: {"precision": "fp32", "context_length": 1, "concurrency": 1000}
    ),
    "tools:list": Probe(),
    "tools:new_http": Probe(body=lambda o: http_tool_form(name="planted", url="https://attacker.example/{order_id}")),
    "tools:new_sql": Probe(body=lambda o: sql_tool_form(name="planted")),
    "tools:detail": Probe(params=_tool_id),
    "tools:edit": Probe(params=_tool_id, body=lambda o: http_tool_form(url="https://attacker.example/{order_id}")),
    "tools:delete": Probe(params=_tool_id),
    "tools:grant_new": Probe(params=_tool_id, body=_grant_body),
    "tools:grant_edit": Probe(params=_grant_id, body=_grant_body),
    "tools:grant_revoke": Probe(params=_grant_id),
    "tools:approvals": Probe(),
    "tools:activity": Probe(),
    "tools:approval_approve": Probe(params=_approval_id, body=lambda o: {"reason": "planted"}),
    "tools:approval_reject": Probe(params=_approval_id, body=lambda o: {"reason": "planted"}),
    ("GET", "/api/v1/teams/{slug}/tool-approvals/"): Probe(),
    ("GET", "/api/v1/teams/{slug}/tool-activity/"): Probe(),
    ("POST", "/api/v1/teams/{slug}/tool-approvals/{approval_id}/approve"): Probe(
        params=_approval_id, body=lambda o: {"reason": "planted"}
    ),
    ("POST", "/api/v1/teams/{slug}/tool-approvals/{approval_id}/reject"): Probe(
        params=_approval_id, body=lambda o: {"reason": "planted"}
    ),
    ("POST", "/api/v1/teams/{slug}/playground/feedback/export"): Probe(),
    "tools:mcp_new": Probe(body=_server_body),
    "tools:mcp_detail": Probe(params=_server_id),
    "tools:mcp_import": Probe(params=_server_id),
    "tools:mcp_delete": Probe(params=_server_id),
    ("GET", "/api/v1/teams/{slug}/mcp-servers/"): Probe(),
    ("POST", "/api/v1/teams/{slug}/mcp-servers/"): Probe(body=_server_body),
    ("POST", "/api/v1/teams/{slug}/mcp-servers/{server_id}/import"): Probe(params=_server_id),
    "evals:list": Probe(),
    "evals:new": Probe(body=_suite_form),
    "evals:suite": Probe(params=_suite_id),
    "evals:suite_edit": Probe(params=_suite_id, body=_suite_form),
    "evals:suite_delete": Probe(params=_suite_id),
    "evals:run_new": Probe(params=_suite_id, body=lambda o: {"models": f"version:{o.model_version.pk}"}),
    "evals:run": Probe(params=_run_id),
    "evals:policy": Probe(body=_policy_body),
    "evals:forgetting_new": Probe(params=_model_version_id),
    "evals:probe_sets": Probe(),
    "evals:probe_set_new": Probe(body=_probe_set_form),
    "evals:probe_set_default": Probe(),
    "evals:probe_set": Probe(params=_probe_set_id),
    "evals:probe_set_edit": Probe(params=_probe_set_id, body=_probe_set_form),
    "evals:probe_set_delete": Probe(params=_probe_set_id),
    "evals:probe_run_new": Probe(params=_probe_set_id, body=lambda o: {"model": f"version:{o.model_version.pk}"}),
    "evals:probe_run": Probe(params=lambda o: {"run_id": o.probe_run.pk}),
    ("GET", "/api/v1/teams/{slug}/evals-policy"): Probe(),
    ("PUT", "/api/v1/teams/{slug}/evals-policy"): Probe(body=_policy_body),
    ("GET", "/api/v1/teams/{slug}/model-versions/{version_id}/forgetting-checks"): Probe(params=_model_version_id),
    ("POST", "/api/v1/teams/{slug}/model-versions/{version_id}/forgetting-checks"): Probe(params=_model_version_id),
    ("GET", "/api/v1/teams/{slug}/probe-sets/"): Probe(),
    ("POST", "/api/v1/teams/{slug}/probe-sets/"): Probe(body=_probe_set_body),
    ("POST", "/api/v1/teams/{slug}/probe-sets/default"): Probe(),
    ("GET", "/api/v1/teams/{slug}/probe-sets/{set_id}"): Probe(params=_probe_set_id),
    ("PUT", "/api/v1/teams/{slug}/probe-sets/{set_id}"): Probe(params=_probe_set_id, body=_probe_set_body),
    ("DELETE", "/api/v1/teams/{slug}/probe-sets/{set_id}"): Probe(params=_probe_set_id),
    ("POST", "/api/v1/teams/{slug}/probe-sets/{set_id}/runs"): Probe(
        params=_probe_set_id, body=lambda o: {"model": f"version:{o.model_version.pk}"}
    ),
    ("GET", "/api/v1/teams/{slug}/probe-runs/{run_id}"): Probe(params=lambda o: {"run_id": o.probe_run.pk}),
    ("GET", "/api/v1/teams/{slug}/eval-suites/"): Probe(),
    ("POST", "/api/v1/teams/{slug}/eval-suites/"): Probe(
        body=lambda o: {"name": "planted", "dataset_version": o.version.pk, "graders": [{"type": "exact_match"}]}
    ),
    ("POST", "/api/v1/teams/{slug}/eval-suites/{suite_id}/runs"): Probe(
        params=_suite_id, body=lambda o: {"models": [f"version:{o.model_version.pk}"]}
    ),
    ("GET", "/api/v1/teams/{slug}/eval-runs/{run_id}"): Probe(params=_run_id),
    ("GET", "/api/v1/teams/{slug}/eval-runs/{run_id}/results"): Probe(params=_run_id),
    "exports:settings": Probe(body=lambda o: {"token": "hf_planted"}),
    "exports:section": Probe(params=_model_version_id),
    "exports:create": Probe(params=_model_version_id, body=lambda o: {"format": "bundle"}),
    "exports:download": Probe(params=_export_id),
    "exports:approve": Probe(params=_export_id),
    "exports:reject": Probe(params=_export_id),
    ("POST", "/api/v1/teams/{slug}/exports/{export_id}/approve"): Probe(
        params=_export_id, body=lambda o: {"reason": "planted"}
    ),
    ("POST", "/api/v1/teams/{slug}/exports/{export_id}/reject"): Probe(
        params=_export_id, body=lambda o: {"reason": "planted"}
    ),
    ("GET", "/api/v1/teams/{slug}/model-versions/{version_id}/exports"): Probe(params=_model_version_id),
    ("POST", "/api/v1/teams/{slug}/model-versions/{version_id}/exports"): Probe(
        params=_model_version_id, body=lambda o: {"format": "bundle"}
    ),
    ("GET", "/api/v1/teams/{slug}/exports/{export_id}"): Probe(params=_export_id),
    ("GET", "/api/v1/teams/{slug}/exports/{export_id}/download"): Probe(params=_export_id),
}

PAGE_ROUTES = sorted(name for name in SWEEP if isinstance(name, str))
API_OPERATIONS = sorted(op for op in SWEEP if isinstance(op, tuple))
# The one route swept with every method: a destructive one, whose view accepts POST only.
EVERY_METHOD_ROUTE = "accounts:member_remove"
PAGE_CASES = [
    pytest.param(name, method, id=f"{name} {method}")
    for name in PAGE_ROUTES
    for method in (PAGE_METHODS if name == EVERY_METHOD_ROUTE else ("GET", "POST"))
]
API_CASES = [pytest.param(method, path, id=f"{method} {path}") for method, path in API_OPERATIONS]
# Routes that name one of the team's objects (for the wrong-team-object sweep).
OBJECT_PAGE_ROUTES = [name for name in PAGE_ROUTES if SWEEP[name].params is not _nothing]
OBJECT_API_CASES = [
    pytest.param(method, path, id=f"{method} {path}")
    for method, path in API_OPERATIONS
    if SWEEP[(method, path)].params is not _nothing
]


def page_url(name: str, objects: TeamObjects, team_slug: str = "acme") -> str:
    return reverse(name, kwargs={"team_slug": team_slug, **SWEEP[name].params(objects)})


def api_url(method: str, path: str, objects: TeamObjects, slug: str = "acme") -> str:
    return path.format(slug=slug, **SWEEP[(method, path)].params(objects))


def request_page(client: Client, method: str, name: str, objects: TeamObjects, team_slug: str = "acme") -> Response:
    """``name`` under team ``team_slug``, its other parameters and body filled from ``objects``."""
    url, body = page_url(name, objects, team_slug), SWEEP[name].body(objects)
    if method == "GET":
        return client.get(url)
    return client.generic(method, url, urlencode(body), content_type="application/x-www-form-urlencoded")


def request_api(client: Client, method: str, path: str, objects: TeamObjects, slug: str = "acme") -> Response:
    """``method path`` under team ``slug``, its other parameters and body filled from ``objects``."""
    body = SWEEP[(method, path)].body(objects)
    data = json.dumps(body) if body else ""
    return client.generic(method, api_url(method, path, objects, slug), data, content_type="application/json")


# --- fixtures -----------------------------------------------------------------------------------


def make_team_objects(team: Team, owner: Any, member_user: Any) -> TeamObjects:
    """A pending invitation and a key (shared with ``member_user``) made by ``owner`` in ``team``."""
    access = resolve_access(owner, team.slug)
    invitation, _ = services.create_invitation(access=access, role=Role.MEMBER, email=f"dana@{team.slug}.example")
    key, _ = services.create_team_api_key(access=access, name=f"{team.slug} deploy", role=Role.MEMBER)
    membership = Membership.objects.select_related("user").get(team=team, user=member_user)
    services.share_object(access=access, obj=key, member=membership, level="view")
    version = ready_version(team, owner, [{"text": f"{team.slug} private note"}])
    model = BaseModel.objects.create(team=team, name=f"{team.slug}-private-model", source="server_path", path="/x")
    job, model_version = finished_job(team, owner, model, version)
    deployment = Deployment.objects.create(team=team, name=f"{team.slug}-bot", model_version=model_version)
    deployment.api_keys.add(key)
    comparison = Comparison.objects.create(
        team=team, title=f"{team.slug} comparison", restricted=False, created_by=owner
    )
    preset = PromptPreset.objects.create(team=team, name=f"{team.slug} preset", system_prompt="Be brief.")
    battle = ArenaBattle.objects.create(
        team=team,
        user=owner,
        model_a=f"version:{model_version.pk}",
        model_a_label=str(model_version),
        model_b=f"base:{model.pk}",
        model_b_label=model.name,
    )
    # A playground vote not exported yet: what an export by the wrong team would take.
    PlaygroundVote.objects.create(
        team=team, user=owner, model=f"version:{model_version.pk}", model_label=str(model_version),
        prompt=[{"role": "user", "content": "Hi"}], answer="Hello!", label=True, fingerprint=f"{team.slug}-vote",
    )  # fmt: skip
    tool = sample_tool(team, owner, name=f"{team.slug}_lookup")
    grant = ToolGrant.objects.create(team=team, deployment=deployment, tool=tool, created_by=owner)
    ToolGrant.api_keys.through.objects.create(toolgrant=grant, teamapikey=key)
    approval = tool_services.request_approval(
        access=resolve_key_access(key, team.slug), tool=tool, deployment=deployment, grant=grant,
        conversation=f"{team.slug}-conversation", arguments={"order_id": "A-1042"},
    )  # fmt: skip
    mcp_server = McpServer.objects.create(team=team, name=f"{team.slug} crm", url="https://mcp.example.com/mcp")
    eval_suite = EvalSuite.objects.create(
        team=team, name=f"{team.slug} suite", dataset_version=version, created_by=owner,
        graders=[{"grader": {"type": "exact_match"}, "pass_rate": 0.8}],
    )  # fmt: skip
    eval_run = EvalRun.objects.create(
        team=team, suite=eval_suite, model_keys=[f"version:{model_version.pk}"], graders=eval_suite.graders,
        created_by=owner,
    )  # fmt: skip
    probe_set = ProbeSet.objects.create(
        team=team, name=f"{team.slug} probe", templates=["Describe {person}."], created_by=owner,
        groups=[{"category": "gender", "group": "women", "terms": ["a woman"]},
                {"category": "gender", "group": "men", "terms": ["a man"]}],
    )  # fmt: skip
    probe_run = ProbeRun.objects.create(
        team=team, probe_set=probe_set, probe_set_name=probe_set.name, model_key=f"version:{model_version.pk}",
        model_version=model_version, templates=probe_set.templates, groups=probe_set.groups, created_by=owner,
    )  # fmt: skip
    distillation = Distillation.objects.create(
        team=team, name=f"{team.slug} distilled", teacher_key=f"version:{model_version.pk}",
        teacher_label=str(model_version), prompts=version, created_by=owner,
    )  # fmt: skip
    export = ModelExport.objects.create(team=team, model_version=model_version, format="bundle", created_by=owner)
    return TeamObjects(
        team=team, member=membership, invitation=invitation, key=key, version=version, model=model, job=job,
        model_version=model_version, deployment=deployment, comparison=comparison, preset=preset, battle=battle,
        tool=tool, grant=grant, approval=approval, mcp_server=mcp_server, eval_suite=eval_suite, eval_run=eval_run,
        probe_set=probe_set, probe_run=probe_run, distillation=distillation, export=export,
    )  # fmt: skip


def placeholder_objects() -> TeamObjects:
    """Unsaved objects with ids: enough to fill every route's URL and body, for visitors turned away unseen."""
    user = get_user_model()(pk=1, username="bob")
    team = Team(pk=1, name="Acme", slug="acme")
    version = DatasetVersion(pk=1, team=team, dataset_id=1, number=1)
    model_version = ModelVersion(pk=1, team=team, name="support bot", number=1)
    return TeamObjects(
        team=team, member=Membership(pk=1, team=team, user=user), invitation=Invitation(pk=1, team=team),
        key=TeamAPIKey(pk=1, team=team), version=version, model=BaseModel(pk=1, team=team),
        job=TrainingJob(pk=1, team=team), model_version=model_version, deployment=Deployment(pk=1, team=team),
        comparison=Comparison(pk=1, team=team), preset=PromptPreset(pk=1, team=team),
        battle=ArenaBattle(pk=1, team=team), tool=Tool(pk=1, team=team), grant=ToolGrant(pk=1, team=team),
        approval=ToolApproval(pk=1, team=team), mcp_server=McpServer(pk=1, team=team),
        eval_suite=EvalSuite(pk=1, team=team), eval_run=EvalRun(pk=1, team=team),
        probe_set=ProbeSet(pk=1, team=team), probe_run=ProbeRun(pk=1, team=team),
        distillation=Distillation(pk=1, team=team), export=ModelExport(pk=1, team=team),
    )  # fmt: skip


@dataclass(frozen=True)
class Teams:
    """acme (alice owns it, bob is a member) and globex (charlie owns it, gina is a member), fully stocked."""

    acme: TeamObjects
    globex: TeamObjects
    alice: Any
    charlie: Any


@pytest.fixture(scope="module")
def teams(module_db: Any, module_media_root: Path) -> Teams:
    """Built once for the module; each test's writes are rolled back (see ``module_db`` in conftest)."""
    fast_hash = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    with module_db.unblock(), override_settings(MEDIA_ROOT=module_media_root, PASSWORD_HASHERS=fast_hash):
        acme = Team.objects.create(name="Acme", slug="acme")
        globex = Team.objects.create(name="Globex", slug="globex")
        alice, bob = member(acme, Role.OWNER, "alice"), member(acme, Role.MEMBER, "bob")
        charlie = member(globex, Role.OWNER, "charlie")
        return Teams(
            acme=make_team_objects(acme, alice, bob),
            globex=make_team_objects(globex, charlie, member(globex, Role.MEMBER, "gina")),
            alice=alice,
            charlie=charlie,
        )


@pytest.fixture
def acme_objects(teams: Teams, db: None) -> TeamObjects:
    return teams.acme


@pytest.fixture
def globex_objects(teams: Teams, db: None) -> TeamObjects:
    return teams.globex


@pytest.fixture
def acme(teams: Teams, db: None) -> Team:
    return teams.acme.team


@pytest.fixture
def alice(teams: Teams, db: None) -> Any:
    return teams.alice


@pytest.fixture
def charlie(teams: Teams, db: None) -> Any:
    return teams.charlie


@pytest.fixture
def globex_key_client(teams: Teams, db: None) -> Client:
    """An API client holding a globex team API key (the strongest role a key can have)."""
    _, plaintext = services.create_team_api_key(
        access=resolve_access(teams.charlie, "globex"), name="globex ci", role=Role.MEMBER
    )
    assert plaintext.startswith("atk_")
    return Client(headers={"Authorization": f"Bearer {plaintext}"})


# --- the shared rows stay as built --------------------------------------------------------------


def test_a_write_in_one_test_of_the_module(acme: Team) -> None:
    Team.objects.filter(pk=acme.pk).update(name="Written by a test")
    assert Team.objects.get(pk=acme.pk).name == "Written by a test"


def test_is_rolled_back_before_the_next(acme: Team) -> None:
    """Runs right after the test above (file order): the module's rows are as built again."""
    assert Team.objects.get(pk=acme.pk).name == "Acme"


# --- the table covers every route ---------------------------------------------------------------


def test_every_team_route_is_in_the_sweep() -> None:
    """A new team page or API operation without a SWEEP entry fails here, by name."""
    routes: set[Route] = {*page_team_routes(), *api_team_operations()}
    missing = sorted((route for route in routes if route not in SWEEP), key=str)
    assert not missing, f"team routes missing from SWEEP in tests/test_isolation.py: {missing}"


def test_every_sweep_entry_is_a_team_route() -> None:
    """A SWEEP entry whose route was removed or renamed fails here, so the table cannot go stale."""
    routes: set[Route] = {*page_team_routes(), *api_team_operations()}
    stale = sorted((entry for entry in SWEEP if entry not in routes), key=str)
    assert not stale, f"SWEEP entries that match no team route: {stale}"


# --- outsiders get 404 and change nothing -------------------------------------------------------


@pytest.mark.parametrize(("name", "method"), PAGE_CASES)
def test_outsider_gets_404_on_every_team_page(
    name: str, method: str, acme_objects: TeamObjects, charlie: Any, login: Callable[..., Client]
) -> None:
    before = team_state(acme_objects.team)
    response = request_page(login(charlie), method, name, acme_objects)
    assert response.status_code == 404
    assert team_state(acme_objects.team) == before


@pytest.mark.parametrize(("method", "path"), API_CASES)
def test_outsider_gets_404_on_every_team_api_operation(
    method: str, path: str, acme_objects: TeamObjects, charlie: Any, bearer: Callable[..., Client]
) -> None:
    before = team_state(acme_objects.team)
    response = request_api(bearer(charlie), method, path, acme_objects)
    assert response.status_code == 404, response.content
    assert team_state(acme_objects.team) == before


@pytest.mark.parametrize(("method", "path"), API_CASES)
def test_other_teams_api_key_gets_404_on_every_team_api_operation(
    method: str, path: str, acme_objects: TeamObjects, globex_key_client: Client
) -> None:
    before = team_state(acme_objects.team)
    response = request_api(globex_key_client, method, path, acme_objects)
    assert response.status_code == 404, response.content
    assert team_state(acme_objects.team) == before


# --- members naming another team's objects through their own team -----------------------------


@pytest.mark.parametrize("name", OBJECT_PAGE_ROUTES)
def test_owner_gets_404_naming_another_teams_object_on_a_page(
    name: str,
    acme_objects: TeamObjects,
    globex_objects: TeamObjects,
    alice: Any,
    login: Callable[..., Client],
) -> None:
    """alice owns acme: /t/acme/... with globex's ids finds nothing (POST reaches every lookup)."""
    before = team_state(acme_objects.team), team_state(globex_objects.team)
    response = request_page(login(alice), "POST", name, globex_objects, team_slug="acme")
    assert response.status_code == 404
    assert (team_state(acme_objects.team), team_state(globex_objects.team)) == before


@pytest.mark.parametrize(("method", "path"), OBJECT_API_CASES)
def test_owner_gets_404_naming_another_teams_object_in_the_api(
    method: str,
    path: str,
    acme_objects: TeamObjects,
    globex_objects: TeamObjects,
    alice: Any,
    bearer: Callable[..., Client],
) -> None:
    before = team_state(acme_objects.team), team_state(globex_objects.team)
    response = request_api(bearer(alice), method, path, globex_objects, slug="acme")
    assert response.status_code == 404, response.content
    assert (team_state(acme_objects.team), team_state(globex_objects.team)) == before


# --- anonymous visitors -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "method"), PAGE_CASES)
def test_anonymous_visitor_is_sent_to_login_from_every_team_page(name: str, method: str) -> None:
    """Turned away before any lookup: this test has no database access, so a query would fail it."""
    objects = placeholder_objects()
    response = request_page(Client(), method, name, objects)
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert location.path == reverse("accounts:login")
    assert parse_qs(location.query)["next"] == [page_url(name, objects)]


@pytest.mark.parametrize(("method", "path"), API_CASES)
def test_anonymous_caller_gets_401_on_every_team_api_operation(method: str, path: str) -> None:
    """Turned away before any lookup: this test has no database access, so a query would fail it."""
    response = request_api(Client(), method, path, placeholder_objects())
    assert response.status_code == 401, response.content


# --- the middleware answers before any view, whatever the method --------------------------------


def must_not_run(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    raise AssertionError("the team view ran")


@pytest.mark.parametrize("method", PAGE_METHODS)
def test_team_scope_answers_outsiders_before_the_view_runs(method: str, rf: RequestFactory, charlie: Any) -> None:
    request = rf.generic(method, "/t/acme/")
    request.user = charlie
    middleware = TeamScopeMiddleware(lambda request: HttpResponse())
    with pytest.raises(Http404):
        middleware.process_view(request, must_not_run, (), {"team_slug": "acme"})


@pytest.mark.parametrize("method", PAGE_METHODS)
def test_team_scope_sends_anonymous_visitors_to_login_before_the_view_runs(method: str, rf: RequestFactory) -> None:
    from django.contrib.auth.models import AnonymousUser

    request = rf.generic(method, "/t/acme/members/1/remove")
    request.user = AnonymousUser()
    response = TeamScopeMiddleware(lambda request: HttpResponse()).process_view(
        request, must_not_run, (), {"team_slug": "acme"}
    )
    assert response is not None and response.status_code == 302


def test_team_scope_runs_after_csrf_and_authentication() -> None:
    """Every unsafe method meets the same CSRF check, then the same team scope, before any view."""
    from django.conf import settings

    order = settings.MIDDLEWARE
    scope = order.index("accounts.middleware.TeamScopeMiddleware")
    assert order.index("django.middleware.csrf.CsrfViewMiddleware") < scope
    assert order.index("django.contrib.auth.middleware.AuthenticationMiddleware") < scope


# --- a team's existence is not leaked -----------------------------------------------------------


def seen(response: Response) -> tuple[int, str, bytes]:
    """What a visitor can compare between two answers (the per-response CSRF mask and CSP nonce left out)."""
    content = CSP_NONCE.sub(rb"\1<nonce>", CSRF_TOKEN.sub(b"<csrf>", response.content))
    return response.status_code, response["Content-Type"], content


def test_missing_team_and_foreign_team_pages_look_the_same(
    acme: Team, charlie: Any, login: Callable[..., Client]
) -> None:
    client = login(charlie)
    foreign = client.get(reverse("accounts:team_home", kwargs={"team_slug": acme.slug}))
    missing = client.get(reverse("accounts:team_home", kwargs={"team_slug": "no-such-team"}))
    assert seen(foreign) == seen(missing)
    assert foreign.status_code == 404


def test_missing_team_and_foreign_team_api_answers_look_the_same(
    acme: Team, charlie: Any, bearer: Callable[..., Client]
) -> None:
    client = bearer(charlie)
    foreign = client.get(f"{API_ROOT}teams/{acme.slug}/")
    missing = client.get(f"{API_ROOT}teams/no-such-team/")
    assert seen(foreign) == seen(missing)
    assert foreign.status_code == 404


def test_missing_team_and_foreign_team_look_the_same_to_a_team_api_key(acme: Team, globex_key_client: Client) -> None:
    foreign = globex_key_client.get(f"{API_ROOT}teams/{acme.slug}/")
    missing = globex_key_client.get(f"{API_ROOT}teams/no-such-team/")
    assert seen(foreign) == seen(missing)
    assert foreign.status_code == 404
