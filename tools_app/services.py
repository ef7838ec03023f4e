"""What the tools app can do, for its pages and the rest of the studio: the one front door to team tools.

Owners and admins (``tools.manage``) define, change and delete a team's tools; every member reads them, secrets
excepted: a secret (an HTTP tool's headers, a SQL tool's DSN) is encrypted when saved and never shown again, and
the audit trail records that it changed, never what it is. Definitions are checked by ``tools_app.definitions``.

An MCP server is registered once (``register_mcp_server``); ``import_mcp_tools`` asks the tools worker to list its
tools and saves each as a ``Tool`` of kind mcp (its name, description and schema as the server gives them), which is
then granted, approved and audited like any other. A name that is invalid or already taken is reported, not dropped.

A call that needs a person waits as a ``ToolApproval`` (``request_approval``) until someone with ``tools.approve``
other than its requester approves or rejects it; ``consume`` lets an approved call run once, with exactly the
tool, deployment, conversation and arguments that were approved. Every attempt, refused ones included, is audited.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Prefetch, QuerySet
from django.http import Http404
from django.utils import timezone

from accounts import audit
from accounts.models import AuditEvent, Team, TeamAPIKey
from accounts.permissions import TeamAccess
from accounts.roles import Perm, Role
from serving_app.models import Deployment
from serving_app.services import keys_of, scopable_keys, visible_deployments
from tools_app import definitions, dispatch, policy, secrets
from tools_app.models import (
    DESCRIPTION_MAX_LENGTH,
    McpServer,
    Tool,
    ToolApproval,
    ToolGrant,
    ToolResult,
    approval_binding,
)
from tools_app.sandbox.mcp_client import RemoteTool

# A new secret: an HTTP tool's headers ({name: value}) or a SQL tool's DSN.
Secret = dict[str, str] | str


def visible_tools(access: TeamAccess) -> QuerySet[Tool]:
    """The team's tools, by name: every member may see them (their secrets stay hidden from everyone)."""
    return Tool.objects.for_team(access.team).select_related("created_by", "mcp_server").order_by("name")


def create_tool(
    *,
    access: TeamAccess,
    kind: str,
    name: str,
    description: str,
    risk: str,
    rate_limit_per_minute: int,
    parameters: Any,
    config: dict[str, Any],
    secret: Secret | None = None,
    ip: str | None = None,
) -> Tool:
    """Define a tool (owners and admins). A SQL tool needs its DSN as ``secret``; an HTTP tool's secret headers
    are optional. Bad input raises ``ValidationError`` keyed by form field (``name``, ``url``, ``query``…)."""
    access.require(Perm.MANAGE_TOOLS)
    fields = _checked(kind, name, description, risk, rate_limit_per_minute, parameters, config)
    secret = _checked_secret(kind, secret)
    if secret is None and kind == Tool.Kind.SQL:
        raise ValidationError({"dsn": "A SQL tool needs the DSN of the database it reads."})
    fields["config"] = _with_header_names(kind, fields["config"], secret if isinstance(secret, dict) else ())
    try:
        with transaction.atomic():
            _require_free_name(access, fields["name"])
            now = timezone.now()
            tool = Tool.objects.create(
                team=access.team, kind=kind, secret=_encrypt(secret), created_by=access.user, created_at=now,
                updated_at=now, **fields,
            )  # fmt: skip
            audit.record(
                "tool.created", access=access, target=tool, ip=ip, kind=kind, risk=tool.risk,
                rate_limit_per_minute=tool.rate_limit_per_minute, calls=tool.target_summary,
                secret="set" if secret is not None else "none",
            )  # fmt: skip
    except IntegrityError as error:  # a concurrent request took the name between the check and the insert
        raise ValidationError({"name": _taken(fields["name"])}) from error
    return tool


def update_tool(
    *,
    access: TeamAccess,
    tool: Tool,
    name: str,
    description: str,
    risk: str,
    rate_limit_per_minute: int,
    parameters: Any,
    config: dict[str, Any],
    secret: Secret | None = None,
    remove_secret: bool = False,
    ip: str | None = None,
) -> Tool:
    """Change a tool's definition (owners and admins); its kind stays.

    ``secret`` None keeps the saved secret; ``remove_secret`` deletes it (a SQL tool's calls then fail until a new
    DSN is saved). Audited, when something changed, with the names of the changed fields; a secret change is
    recorded as such, never its value.
    """
    access.require(Perm.MANAGE_TOOLS)
    if tool.team_id != access.team.pk:
        raise Http404("No such tool.")
    fields = _checked(tool.kind, name, description, risk, rate_limit_per_minute, parameters, config)
    secret = _checked_secret(tool.kind, secret)
    field = _secret_field(tool.kind)
    if secret is not None and remove_secret:
        raise ValidationError({field: "Either enter a new secret or tick “remove”, not both."})
    try:
        with transaction.atomic():
            # Locked until commit: two admins saving at once apply one after the other.
            current = Tool.objects.for_team(access.team).select_for_update().filter(pk=tool.pk).first()
            if current is None:
                raise Http404("No such tool: it was just deleted.")
            if fields["name"].lower() != current.name.lower():
                _require_free_name(access, fields["name"])
            header_names: Iterable[str]
            if secret is not None:
                current.secret, secret_change = _encrypt(secret), "replaced"
                header_names = secret if isinstance(secret, dict) else ()
            elif remove_secret and current.has_secret:
                current.secret, secret_change, header_names = b"", "removed", ()
            else:
                secret_change, header_names = "", current.secret_header_names
            fields["config"] = _with_header_names(tool.kind, fields["config"], header_names)
            changed = _changed_fields(current, fields)
            if not changed and not secret_change:
                return current
            for field_name, value in fields.items():
                setattr(current, field_name, value)
            current.updated_at = timezone.now()
            current.save()
            details: dict[str, Any] = {"changed": changed}
            if secret_change:
                details["secret"] = secret_change
            audit.record("tool.updated", access=access, target=current, ip=ip, **details)
    except IntegrityError as error:
        raise ValidationError({"name": _taken(fields["name"])}) from error
    return current


def delete_tool(*, access: TeamAccess, tool: Tool, ip: str | None = None) -> None:
    """Delete a tool and its encrypted secret (owners and admins); an audit event remains."""
    access.require(Perm.MANAGE_TOOLS)
    if tool.team_id != access.team.pk:
        raise Http404("No such tool.")
    with transaction.atomic():
        audit.record("tool.deleted", access=access, target=tool, ip=ip, name=tool.name, kind=tool.kind)
        Tool.objects.for_team(access.team).filter(pk=tool.pk).delete()


# --- MCP servers: where imported tools are called -------------------------------------------------


@dataclass
class ImportReport:
    """What an import of an MCP server's tools did, by tool name (the names the team sees): ``created`` and
    ``updated`` (a changed description, schema or hints), ``unchanged``, ``skipped`` (name, why: invalid or clashing
    with another tool), ``removed`` (imported before, no longer listed by the server: kept until someone deletes
    them) and ``truncated`` (the server listed more tools than one import takes)."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    truncated: bool = False

    def summary(self) -> str:
        """One line for the page: how many tools each outcome had."""
        counts = [
            (len(self.created), "imported"), (len(self.updated), "updated"), (len(self.unchanged), "unchanged"),
            (len(self.skipped), "skipped"), (len(self.removed), "no longer offered"),
        ]  # fmt: skip
        return ", ".join(f"{count} {label}" for count, label in counts if count) or "the server offers no tools"


def visible_mcp_servers(access: TeamAccess) -> QuerySet[McpServer]:
    """The team's MCP servers, by name (every member may see them; their secret headers stay hidden)."""
    return McpServer.objects.for_team(access.team).select_related("created_by").order_by("name")


def tools_of_server(access: TeamAccess, server: McpServer) -> QuerySet[Tool]:
    """The tools imported from ``server``, by name."""
    return visible_tools(access).filter(mcp_server=server)


def register_mcp_server(
    *,
    access: TeamAccess,
    name: str,
    url: str,
    name_prefix: str = "",
    timeout_s: int = definitions.MCP_TIMEOUT_S[2],
    max_response_bytes: int = definitions.MCP_MAX_RESPONSE_BYTES[2],
    secret_headers: dict[str, str] | None = None,
    ip: str | None = None,
) -> McpServer:
    """Register an MCP server reached over streamable HTTP (owners and admins); nothing is sent to it until its
    tools are imported. ``secret_headers`` are encrypted and never shown again. Bad input raises
    ``ValidationError`` keyed by field (``name``, ``url``, ``name_prefix``, ``timeout_s``, ``max_response_bytes``,
    ``secret_headers``). Audited as ``tool.mcp_server_registered``."""
    access.require(Perm.MANAGE_TOOLS)
    fields_ = definitions.check_mcp_server(
        name=name, url=url, name_prefix=name_prefix, timeout_s=timeout_s, max_response_bytes=max_response_bytes,
        allowed_hosts=settings.TOOL_ALLOWED_HOSTS,
    )  # fmt: skip
    headers = definitions.check_secret_headers(secret_headers) if secret_headers else None
    try:
        with transaction.atomic():
            if McpServer.objects.for_team(access.team).filter(name__iexact=fields_["name"]).exists():
                raise ValidationError({"name": _server_taken(fields_["name"])})
            now = timezone.now()
            server = McpServer.objects.create(
                team=access.team, secret=_encrypt(headers), secret_header_names=sorted(headers or ()),
                created_by=access.user, created_at=now, updated_at=now, **fields_,
            )  # fmt: skip
            audit.record(
                "tool.mcp_server_registered", access=access, target=server, ip=ip, name=server.name,
                host=server.host, name_prefix=server.name_prefix, secret="set" if headers else "none",
                secret_header_names=server.secret_header_names,
            )  # fmt: skip
    except IntegrityError as error:  # a concurrent request took the name between the check and the insert
        raise ValidationError({"name": _server_taken(fields_["name"])}) from error
    return server


def delete_mcp_server(*, access: TeamAccess, server: McpServer, ip: str | None = None) -> None:
    """Delete an MCP server, its secret headers and every tool imported from it, grants included (owners and
    admins); audited as ``tool.mcp_server_deleted`` with the tools that went with it."""
    access.require(Perm.MANAGE_TOOLS)
    if server.team_id != access.team.pk:
        raise Http404("No such MCP server.")
    with transaction.atomic():
        tools = list(Tool.objects.for_team(access.team).filter(mcp_server=server).values_list("name", flat=True))
        audit.record(
            "tool.mcp_server_deleted", access=access, target=server, ip=ip, name=server.name, tools=sorted(tools)
        )
        McpServer.objects.for_team(access.team).filter(pk=server.pk).delete()


def import_mcp_tools(*, access: TeamAccess, server: McpServer, ip: str | None = None) -> ImportReport:
    """List ``server``'s tools in the tools worker (through the egress guard) and save each as a tool of the team
    (owners and admins).

    A new tool gets the server's name (after ``name_prefix``), description and input schema, risk read when the
    server hints ``readOnlyHint``, destructive when it hints ``destructiveHint``, else write, and the default rate
    limit; a tool imported before keeps its name, risk and rate limit and takes the server's new description and
    schema. A name that is invalid, or taken by another of the team's tools, is skipped and reported. When the
    server cannot be listed, ``ValidationError`` on ``server`` says why (audited as ``tool.mcp_import_failed``).
    Audited as ``tool.mcp_imported``, and each created or changed tool as ``tool.created`` / ``tool.updated``.
    """
    access.require(Perm.MANAGE_TOOLS)
    if server.team_id != access.team.pk:
        raise Http404("No such MCP server.")
    listing = dispatch.list_mcp_tools(server)  # outside any transaction: it waits on the network
    if not listing.ok:
        audit.record(
            "tool.mcp_import_failed", access=access, target=server, ip=ip, name=server.name, error=listing.error,
            reason=listing.text[:500],
        )  # fmt: skip
        raise ValidationError({"server": f"The tools of “{server.name}” could not be listed: {listing.text}"})
    report = ImportReport(truncated=listing.truncated)
    with transaction.atomic():
        current = McpServer.objects.for_team(access.team).select_for_update().filter(pk=server.pk).first()
        if current is None:
            raise Http404("No such MCP server: it was just deleted.")
        imported = {
            tool.config.get("remote_name"): tool
            for tool in Tool.objects.for_team(access.team).select_for_update().filter(mcp_server=current)
        }
        taken = {name.lower() for name in Tool.objects.for_team(access.team).values_list("name", flat=True)}
        for remote in listing.tools:
            _import_one(access, current, remote, imported.get(remote.name), taken, report, ip)
        listed = {remote.name for remote in listing.tools}
        report.removed = sorted(tool.name for name, tool in imported.items() if name not in listed)
        for names in (report.created, report.updated, report.unchanged, report.skipped):
            names.sort()
        current.imported_at = timezone.now()
        current.save(update_fields=["imported_at"])
        audit.record(
            "tool.mcp_imported", access=access, target=current, ip=ip, name=current.name, created=report.created,
            updated=report.updated, unchanged=len(report.unchanged),
            skipped=[f"{name}: {reason}" for name, reason in report.skipped], removed=report.removed,
        )  # fmt: skip
    return report


def _import_one(
    access: TeamAccess,
    server: McpServer,
    remote: RemoteTool,
    existing: Tool | None,
    taken: set[str],
    report: ImportReport,
    ip: str | None,
) -> None:
    """Create or update the team's tool for one listed tool, or record in ``report`` why it was skipped."""
    # The database cannot store NUL, which a server may well send: dropped from what is kept of its text.
    description = remote.description.replace("\x00", "").strip() or f"The {remote.name} tool of {server.name}."
    annotations = {
        key: value.replace("\x00", "") if isinstance(value, str) else value for key, value in remote.annotations.items()
    }
    if len(description) > DESCRIPTION_MAX_LENGTH:
        description = description[: DESCRIPTION_MAX_LENGTH - 1].rstrip() + "…"
    name = existing.name if existing is not None else definitions.imported_tool_name(server.name_prefix, remote.name)
    try:
        fields_ = definitions.check_definition(
            kind=Tool.Kind.MCP, name=name, description=description,
            risk=existing.risk if existing is not None else _risk_of(remote),
            rate_limit_per_minute=existing.rate_limit_per_minute if existing is not None else
            definitions.RATE_LIMIT_PER_MINUTE[2],
            parameters=remote.input_schema or dict(definitions.NO_PARAMETERS),
            config={"remote_name": remote.name, "annotations": annotations},
        )  # fmt: skip
    except ValidationError as error:
        report.skipped.append((_shown(name), _why_skipped(error)))
        return
    if existing is not None:
        changed = _changed_fields(existing, fields_)
        if not changed:
            report.unchanged.append(existing.name)
            return
        for field_name in ("description", "parameters", "config"):
            setattr(existing, field_name, fields_[field_name])
        existing.updated_at = timezone.now()
        existing.save()
        audit.record("tool.updated", access=access, target=existing, ip=ip, changed=changed, source="mcp import")
        report.updated.append(existing.name)
        return
    if fields_["name"].lower() in taken:
        report.skipped.append((fields_["name"], "the team already has a tool of that name (names differ by more than "
                               "case): give this server a name prefix, or rename the other tool"))  # fmt: skip
        return
    now = timezone.now()
    tool = Tool.objects.create(
        team=access.team, kind=Tool.Kind.MCP, mcp_server=server, created_by=access.user, created_at=now,
        updated_at=now, **fields_,
    )  # fmt: skip
    taken.add(tool.name.lower())
    audit.record(
        "tool.created", access=access, target=tool, ip=ip, kind=Tool.Kind.MCP, risk=tool.risk,
        rate_limit_per_minute=tool.rate_limit_per_minute, calls=tool.target_summary,
        secret="none",  # noqa: S106  # its server's secret headers serve its calls
    )  # fmt: skip
    report.created.append(tool.name)


def _shown(name: str) -> str:
    """A listed name as pages and the audit trail show it: control characters as ``?``, at most 100 characters."""
    printable = "".join("?" if ord(char) < 32 or ord(char) == 127 else char for char in name)
    return printable if len(printable) <= 100 else printable[:99] + "…"


def _risk_of(remote: RemoteTool) -> str:
    """A new imported tool's risk, from its server's hints (hints only: an admin reviews them)."""
    if remote.annotations.get("readOnlyHint") is True:
        return Tool.Risk.READ
    if remote.annotations.get("destructiveHint") is True:
        return Tool.Risk.DESTRUCTIVE
    return Tool.Risk.WRITE


def _why_skipped(error: ValidationError) -> str:
    """A definition check's complaints about a listed tool, as one sentence naming the fields."""
    messages = error.message_dict if hasattr(error, "error_dict") else {"definition": error.messages}
    labels = {"name": "its name", "parameters": "its input schema", "description": "its description"}
    return "; ".join(f"{labels.get(key, key)}: {' '.join(texts)}" for key, texts in messages.items())


def _server_taken(name: str) -> str:
    return f"The team already has an MCP server named “{name}” (names differ by more than case): choose another."


# --- grants: which deployments may call a tool, by whom, within which bounds -----------------------


def grants_of_tool(access: TeamAccess, tool: Tool) -> QuerySet[ToolGrant]:
    """The deployments granted ``tool``, by deployment name, with their keys (every member may see them)."""
    return (
        ToolGrant.objects.for_team(access.team)
        .filter(tool=tool)
        .select_related("deployment", "tool", "created_by")
        .prefetch_related(Prefetch("api_keys", queryset=TeamAPIKey.objects.for_team(access.team).order_by("name")))
        .order_by("deployment__name")
    )


def grants_of_deployment(access: TeamAccess, deployment: Deployment) -> QuerySet[ToolGrant]:
    """The tools granted to ``deployment``, by tool name."""
    return ToolGrant.objects.for_team(access.team).filter(deployment=deployment).select_related("tool")


def granted_tools(deployment: Deployment) -> list[dict[str, Any]]:
    """The tools granted to ``deployment`` in the OpenAI ``tools`` format: what the runtime hands the model."""
    grants = ToolGrant.objects.for_team(deployment.team).filter(deployment=deployment).select_related("tool")
    return [grant.tool.as_openai_tool() for grant in grants.order_by("tool__name")]


def grant_terms(grant: ToolGrant) -> policy.GrantTerms:
    """A grant's rules as ``tools_app.policy.decide`` takes them (one query for its keys)."""
    return policy.GrantTerms(
        roles=frozenset(grant.roles),
        api_key_ids=frozenset(_key_links().objects.filter(toolgrant=grant).values_list("teamapikey_id", flat=True)),
        argument_constraints=grant.argument_constraints,
        approval=grant.approval,
    )


def grantable_deployments(access: TeamAccess) -> QuerySet[Deployment]:
    """The deployments a tool can be granted to: all of the team's."""
    return visible_deployments(access)


def grantable_keys(access: TeamAccess) -> QuerySet[TeamAPIKey]:
    """The team's active API keys (a grant may name only those that can call its deployment)."""
    return scopable_keys(access)


def grant_tool(
    *,
    access: TeamAccess,
    tool: Tool,
    deployment: Deployment,
    roles: Iterable[str] = (Role.OWNER, Role.ADMIN, Role.MEMBER),
    api_keys: Iterable[TeamAPIKey] = (),
    argument_constraints: Any = None,
    approval: str = ToolGrant.Approval.BY_RISK,
    ip: str | None = None,
) -> ToolGrant:
    """Let ``deployment`` call ``tool`` (``tools.manage``): triggered by members of ``roles`` in the playground and
    by ``api_keys`` at /v1, within ``argument_constraints``, with ``approval`` (never, always, by_risk).

    Tool, deployment and keys must be the team's, and each key one that may call the deployment. Bad input raises
    ``ValidationError`` keyed by form field (``deployment``, ``roles``, ``api_keys``, ``argument_constraints``,
    ``approval``). Audited as ``tool.granted``.
    """
    access.require(Perm.MANAGE_TOOLS)
    _require_team_tool(access, tool)
    if deployment.team_id != access.team.pk:
        raise ValidationError({"deployment": "That deployment does not belong to this team; pick one of the team's."})
    settings_ = _checked_grant(access, tool, deployment, roles, api_keys, argument_constraints, approval)
    keys = settings_.pop("api_keys")
    try:
        with transaction.atomic():
            grant = ToolGrant.objects.create(
                team=access.team, tool=tool, deployment=deployment, created_by=access.user, **settings_
            )
            _set_keys(grant, keys)
            audit.record(
                "tool.granted", access=access, target=tool, ip=ip, tool=tool.name, deployment=deployment.name,
                **_grant_details(settings_, keys),
            )  # fmt: skip
    except IntegrityError as error:  # granted already, or by a concurrent request
        raise ValidationError(
            {"deployment": f"“{deployment.name}” is granted “{tool.name}” already: edit that grant instead."}
        ) from error
    return grant


def update_grant(
    *,
    access: TeamAccess,
    grant: ToolGrant,
    roles: Iterable[str],
    api_keys: Iterable[TeamAPIKey],
    argument_constraints: Any,
    approval: str,
    ip: str | None = None,
) -> ToolGrant:
    """Change who may trigger a granted tool, its constraints and its approval (``tools.manage``); audited as
    ``tool.grant_changed`` with the changed settings, when something changed."""
    access.require(Perm.MANAGE_TOOLS)
    if grant.team_id != access.team.pk:
        raise Http404("No such grant.")
    settings_ = _checked_grant(access, grant.tool, grant.deployment, roles, api_keys, argument_constraints, approval)
    keys = settings_.pop("api_keys")
    with transaction.atomic():
        current = ToolGrant.objects.for_team(access.team).select_for_update().filter(pk=grant.pk).first()
        if current is None:
            raise Http404("No such grant: it was just revoked.")
        before = _grant_details(
            {"roles": current.roles, "argument_constraints": current.argument_constraints,
             "approval": current.approval},
            list(current.api_keys.for_team(access.team)),
        )  # fmt: skip
        after = _grant_details(settings_, keys)
        changed = {name: {"from": before[name], "to": value} for name, value in after.items() if before[name] != value}
        if not changed:
            return current
        for name, value in settings_.items():
            setattr(current, name, value)
        current.save()
        _set_keys(current, keys)
        audit.record(
            "tool.grant_changed", access=access, target=current.tool, ip=ip, tool=current.tool.name,
            deployment=current.deployment.name, changed=changed,
        )  # fmt: skip
    return current


def revoke_grant(*, access: TeamAccess, grant: ToolGrant, ip: str | None = None) -> None:
    """Take a tool away from a deployment (``tools.manage``); audited as ``tool.revoked``."""
    access.require(Perm.MANAGE_TOOLS)
    if grant.team_id != access.team.pk:
        raise Http404("No such grant.")
    with transaction.atomic():
        audit.record(
            "tool.revoked", access=access, target=grant.tool, ip=ip, tool=grant.tool.name,
            deployment=grant.deployment.name,
        )  # fmt: skip
        ToolGrant.objects.for_team(access.team).filter(pk=grant.pk).delete()


# --- approvals: a call that needs a person waits until someone else approves exactly that call -----


class ApprovalRefused(PermissionDenied):
    """The runtime may not run the call: no usable approval for exactly these values (``rule`` says why)."""

    def __init__(self, message: str, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


def approvals_inbox(access: TeamAccess, *, status: str | None = None) -> QuerySet[ToolApproval]:
    """The team's approvals, newest first, optionally of one status; every member may see them. Pending rows
    past their expiry are marked expired first, so the inbox never offers one that can no longer be approved."""
    expire_overdue_approvals(access.team)
    approvals = ToolApproval.objects.for_team(access.team).select_related(
        "tool", "deployment", "requested_by", "requested_by_key", "decided_by"
    )
    return approvals.filter(status=status) if status else approvals


def expire_overdue_approvals(team: Team) -> int:
    """Mark the team's pending and approved calls past their expiry as expired; returns how many."""
    return (
        ToolApproval.objects.for_team(team)
        .filter(status__in=[ToolApproval.Status.PENDING, ToolApproval.Status.APPROVED], expires_at__lte=timezone.now())
        .update(status=ToolApproval.Status.EXPIRED)
    )


def request_approval(
    *,
    access: TeamAccess,
    tool: Tool,
    deployment: Deployment,
    conversation: str,
    arguments: dict[str, Any],
    grant: ToolGrant | None = None,
    ip: str | None = None,
) -> ToolApproval:
    """Queue one tool call for a person's approval (what the runtime calls when ``policy.decide`` says
    ``needs_approval``). The requester is ``access``'s member or team API key. ``arguments`` are stored exactly as
    the model gave them (never the tool's secret) and bound by hash with the tool, deployment and conversation.
    Audited as ``tool.approval_requested``."""
    if tool.team_id != access.team.pk or deployment.team_id != access.team.pk:
        raise Http404("No such tool or deployment.")
    if grant is not None and (grant.tool_id != tool.pk or grant.deployment_id != deployment.pk):
        raise ValidationError({"grant": "The grant is not this tool's grant to this deployment."})
    if access.user is None and access.api_key is None:
        raise ValidationError({"requested_by": "A call is asked for by a member or a team API key."})
    with transaction.atomic():
        approval = ToolApproval.objects.create(
            team=access.team, tool=tool, deployment=deployment, grant=grant, conversation=conversation,
            arguments=arguments, requested_by=access.user if access.api_key is None else None,
            requested_by_key=access.api_key,
            binding=approval_binding(
                tool_id=tool.pk, deployment_id=deployment.pk, conversation=conversation, arguments=arguments
            ),
        )  # fmt: skip
        audit.record(
            "tool.approval_requested", access=access, target=approval, ip=ip, tool=tool.name,
            deployment=deployment.name, approval=str(approval.public_id), binding=approval.binding,
            expires_at=approval.expires_at.isoformat(),
        )  # fmt: skip
    return approval


def approve(access: TeamAccess, approval_id: str, reason: str = "", *, ip: str | None = None) -> ToolApproval:
    """Approve one pending call (``tools.approve``): that call, with those arguments, may then run once.

    Refused, and audited as ``tool.approval_refused`` with the rule, when the id is not one of the team's
    (``Http404``, as for any other team's object), the role lacks ``tools.approve`` (``PermissionDenied``), the
    approver asked for the call, or created the team API key that asked for it (``PermissionDenied``), or the call
    is no longer pending or has expired (``ValidationError``; an overdue one is marked expired). Audited as
    ``tool.approved``."""
    return _decide(access, approval_id, ToolApproval.Status.APPROVED, reason, ip)


def reject(access: TeamAccess, approval_id: str, reason: str = "", *, ip: str | None = None) -> ToolApproval:
    """Reject one pending call (``tools.approve``): it will not run. Refused under the same rules as ``approve``.
    Audited as ``tool.rejected``."""
    return _decide(access, approval_id, ToolApproval.Status.REJECTED, reason, ip)


def consume(
    approval_id: str,
    *,
    team: Team,
    tool: Tool,
    deployment: Deployment,
    conversation: str,
    arguments: dict[str, Any],
    ip: str | None = None,
    access: TeamAccess | None = None,
) -> ToolApproval:
    """What the runtime calls right before it runs an approved call: marks the approval used and returns it.
    ``access`` is the caller resuming the run (a member or a team API key of ``team``): its audit events name it.

    Raises ``ApprovalRefused`` (audited as ``tool.approval_refused``, with the rule) unless the approval is the
    team's, approved, not expired (an overdue one is marked expired) and its binding equals the hash of the given
    tool, deployment, conversation and arguments: changed arguments, another conversation or a second use are
    refused. The row is locked while checked, so of two concurrent uses at most one succeeds. Audited as
    ``tool.approval_used``."""
    now = timezone.now()
    binding = approval_binding(
        tool_id=tool.pk, deployment_id=deployment.pk, conversation=conversation, arguments=arguments
    )
    with transaction.atomic():
        approval = _locked_approval(team, approval_id)
        refusal: tuple[str, str] | None = None
        if approval is None:
            refusal = ("not_found", "No such approval for this team.")
        elif approval.status == ToolApproval.Status.USED:
            refusal = ("already_used", "This approval was used already: an approval lets one call run once.")
        elif approval.status == ToolApproval.Status.APPROVED and approval.is_expired(now):
            approval.status = ToolApproval.Status.EXPIRED
            approval.save(update_fields=["status"])
            refusal = ("expired", "This approval expired before the call ran: ask for approval again.")
        elif approval.status != ToolApproval.Status.APPROVED:
            refusal = ("not_approved", f"This call is {approval.get_status_display().lower()}, not approved.")
        elif not hmac.compare_digest(binding, approval.binding):
            refusal = ("binding_mismatch", "This call differs from the approved one (tool, deployment, conversation "
                       "or arguments): it needs its own approval.")  # fmt: skip
        if refusal is None and approval is not None:
            ToolApproval.objects.for_team(team).filter(pk=approval.pk, status=ToolApproval.Status.APPROVED).update(
                status=ToolApproval.Status.USED, used_at=now
            )
            approval.status, approval.used_at = ToolApproval.Status.USED, now
            audit.record(
                "tool.approval_used", **_by(access, team), target=approval, ip=ip, tool=tool.name,
                deployment=deployment.name, approval=str(approval.public_id),
            )  # fmt: skip
            return approval
        rule, message = refusal or ("not_found", "")
        audit.record(
            "tool.approval_refused", **_by(access, team), target=approval, ip=ip, rule=rule, step="use",
            tool=tool.name, deployment=deployment.name, approval=str(approval_id)[:64],
        )  # fmt: skip
    raise ApprovalRefused(message, rule)


def _by(access: TeamAccess | None, team: Team) -> dict[str, Any]:
    """Who an audit event names: ``access`` when it is ``team``'s caller, else the team alone (the system)."""
    if access is not None and access.team.pk == team.pk:
        return {"access": access}
    return {"team": team}


def _decide(access: TeamAccess, approval_id: str, status: str, reason: str, ip: str | None) -> ToolApproval:
    """Approve or reject (``status``) under the rules of ``approve``; a refusal's audit event is committed before the
    error is raised, so it stays when the caller's request fails."""
    step = "approve" if status == ToolApproval.Status.APPROVED else "reject"
    now = timezone.now()
    with transaction.atomic():
        approval = _locked_approval(access.team, approval_id)
        error: Exception | None = None
        rule = ""
        if approval is None:
            rule, error = "not_found", Http404("No such approval.")
        elif not access.can(Perm.APPROVE_TOOLS):
            rule = "permission"
            error = PermissionDenied(f"Your role ({access.role.label}) does not allow this ({Perm.APPROVE_TOOLS}).")
        elif _is_requester(access, approval):
            rule = "self_approval"
            error = PermissionDenied(
                "You asked for this call (yourself, or through a team API key you created): another approver must "
                "decide it."
            )
        elif approval.status == ToolApproval.Status.PENDING and approval.is_expired(now):
            approval.status = ToolApproval.Status.EXPIRED
            approval.save(update_fields=["status"])
            rule = "expired"
            error = ValidationError("This call waited too long and expired: it can no longer be approved or rejected.")
        elif approval.status != ToolApproval.Status.PENDING:
            rule = "not_pending"
            error = ValidationError(
                f"This call is {approval.get_status_display().lower()} already: only a pending call can be decided."
            )
        if error is None and approval is not None:
            approval.status, approval.decided_by, approval.decided_at = status, access.user, now
            approval.reason = reason.strip()[:500]
            approval.save(update_fields=["status", "decided_by", "decided_at", "reason"])
            audit.record(
                f"tool.{status}", access=access, target=approval, ip=ip, tool=approval.tool.name,
                deployment=approval.deployment.name, approval=str(approval.public_id), binding=approval.binding,
                reason=approval.reason,
            )  # fmt: skip
            return approval
        audit.record(
            "tool.approval_refused", access=access, target=approval, ip=ip, rule=rule, step=step,
            approval=str(approval_id)[:64],
        )  # fmt: skip
    assert error is not None
    raise error


def _locked_approval(team: Team, approval_id: Any) -> ToolApproval | None:
    """The team's approval named by its public id, locked until the transaction ends; None for anything else
    (another team's id, an unknown one, a malformed one)."""
    try:
        public_id = uuid.UUID(str(approval_id))
    except ValueError:
        return None
    return (
        ToolApproval.objects.for_team(team)
        .select_for_update(of=("self",))
        .select_related("tool", "deployment", "requested_by_key")
        .filter(public_id=public_id)
        .first()
    )


def _is_requester(access: TeamAccess, approval: ToolApproval) -> bool:
    """Whether the approver asked for the call: in person, or through a team API key they created (or as that key)."""
    if access.api_key is not None:
        return approval.requested_by_key_id == access.api_key.pk
    if approval.requested_by_id is not None and approval.requested_by_id == access.user.pk:
        return True
    key = approval.requested_by_key
    return key is not None and key.created_by_id == access.user.pk


def _key_links() -> Any:
    # The through table directly: the key manager refuses queries without a team scope.
    return ToolGrant.api_keys.through


def _set_keys(grant: ToolGrant, keys: Iterable[TeamAPIKey]) -> None:
    """Make exactly ``keys`` the grant's keys (call inside the transaction that saves the grant)."""
    links = _key_links()
    links.objects.filter(toolgrant=grant).delete()
    links.objects.bulk_create(links(toolgrant=grant, teamapikey=key) for key in keys)


def _require_team_tool(access: TeamAccess, tool: Tool) -> None:
    if tool.team_id != access.team.pk:
        raise Http404("No such tool.")


def _checked_grant(
    access: TeamAccess,
    tool: Tool,
    deployment: Deployment,
    roles: Iterable[str],
    api_keys: Iterable[TeamAPIKey],
    argument_constraints: Any,
    approval: str,
) -> dict[str, Any]:
    """A grant's settings, checked: raises ``ValidationError`` keyed by field with every problem found."""
    errors: dict[str, list[str]] = {}
    chosen_roles = list(dict.fromkeys(roles))
    unknown = [role for role in chosen_roles if role not in Role.values]
    if unknown:
        errors["roles"] = [f"Unknown role(s): {', '.join(unknown)}; choose among {', '.join(Role.values)}."]
    keys = list(dict.fromkeys(api_keys))
    if any(key.team_id != access.team.pk for key in keys):
        errors["api_keys"] = ["Choose API keys of this team."]
    else:
        callers = set(keys_of(deployment).values_list("pk", flat=True))
        blocked = [key.name for key in keys if not key.is_active or key.pk not in callers]
        if blocked:
            errors["api_keys"] = [
                f"{', '.join(blocked)} cannot call the deployment “{deployment.name}” (revoked, or not among its "
                "keys): open the deployment to the key on its page first, or leave the key out."
            ]
    constraints = argument_constraints if argument_constraints is not None else {}
    problems = policy.check_constraints(constraints, tool.parameters)
    if problems:
        errors["argument_constraints"] = problems
    if approval not in ToolGrant.Approval.values:
        errors["approval"] = [f"Choose one of: {', '.join(ToolGrant.Approval.values)}."]
    if errors:
        raise ValidationError(errors)
    ordered_roles = [role for role in Role.values if role in chosen_roles]
    return {"roles": ordered_roles, "api_keys": keys, "argument_constraints": constraints, "approval": approval}


def _grant_details(settings_: dict[str, Any], keys: Iterable[TeamAPIKey]) -> dict[str, Any]:
    """A grant's settings as the audit trail records them (keys by their display prefix, never a secret)."""
    return {
        "roles": list(settings_["roles"]),
        "api_keys": sorted(key.display_prefix for key in keys),
        "argument_constraints": settings_["argument_constraints"],
        "approval": settings_["approval"],
    }


# --- helpers --------------------------------------------------------------------------------------


def _checked(
    kind: str,
    name: str,
    description: str,
    risk: str,
    rate_limit_per_minute: int,
    parameters: Any,
    config: dict[str, Any],
) -> dict[str, Any]:
    return definitions.check_definition(
        kind=kind, name=name, description=description, risk=risk, rate_limit_per_minute=rate_limit_per_minute,
        parameters=parameters, config=config, allowed_hosts=settings.TOOL_ALLOWED_HOSTS,
    )  # fmt: skip


def _checked_secret(kind: str, secret: Secret | None) -> Secret | None:
    """The new secret, checked for the tool's kind; None when none was given."""
    if not secret:
        return None
    if kind == Tool.Kind.HTTP and isinstance(secret, dict):
        return definitions.check_secret_headers(secret)
    if kind == Tool.Kind.SQL and isinstance(secret, str):
        return definitions.check_dsn(secret)
    raise ValidationError({_secret_field(kind): "An HTTP tool's secret is a set of headers; a SQL tool's, a DSN."})


def _secret_field(kind: str) -> str:
    return "dsn" if kind == Tool.Kind.SQL else "secret_headers"


def _with_header_names(kind: str, config: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """An HTTP tool's config lists its secret headers' names (not values), for its pages and its grants."""
    if kind != Tool.Kind.HTTP:
        return config
    return {**config, "secret_header_names": sorted(names)}


def _encrypt(secret: Secret | None) -> bytes:
    return secrets.encrypt_json(secret) if secret is not None else b""


def _changed_fields(tool: Tool, fields: dict[str, Any]) -> list[str]:
    """Names of the fields that differ, a config setting as ``config.<key>`` (its secret header names left out:
    the audit event says ``secret`` when the secret changed)."""
    changed = [name for name, value in fields.items() if name != "config" and getattr(tool, name) != value]
    old, new = tool.config, fields["config"]
    keys = sorted((set(old) | set(new)) - {"secret_header_names"})
    return changed + [f"config.{key}" for key in keys if old.get(key) != new.get(key)]


def _require_free_name(access: TeamAccess, name: str) -> None:
    if Tool.objects.for_team(access.team).filter(name__iexact=name).exists():
        raise ValidationError({"name": _taken(name)})


def _taken(name: str) -> str:
    return f"The team already has a tool named “{name}” (names differ by more than case): choose another."


def reencrypt_secrets() -> tuple[int, list[str]]:
    """Re-encrypt every team's tool secrets with the current (first) key, after a key rotation (operators only).

    Returns how many were re-encrypted and the tools (``team/name``) and MCP servers (``team/MCP server name``)
    whose secret no configured key opens: those need their secret entered again. Each row is updated on its own, so
    running it twice is harmless.
    """
    rotated, unreadable = 0, []
    for model, kind in ((Tool, ""), (McpServer, "MCP server ")):
        for row in model.objects.unscoped().exclude(secret=b"").select_related("team").order_by("pk"):
            try:
                token = secrets.rotate(row.secret)
            except secrets.InvalidToken:
                unreadable.append(f"{row.team.slug}/{kind}{row.name}")
                continue
            model.objects.unscoped().filter(pk=row.pk, secret=row.secret).update(secret=token)
            rotated += 1
    return rotated, unreadable


def withdraw(access: TeamAccess, approval: ToolApproval, *, ip: str | None = None) -> bool:
    """The requester gave up waiting (a playground run stopped): a call still pending leaves the inbox, marked
    expired with the reason, and audited as ``tool.approval_withdrawn``. False when someone had decided already."""
    with transaction.atomic():
        withdrawn = (
            ToolApproval.objects.for_team(access.team)
            .filter(pk=approval.pk, status=ToolApproval.Status.PENDING)
            .update(status=ToolApproval.Status.EXPIRED, reason="withdrawn: the run that asked for it was stopped")
        )
        if withdrawn:
            audit.record(
                "tool.approval_withdrawn", access=access, target=approval, ip=ip, tool=approval.tool.name,
                approval=str(approval.public_id),
            )  # fmt: skip
    return withdrawn > 0


# --- results kept under the team's retention setting ----------------------------------------------------------


def keep_result(team: Team, tool: Tool, event: AuditEvent, text: str) -> ToolResult | None:
    """Keep what a call returned, beside its ``tool.call_executed``/``tool.call_failed`` event, when the team keeps
    prompts and answers (``Team.prompt_retention_days``); None when it keeps none."""
    if not team.prompt_retention_days:
        return None
    return ToolResult.objects.create(team=team, tool=tool, event=event, text=text)


def purge_tool_results(now: datetime | None = None) -> int:
    """Delete kept results older than each team's retention period (all of them where it is off)."""
    now = now or timezone.now()
    removed = 0
    for team in Team.objects.all():
        results = ToolResult.objects.for_team(team)
        if team.prompt_retention_days:
            results = results.filter(created_at__lt=now - timedelta(days=team.prompt_retention_days))
        removed += results.delete()[0]
    return removed
