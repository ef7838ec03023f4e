"""What the tenant-isolation sweep and the role matrix share: finding team routes, snapshotting a team."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.models import QuerySet
from django.urls import URLPattern, URLResolver, get_resolver
from ninja.utils import normalize_path

from accounts.models import (
    AuditEvent,
    Budget,
    Invitation,
    Membership,
    SpendRecord,
    Team,
    TeamAPIKey,
    TeamAPIKeyUserObjectPermission,
)
from datasets_app.models import Dataset, DatasetUserObjectPermission, DatasetVersion
from evals_app.models import (
    Distillation,
    EvalRun,
    EvalsPolicy,
    EvalSuite,
    ForgettingCheck,
    GuardTest,
    ProbeRun,
    ProbeSet,
    Retrain,
)
from exports_app.models import ExportSettings, ModelExport
from serving_app.models import (
    ArenaBattle,
    Comparison,
    ComparisonUserObjectPermission,
    Deployment,
    GuardPolicy,
    GuardPolicyRevision,
    PlaygroundVote,
    PromptPreset,
    Release,
    StoredCompletion,
    UsageRecord,
)
from studio.api import api
from tools_app.models import Tool, ToolApproval, ToolGrant
from training_app.models import BaseModel, ModelVersion, ModelVersionUserObjectPermission, TrainingJob

API_ROOT = "/api/v1/"
# The middleware scopes any view whose URL has a ``team_slug`` kwarg, whatever its converter.
TEAM_KWARG = re.compile(r"<(?:\w+:)?team_slug>")
TEAM_PARAM = re.compile(r"\{(?:\w+:)?slug\}")
# What a team route could change about a deployment (``gate`` is a dict: compared as JSON text).
DEPLOYMENT_FIELDS = (
    "pk", "name", "model_version_id", "canary_version_id", "canary_share", "gate", "store_completions",
    "completion_retention_days", "retrain_on_new_data", "serving_precision", "serving_context_length",
    "expected_concurrency",
)  # fmt: skip


# --- what a team route is -----------------------------------------------------------------------


@dataclass(frozen=True)
class PageRoute:
    """A Django view mounted under a team slug."""

    route: str
    view: Callable[..., Any]


def _walk(patterns: list[Any], prefix: str, namespace: str) -> Iterator[tuple[str, PageRoute]]:
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _walk(entry.url_patterns, route, inner)
        elif isinstance(entry, URLPattern):
            yield (f"{namespace}{entry.name}" if entry.name else route), PageRoute(route, entry.callback)


def page_team_routes() -> dict[str, PageRoute]:
    """URL name -> every Django view mounted under a team slug (the route itself when unnamed)."""
    return {name: page for name, page in _walk(get_resolver().url_patterns, "", "") if TEAM_KWARG.search(page.route)}


def api_team_operations() -> set[tuple[str, str]]:
    """(method, path) of every API operation under ``/api/v1/`` whose path names a team ``{slug}``."""
    get_resolver().url_patterns  # noqa: B018  # building the URLconf binds the ninja routers
    operations = set()
    for prefix, router in api._routers:
        for path, path_view in router.path_operations.items():
            full_path = API_ROOT + normalize_path(f"{prefix}/{path}").lstrip("/")
            if TEAM_PARAM.search(full_path):
                operations |= {(method, full_path) for op in path_view.operations for method in op.methods}
    return operations


def team_state(team: Team) -> dict[str, list[str]]:
    """Everything a team route could change about ``team``, comparable: the rows of each of ``team_queries``, as
    JSON text, sorted.

    The queries are compiled once and run with ``team``'s pk: the sweep and the role matrix take thousands of
    these snapshots, and compiling 40-odd querysets was three quarters of each (17 of 23 ms).
    """
    state = {}
    with connection.cursor() as cursor:
        for name, sql, params in _compiled_team_queries():
            cursor.execute(sql, [team.pk if value == ANY_TEAM else value for value in params])
            state[name] = sorted(json.dumps(row, sort_keys=True, default=str) for row in cursor.fetchall())
    return state


ANY_TEAM = -7_340_001  # the team's pk in the compiled queries: no team has it


@functools.cache
def _compiled_team_queries() -> tuple[tuple[str, str, tuple[Any, ...]], ...]:
    compiled = []
    for name, queryset in team_queries(Team(pk=ANY_TEAM)).items():
        sql, params = queryset.query.sql_with_params()
        assert ANY_TEAM in params, f"the {name} query does not read one team's rows"
        compiled.append((name, sql, tuple(params)))
    return tuple(compiled)


def team_queries(team: Team) -> dict[str, QuerySet[Any]]:
    """What ``team_state`` reads of ``team``, by name."""
    return {
        "team": Team.objects.filter(pk=team.pk).values_list(
            "name", "slug", "acceptable_use_policy", "acceptable_use_revision"
        ),
        "memberships": Membership.objects.filter(team=team).values_list("user__username", "role"),
        "invitations": Invitation.objects.for_team(team).values_list(
            "pk", "role", "email", "revoked_at", "accepted_at"
        ),
        "keys": TeamAPIKey.objects.for_team(team).values_list("pk", "name", "role", "revoked_at"),
        "shares": TeamAPIKeyUserObjectPermission.objects.filter(content_object__team=team).values_list(
            "content_object_id", "user__username", "permission__codename"
        ),
        "datasets": Dataset.objects.for_team(team).values_list("pk", "name", "restricted"),
        "versions": DatasetVersion.objects.for_team(team).values_list("pk", "number", "status", "kind", "content_hash"),
        "dataset_shares": DatasetUserObjectPermission.objects.filter(content_object__team=team).values_list(
            "content_object_id", "user__username", "permission__codename"
        ),
        "base_models": BaseModel.objects.filter(team=team).values_list("pk", "name", "status"),
        "jobs": TrainingJob.objects.for_team(team).values_list("pk", "name", "status"),
        "model_version_shares": ModelVersionUserObjectPermission.objects.filter(content_object__team=team).values_list(
            "content_object_id", "user__username", "permission__codename"
        ),
        "model_versions": ModelVersion.objects.for_team(team).values_list(
            "pk", "name", "intended_use", "out_of_scope", "limitations", "restricted"
        ),
        "deployments": Deployment.objects.for_team(team).values_list(*DEPLOYMENT_FIELDS),
        "releases": Release.objects.for_team(team).values_list("pk", "action", "model_version_id"),
        "distillations": Distillation.objects.for_team(team).values_list("pk", "name", "status", "output_id"),
        "retrains": Retrain.objects.for_team(team).values_list("pk", "deployment_id", "status"),
        "stored_completions": StoredCompletion.objects.for_team(team).values_list("pk", "deployment_id", "exported_at"),
        "deployment_keys": Deployment.api_keys.through.objects.filter(deployment__team=team).values_list(
            "deployment_id", "teamapikey_id"
        ),
        "comparisons": Comparison.objects.for_team(team).values_list("pk", "title", "restricted"),
        "comparison_shares": ComparisonUserObjectPermission.objects.filter(content_object__team=team).values_list(
            "content_object_id", "user__username", "permission__codename"
        ),
        "presets": PromptPreset.objects.for_team(team).values_list("pk", "name", "system_prompt"),
        "battles": ArenaBattle.objects.for_team(team).values_list("pk", "vote", "exported_at"),
        "playground_votes": PlaygroundVote.objects.for_team(team).values_list("pk", "label", "exported_at"),
        "tools": Tool.objects.for_team(team).values_list("pk", "name", "risk", "updated_at"),
        "tool_grants": ToolGrant.objects.for_team(team).values_list(
            "pk", "deployment_id", "tool_id", "approval", "roles", "argument_constraints"
        ),
        "tool_grant_keys": ToolGrant.api_keys.through.objects.filter(toolgrant__team=team).values_list(
            "toolgrant_id", "teamapikey_id"
        ),
        "tool_approvals": ToolApproval.objects.for_team(team).values_list(
            "pk", "status", "decided_by_id", "binding", "used_at"
        ),
        "eval_suites": EvalSuite.objects.for_team(team).values_list("pk", "name", "description", "dataset_version_id"),
        "eval_runs": EvalRun.objects.for_team(team).values_list("pk", "suite_id", "status"),
        "evals_policy": EvalsPolicy.objects.for_team(team).values_list(
            "max_perplexity_increase", "max_pass_rate_drop", "max_bias_gap", "check_after_training"
        ),
        "forgetting_checks": ForgettingCheck.objects.for_team(team).values_list("pk", "model_version_id"),
        "probe_sets": ProbeSet.objects.for_team(team).values_list("pk", "name", "templates", "groups"),
        "probe_runs": ProbeRun.objects.for_team(team).values_list("pk", "probe_set_id", "model_key"),
        "model_exports": ModelExport.objects.for_team(team).values_list("pk", "format", "status", "hub_repo"),
        "export_settings": ExportSettings.objects.for_team(team).values_list("pk", "hub_token_set_at"),
        "guard_policies": GuardPolicy.objects.for_team(team).values_list(
            "pk", "deployment_id", "revision", "refusal_message"
        ),
        "guard_revisions": GuardPolicyRevision.objects.for_team(team).values_list("pk"),
        "guard_tests": GuardTest.objects.for_team(team).values_list("pk", "deployment_id", "revision"),
        "usage": UsageRecord.objects.for_team(team).values_list("pk"),
        "budget": Budget.objects.for_team(team).values_list("soft_limit", "hard_limit", "cpu_hour_price"),
        "spend": SpendRecord.objects.for_team(team).values_list("pk"),
        # A refused approval attempt is recorded in the acting member's team (the trail of who tried what); it is
        # the refusal itself, not a change the attempt made.
        "audit_events": AuditEvent.objects.for_team(team).exclude(action="tool.approval_refused").values_list("pk"),
    }
