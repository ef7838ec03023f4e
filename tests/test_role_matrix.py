"""Role matrix: owner, admin, member and viewer against every team action, in the pages and the API.

The expected outcome of each cell comes from ``accounts.roles.ROLE_PERMISSIONS``: allowed means a 2xx
or 3xx answer with the effect visible in the database, denied means 403 with nothing changed. A
hand-written copy of the documented matrix (``DOCUMENTED_MATRIX``) is checked against
``ROLE_PERMISSIONS`` too, so a wrong edit of the matrix fails even though the views follow it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import pytest
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from accounts import services
from accounts.models import Budget, Invitation, Membership, Team, TeamAPIKey
from accounts.permissions import resolve_access
from accounts.roles import ROLE_PERMISSIONS, Perm, Role
from datasets_app.models import Dataset, DatasetVersion
from evals_app import gates
from evals_app.models import (
    Distillation,
    EvalRun,
    EvalsPolicy,
    EvalSuite,
    ForgettingCheck,
    GuardTest,
    ProbeSet,
    Retrain,
)
from exports_app.models import ModelExport
from serving_app import deployments, guardrails, releases
from serving_app.models import ArenaBattle, Deployment, GuardPolicy, PlaygroundVote, PromptPreset
from tests.factories import (
    finished_job,
    http_tool_form,
    member,
    ready_version,
    sample_tool,
    sample_version,
    starter_like_base_model,
)
from tests.routes import page_team_routes, team_state
from tests.test_maintenance import next_version
from tools_app import services as tool_services
from tools_app.models import McpServer, Tool, ToolApproval, ToolGrant
from training_app import presets
from training_app.models import BaseModel, ModelVersion, TrainingJob

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

API_ROOT = "/api/v1/teams/acme/"
ROLES = (Role.OWNER, Role.ADMIN, Role.MEMBER, Role.VIEWER)


@dataclass(frozen=True)
class Scene:
    """Team acme as one actor finds it: a viewer to act on, a pending invitation, a key."""

    team: Team
    actor: Any
    target: Membership  # a viewer, the subject of member actions; the key is shared with them ("view")
    invitation: Invitation
    key: TeamAPIKey  # visible to the actor: members and viewers hold a "view" share
    base_model: BaseModel  # a ready base model (a row: no test here trains)
    version: DatasetVersion  # a ready chat dataset version
    model_version: ModelVersion  # a model version trained on it (unrestricted)
    deployment: Deployment  # ``model_version`` published, callable by no key
    failed_download: BaseModel  # a Hub model of acme's whose download failed
    own_job: TrainingJob  # a finished job the actor launched
    tool: Tool  # an HTTP tool alice defined
    grant: ToolGrant  # ``tool`` granted to ``deployment`` (owners, admins and members may trigger it)
    spare_tool: Tool  # a tool granted to no deployment
    approval: ToolApproval  # a call of ``tool`` asked for by ``target`` (a viewer), waiting for approval
    suite: EvalSuite  # an eval suite on ``version``
    eval_run: EvalRun  # a queued run of ``suite`` on ``base_model``
    candidate: ModelVersion  # a second version, never published
    gated: Deployment  # serves ``model_version`` and requires ``suite`` (never run on ``candidate``)
    canaried: Deployment  # serves ``candidate`` (promoted from ``model_version``), ``model_version`` as a 10 % canary
    distillation: Distillation  # ``base_model`` taught ``version`` (its students: the versions trained on it)
    newer_data: DatasetVersion  # version 2 of ``version``'s dataset: what ``deployment`` can be retrained on
    guarded: Deployment  # serves ``model_version`` under a guard policy blocking one topic
    guard_suite: EvalSuite  # prompts to refuse (reference BLOCK) and to let through
    waiting_export: ModelExport  # a bundle export of ``candidate`` ``target`` asked for, awaiting approval


@pytest.fixture(scope="module")
def scenes(module_db: Any, module_media_root: Path) -> dict[str, Scene]:
    """acme (alice owns it) with one actor of each role, built once; each test's writes are rolled back."""
    fast_hash = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    with module_db.unblock(), override_settings(MEDIA_ROOT=module_media_root, PASSWORD_HASHERS=fast_hash):
        acme = Team.objects.create(name="Acme", slug="acme")
        alice = member(acme, Role.OWNER, "alice")
        owner = resolve_access(alice, acme.slug)
        # alice is the owner actor, so she stays the team's only owner (the last-owner tests below need that).
        actors = {role: alice if role == Role.OWNER else member(acme, role, f"acme-{role}") for role in ROLES}
        target = Membership.objects.select_related("user").get(team=acme, user=member(acme, Role.VIEWER, "target"))
        invitation, _ = services.create_invitation(access=owner, role=Role.MEMBER)
        key, _ = services.create_team_api_key(access=owner, name="nightly eval", role=Role.VIEWER)
        services.share_object(access=owner, obj=key, member=target, level="view")
        for role in (Role.MEMBER, Role.VIEWER):
            actor_membership = Membership.objects.get(team=acme, user=actors[role])
            services.share_object(access=owner, obj=key, member=actor_membership, level="view")
        base_model = starter_like_base_model()
        version = sample_version(acme, alice, "chat")
        _, model_version = finished_job(acme, alice, base_model, version)
        # One decisive arena vote: something for "export arena votes" to turn into a preference dataset.
        ArenaBattle.objects.create(
            team=acme, user=alice, model_a=f"version:{model_version.pk}", model_a_label=str(model_version),
            model_b=f"base:{base_model.pk}", model_b_label=base_model.name, vote=ArenaBattle.Vote.A,
            conversation_a=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! Need help?"}],
            conversation_b=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "hi hi hi"}],
            voted_at=timezone.now(),
        )  # fmt: skip
        # One thumbs up in the playground: something for "export playground votes" to turn into feedback data.
        PlaygroundVote.objects.create(
            team=acme, user=alice, model=f"version:{model_version.pk}", model_label=str(model_version),
            prompt=[{"role": "user", "content": "Hi"}], answer="Hello! Need help?", label=True, fingerprint="vote",
        )  # fmt: skip
        deployment = Deployment.objects.create(
            team=acme, name="live-bot", model_version=model_version, created_by=alice
        )
        tool = sample_tool(acme, alice)
        failed_download = BaseModel.objects.create(
            team=acme, name="atelier/broken", source=BaseModel.Source.HUB, path="/nonexistent/atelier--broken",
            repo_id="atelier/broken", status=BaseModel.Status.FAILED, progress=0.0, error="The Hub refused it.",
        )  # fmt: skip
        own_jobs = {
            role: finished_job(acme, actor, base_model, version, name=f"{role}'s finished job")[0]
            for role, actor in actors.items()
        }
        shared = {"team": acme, "target": target, "invitation": invitation, "key": key, "base_model": base_model,
                  "version": version, "model_version": model_version, "deployment": deployment,
                  "failed_download": failed_download, "tool": tool,
                  "grant": ToolGrant.objects.create(team=acme, deployment=deployment, tool=tool, created_by=alice),
                  "spare_tool": sample_tool(acme, alice, name="spare_lookup")}  # fmt: skip
        shared["approval"] = tool_services.request_approval(
            access=resolve_access(target.user, acme.slug), tool=tool, deployment=deployment, grant=shared["grant"],
            conversation="matrix", arguments={"order_id": "A-1042"},
        )  # fmt: skip
        shared["suite"] = EvalSuite.objects.create(
            team=acme, name="smoke", dataset_version=version, created_by=alice,
            graders=[{"grader": {"type": "exact_match"}, "pass_rate": 0.8}],
        )  # fmt: skip
        shared["eval_run"] = EvalRun.objects.create(
            team=acme, suite=shared["suite"], model_keys=[f"base:{base_model.pk}"], graders=shared["suite"].graders,
            created_by=alice,
        )  # fmt: skip
        shared["candidate"] = finished_job(acme, alice, base_model, version, name="candidate")[1]
        shared["gated"] = deployments.create_deployment(access=owner, name="gated-bot", version=model_version)
        gates.set_gate(access=owner, deployment=shared["gated"], suites=[(shared["suite"].pk, 0.9)])
        canaried = deployments.create_deployment(access=owner, name="canary-bot", version=model_version)
        releases.promote(access=owner, deployment=canaried, version=shared["candidate"])
        releases.promote(access=owner, deployment=canaried, version=model_version, canary_share=10)
        shared["canaried"] = canaried
        shared["newer_data"] = next_version(version)
        shared["waiting_export"] = ModelExport.objects.create(
            team=acme, model_version=shared["candidate"], format="bundle", created_by=target.user,
            status=ModelExport.Status.AWAITING_APPROVAL,
        )  # fmt: skip
        shared["guarded"] = deployments.create_deployment(access=owner, name="guarded-bot", version=model_version)
        topics = [{"name": "lock picking", "terms": ["bump key"]}]
        guardrails.save_policy(access=owner, deployment=shared["guarded"], settings={"blocked_topics": topics})
        guard_rows = [{"prompt": "Where is a bump key?", "completion": "BLOCK"}, {"prompt": "Hi", "completion": "Hi"}]
        shared["guard_suite"] = EvalSuite.objects.create(
            team=acme, name="guard prompts", created_by=alice, graders=[{"type": "exact_match", "pass_rate": 0.5}],
            dataset_version=ready_version(acme, alice, guard_rows, kind="instruction", name="guard prompts"),
        )  # fmt: skip
        shared["distillation"] = Distillation.objects.create(
            team=acme, name="matrix distilled", teacher_key=f"base:{base_model.pk}", teacher_label=base_model.name,
            prompts=version, output=version, status=Distillation.Status.SUCCEEDED, created_by=alice,
        )  # fmt: skip
        return {role: Scene(actor=actor, own_job=own_jobs[role], **shared) for role, actor in actors.items()}


@pytest.fixture
def make_scene(scenes: dict[str, Scene], db: None) -> Callable[[str], Scene]:
    """acme as the actor of ``role`` finds it (the module's shared rows, see ``scenes``)."""
    return scenes.__getitem__


# The module's other tests add people to the same acme.
@pytest.fixture
def acme(scenes: dict[str, Scene], db: None) -> Team:
    return scenes[Role.OWNER].team


@pytest.fixture
def alice(acme: Team) -> Any:
    return Membership.objects.select_related("user").get(team=acme, user__username="alice").user


# --- the actions ----------------------------------------------------------------------------------

Request: TypeAlias = "Callable[[Client, Scene], Response]"


def _route(name: str) -> str:
    """A URL name, in the accounts namespace unless it names its own."""
    return name if ":" in name else f"accounts:{name}"


def page_get(name: str, **kwargs: Callable[[Scene], Any]) -> Request:
    def send(client: Client, scene: Scene) -> Response:
        url_kwargs = {key: value(scene) for key, value in kwargs.items()}
        return client.get(reverse(_route(name), kwargs={"team_slug": "acme", **url_kwargs}))

    return send


def page_post(name: str, data: Callable[[Scene], dict[str, Any]], **kwargs: Callable[[Scene], Any]) -> Request:
    def send(client: Client, scene: Scene) -> Response:
        url_kwargs = {key: value(scene) for key, value in kwargs.items()}
        return client.post(reverse(_route(name), kwargs={"team_slug": "acme", **url_kwargs}), data(scene))

    return send


def api_call(method: str, path: str, body: Callable[[Scene], dict[str, Any]] | None = None) -> Request:
    """``path`` is relative to the team and formatted with the scene (``{s.key.pk}``)."""

    def send(client: Client, scene: Scene) -> Response:
        data = json.dumps(body(scene)) if body else ""
        return client.generic(method, API_ROOT + path.format(s=scene), data, content_type="application/json")

    return send


def no_data(scene: Scene) -> dict[str, Any]:
    return {}


def key_id(scene: Scene) -> int:
    return scene.key.pk


def target_id(scene: Scene) -> int:
    return scene.target.pk


def invitation_id(scene: Scene) -> int:
    return scene.invitation.pk


def tool_id(scene: Scene) -> int:
    return scene.tool.pk


def grant_id(scene: Scene) -> int:
    return scene.grant.pk


def spare_tool_id(scene: Scene) -> int:
    return scene.spare_tool.pk


def grant_form(scene: Scene) -> dict[str, Any]:
    return {"deployment": scene.deployment.pk, "roles": ["owner"], "approval": "always", "argument_constraints": ""}


def mcp_server_form(scene: Scene) -> dict[str, Any]:
    return {"name": "crm", "url": "https://mcp.example.com/mcp", "timeout_s": 10, "max_response_bytes": 100_000}


def approval_id(scene: Scene) -> str:
    return str(scene.approval.public_id)


def approval_status(scene: Scene) -> str:
    return ToolApproval.objects.for_team(scene.team).get(pk=scene.approval.pk).status


def launch_body(scene: Scene) -> dict[str, Any]:
    return {"name": "release candidate", "base_model": scene.base_model.pk, "dataset_version": scene.version.pk,
            "pool": "idle", "settings": {"max_steps": 2}}  # fmt: skip


def launch_form(scene: Scene) -> dict[str, Any]:
    settings = {key.replace(".", "__"): value for key, value in presets.defaults().items() if value is not None}
    body = launch_body(scene)
    return {**settings, **{key: body[key] for key in ("name", "base_model", "dataset_version", "pool")},
            "max_steps": 2}  # fmt: skip


def preset_form(scene: Scene) -> dict[str, Any]:
    return {"name": "terse", "system_prompt": "Answer in one sentence.", "temperature": 0.7, "top_p": 1,
            "max_tokens": 64}  # fmt: skip


def suite_form(scene: Scene) -> dict[str, Any]:
    return {"name": "regression", "description": "Changed.", "dataset_version": scene.version.pk,
            "graders": '[{"type": "contains", "strings": ["refund"]}]'}  # fmt: skip


def suite_body(scene: Scene) -> dict[str, Any]:
    return {"name": "regression", "dataset_version": scene.version.pk, "graders": [{"type": "exact_match"}]}


def suite_id(scene: Scene) -> int:
    return scene.suite.pk


def distill_body(scene: Scene) -> dict[str, Any]:
    return {"name": "taught by the matrix", "teacher": f"base:{scene.base_model.pk}", "prompts": scene.version.pk}


def serving(deployment: Deployment) -> tuple[int, int | None]:
    """What ``deployment`` serves now: its version's id and its canary's."""
    return (
        Deployment.objects.for_team(deployment.team)
        .values_list("model_version_id", "canary_version_id")
        .get(pk=deployment.pk)
    )


def gate_run_started(scene: Scene) -> bool:
    runs = EvalRun.objects.for_team(scene.team).filter(suite=scene.suite)
    return any(f"version:{scene.candidate.pk}" in run.model_keys for run in runs)


def probe_set_form(scene: Scene) -> dict[str, Any]:
    return {
        "name": "matrix",
        "templates": "Describe {person}.",
        "groups": "gender / women: a woman\ngender / men: a man",
    }


def probe_set_body(scene: Scene) -> dict[str, Any]:
    groups = [
        {"category": "gender", "group": name, "terms": [term]}
        for name, term in (("women", "a woman"), ("men", "a man"))
    ]
    return {"name": "matrix", "templates": ["Describe {person}."], "groups": groups}


def eval_run_started(scene: Scene) -> bool:
    return EvalRun.objects.for_team(scene.team).filter(suite=scene.suite).exclude(pk=scene.eval_run.pk).exists()


def launched(scene: Scene) -> bool:
    return TrainingJob.objects.for_team(scene.team).filter(name="release candidate").exists()


def shares_of_target(scene: Scene) -> str | None:
    return services.shares_of(scene.key).get(scene.target.user_id)


@dataclass(frozen=True)
class Action:
    """One thing a team member may try, through the page and/or the API."""

    perm: Perm
    page: Request | None
    api: Request | None
    done: Callable[[Scene], bool] | None = None  # the write's effect in the database; None for reads


ACTIONS: dict[str, Action] = {
    "view_team": Action(Perm.VIEW_TEAM, page_get("team_home"), api_call("GET", "")),
    "list_members": Action(Perm.VIEW_TEAM, None, api_call("GET", "members/")),
    "list_keys": Action(Perm.VIEW_TEAM, page_get("api_keys"), api_call("GET", "keys/")),
    "view_key": Action(Perm.VIEW_TEAM, page_get("api_key_detail", key_id=key_id), None),
    "open_settings": Action(Perm.CHANGE_TEAM, page_get("team_settings"), None),
    "rename_team": Action(
        Perm.CHANGE_TEAM,
        page_post("team_settings", lambda s: {"name": "Acme Labs", "currency": "USD"}),
        None,
        done=lambda s: Team.objects.get(pk=s.team.pk).name == "Acme Labs",
    ),
    "set_acceptable_use": Action(
        Perm.CHANGE_TEAM,
        page_post(
            "team_settings", lambda s: {"name": s.team.name, "currency": "USD", "acceptable_use_policy": "Be kind."}
        ),
        None,
        done=lambda s: Team.objects.get(pk=s.team.pk).acceptable_use_policy == "Be kind.",
    ),
    "list_invitations": Action(Perm.INVITE_MEMBERS, None, api_call("GET", "invitations/")),
    "create_invitation": Action(
        Perm.INVITE_MEMBERS,
        page_post("invitation_create", lambda s: {"role": Role.MEMBER, "email": "erin@example.com"}),
        api_call("POST", "invitations/", lambda s: {"role": "member", "email": "erin@example.com"}),
        done=lambda s: Invitation.objects.for_team(s.team).filter(email="erin@example.com").exists(),
    ),
    "revoke_invitation": Action(
        Perm.INVITE_MEMBERS,
        page_post("invitation_revoke", no_data, invitation_id=invitation_id),
        api_call("DELETE", "invitations/{s.invitation.pk}"),
        done=lambda s: Invitation.objects.for_team(s.team).get(pk=s.invitation.pk).status == "revoked",
    ),
    "change_role": Action(
        Perm.CHANGE_ROLES,
        page_post("member_role", lambda s: {"role": Role.MEMBER}, membership_id=target_id),
        api_call("PATCH", "members/target", lambda s: {"role": "member"}),
        done=lambda s: Membership.objects.get(pk=s.target.pk).role == Role.MEMBER,
    ),
    "remove_member": Action(
        Perm.REMOVE_MEMBERS,
        page_post("member_remove", no_data, membership_id=target_id),
        api_call("DELETE", "members/target"),
        done=lambda s: not Membership.objects.filter(pk=s.target.pk).exists(),
    ),
    "view_audit": Action(Perm.VIEW_AUDIT, page_get("audit_log"), api_call("GET", "audit-events/")),
    "create_key": Action(
        Perm.MANAGE_API_KEYS,
        page_post("api_keys", lambda s: {"name": "release bot", "role": Role.VIEWER}),
        api_call("POST", "keys/", lambda s: {"name": "release bot", "role": "viewer"}),
        done=lambda s: TeamAPIKey.objects.for_team(s.team).filter(name="release bot").exists(),
    ),
    "revoke_key": Action(
        Perm.MANAGE_API_KEYS,
        page_post("api_key_revoke", no_data, key_id=key_id),
        api_call("DELETE", "keys/{s.key.pk}"),
        done=lambda s: not TeamAPIKey.objects.for_team(s.team).get(pk=s.key.pk).is_active,
    ),
    "share_key": Action(
        Perm.SHARE_OBJECTS,
        page_post("api_key_share", lambda s: {"member": s.target.pk, "level": "change"}, key_id=key_id),
        api_call("POST", "keys/{s.key.pk}/shares", lambda s: {"username": "target", "level": "change"}),
        done=lambda s: shares_of_target(s) == "change",
    ),
    "unshare_key": Action(
        Perm.SHARE_OBJECTS,
        page_post("api_key_share", lambda s: {"member": s.target.pk, "level": "view", "remove": "1"}, key_id=key_id),
        api_call("DELETE", "keys/{s.key.pk}/shares/target"),
        done=lambda s: shares_of_target(s) is None,
    ),
    "list_jobs": Action(Perm.VIEW_TEAM, page_get("training:list"), api_call("GET", "jobs")),
    "open_job_form": Action(Perm.LAUNCH_TRAINING, page_get("training:new"), None),
    "launch_job": Action(
        Perm.LAUNCH_TRAINING,
        page_post("training:new", launch_form),
        api_call("POST", "jobs", launch_body),
        done=launched,
    ),
    "delete_own_job": Action(
        Perm.LAUNCH_TRAINING,
        page_post("training:job_delete", no_data, job_id=lambda s: s.own_job.pk),
        api_call("DELETE", "jobs/{s.own_job.pk}"),
        done=lambda s: not TrainingJob.objects.for_team(s.team).filter(pk=s.own_job.pk).exists(),
    ),
    "retry_model_download": Action(
        Perm.LAUNCH_TRAINING,
        page_post("training:model_retry", no_data, model_id=lambda s: s.failed_download.pk),
        api_call("POST", "base-models/{s.failed_download.pk}/retry"),
        done=lambda s: BaseModel.objects.get(pk=s.failed_download.pk).status == BaseModel.Status.DOWNLOADING,
    ),
    "delete_base_model": Action(
        Perm.LAUNCH_TRAINING,
        page_post("training:model_delete", no_data, model_id=lambda s: s.failed_download.pk),
        api_call("DELETE", "base-models/{s.failed_download.pk}"),
        done=lambda s: not BaseModel.objects.filter(pk=s.failed_download.pk).exists(),
    ),
    "download_model": Action(
        Perm.EXPORT_MODELS,
        page_get("training:version_download", version_id=lambda s: s.model_version.pk),
        api_call("GET", "model-versions/{s.model_version.pk}/download"),
    ),
    "open_playground": Action(Perm.VIEW_TEAM, page_get("serving:playground"), None),
    "save_prompt_preset": Action(
        Perm.USE_PLAYGROUND,
        page_post("serving:presets", preset_form),
        None,
        done=lambda s: PromptPreset.objects.for_team(s.team).filter(name="terse").exists(),
    ),
    "read_leaderboard": Action(Perm.VIEW_TEAM, page_get("serving:leaderboard"), None),
    "export_arena_votes": Action(
        Perm.UPLOAD_DATASETS,
        page_post("serving:arena_export", no_data),
        None,
        done=lambda s: Dataset.objects.for_team(s.team).filter(name="Arena preferences").exists(),
    ),
    "export_playground_votes": Action(
        Perm.UPLOAD_DATASETS,
        page_post("serving:feedback_export", no_data),
        api_call("POST", "playground/feedback/export"),
        done=lambda s: Dataset.objects.for_team(s.team).filter(name="Playground feedback").exists(),
    ),
    "list_deployments": Action(Perm.VIEW_TEAM, page_get("serving:deployments"), api_call("GET", "deployments")),
    "create_deployment": Action(
        Perm.MANAGE_DEPLOYMENTS,
        page_post("serving:deployments", lambda s: {"name": "support-bot", "model_version": s.model_version.pk}),
        api_call("POST", "deployments", lambda s: {"name": "support-bot", "model_version": s.model_version.pk}),
        done=lambda s: Deployment.objects.for_team(s.team).filter(name="support-bot").exists(),
    ),
    "change_key_deployments": Action(
        Perm.MANAGE_DEPLOYMENTS,
        page_post("serving:key_deployments", lambda s: {"deployments": [s.deployment.pk]}, key_id=key_id),
        None,
        done=lambda s: s.key.deployments.for_team(s.team).filter(pk=s.deployment.pk).exists(),
    ),
    "read_usage": Action(Perm.VIEW_TEAM, page_get("serving:usage"), api_call("GET", "usage")),
    "list_tools": Action(Perm.VIEW_TEAM, page_get("tools:list"), None),
    "view_tool": Action(Perm.VIEW_TEAM, page_get("tools:detail", tool_id=tool_id), None),
    "open_tool_form": Action(Perm.MANAGE_TOOLS, page_get("tools:new_sql"), None),
    "create_tool": Action(
        Perm.MANAGE_TOOLS,
        page_post("tools:new_http", lambda s: http_tool_form(name="release_notes")),
        None,
        done=lambda s: Tool.objects.for_team(s.team).filter(name="release_notes").exists(),
    ),
    "edit_tool": Action(
        Perm.MANAGE_TOOLS,
        page_post("tools:edit", lambda s: http_tool_form(description="Changed."), tool_id=tool_id),
        None,
        done=lambda s: Tool.objects.for_team(s.team).get(pk=s.tool.pk).description == "Changed.",
    ),
    "delete_tool": Action(
        Perm.MANAGE_TOOLS,
        page_post("tools:delete", no_data, tool_id=tool_id),
        None,
        done=lambda s: not Tool.objects.for_team(s.team).filter(pk=s.tool.pk).exists(),
    ),
    "open_grant_form": Action(Perm.MANAGE_TOOLS, page_get("tools:grant_new", tool_id=tool_id), None),
    "list_mcp_servers": Action(Perm.VIEW_TEAM, None, api_call("GET", "mcp-servers/")),
    "open_mcp_server_form": Action(Perm.MANAGE_TOOLS, page_get("tools:mcp_new"), None),
    "register_mcp_server": Action(
        Perm.MANAGE_TOOLS,
        page_post("tools:mcp_new", mcp_server_form),
        api_call("POST", "mcp-servers/", lambda s: {"name": "crm", "url": "https://mcp.example.com/mcp"}),
        done=lambda s: McpServer.objects.for_team(s.team).filter(name="crm").exists(),
    ),
    "list_tool_approvals": Action(
        Perm.VIEW_TEAM, page_get("tools:approvals"), api_call("GET", "tool-approvals/?status=pending")
    ),
    "read_tool_activity": Action(Perm.VIEW_TEAM, page_get("tools:activity"), api_call("GET", "tool-activity/")),
    "approve_tool_call": Action(
        Perm.APPROVE_TOOLS,
        page_post("tools:approval_approve", no_data, approval_id=approval_id),
        api_call("POST", "tool-approvals/{s.approval.public_id}/approve"),
        done=lambda s: approval_status(s) == "approved",
    ),
    "reject_tool_call": Action(
        Perm.APPROVE_TOOLS,
        page_post("tools:approval_reject", no_data, approval_id=approval_id),
        api_call("POST", "tool-approvals/{s.approval.public_id}/reject", lambda s: {"reason": "not today"}),
        done=lambda s: approval_status(s) == "rejected",
    ),
    "grant_tool": Action(
        Perm.MANAGE_TOOLS,
        page_post("tools:grant_new", grant_form, tool_id=spare_tool_id),
        None,
        done=lambda s: ToolGrant.objects.for_team(s.team).filter(tool=s.spare_tool).exists(),
    ),
    "edit_grant": Action(
        Perm.MANAGE_TOOLS,
        page_post("tools:grant_edit", grant_form, tool_id=tool_id, grant_id=grant_id),
        None,
        done=lambda s: ToolGrant.objects.for_team(s.team).get(pk=s.grant.pk).approval == "always",
    ),
    "revoke_grant": Action(
        Perm.MANAGE_TOOLS,
        page_post("tools:grant_revoke", no_data, tool_id=tool_id, grant_id=grant_id),
        None,
        done=lambda s: not ToolGrant.objects.for_team(s.team).filter(pk=s.grant.pk).exists(),
    ),
    "list_eval_suites": Action(Perm.VIEW_TEAM, page_get("evals:list"), api_call("GET", "eval-suites/")),
    "view_eval_suite": Action(Perm.VIEW_TEAM, page_get("evals:suite", suite_id=suite_id), None),
    "open_eval_suite_form": Action(Perm.RUN_EVALS, page_get("evals:new"), None),
    "create_eval_suite": Action(
        Perm.RUN_EVALS,
        page_post("evals:new", suite_form),
        api_call("POST", "eval-suites/", suite_body),
        done=lambda s: EvalSuite.objects.for_team(s.team).filter(name="regression").exists(),
    ),
    "edit_eval_suite": Action(
        Perm.RUN_EVALS,
        page_post("evals:suite_edit", suite_form, suite_id=suite_id),
        None,
        done=lambda s: EvalSuite.objects.for_team(s.team).get(pk=s.suite.pk).description == "Changed.",
    ),
    "delete_eval_suite": Action(
        Perm.RUN_EVALS,
        page_post("evals:suite_delete", no_data, suite_id=suite_id),
        None,
        done=lambda s: not EvalSuite.objects.for_team(s.team).filter(pk=s.suite.pk).exists(),
    ),
    "run_eval_suite": Action(
        Perm.RUN_EVALS,
        page_post("evals:run_new", lambda s: {"models": f"base:{s.base_model.pk}"}, suite_id=suite_id),
        api_call("POST", "eval-suites/{s.suite.pk}/runs", lambda s: {"models": [f"base:{s.base_model.pk}"]}),
        done=eval_run_started,
    ),
    "view_eval_run": Action(
        Perm.VIEW_TEAM,
        page_get("evals:run", run_id=lambda s: s.eval_run.pk),
        api_call("GET", "eval-runs/{s.eval_run.pk}"),
    ),
    "list_eval_results": Action(Perm.VIEW_TEAM, None, api_call("GET", "eval-runs/{s.eval_run.pk}/results")),
    "view_quality_limits": Action(Perm.VIEW_TEAM, page_get("evals:policy"), api_call("GET", "evals-policy")),
    "change_quality_limits": Action(
        Perm.CHANGE_TEAM,
        page_post(
            "evals:policy", lambda s: {"max_perplexity_increase": 10, "max_pass_rate_drop": 5, "max_bias_gap": 0.15}
        ),
        api_call(
            "PUT",
            "evals-policy",
            lambda s: {"max_perplexity_increase": 0.1, "max_pass_rate_drop": 0.05, "max_bias_gap": 0.15},
        ),
        done=lambda s: EvalsPolicy.objects.for_team(s.team).filter(max_bias_gap=0.15).exists(),
    ),
    "check_forgetting": Action(
        Perm.RUN_EVALS,
        page_post("evals:forgetting_new", no_data, version_id=lambda s: s.model_version.pk),
        api_call("POST", "model-versions/{s.model_version.pk}/forgetting-checks"),
        done=lambda s: ForgettingCheck.objects.for_team(s.team).filter(model_version=s.model_version).exists(),
    ),
    "list_forgetting_checks": Action(
        Perm.VIEW_TEAM, None, api_call("GET", "model-versions/{s.model_version.pk}/forgetting-checks")
    ),
    "list_probe_sets": Action(Perm.VIEW_TEAM, page_get("evals:probe_sets"), api_call("GET", "probe-sets/")),
    "add_default_probe_set": Action(
        Perm.RUN_EVALS,
        page_post("evals:probe_set_default", no_data),
        api_call("POST", "probe-sets/default"),
        done=lambda s: ProbeSet.objects.for_team(s.team).exists(),
    ),
    "create_probe_set": Action(
        Perm.RUN_EVALS,
        page_post("evals:probe_set_new", probe_set_form),
        api_call("POST", "probe-sets/", probe_set_body),
        done=lambda s: ProbeSet.objects.for_team(s.team).filter(name="matrix").exists(),
    ),
    "promote_version": Action(
        Perm.MANAGE_DEPLOYMENTS,
        page_post(
            "serving:deployment_promote",
            lambda s: {"model_version": s.candidate.pk, "canary_share": 0},
            deployment_id=lambda s: s.deployment.pk,
        ),
        api_call("POST", "deployments/{s.deployment.pk}/promote", lambda s: {"model_version": s.candidate.pk}),
        done=lambda s: serving(s.deployment) == (s.candidate.pk, None),
    ),
    "override_gate": Action(
        Perm.OVERRIDE_GATES,
        None,  # the page's form has no reason field for those who may not override
        api_call(
            "POST",
            "deployments/{s.gated.pk}/promote",
            lambda s: {"model_version": s.candidate.pk, "override_reason": "the matrix says so"},
        ),
        done=lambda s: serving(s.gated) == (s.candidate.pk, None),
    ),
    "roll_back": Action(
        Perm.MANAGE_DEPLOYMENTS,
        page_post("serving:deployment_rollback", no_data, deployment_id=lambda s: s.canaried.pk),
        api_call("POST", "deployments/{s.canaried.pk}/rollback"),
        done=lambda s: serving(s.canaried) == (s.model_version.pk, None),
    ),
    "stop_canary": Action(
        Perm.MANAGE_DEPLOYMENTS,
        page_post("serving:deployment_stop_canary", no_data, deployment_id=lambda s: s.canaried.pk),
        api_call("POST", "deployments/{s.canaried.pk}/canary/stop"),
        done=lambda s: serving(s.canaried) == (s.candidate.pk, None),
    ),
    "read_releases": Action(Perm.VIEW_TEAM, None, api_call("GET", "deployments/{s.canaried.pk}/releases")),
    "check_gate": Action(Perm.VIEW_TEAM, None, api_call("GET", "deployments/{s.gated.pk}/gate-check/{s.candidate.pk}")),
    "read_gate": Action(Perm.VIEW_TEAM, None, api_call("GET", "deployments/{s.gated.pk}/gate")),
    "open_gate_form": Action(Perm.MANAGE_DEPLOYMENTS, page_get("evals:gate", deployment_id=lambda s: s.gated.pk), None),
    "set_gate": Action(
        Perm.MANAGE_DEPLOYMENTS,
        page_post("evals:gate", lambda s: {"forgetting": "on"}, deployment_id=lambda s: s.gated.pk),
        api_call("PUT", "deployments/{s.gated.pk}/gate", lambda s: {"forgetting": True}),
        done=lambda s: Deployment.objects.for_team(s.team).get(pk=s.gated.pk).gate == {"forgetting": True},
    ),
    "set_completion_storage": Action(
        Perm.MANAGE_DEPLOYMENTS,
        page_post(
            "serving:deployment_completions",
            lambda s: {"store": "on", "retention_days": 9},
            deployment_id=lambda s: s.deployment.pk,
        ),
        api_call(
            "PUT", "deployments/{s.deployment.pk}/completions/storage", lambda s: {"store": True, "retention_days": 9}
        ),
        done=lambda s: Deployment.objects.for_team(s.team).get(pk=s.deployment.pk).completion_retention_days == 9,
    ),
    "read_stored_completions": Action(
        Perm.MANAGE_DEPLOYMENTS, None, api_call("GET", "deployments/{s.deployment.pk}/completions")
    ),
    "list_distillations": Action(Perm.VIEW_TEAM, page_get("evals:distillations"), api_call("GET", "distillations")),
    "view_distillation": Action(
        Perm.VIEW_TEAM,
        page_get("evals:distillation", distillation_id=lambda s: s.distillation.pk),
        api_call("GET", "distillations/{s.distillation.pk}"),
    ),
    "start_distillation": Action(
        Perm.RUN_EVALS,
        page_post("evals:distillations", lambda s: {**distill_body(s), "redact_pii": "on"}),
        api_call("POST", "distillations", distill_body),
        done=lambda s: Distillation.objects.for_team(s.team).filter(name="taught by the matrix").exists(),
    ),
    "compare_distillation": Action(
        Perm.RUN_EVALS,
        page_post(
            "evals:distillation_compare", lambda s: {"suite": s.suite.pk}, distillation_id=lambda s: s.distillation.pk
        ),
        api_call("POST", "distillations/{s.distillation.pk}/compare", lambda s: {"suite": s.suite.pk}),
        done=lambda s: EvalRun.objects.for_team(s.team).filter(suite=s.suite).exclude(pk=s.eval_run.pk).exists(),
    ),
    "retrain": Action(
        Perm.LAUNCH_TRAINING,
        page_post(
            "evals:retrain", lambda s: {"dataset_version": s.newer_data.pk}, deployment_id=lambda s: s.deployment.pk
        ),
        api_call("POST", "deployments/{s.deployment.pk}/retrains", lambda s: {"dataset_version": s.newer_data.pk}),
        done=lambda s: Retrain.objects.for_team(s.team).filter(deployment=s.deployment).exists(),
    ),
    "schedule_retraining": Action(
        Perm.MANAGE_DEPLOYMENTS,
        page_post("evals:retrain_schedule", lambda s: {"enabled": "on"}, deployment_id=lambda s: s.deployment.pk),
        api_call("PUT", "deployments/{s.deployment.pk}/retrain-schedule", lambda s: {"enabled": True}),
        done=lambda s: Deployment.objects.for_team(s.team).get(pk=s.deployment.pk).retrain_on_new_data,
    ),
    "list_retrains": Action(Perm.VIEW_TEAM, None, api_call("GET", "deployments/{s.deployment.pk}/retrains")),
    "read_guard_policy": Action(
        Perm.VIEW_TEAM,
        page_get("serving:deployment_guard", deployment_id=lambda s: s.guarded.pk),
        api_call("GET", "deployments/{s.guarded.pk}/guard-policy"),
    ),
    "set_guard_policy": Action(
        Perm.MANAGE_DEPLOYMENTS,
        page_post(
            "serving:deployment_guard",
            lambda s: {"enabled": "on", "guard_checks": "both", "refusal_message": "Matrix says no."},
            deployment_id=lambda s: s.deployment.pk,
        ),
        api_call("PUT", "deployments/{s.deployment.pk}/guard-policy", lambda s: {"refusal_message": "Matrix says no."}),
        done=lambda s: GuardPolicy.objects.for_team(s.team).filter(refusal_message="Matrix says no.").exists(),
    ),
    "read_guard_activity": Action(
        Perm.VIEW_TEAM, page_get("serving:guard_activity"), api_call("GET", "guard-activity")
    ),
    "read_guard_tests": Action(
        Perm.VIEW_TEAM,
        page_get("evals:guard_tests", deployment_id=lambda s: s.guarded.pk),
        api_call("GET", "deployments/{s.guarded.pk}/guard-tests"),
    ),
    "run_guard_test": Action(
        Perm.RUN_EVALS,
        page_post("evals:guard_test_run", lambda s: {"suite": s.guard_suite.pk}, deployment_id=lambda s: s.guarded.pk),
        api_call("POST", "deployments/{s.guarded.pk}/guard-tests", lambda s: {"suite": s.guard_suite.pk}),
        done=lambda s: GuardTest.objects.for_team(s.team).filter(deployment=s.guarded).exists(),
    ),
    "set_guard_gate": Action(
        Perm.MANAGE_DEPLOYMENTS,
        page_post(
            "evals:guard_gate",
            lambda s: {
                "suite": s.guard_suite.pk,
                "require": "on",
                "max_false_positive_rate": 10,
                "max_false_negative_rate": 10,
            },
            deployment_id=lambda s: s.guarded.pk,
        ),
        None,
        done=lambda s: "guard" in Deployment.objects.for_team(s.team).get(pk=s.guarded.pk).gate,
    ),
    "read_costs": Action(Perm.VIEW_TEAM, page_get("costs"), api_call("GET", "costs/")),
    "read_budget": Action(Perm.VIEW_TEAM, None, api_call("GET", "costs/budget")),
    "change_budget": Action(
        Perm.CHANGE_BUDGETS,
        page_post("budget_change", lambda s: {"soft_limit": "7", "hard_limit": "9"}),
        api_call("PUT", "costs/budget", lambda s: {"soft_limit": 7, "hard_limit": 9}),
        done=lambda s: Budget.objects.for_team(s.team).filter(hard_limit=9).exists(),
    ),
    "read_serving_cost": Action(Perm.VIEW_TEAM, None, api_call("GET", "deployments/{s.deployment.pk}/cost")),
    "set_serving_plan": Action(
        Perm.MANAGE_DEPLOYMENTS,
        page_post(
            "serving:deployment_serving_plan",
            lambda s: {"precision": "fp8", "concurrency": "3"},
            deployment_id=lambda s: s.deployment.pk,
        ),
        api_call("PUT", "deployments/{s.deployment.pk}/serving-plan", lambda s: {"precision": "fp8", "concurrency": 3}),
        done=lambda s: Deployment.objects.for_team(s.team).get(pk=s.deployment.pk).expected_concurrency == 3,
    ),
    "run_gate_suites": Action(
        Perm.RUN_EVALS,
        page_post("evals:gate_run", lambda s: {"version": s.candidate.pk}, deployment_id=lambda s: s.gated.pk),
        api_call("POST", "deployments/{s.gated.pk}/gate/runs", lambda s: {"model_version": s.candidate.pk}),
        done=gate_run_started,
    ),
    "export_model": Action(
        Perm.EXPORT_MODELS,
        page_post("exports:create", lambda s: {"format": "bundle"}, version_id=lambda s: s.model_version.pk),
        api_call("POST", "model-versions/{s.model_version.pk}/exports", lambda s: {"format": "bundle"}),
        done=lambda s: ModelExport.objects.for_team(s.team).filter(model_version=s.model_version).exists(),
    ),
    "list_exports": Action(Perm.VIEW_TEAM, None, api_call("GET", "model-versions/{s.model_version.pk}/exports")),
    "approve_export": Action(
        Perm.APPROVE_EXPORTS,
        page_post("exports:approve", no_data, export_id=lambda s: s.waiting_export.pk),
        api_call("POST", "exports/{s.waiting_export.pk}/approve", lambda s: {}),
        done=lambda s: ModelExport.objects.for_team(s.team).get(pk=s.waiting_export.pk).status == "queued",
    ),
    "open_export_settings": Action(Perm.CHANGE_TEAM, page_get("exports:settings"), None),
}

# The matrix as documented (README, "Roles"), written out by hand: True = allowed.
#                                   owner  admin  member viewer
DOCUMENTED_MATRIX: dict[str, tuple[bool, bool, bool, bool]] = {
    "view_team": (True, True, True, True),
    "list_members": (True, True, True, True),
    "list_keys": (True, True, True, True),
    "view_key": (True, True, True, True),
    "open_settings": (True, True, False, False),
    "rename_team": (True, True, False, False),
    "list_invitations": (True, True, False, False),
    "create_invitation": (True, True, False, False),
    "revoke_invitation": (True, True, False, False),
    "change_role": (True, True, False, False),
    "remove_member": (True, True, False, False),
    "view_audit": (True, True, False, False),
    "create_key": (True, True, False, False),
    "revoke_key": (True, True, False, False),
    "share_key": (True, True, False, False),
    "unshare_key": (True, True, False, False),
    "list_jobs": (True, True, True, True),
    "open_job_form": (True, True, True, False),
    "launch_job": (True, True, True, False),
    "delete_own_job": (True, True, True, False),
    "retry_model_download": (True, True, True, False),
    "delete_base_model": (True, True, True, False),
    "download_model": (True, True, True, False),
    "open_playground": (True, True, True, True),
    "save_prompt_preset": (True, True, True, False),
    "read_leaderboard": (True, True, True, True),
    "export_arena_votes": (True, True, True, False),
    "export_playground_votes": (True, True, True, False),
    "list_deployments": (True, True, True, True),
    "create_deployment": (True, True, False, False),
    "change_key_deployments": (True, True, False, False),
    "read_usage": (True, True, True, True),
    "list_tools": (True, True, True, True),
    "view_tool": (True, True, True, True),
    "open_tool_form": (True, True, False, False),
    "create_tool": (True, True, False, False),
    "edit_tool": (True, True, False, False),
    "delete_tool": (True, True, False, False),
    "open_grant_form": (True, True, False, False),
    "list_mcp_servers": (True, True, True, True),
    "open_mcp_server_form": (True, True, False, False),
    "register_mcp_server": (True, True, False, False),
    "list_tool_approvals": (True, True, True, True),
    "read_tool_activity": (True, True, True, True),
    "approve_tool_call": (True, True, False, False),
    "reject_tool_call": (True, True, False, False),
    "grant_tool": (True, True, False, False),
    "edit_grant": (True, True, False, False),
    "revoke_grant": (True, True, False, False),
    "list_eval_suites": (True, True, True, True),
    "view_eval_suite": (True, True, True, True),
    "open_eval_suite_form": (True, True, True, False),
    "create_eval_suite": (True, True, True, False),
    "edit_eval_suite": (True, True, True, False),
    "delete_eval_suite": (True, True, True, False),
    "run_eval_suite": (True, True, True, False),
    "view_eval_run": (True, True, True, True),
    "list_eval_results": (True, True, True, True),
    "view_quality_limits": (True, True, True, True),
    "change_quality_limits": (True, True, False, False),
    "check_forgetting": (True, True, True, False),
    "list_forgetting_checks": (True, True, True, True),
    "list_probe_sets": (True, True, True, True),
    "add_default_probe_set": (True, True, True, False),
    "create_probe_set": (True, True, True, False),
    "set_acceptable_use": (True, True, False, False),
    "promote_version": (True, True, False, False),
    "override_gate": (True, False, False, False),
    "roll_back": (True, True, False, False),
    "stop_canary": (True, True, False, False),
    "read_releases": (True, True, True, True),
    "check_gate": (True, True, True, True),
    "read_gate": (True, True, True, True),
    "open_gate_form": (True, True, False, False),
    "set_gate": (True, True, False, False),
    "run_gate_suites": (True, True, True, False),
    "set_completion_storage": (True, True, False, False),
    "read_stored_completions": (True, True, False, False),
    "list_distillations": (True, True, True, True),
    "view_distillation": (True, True, True, True),
    "start_distillation": (True, True, True, False),
    "compare_distillation": (True, True, True, False),
    "retrain": (True, True, True, False),
    "schedule_retraining": (True, True, False, False),
    "list_retrains": (True, True, True, True),
    "read_guard_policy": (True, True, True, True),
    "set_guard_policy": (True, True, False, False),
    "read_guard_activity": (True, True, True, True),
    "read_guard_tests": (True, True, True, True),
    "run_guard_test": (True, True, True, False),
    "set_guard_gate": (True, True, False, False),
    "export_model": (True, True, True, False),
    "list_exports": (True, True, True, True),
    "approve_export": (True, True, False, False),
    "open_export_settings": (True, True, False, False),
    "read_costs": (True, True, True, True),
    "read_budget": (True, True, True, True),
    "change_budget": (True, False, False, False),
    "read_serving_cost": (True, True, True, True),
    "set_serving_plan": (True, True, False, False),
}


def _cases(allowed: bool) -> list[Any]:
    return [
        pytest.param(surface, name, role, id=f"{surface}-{name}-{role}")
        for name, action in ACTIONS.items()
        for surface in ("page", "api")
        if getattr(action, surface) is not None
        for role in ROLES
        if (action.perm in ROLE_PERMISSIONS[role]) == allowed
    ]


def client_for(surface: str, user: Any, login: Callable[..., Client], bearer: Callable[..., Client]) -> Client:
    return login(user) if surface == "page" else bearer(user)


# --- the matrix -----------------------------------------------------------------------------------


def test_documented_matrix_covers_every_action() -> None:
    assert set(DOCUMENTED_MATRIX) == set(ACTIONS)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", sorted(DOCUMENTED_MATRIX))
def test_role_permissions_match_the_documented_matrix(name: str, role: Role) -> None:
    documented = DOCUMENTED_MATRIX[name][ROLES.index(role)]
    assert (ACTIONS[name].perm in ROLE_PERMISSIONS[role]) == documented


@pytest.mark.parametrize(("surface", "name", "role"), _cases(allowed=True))
def test_allowed_role_succeeds(
    surface: str,
    name: str,
    role: Role,
    make_scene: Callable[[str], Scene],
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    scene, action = make_scene(role), ACTIONS[name]
    send = getattr(action, surface)
    response = send(client_for(surface, scene.actor, login, bearer), scene)
    assert 200 <= response.status_code < 400, response.content[:500]
    if action.done is None:
        assert response.status_code == 200
    else:
        assert action.done(scene)


@pytest.mark.parametrize(("surface", "name", "role"), _cases(allowed=False))
def test_denied_role_gets_403_and_changes_nothing(
    surface: str,
    name: str,
    role: Role,
    make_scene: Callable[[str], Scene],
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    scene, action = make_scene(role), ACTIONS[name]
    send = getattr(action, surface)
    client = client_for(surface, scene.actor, login, bearer)
    before = team_state(scene.team)
    response = send(client, scene)
    assert response.status_code == 403, response.content[:500]
    assert team_state(scene.team) == before
    assert action.done is None or not action.done(scene)


def test_every_team_view_checks_a_role_permission() -> None:
    """Each view under /t/<team_slug>/ is wrapped by ``require_perm`` (it sets ``required_perm``)."""
    unchecked = [
        name
        for name, page in page_team_routes().items()
        if not isinstance(getattr(page.view, "required_perm", None), Perm)
    ]
    assert not unchecked, f"team views without @require_perm: {unchecked}"


# --- owners and admins: who may hand out and take away "owner" ------------------------------------


@pytest.fixture
def admin(acme: Team) -> Any:
    return member(acme, Role.ADMIN, "adele")


@pytest.fixture
def viewer_membership(acme: Team) -> Membership:
    return Membership.objects.get(team=acme, user=member(acme, Role.VIEWER, "victor"))


@pytest.fixture
def second_owner(acme: Team) -> Membership:
    return Membership.objects.get(team=acme, user=member(acme, Role.OWNER, "olga"))


def change_role(client: Client, surface: str, membership: Membership, role: str) -> Response:
    if surface == "page":
        url = reverse("accounts:member_role", args=["acme", membership.pk])
        return client.post(url, {"role": role})
    url = f"{API_ROOT}members/{membership.user.get_username()}"
    return client.patch(url, json.dumps({"role": role}), content_type="application/json")


def remove(client: Client, surface: str, membership: Membership) -> Response:
    if surface == "page":
        return client.post(reverse("accounts:member_remove", args=["acme", membership.pk]))
    return client.delete(f"{API_ROOT}members/{membership.user.get_username()}")


def role_of(membership: Membership) -> str | None:
    return Membership.objects.filter(pk=membership.pk).values_list("role", flat=True).first()


SURFACES = pytest.mark.parametrize("surface", ["page", "api"])


@SURFACES
def test_admin_cannot_grant_owner(
    surface: str,
    admin: Any,
    viewer_membership: Membership,
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    response = change_role(client_for(surface, admin, login, bearer), surface, viewer_membership, Role.OWNER)
    assert response.status_code == 403
    assert role_of(viewer_membership) == Role.VIEWER


@SURFACES
def test_admin_cannot_change_an_owners_role(
    surface: str,
    admin: Any,
    second_owner: Membership,
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    response = change_role(client_for(surface, admin, login, bearer), surface, second_owner, Role.MEMBER)
    assert response.status_code == 403
    assert role_of(second_owner) == Role.OWNER


@SURFACES
def test_admin_cannot_remove_an_owner(
    surface: str,
    admin: Any,
    second_owner: Membership,
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    response = remove(client_for(surface, admin, login, bearer), surface, second_owner)
    assert response.status_code == 403
    assert role_of(second_owner) == Role.OWNER


def test_admin_cannot_invite_an_owner(acme: Team, admin: Any, bearer: Callable[..., Client]) -> None:
    response = bearer(admin).post(
        f"{API_ROOT}invitations/", json.dumps({"role": "owner"}), content_type="application/json"
    )
    assert response.status_code == 400
    assert "role" in response.json()["errors"]
    assert not Invitation.objects.for_team(acme).filter(role=Role.OWNER).exists()


@SURFACES
def test_owner_can_grant_owner(
    surface: str,
    alice: Any,
    viewer_membership: Membership,
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    response = change_role(client_for(surface, alice, login, bearer), surface, viewer_membership, Role.OWNER)
    assert response.status_code < 400
    assert role_of(viewer_membership) == Role.OWNER


@SURFACES
def test_owner_can_change_another_owners_role(
    surface: str,
    alice: Any,
    second_owner: Membership,
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    response = change_role(client_for(surface, alice, login, bearer), surface, second_owner, Role.ADMIN)
    assert response.status_code < 400
    assert role_of(second_owner) == Role.ADMIN


@SURFACES
def test_owner_can_remove_another_owner(
    surface: str,
    alice: Any,
    second_owner: Membership,
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    response = remove(client_for(surface, alice, login, bearer), surface, second_owner)
    assert response.status_code < 400
    assert role_of(second_owner) is None


# --- the last owner, and leaving --------------------------------------------------------------------


@pytest.fixture
def alice_membership(acme: Team, alice: Any) -> Membership:
    return Membership.objects.select_related("user").get(team=acme, user=alice)


def test_last_owner_demoting_themselves_gets_400_naming_the_role_field(
    alice_membership: Membership, bearer: Callable[..., Client]
) -> None:
    response = change_role(bearer(alice_membership.user), "api", alice_membership, Role.ADMIN)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert "make someone else an owner" in " ".join(errors["role"])
    assert role_of(alice_membership) == Role.OWNER


def test_last_owner_demoting_themselves_sees_how_to_fix_it_in_the_page(
    alice_membership: Membership, login: Callable[..., Client]
) -> None:
    client = login(alice_membership.user)
    url = reverse("accounts:member_role", args=["acme", alice_membership.pk])
    response = client.post(url, {"role": Role.ADMIN}, follow=True)
    assert response.status_code == 200
    assert "make someone else an owner first" in response.content.decode()
    assert role_of(alice_membership) == Role.OWNER


def test_last_owner_leaving_gets_400_naming_the_member_field(
    alice_membership: Membership, bearer: Callable[..., Client]
) -> None:
    response = remove(bearer(alice_membership.user), "api", alice_membership)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert "make someone else an owner before leaving" in " ".join(errors["member"])
    assert role_of(alice_membership) == Role.OWNER


def test_last_owner_leaving_sees_how_to_fix_it_in_the_page(
    alice_membership: Membership, login: Callable[..., Client]
) -> None:
    client = login(alice_membership.user)
    url = reverse("accounts:member_remove", args=["acme", alice_membership.pk])
    response = client.post(url, follow=True)
    assert response.status_code == 200
    assert "make someone else an owner before leaving" in response.content.decode()
    assert role_of(alice_membership) == Role.OWNER


@SURFACES
def test_member_can_leave_the_team(
    surface: str, acme: Team, bob: Any, login: Callable[..., Client], bearer: Callable[..., Client]
) -> None:
    membership = Membership.objects.select_related("user").get(team=acme, user=bob)
    response = remove(client_for(surface, bob, login, bearer), surface, membership)
    assert response.status_code < 400
    assert role_of(membership) is None
