"""Operator admin for tools: read-only (secrets left out), since a tool changes only through its audited service."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from accounts.admin import TeamOwnedAdmin
from tools_app.models import McpServer, Tool


@admin.register(Tool)
class ToolAdmin(TeamOwnedAdmin):
    list_display = ("name", "team", "kind", "risk", "rate_limit_per_minute", "created_by", "created_at")
    list_filter = ("kind", "risk")
    search_fields = ("name",)
    exclude = ("secret", "parameters")
    readonly_fields = ("parameters_as_written",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Parameters (JSON Schema)")
    def parameters_as_written(self, tool: Tool) -> str:
        return json.dumps(tool.parameters, indent=2, ensure_ascii=False)


@admin.register(McpServer)
class McpServerAdmin(TeamOwnedAdmin):
    list_display = ("name", "team", "url", "imported_at", "created_by", "created_at")
    search_fields = ("name", "url")
    exclude = ("secret",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
