"""Operator admin for datasets (reads every team's rows: the one unscoped place)."""

from __future__ import annotations

from django.contrib import admin

from accounts.admin import TeamOwnedAdmin
from datasets_app.models import Dataset, DatasetVersion


@admin.register(Dataset)
class DatasetAdmin(TeamOwnedAdmin):
    list_display = ("name", "team", "restricted", "created_by", "created_at")
    search_fields = ("name",)


@admin.register(DatasetVersion)
class DatasetVersionAdmin(TeamOwnedAdmin):
    list_display = ("dataset", "number", "status", "kind", "row_count", "content_hash", "created_at")
    list_filter = ("status", "kind")
    readonly_fields = ("content_hash", "report", "stats", "recipe")
