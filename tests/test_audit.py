"""The audit trail: one event per privileged action, and nothing can change or delete an event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib import admin
from django.test import Client, RequestFactory

from accounts import services
from accounts.models import AuditEvent, Membership
from accounts.permissions import resolve_access
from accounts.roles import Role
from tests.factories import member


def _count(action: str) -> int:
    return AuditEvent.objects.filter(action=action).count()


def _change_role(alice: Any, bob: Any) -> None:
    membership = Membership.objects.get(user=bob)
    services.change_role(access=resolve_access(alice, "acme"), membership=membership, role=Role.ADMIN)


def _remove(alice: Any, bob: Any) -> None:
    membership = Membership.objects.get(user=bob)
    services.remove_member(access=resolve_access(alice, "acme"), membership=membership)


def _leave(alice: Any, bob: Any) -> None:
    membership = Membership.objects.get(user=bob)
    services.remove_member(access=resolve_access(bob, "acme"), membership=membership)


def _invite(alice: Any, bob: Any) -> None:
    services.create_invitation(access=resolve_access(alice, "acme"), role=Role.MEMBER)


def _revoke_invite(alice: Any, bob: Any) -> None:
    access = resolve_access(alice, "acme")
    invitation, _ = services.create_invitation(access=access, role=Role.MEMBER)
    services.revoke_invitation(access=access, invitation=invitation)


def _accept(alice: Any, bob: Any) -> None:
    _, token = services.create_invitation(access=resolve_access(alice, "acme"), role=Role.VIEWER)
    newcomer = member(services.create_team(actor=bob, name="Other", slug="other"), Role.OWNER, "newcomer")
    services.accept_invitation(user=newcomer, token=token)


def _token(alice: Any, bob: Any) -> None:
    services.create_personal_token(user=alice, name="cli")


def _revoke_token(alice: Any, bob: Any) -> None:
    token, _ = services.create_personal_token(user=alice, name="cli")
    services.revoke_personal_token(user=alice, token=token)


def _key(alice: Any, bob: Any) -> None:
    services.create_team_api_key(access=resolve_access(alice, "acme"), name="ci")


def _share(alice: Any, bob: Any) -> None:
    access = resolve_access(alice, "acme")
    key, _ = services.create_team_api_key(access=access, name="ci")
    services.share_object(access=access, obj=key, member=Membership.objects.get(user=bob), level="view")


def _rename(alice: Any, bob: Any) -> None:
    services.rename_team(access=resolve_access(alice, "acme"), name="Acme Labs")


ACTIONS: list[tuple[str, Callable[[Any, Any], None]]] = [
    ("member.role_changed", _change_role),
    ("member.removed", _remove),
    ("member.left", _leave),
    ("invitation.created", _invite),
    ("invitation.revoked", _revoke_invite),
    ("member.joined", _accept),
    ("token.created", _token),
    ("token.revoked", _revoke_token),
    ("apikey.created", _key),
    ("object.shared", _share),
    ("team.renamed", _rename),
]


@pytest.mark.parametrize(("action", "perform"), ACTIONS, ids=[a for a, _ in ACTIONS])
def test_each_privileged_action_writes_exactly_one_event(
    alice: Any, bob: Any, action: str, perform: Callable[[Any, Any], None]
) -> None:
    before = _count(action)
    perform(alice, bob)
    assert _count(action) == before + 1


def test_event_records_who_what_and_where(alice: Any, bob: Any, acme: Any, login: Any) -> None:
    login(alice).post(f"/t/acme/members/{Membership.objects.get(user=bob).pk}/role/", {"role": "viewer"})
    event = AuditEvent.objects.for_team(acme).get(action="member.role_changed")
    assert (event.actor, event.actor_label, event.target_label) == (alice, "alice", "bob")
    assert event.ip_address == "127.0.0.1"
    assert event.details == {"old_role": "member", "new_role": "viewer"}


def test_failed_action_writes_no_event(alice: Any, acme: Any) -> None:
    with pytest.raises(services.ValidationError):
        services.change_role(
            access=resolve_access(alice, "acme"), membership=Membership.objects.get(user=alice), role="viewer"
        )
    assert _count("member.role_changed") == 0


def test_events_cannot_be_edited_or_deleted_through_the_orm(alice: Any, acme: Any) -> None:
    _rename(alice, None)
    event = AuditEvent.objects.for_team(acme).get(action="team.renamed")
    event.action = "nothing.happened"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(pk=event.pk).update(action="x")
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(pk=event.pk).delete()
    assert AuditEvent.objects.get(pk=event.pk).action == "team.renamed"


def test_admin_site_offers_no_way_to_change_events(alice: Any) -> None:
    model_admin = admin.site._registry[AuditEvent]
    request = RequestFactory().get("/admin/")
    request.user = type("Superuser", (), {"is_active": True, "is_staff": True, "is_superuser": True})()
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)


@pytest.mark.parametrize("method", ["put", "patch", "delete", "post"])
def test_no_api_route_modifies_events(alice: Any, acme: Any, bearer: Any, method: str) -> None:
    _rename(alice, None)
    event = AuditEvent.objects.for_team(acme).get(action="team.renamed")
    client: Client = bearer(alice)
    for path in ("/api/v1/teams/acme/audit-events/", f"/api/v1/teams/acme/audit-events/{event.pk}"):
        response = getattr(client, method)(path, data="{}", content_type="application/json")
        assert response.status_code in (404, 405)
    assert AuditEvent.objects.get(pk=event.pk).action == "team.renamed"


def test_audit_page_filters_by_action(alice: Any, bob: Any, login: Any) -> None:
    _rename(alice, bob)
    _invite(alice, bob)
    page = login(alice).get("/t/acme/audit/", {"action": "invitation"}).content.decode()
    table = page.split('<table id="audit-events">')[1].split("</table>")[0]
    assert "invitation.created" in table
    assert "team.renamed" not in table


def test_audit_api_lists_events_newest_first(alice: Any, bob: Any, bearer: Any) -> None:
    _rename(alice, bob)
    _invite(alice, bob)
    items = bearer(alice).get("/api/v1/teams/acme/audit-events/").json()["items"]
    assert [item["action"] for item in items[:2]] == ["invitation.created", "team.renamed"]
    assert items[0]["actor"] == "alice"
