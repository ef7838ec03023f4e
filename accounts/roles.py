"""Team roles and what each may do: the one documented role -> permission matrix.

The README's role table is checked against ``ROLE_PERMISSIONS`` by a test, so the two cannot drift.
Later apps add their permissions here, next to the ones they extend.
"""

from __future__ import annotations

from enum import StrEnum

from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


class Perm(StrEnum):
    VIEW_TEAM = "team.view"
    CHANGE_TEAM = "team.change"
    INVITE_MEMBERS = "members.invite"
    CHANGE_ROLES = "members.change_role"
    REMOVE_MEMBERS = "members.remove"
    VIEW_AUDIT = "audit.view"
    MANAGE_API_KEYS = "apikeys.manage"
    SHARE_OBJECTS = "objects.share"
    UPLOAD_DATASETS = "datasets.upload"
    EXPORT_DATASETS = "datasets.export"
    LAUNCH_TRAINING = "training.launch"
    EXPORT_MODELS = "models.export"
    USE_PLAYGROUND = "playground.use"
    MANAGE_DEPLOYMENTS = "deployments.manage"
    OVERRIDE_GATES = "deployments.override"
    MANAGE_TOOLS = "tools.manage"
    APPROVE_TOOLS = "tools.approve"
    RUN_EVALS = "evals.run"
    CHANGE_BUDGETS = "costs.budgets"
    APPROVE_EXPORTS = "exports.approve"


_EVERYONE = frozenset({Perm.VIEW_TEAM})
_CONTRIBUTORS = _EVERYONE | {
    Perm.UPLOAD_DATASETS,
    Perm.EXPORT_DATASETS,
    Perm.LAUNCH_TRAINING,
    Perm.EXPORT_MODELS,
    Perm.USE_PLAYGROUND,
    Perm.RUN_EVALS,
}
_ADMINS = _EVERYONE | {
    Perm.CHANGE_TEAM,
    Perm.INVITE_MEMBERS,
    Perm.CHANGE_ROLES,
    Perm.REMOVE_MEMBERS,
    Perm.VIEW_AUDIT,
    Perm.MANAGE_API_KEYS,
    Perm.SHARE_OBJECTS,
    Perm.UPLOAD_DATASETS,
    Perm.EXPORT_DATASETS,
    Perm.LAUNCH_TRAINING,
    Perm.EXPORT_MODELS,
    Perm.USE_PLAYGROUND,
    Perm.MANAGE_DEPLOYMENTS,
    Perm.MANAGE_TOOLS,
    Perm.APPROVE_TOOLS,
    Perm.APPROVE_EXPORTS,
    Perm.RUN_EVALS,
}

ROLE_PERMISSIONS: dict[Role, frozenset[Perm]] = {
    # Publishing a version that failed a deployment's gate takes an owner (with a reason, audited).
    # Budgets (the monthly soft and hard limits, the CPU-hour price) are the owners' call, like gate overrides.
    Role.OWNER: frozenset(_ADMINS | {Perm.OVERRIDE_GATES, Perm.CHANGE_BUDGETS}),
    Role.ADMIN: frozenset(_ADMINS),
    Role.MEMBER: frozenset(_CONTRIBUTORS),
    Role.VIEWER: _EVERYONE,
}

# What each role may do to a team object that is NOT restricted to named members (datasets, models…).
# A restricted object needs a django-guardian share instead (owners and admins keep every action).
ROLE_OBJECT_ACTIONS: dict[Role, frozenset[str]] = {
    Role.OWNER: frozenset({"view", "use", "change", "delete"}),
    Role.ADMIN: frozenset({"view", "use", "change", "delete"}),
    Role.MEMBER: frozenset({"view", "use", "change"}),
    Role.VIEWER: frozenset({"view"}),
}

PERM_DESCRIPTIONS: dict[Perm, str] = {
    Perm.VIEW_TEAM: "See the team, its members and everything not restricted to named members",
    Perm.CHANGE_TEAM: "Change the team's settings: its name, prices, prompt retention and acceptable-use policy",
    Perm.INVITE_MEMBERS: "Create and revoke invitation links",
    Perm.CHANGE_ROLES: "Change a member's role (only owners grant or take away 'owner')",
    Perm.REMOVE_MEMBERS: "Remove a member (only owners remove an owner)",
    Perm.VIEW_AUDIT: "Read the team's audit trail",
    Perm.MANAGE_API_KEYS: "Create and revoke team API keys",
    Perm.SHARE_OBJECTS: "Share a team object with named members (view / use / change)",
    Perm.UPLOAD_DATASETS: "Upload datasets and curate them into new versions",
    Perm.EXPORT_DATASETS: "Download dataset versions (JSON Lines or CSV)",
    Perm.LAUNCH_TRAINING: "Launch, cancel, clone and delete fine-tuning jobs (cancel and delete: their own jobs; "
    "admins: any); add, retry and delete the team's Hub base models",
    Perm.EXPORT_MODELS: "Download trained model versions (adapter, merged model, tokenizer)",
    Perm.USE_PLAYGROUND: "Chat with models in the playground, vote in the arena, save comparisons",
    Perm.MANAGE_DEPLOYMENTS: "Publish model versions as deployments behind /v1 and remove them; promote a version "
    "that passes the deployment's gate (all traffic or a canary share), roll back, set the gate",
    Perm.OVERRIDE_GATES: "Publish a version that fails a deployment's gate, with a reason (audited)",
    Perm.MANAGE_TOOLS: "Define, change and delete the team's tools (HTTP APIs, read-only SQL) and their secrets, and "
    "grant them to deployments (roles, keys, argument constraints, approval); every member sees the tools and their "
    "grants, nobody sees a saved secret",
    Perm.APPROVE_TOOLS: "Approve or reject a tool call that waits for a person (never one they asked for "
    "themselves); every member sees the approvals inbox",
    Perm.RUN_EVALS: "Create, change and delete eval suites and run them on the models they may use; every member sees "
    "the suites and their results",
    Perm.APPROVE_EXPORTS: "Approve or reject a model export that waits for a person, when the team's export "
    "settings ask for approval (never one they asked for themselves); set whether they do",
    Perm.CHANGE_BUDGETS: "Set the team's monthly budget (a soft limit that warns, a hard limit that refuses new "
    "launches) and its price per CPU-hour (audited); every member sees the Costs page",
}


def can_assign(actor_role: Role | str, target_role: Role | str) -> bool:
    """Whether someone with ``actor_role`` may give (or take away) ``target_role``."""
    actor, target = Role(actor_role), Role(target_role)
    if target == Role.OWNER:
        return actor == Role.OWNER
    return actor in (Role.OWNER, Role.ADMIN)
