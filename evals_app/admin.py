"""Operator admin for eval suites and runs: read-only, since they change only through their audited services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from accounts.admin import TeamOwnedAdmin
from evals_app.models import EvalRun, EvalSuite


class ReadOnlyAdmin(TeamOwnedAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(EvalSuite)
class EvalSuiteAdmin(ReadOnlyAdmin):
    list_display = ("name", "team", "dataset_version", "created_by", "created_at")
    search_fields = ("name",)


@admin.register(EvalRun)
class EvalRunAdmin(ReadOnlyAdmin):
    list_display = ("pk", "team", "suite", "status", "rows_done", "rows_total", "created_at", "finished_at")
    list_filter = ("status",)
