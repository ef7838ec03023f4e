"""Exports that need approval: when the team's export settings say so, an export waits until an owner or admin
other than the person who asked approves it; a rejected one never runs; every decision and refusal is audited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client
from django.urls import reverse

from accounts.models import AuditEvent
from accounts.permissions import TeamAccess, resolve_access
from accounts.roles import Role
from exports_app import services
from exports_app.models import ModelExport
from tests.factories import member
from training_app.models import ModelVersion

pytestmark = pytest.mark.django_db
Login = Callable[[Any], Client]


@pytest.fixture
def approvals_on(owner: TeamAccess) -> None:
    services.set_approval_required(access=owner, required=True)


@pytest.fixture
def waiting(approvals_on: None, bob: Any, model_version: ModelVersion) -> ModelExport:
    """A bundle export bob (a member) asked for, waiting for approval."""
    return services.start_export(access=resolve_access(bob, "acme"), version=model_version, format="bundle")


@pytest.fixture
def admin_access(acme: Any) -> TeamAccess:
    return resolve_access(member(acme, Role.ADMIN, "adele"), "acme")


def test_an_export_waits_for_approval_and_is_not_queued(waiting: ModelExport) -> None:
    assert waiting.status == "awaiting_approval"
    assert services.claim(waiting.pk) is None  # a worker that got it anyway would not run it


def test_an_admin_approves_and_the_export_is_queued(waiting: ModelExport, admin_access: TeamAccess) -> None:
    export = services.decide(access=admin_access, export=waiting, approve=True, reason="for the mobile app")
    assert export.decided_by is not None and export.decided_by.get_username() == "adele"
    assert (export.status, export.decision_reason) == ("queued", "for the mobile app")
    assert services.claim(waiting.pk) is not None
    assert AuditEvent.objects.filter(action="model_version.export_approved", actor_label="adele").exists()


def test_a_rejected_export_never_runs(waiting: ModelExport, admin_access: TeamAccess) -> None:
    export = services.decide(access=admin_access, export=waiting, approve=False)
    assert export.status == "rejected"
    assert services.claim(waiting.pk) is None


def test_nobody_approves_their_own_export_and_the_attempt_is_audited(
    approvals_on: None, owner: TeamAccess, model_version: ModelVersion
) -> None:
    own = services.start_export(access=owner, version=model_version, format="bundle")
    with pytest.raises(PermissionDenied, match="someone other than the person who asked"):
        services.decide(access=owner, export=own, approve=True)
    assert ModelExport.objects.for_team(owner.team).get(pk=own.pk).status == "awaiting_approval"
    assert AuditEvent.objects.filter(action="model_version.export_approval_refused").exists()


def test_a_member_cannot_approve(waiting: ModelExport, acme: Any) -> None:
    other = resolve_access(member(acme, Role.MEMBER, "mia"), "acme")
    with pytest.raises(PermissionDenied):
        services.decide(access=other, export=waiting, approve=True)


def test_a_decided_export_cannot_be_decided_again(waiting: ModelExport, admin_access: TeamAccess) -> None:
    services.decide(access=admin_access, export=waiting, approve=False)
    with pytest.raises(ValidationError, match="not waiting for approval"):
        services.decide(access=admin_access, export=waiting, approve=True)


def test_without_the_setting_exports_are_queued_at_once(owner: TeamAccess, model_version: ModelVersion) -> None:
    assert services.start_export(access=owner, version=model_version, format="bundle").status == "queued"


def test_the_version_page_shows_the_buttons_to_an_admin_but_not_to_the_requester(
    waiting: ModelExport, admin_access: TeamAccess, bob: Any, login: Login, model_version: ModelVersion
) -> None:
    url = reverse("training:version", args=["acme", model_version.pk])
    admin_page = login(admin_access.user).get(url).content.decode()
    assert "Waiting for approval" in admin_page and reverse("exports:approve", args=["acme", waiting.pk]) in admin_page
    assert reverse("exports:approve", args=["acme", waiting.pk]) not in login(bob).get(url).content.decode()


def test_the_api_approves_and_refuses_a_second_decision(
    waiting: ModelExport, admin_access: TeamAccess, bearer: Callable[[Any], Client]
) -> None:
    client = bearer(admin_access.user)
    url = f"/api/v1/teams/acme/exports/{waiting.pk}/approve"
    response = client.post(url, {"reason": "ok"}, content_type="application/json")
    assert response.status_code == 200 and response.json()["status"] == "queued"
    again = client.post(f"/api/v1/teams/acme/exports/{waiting.pk}/reject", {}, content_type="application/json")
    assert again.status_code == 400


def test_the_settings_page_turns_approval_on(alice: Any, login: Login, acme: Any) -> None:
    response = login(alice).post(
        reverse("exports:settings", args=["acme"]), {"approval": "1", "require_approval": "on"}
    )
    assert response.status_code == 302
    assert services.approval_required(acme)
