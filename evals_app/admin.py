"""Operator admin for eval suites, runs and quality checks: read-only, since they change only through their
audited services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from accounts.admin import TeamOwnedAdmin
from evals_app.models import EvalRun, EvalsPolicy, EvalSuite, ForgettingCheck, ProbeRun, ProbeSet


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


@admin.register(ForgettingCheck)
class ForgettingCheckAdmin(ReadOnlyAdmin):
    list_display = ("pk", "team", "model_version", "status", "flagged", "perplexity_before", "perplexity_after")
    list_filter = ("status", "flagged")


@admin.register(ProbeSet)
class ProbeSetAdmin(ReadOnlyAdmin):
    list_display = ("name", "team", "created_by", "created_at")
    search_fields = ("name",)


@admin.register(ProbeRun)
class ProbeRunAdmin(ReadOnlyAdmin):
    list_display = ("pk", "team", "probe_set_name", "model_label", "status", "max_gap", "created_at")
    list_filter = ("status",)


@admin.register(EvalsPolicy)
class EvalsPolicyAdmin(ReadOnlyAdmin):
    list_display = ("team", "max_perplexity_increase", "max_pass_rate_drop", "max_bias_gap", "updated_at")
