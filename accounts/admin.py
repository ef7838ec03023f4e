"""Operator admin. Audit events are read-only here, as everywhere."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import AuditEvent, Invitation, Membership, PersonalAccessToken, Team, TeamAPIKey


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    raw_id_fields = ("user",)


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "created_at")
    search_fields = ("name", "slug")
    inlines = (MembershipInline,)


class TeamOwnedAdmin(admin.ModelAdmin):
    """Operators see every team's rows: the admin is the one place that reads unscoped."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return self.model.objects.unscoped()


@admin.register(Invitation)
class InvitationAdmin(TeamOwnedAdmin):
    list_display = ("team", "role", "email", "created_at", "expires_at", "accepted_at", "revoked_at")
    exclude = ("token_hash",)


@admin.register(TeamAPIKey)
class TeamAPIKeyAdmin(TeamOwnedAdmin):
    list_display = ("team", "name", "role", "prefix", "created_at", "revoked_at")
    exclude = ("secret_hash",)


@admin.register(PersonalAccessToken)
class PersonalAccessTokenAdmin(admin.ModelAdmin):
    list_display = ("user", "name", "prefix", "created_at", "last_used_at", "revoked_at")
    exclude = ("secret_hash",)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ("created_at", "team", "actor_label", "action", "target_type", "target_label", "ip_address")
    list_filter = ("action",)
    search_fields = ("actor_label", "action", "target_label")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
