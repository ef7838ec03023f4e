"""Tool pages under /t/<team>/tools/: the team's catalogue of tools its deployed models may be granted.

Every member reads the catalogue and each tool's definition (never its secret: nobody sees a saved secret again);
owners and admins (``tools.manage``) define, change and delete tools, register MCP servers and import their tools.
Every member reads the approvals inbox; owners and admins (``tools.approve``) decide the calls waiting in it. The
work is done by ``tools_app.services``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from uuid import UUID

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from accounts.http import add_service_errors, client_ip
from accounts.permissions import TeamAccess, TeamRequest, require_perm
from accounts.roles import Perm
from tools_app import services
from tools_app.forms import FORMS, GrantForm, McpServerForm, McpToolForm, grant_initial, initial_for
from tools_app.models import McpServer, Tool, ToolApproval, ToolGrant


def _tool(access: TeamAccess, tool_id: int) -> Tool:
    return get_object_or_404(services.visible_tools(access), pk=tool_id)


def _grant(access: TeamAccess, tool: Tool, grant_id: int) -> ToolGrant:
    return get_object_or_404(services.grants_of_tool(access, tool), pk=grant_id)


@require_perm(Perm.VIEW_TEAM)
def tool_list(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The team's tools: what each calls, how risky it is and how often it may run."""
    access = request.access
    context = {
        "tools": services.visible_tools(access),
        "servers": services.visible_mcp_servers(access).annotate(tool_count=Count("tools")),
        "can_manage": access.can(Perm.MANAGE_TOOLS),
    }
    return render(request, "tools/list.html", context)


@require_perm(Perm.MANAGE_TOOLS)
def tool_create(request: TeamRequest, team_slug: str, kind: str) -> HttpResponse:
    """Define a new HTTP or SQL tool (the kind comes from the URL)."""
    access = request.access
    form = FORMS[kind](request.POST or None)
    if form.is_bound and form.is_valid():
        try:
            tool = services.create_tool(
                access=access, kind=kind, secret=form.secret(), ip=client_ip(request), **form.definition()
            )
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"Tool “{tool.name}” saved. Deployments can be granted it from now on.")
            return redirect("tools:detail", team_slug, tool.pk)
    context = {"form": form, "kind": kind, "kind_label": Tool.Kind(kind).label, "tool": None}
    return render(request, "tools/form.html", context, status=400 if form.errors else 200)


@require_perm(Perm.VIEW_TEAM)
def tool_detail(request: TeamRequest, team_slug: str, tool_id: int) -> HttpResponse:
    """A tool's definition, what the model sees of it, and whether a secret is set (never the secret)."""
    access = request.access
    tool = _tool(access, tool_id)
    context = {
        "tool": tool,
        "can_manage": access.can(Perm.MANAGE_TOOLS),
        "model_view": json.dumps(tool.as_openai_tool(), indent=2, ensure_ascii=False),
        "grants": services.grants_of_tool(access, tool),
    }
    return render(request, "tools/detail.html", context)


@require_perm(Perm.MANAGE_TOOLS)
def tool_edit(request: TeamRequest, team_slug: str, tool_id: int) -> HttpResponse:
    """Change a tool's definition; its secret stays unless a new one is entered or its removal is ticked."""
    access = request.access
    tool = _tool(access, tool_id)
    form: Any
    if tool.kind == Tool.Kind.MCP:
        form = McpToolForm(request.POST or None, initial=initial_for(tool), tool=tool)
    else:
        form = FORMS[tool.kind](request.POST or None, initial=initial_for(tool), tool=tool)
    if form.is_bound and form.is_valid():
        try:
            services.update_tool(
                access=access, tool=tool, secret=form.secret(), remove_secret=form.secret_removed(),
                ip=client_ip(request), **form.definition(),
            )  # fmt: skip
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"Tool “{form.cleaned_data['name']}” saved.")
            return redirect("tools:detail", team_slug, tool.pk)
    context = {"form": form, "kind": tool.kind, "kind_label": tool.get_kind_display(), "tool": tool}
    return render(request, "tools/form.html", context, status=400 if form.errors else 200)


@require_perm(Perm.MANAGE_TOOLS)
def tool_delete(request: TeamRequest, team_slug: str, tool_id: int) -> HttpResponse:
    """Ask, then delete the tool and its secret."""
    access = request.access
    tool = _tool(access, tool_id)
    if request.method == "POST":
        services.delete_tool(access=access, tool=tool, ip=client_ip(request))
        messages.success(request, f"Tool “{tool.name}” was deleted; its secret is gone with it.")
        return redirect("tools:list", team_slug)
    return render(request, "tools/confirm_delete.html", {"tool": tool})


@require_perm(Perm.MANAGE_TOOLS)
def grant_create(request: TeamRequest, team_slug: str, tool_id: int) -> HttpResponse:
    """Grant the tool to a deployment: who may trigger it, within which bounds, approved when."""
    access = request.access
    tool = _tool(access, tool_id)
    form = GrantForm(
        request.POST or None, deployments=services.grantable_deployments(access),
        api_keys=services.grantable_keys(access),
    )  # fmt: skip
    if form.is_bound and form.is_valid():
        try:
            grant = services.grant_tool(
                access=access, tool=tool, deployment=form.cleaned_data["deployment"], ip=client_ip(request),
                **form.settings(),
            )  # fmt: skip
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"“{grant.deployment.name}” may now call “{tool.name}”.")
            return redirect("tools:detail", team_slug, tool.pk)
    context = {"form": form, "tool": tool, "grant": None}
    return render(request, "tools/grant_form.html", context, status=400 if form.errors else 200)


@require_perm(Perm.MANAGE_TOOLS)
def grant_edit(request: TeamRequest, team_slug: str, tool_id: int, grant_id: int) -> HttpResponse:
    """Change who may trigger a granted tool, its argument constraints and its approval."""
    access = request.access
    tool = _tool(access, tool_id)
    grant = _grant(access, tool, grant_id)
    initial = grant_initial(grant, services.grant_terms(grant).api_key_ids)
    form = GrantForm(request.POST or None, initial=initial, deployments=None, api_keys=services.grantable_keys(access),
                     editing=True)  # fmt: skip
    if form.is_bound and form.is_valid():
        try:
            services.update_grant(access=access, grant=grant, ip=client_ip(request), **form.settings())
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"The grant of “{tool.name}” to “{grant.deployment.name}” was saved.")
            return redirect("tools:detail", team_slug, tool.pk)
    context = {"form": form, "tool": tool, "grant": grant}
    return render(request, "tools/grant_form.html", context, status=400 if form.errors else 200)


@require_perm(Perm.MANAGE_TOOLS)
def grant_revoke(request: TeamRequest, team_slug: str, tool_id: int, grant_id: int) -> HttpResponse:
    """Ask, then take the tool away from the deployment."""
    access = request.access
    tool = _tool(access, tool_id)
    grant = _grant(access, tool, grant_id)
    if request.method == "POST":
        services.revoke_grant(access=access, grant=grant, ip=client_ip(request))
        messages.success(request, f"“{grant.deployment.name}” may no longer call “{tool.name}”.")
        return redirect("tools:detail", team_slug, tool.pk)
    return render(request, "tools/grant_confirm_revoke.html", {"tool": tool, "grant": grant})


# --- MCP servers --------------------------------------------------------------------------------


def _server(access: TeamAccess, server_id: int) -> McpServer:
    return get_object_or_404(services.visible_mcp_servers(access), pk=server_id)


@require_perm(Perm.MANAGE_TOOLS)
def mcp_server_create(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Register an MCP server; its tools are imported from its page."""
    form = McpServerForm(request.POST or None)
    if form.is_bound and form.is_valid():
        try:
            server = services.register_mcp_server(access=request.access, ip=client_ip(request), **form.settings())
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"MCP server “{server.name}” registered: import its tools below.")
            return redirect("tools:mcp_detail", team_slug, server.pk)
    return render(request, "tools/mcp_form.html", {"form": form}, status=400 if form.errors else 200)


@require_perm(Perm.VIEW_TEAM)
def mcp_server_detail(request: TeamRequest, team_slug: str, server_id: int) -> HttpResponse:
    """An MCP server, the tools imported from it, and whether secret headers are set (never their values)."""
    access = request.access
    server = _server(access, server_id)
    context = {
        "server": server,
        "tools": services.tools_of_server(access, server),
        "can_manage": access.can(Perm.MANAGE_TOOLS),
    }
    return render(request, "tools/mcp_detail.html", context)


@require_perm(Perm.MANAGE_TOOLS)
def mcp_server_import(request: TeamRequest, team_slug: str, server_id: int) -> HttpResponse:
    """Import (POST) the server's tools: new ones created, known ones updated; the page says what happened."""
    access = request.access
    server = _server(access, server_id)
    if request.method == "POST":
        try:
            report = services.import_mcp_tools(access=access, server=server, ip=client_ip(request))
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            messages.success(request, f"Import from “{server.name}”: {report.summary()}.")
            for name, reason in report.skipped:
                messages.warning(request, f"Skipped “{name}”: {reason}.")
            if report.removed:
                messages.warning(request, "No longer offered by the server (kept; delete them if they are gone for "
                                 f"good): {', '.join(report.removed)}.")  # fmt: skip
            if report.truncated:
                messages.warning(request, "The server lists more tools than one import takes; the rest were left.")
    return redirect("tools:mcp_detail", team_slug, server.pk)


@require_perm(Perm.MANAGE_TOOLS)
def mcp_server_delete(request: TeamRequest, team_slug: str, server_id: int) -> HttpResponse:
    """Ask, then delete the server, its secret headers and the tools imported from it."""
    access = request.access
    server = _server(access, server_id)
    if request.method == "POST":
        services.delete_mcp_server(access=access, server=server, ip=client_ip(request))
        messages.success(request, f"MCP server “{server.name}” was deleted, with its tools and secret headers.")
        return redirect("tools:list", team_slug)
    context = {"server": server, "tools": services.tools_of_server(access, server)}
    return render(request, "tools/mcp_confirm_delete.html", context)


# --- approvals ----------------------------------------------------------------------------------


@require_perm(Perm.VIEW_TEAM)
def approval_list(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The approvals inbox: calls waiting for a person, with their exact arguments, and the recent decisions. The
    pending list refreshes itself (``?part=pending``)."""
    access = request.access
    approvals = services.approvals_inbox(access)
    context = {
        "pending": approvals.filter(status=ToolApproval.Status.PENDING).order_by("created_at"),
        "history": approvals.exclude(status=ToolApproval.Status.PENDING).order_by("-created_at")[:HISTORY_LENGTH],
        "can_approve": access.can(Perm.APPROVE_TOOLS),
    }
    if request.GET.get("part") == "pending":
        return render(request, "tools/_approvals_pending.html", context)
    return render(request, "tools/approvals.html", context)


# The role is checked by the service (``tools.approve``), so that a refused attempt is audited too.
@require_perm(Perm.VIEW_TEAM)
def approval_approve(request: TeamRequest, team_slug: str, approval_id: UUID) -> HttpResponse:
    """Approve one pending call (POST): it may then run once, with exactly those arguments."""
    return _decide(request, team_slug, approval_id, services.approve, "approved")


@require_perm(Perm.VIEW_TEAM)
def approval_reject(request: TeamRequest, team_slug: str, approval_id: UUID) -> HttpResponse:
    """Reject one pending call (POST): it will not run."""
    return _decide(request, team_slug, approval_id, services.reject, "rejected")


HISTORY_LENGTH = 25


def _decide(
    request: TeamRequest, team_slug: str, approval_id: UUID, decide: Callable[..., ToolApproval], verb: str
) -> HttpResponse:
    if request.method == "POST":
        try:
            approval = decide(request.access, str(approval_id), request.POST.get("reason", ""), ip=client_ip(request))
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            messages.success(request, f"The call of “{approval.tool.name}” was {verb}.")
    return redirect("tools:approvals", team_slug)
