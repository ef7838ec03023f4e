"""REST endpoints for tool approvals under /api/v1/teams/<slug>/tool-approvals/, tool activity, and MCP servers.

``GET tool-approvals/?status=pending`` lists the calls waiting for a person with their exact arguments (every
member); ``POST tool-approvals/{id}/approve`` and ``…/reject`` decide one (``tools.approve``), under the rules of
``tools_app.services.approve``: never one's own call, only a pending one that has not expired, another team's id
answered like an unknown one (404). Every attempt is audited. Ids are the approvals' random UUIDs.

``GET tool-activity/`` lists the team's tool call events (requested, denied, awaiting approval, approved, rejected,
approval refused or used, executed, failed), newest first, with the filters of the Tool activity page
(``tools_app.activity``; every member).

``GET mcp-servers/`` lists the team's MCP servers (every member; secret headers by name only); ``POST mcp-servers/``
registers one and ``POST mcp-servers/{id}/import`` imports its tools (``tools.manage``), as the Tools pages do.

No ``from __future__ import annotations`` here: django-ninja reads the annotations at runtime.
"""

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Query, Router, Schema, Status
from ninja.pagination import paginate

from accounts.api import Error, IsoDate, ObjectId, Pagination, RequestBody, team_access
from accounts.http import client_ip
from accounts.models import AuditEvent
from accounts.roles import Perm
from tools_app import activity, definitions, services
from tools_app.models import McpServer, ToolApproval

router = Router(tags=["tools"])

ApprovalStatus = Literal["pending", "approved", "rejected", "expired", "used"]


class ApprovalOut(Schema):
    id: UUID = Field(description="The approval's id (random; use it in approve and reject).")
    tool: str
    tool_id: int
    risk: str = Field(description="The tool's risk: read, write or destructive.")
    deployment: str
    deployment_id: int
    conversation: str = Field(description="The runtime's id of the conversation the call belongs to.")
    arguments: dict[str, Any] = Field(description="Exactly the arguments the call will run with.")
    binding: str = Field(description="SHA-256 of tool, deployment, conversation and arguments.")
    status: ApprovalStatus
    requested_by: str | None = Field(description="The member who asked, when a member did.")
    requested_by_key: str | None = Field(description="The team API key that asked, when a key did.")
    decided_by: str | None
    decided_at: datetime | None
    reason: str
    expires_at: datetime
    used_at: datetime | None
    created_at: datetime

    @staticmethod
    def resolve_id(approval: ToolApproval) -> UUID:
        return approval.public_id

    @staticmethod
    def resolve_tool(approval: ToolApproval) -> str:
        return approval.tool.name

    @staticmethod
    def resolve_risk(approval: ToolApproval) -> str:
        return approval.tool.risk

    @staticmethod
    def resolve_deployment(approval: ToolApproval) -> str:
        return approval.deployment.name

    @staticmethod
    def resolve_requested_by(approval: ToolApproval) -> str | None:
        return approval.requested_by.get_username() if approval.requested_by else None

    @staticmethod
    def resolve_requested_by_key(approval: ToolApproval) -> str | None:
        key = approval.requested_by_key
        return f"{key.name} ({key.display_prefix})" if key else None

    @staticmethod
    def resolve_decided_by(approval: ToolApproval) -> str | None:
        return approval.decided_by.get_username() if approval.decided_by else None


class ApprovalFilters(Schema):
    status: ApprovalStatus | None = Field(None, description="Only approvals with this status (e.g. pending).")


class DecisionIn(RequestBody):
    reason: str = Field("", max_length=500, description="An optional note, kept with the decision.")


@router.get(
    "teams/{slug}/tool-approvals/", response={200: list[ApprovalOut], 404: Error}, summary="List tool approvals"
)
@paginate(Pagination)
def list_approvals(request: HttpRequest, slug: str, filters: Query[ApprovalFilters]) -> QuerySet[ToolApproval]:
    """The team's tool calls that wait for (or were given) approval, newest first, with their exact arguments."""
    return services.approvals_inbox(team_access(request, slug), status=filters.status).order_by("-created_at")


@router.post(
    "teams/{slug}/tool-approvals/{approval_id}/approve",
    response={200: ApprovalOut, 400: Error, 403: Error, 404: Error},
    summary="Approve a tool call",
)
def approve(request: HttpRequest, slug: str, approval_id: UUID, body: DecisionIn | None = None) -> ToolApproval:
    """Let one pending call run once, with exactly its arguments (owners and admins; never your own call)."""
    access = team_access(request, slug)
    reason = body.reason if body else ""
    return services.approve(access, str(approval_id), reason, ip=client_ip(request))


@router.post(
    "teams/{slug}/tool-approvals/{approval_id}/reject",
    response={200: ApprovalOut, 400: Error, 403: Error, 404: Error},
    summary="Reject a tool call",
)
def reject(request: HttpRequest, slug: str, approval_id: UUID, body: DecisionIn | None = None) -> ToolApproval:
    """Refuse one pending call: it will not run (owners and admins; never your own call)."""
    access = team_access(request, slug)
    reason = body.reason if body else ""
    return services.reject(access, str(approval_id), reason, ip=client_ip(request))


# --- activity -----------------------------------------------------------------------------------

ActivityOutcome = Literal[
    "requested",
    "denied",
    "awaiting_approval",
    "approved",
    "rejected",
    "approval_refused",
    "approval_used",
    "withdrawn",
    "executed",
    "failed",
]


class ActivityOut(Schema):
    id: int
    created_at: datetime
    outcome: ActivityOutcome
    action: str = Field(description="The audit action, e.g. tool.call_executed.")
    tool: str | None = Field(description="The tool's name when the event was written.")
    deployment: str | None = Field(description="The deployment's name when the event was written.")
    actor: str = Field(description="Who acted: a member's username, or “API key <name> (<prefix>)”.")
    details: dict[str, Any] = Field(
        description="What the event recorded: arguments (redacted), rule, error, status, latency_ms, response_bytes…"
    )
    result: str | None = Field(
        description="What an executed or failed call returned, kept only while the team's retention setting "
        "(prompt retention days) allows; null otherwise."
    )

    @staticmethod
    def resolve_outcome(event: AuditEvent) -> str:
        return activity.OUTCOME_BY_ACTION[event.action].value

    @staticmethod
    def resolve_tool(event: AuditEvent) -> str | None:
        return event.details.get("tool")

    @staticmethod
    def resolve_deployment(event: AuditEvent) -> str | None:
        return event.details.get("deployment")

    @staticmethod
    def resolve_actor(event: AuditEvent) -> str:
        return event.actor_label

    @staticmethod
    def resolve_result(event: AuditEvent) -> str | None:
        return getattr(event, "kept_result", None)


class ActivityFilters(Schema):
    tool: str | None = Field(None, max_length=64, description="A tool's name (a deleted tool's too).")
    deployment: ObjectId | None = Field(None, description="A deployment's id.")
    key: ObjectId | None = Field(None, description="A team API key's id: the calls it made.")
    user: str | None = Field(None, max_length=150, description="A member's username: what they did.")
    outcome: ActivityOutcome | None = None
    since: IsoDate | None = Field(None, description="The first day (UTC), YYYY-MM-DD.")
    until: IsoDate | None = Field(None, description="The last day (UTC), YYYY-MM-DD.")


@router.get(
    "teams/{slug}/tool-activity/",
    response={200: list[ActivityOut], 400: Error, 404: Error},
    summary="List tool activity",
)
@paginate(Pagination)
def list_activity(request: HttpRequest, slug: str, filters: Query[ActivityFilters]) -> QuerySet[AuditEvent]:
    """The team's tool call events, newest first, filtered like the Tool activity page. A tool, deployment, key or
    member that is not the team's gets 400 naming the filter."""
    access = team_access(request, slug)
    data = {name: "" if value is None else str(value) for name, value in filters.dict().items()}
    form = activity.ActivityFilterForm(data, access=access)
    if not form.is_valid():
        raise ValidationError({name: list(errors) for name, errors in form.errors.items()})
    return activity.with_results(access, activity.tool_activity(access, form.filters()))


# --- MCP servers --------------------------------------------------------------------------------


class McpServerOut(Schema):
    id: int
    name: str
    url: str
    name_prefix: str = Field(description="Put before the name of each tool imported from the server.")
    timeout_s: int
    max_response_bytes: int
    secret_header_names: list[str] = Field(description="The names of its secret headers (values are never shown).")
    imported_at: datetime | None = Field(description="When its tools were last imported.")
    created_at: datetime


class McpServerIn(RequestBody):
    name: str = Field(max_length=definitions.MCP_SERVER_NAME_MAX_LENGTH)
    url: str = Field(max_length=definitions.URL_MAX_LENGTH, description="The streamable-HTTP endpoint.")
    name_prefix: str = Field("", max_length=24)
    timeout_s: int = Field(
        definitions.MCP_TIMEOUT_S[2], ge=definitions.MCP_TIMEOUT_S[0], le=definitions.MCP_TIMEOUT_S[1]
    )
    max_response_bytes: int = Field(
        definitions.MCP_MAX_RESPONSE_BYTES[2],
        ge=definitions.MCP_MAX_RESPONSE_BYTES[0],
        le=definitions.MCP_MAX_RESPONSE_BYTES[1],
    )
    secret_headers: dict[str, str] = Field(
        default_factory=dict, description="Sent with every request to the server; encrypted, never shown again."
    )


class SkippedTool(Schema):
    name: str
    reason: str


class ImportOut(Schema):
    created: list[str] = Field(description="Tools imported for the first time.")
    updated: list[str] = Field(description="Tools whose description, schema or hints the server changed.")
    unchanged: list[str]
    skipped: list[SkippedTool] = Field(description="Tools not imported: an invalid or clashing name, a bad schema.")
    removed: list[str] = Field(description="Tools imported before that the server no longer lists (kept).")
    truncated: bool = Field(description="The server listed more tools than one import takes.")


@router.get("teams/{slug}/mcp-servers/", response={200: list[McpServerOut], 404: Error}, summary="List MCP servers")
@paginate(Pagination)
def list_mcp_servers(request: HttpRequest, slug: str) -> QuerySet[McpServer]:
    """The team's MCP servers, by name."""
    return services.visible_mcp_servers(team_access(request, slug))


@router.post(
    "teams/{slug}/mcp-servers/",
    response={201: McpServerOut, 400: Error, 403: Error, 404: Error},
    summary="Register an MCP server",
)
def register_mcp_server(request: HttpRequest, slug: str, body: McpServerIn) -> Status:
    """Register a streamable-HTTP MCP server (owners and admins); nothing is sent to it until an import."""
    access = team_access(request, slug)
    server = services.register_mcp_server(
        access=access, ip=client_ip(request), **{**body.dict(), "secret_headers": body.secret_headers or None}
    )
    return Status(201, server)


@router.post(
    "teams/{slug}/mcp-servers/{server_id}/import",
    response={200: ImportOut, 400: Error, 403: Error, 404: Error},
    summary="Import an MCP server's tools",
)
def import_mcp_tools(request: HttpRequest, slug: str, server_id: ObjectId) -> ImportOut:
    """List the server's tools (in the tools worker, through the egress guard) and create or update the team's
    tools from them (owners and admins). A server that cannot be listed gets 400 naming ``server``."""
    access = team_access(request, slug)
    access.require(Perm.MANAGE_TOOLS)
    server = get_object_or_404(services.visible_mcp_servers(access), pk=server_id)
    report = services.import_mcp_tools(access=access, server=server, ip=client_ip(request))
    return ImportOut(
        created=report.created, updated=report.updated, unchanged=report.unchanged, removed=report.removed,
        skipped=[SkippedTool(name=name, reason=reason) for name, reason in report.skipped],
        truncated=report.truncated,
    )  # fmt: skip
