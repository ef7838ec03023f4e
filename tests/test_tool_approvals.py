"""Approvals: a tool call that needs a person waits until someone else approves exactly that call, once.

What a user would notice: the call waiting in the inbox with its exact arguments; an owner or admin approving or
rejecting it; the runtime running it once, with exactly those arguments, before it expires; and every refused
attempt (a viewer approving, the requester approving their own call, another team's id, an expired or replayed
approval, arguments changed after approval) answered with a reason and written to the audit trail.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.http import Http404
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts import services as account_services
from accounts.models import AuditEvent, Team, TeamAPIKey
from accounts.permissions import TeamAccess, resolve_access, resolve_key_access
from accounts.roles import Role
from serving_app.models import Deployment
from tests.factories import member, sample_tool
from tools_app import services
from tools_app.models import Tool, ToolApproval, ToolGrant, approval_binding

REFUND = {"order_id": "A-1042", "amount": 20, "note": "customer asked twice"}


# --- the scene --------------------------------------------------------------------------------------


@pytest.fixture
def adele(acme: Team) -> Any:
    """An admin of acme: may approve."""
    return member(acme, Role.ADMIN, "adele")


@pytest.fixture
def victor(acme: Team) -> Any:
    """A viewer of acme: sees the inbox, decides nothing."""
    return member(acme, Role.VIEWER, "victor")


@pytest.fixture
def deployment(acme: Team, model_version: Any) -> Deployment:
    return Deployment.objects.create(team=acme, name="support-bot", model_version=model_version)


@pytest.fixture
def tool(acme: Team, alice: Any) -> Tool:
    tool = sample_tool(acme, alice, name="refund_order")
    tool.risk = Tool.Risk.WRITE
    tool.save(update_fields=["risk"])
    return tool


@pytest.fixture
def grant(acme: Team, alice: Any, tool: Tool, deployment: Deployment) -> ToolGrant:
    return ToolGrant.objects.create(team=acme, tool=tool, deployment=deployment, created_by=alice)


def access_of(user: Any, team: str = "acme") -> TeamAccess:
    return resolve_access(user, team)


@pytest.fixture
def ask(tool: Tool, deployment: Deployment, grant: ToolGrant) -> Callable[..., ToolApproval]:
    """Queue a call of ``tool`` on ``deployment`` for approval, asked for by ``access``."""

    def make(access: TeamAccess, arguments: dict[str, Any] | None = None, conversation: str = "conv-1") -> ToolApproval:
        return services.request_approval(
            access=access, tool=tool, deployment=deployment, grant=grant, conversation=conversation,
            arguments=REFUND if arguments is None else arguments,
        )  # fmt: skip

    return make


@pytest.fixture
def pending(ask: Callable[..., ToolApproval], bob: Any) -> ToolApproval:
    """Bob's call (a member, from the playground), waiting."""
    return ask(access_of(bob))


@pytest.fixture
def use(acme: Team, tool: Tool, deployment: Deployment) -> Callable[..., ToolApproval]:
    """What the runtime calls before it runs the call: by default exactly the call ``pending`` asked for."""

    def run(approval: ToolApproval, *, team: Team = acme, **changes: Any) -> ToolApproval:
        call = {"tool": tool, "deployment": deployment, "conversation": "conv-1", "arguments": REFUND, **changes}
        return services.consume(str(approval.public_id), team=team, **call)

    return run


def events(team: Team, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.for_team(team).filter(action=action).order_by("pk"))


def refusal(team: Team, rule: str) -> AuditEvent:
    """The one audit event of a refused attempt under ``rule``."""
    (event,) = AuditEvent.objects.for_team(team).filter(action="tool.approval_refused", details__rule=rule)
    return event


def status_of(approval: ToolApproval) -> str:
    return ToolApproval.objects.unscoped().get(pk=approval.pk).status


def overdue(approval: ToolApproval) -> None:
    ToolApproval.objects.unscoped().filter(pk=approval.pk).update(expires_at=timezone.now() - timedelta(seconds=1))


# --- asking -----------------------------------------------------------------------------------------


def test_a_call_waits_bound_to_its_exact_values_and_is_audited(
    pending: ToolApproval, acme: Team, tool: Tool, deployment: Deployment, bob: Any
) -> None:
    assert pending.status == ToolApproval.Status.PENDING
    assert pending.requested_by == bob and pending.requested_by_key is None
    assert pending.arguments == REFUND
    assert pending.binding == approval_binding(
        tool_id=tool.pk, deployment_id=deployment.pk, conversation="conv-1", arguments=dict(reversed(REFUND.items()))
    )
    (event,) = events(acme, "tool.approval_requested")
    assert event.details["approval"] == str(pending.public_id) and event.actor == bob


def test_the_wait_is_bounded_by_the_ttl_setting(settings: Any, ask: Callable[..., ToolApproval], bob: Any) -> None:
    settings.TOOL_APPROVAL_TTL_MINUTES = 5
    before = timezone.now()
    approval = ask(access_of(bob))
    assert before + timedelta(minutes=5) <= approval.expires_at <= timezone.now() + timedelta(minutes=5)


def test_a_call_through_a_team_api_key_names_the_key(ask: Callable[..., ToolApproval], key: TeamAPIKey) -> None:
    approval = ask(resolve_key_access(key, "acme"))
    assert approval.requested_by_key == key and approval.requested_by is None


# --- the happy path ---------------------------------------------------------------------------------


def test_admin_approves_and_the_call_runs_once(
    pending: ToolApproval, adele: Any, acme: Team, use: Callable[..., ToolApproval]
) -> None:
    approved = services.approve(access_of(adele), str(pending.public_id), "refund is fine")
    assert (approved.status, approved.decided_by, approved.reason) == ("approved", adele, "refund is fine")
    (event,) = events(acme, "tool.approved")
    assert event.actor == adele and event.details["binding"] == pending.binding

    used = use(pending)
    assert used.status == ToolApproval.Status.USED and used.used_at is not None
    assert len(events(acme, "tool.approval_used")) == 1


def test_replayed_approval_is_refused_and_audited(
    pending: ToolApproval, adele: Any, acme: Team, use: Callable[..., ToolApproval]
) -> None:
    services.approve(access_of(adele), str(pending.public_id))
    use(pending)
    with pytest.raises(services.ApprovalRefused, match="used already"):
        use(pending)
    assert refusal(acme, "already_used").details["step"] == "use"
    assert len(events(acme, "tool.approval_used")) == 1


def test_rejected_call_does_not_run(
    pending: ToolApproval, adele: Any, acme: Team, use: Callable[..., ToolApproval]
) -> None:
    rejected = services.reject(access_of(adele), str(pending.public_id), "wrong order")
    assert rejected.status == ToolApproval.Status.REJECTED
    assert events(acme, "tool.rejected")[0].details["reason"] == "wrong order"
    with pytest.raises(services.ApprovalRefused, match="rejected, not approved"):
        use(pending)
    assert status_of(pending) == ToolApproval.Status.REJECTED
    refusal(acme, "not_approved")


# --- integrity: each refused and audited ------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"arguments": {**REFUND, "amount": 2000}}, id="amount raised"),
        pytest.param({"arguments": {**REFUND, "iban": "XX00 mallory"}}, id="argument added"),
        pytest.param({"arguments": {"order_id": "A-1042", "amount": 20}}, id="argument removed"),
        pytest.param({"conversation": "conv-2"}, id="other conversation"),
    ],
)
def test_call_changed_after_approval_is_refused_and_audited(
    changes: dict[str, Any], pending: ToolApproval, adele: Any, acme: Team, use: Callable[..., ToolApproval]
) -> None:
    services.approve(access_of(adele), str(pending.public_id))
    with pytest.raises(services.ApprovalRefused, match="differs from the approved one") as refused:
        use(pending, **changes)
    assert refused.value.rule == "binding_mismatch"
    refusal(acme, "binding_mismatch")
    assert status_of(pending) == ToolApproval.Status.APPROVED  # the approved call itself may still run
    assert use(pending).status == ToolApproval.Status.USED


def test_call_on_another_tool_or_deployment_is_refused(
    pending: ToolApproval, adele: Any, acme: Team, alice: Any, use: Callable[..., ToolApproval]
) -> None:
    services.approve(access_of(adele), str(pending.public_id))
    with pytest.raises(services.ApprovalRefused):
        use(pending, tool=sample_tool(acme, alice, name="delete_order"))
    refusal(acme, "binding_mismatch")


def test_approving_one_call_approves_nothing_else(
    ask: Callable[..., ToolApproval], bob: Any, adele: Any, acme: Team, use: Callable[..., ToolApproval]
) -> None:
    first, twin = ask(access_of(bob)), ask(access_of(bob))  # the same call asked for twice
    services.approve(access_of(adele), str(first.public_id))
    with pytest.raises(services.ApprovalRefused, match="pending, not approved"):
        use(twin)
    refusal(acme, "not_approved")


def test_approval_id_from_another_team_looks_unknown_and_is_audited(
    pending: ToolApproval, charlie: Any, globex: Team, acme: Team, tool: Tool, deployment: Deployment
) -> None:
    with pytest.raises(Http404):
        services.approve(access_of(charlie, "globex"), str(pending.public_id))
    with pytest.raises(Http404):
        services.reject(access_of(charlie, "globex"), str(pending.public_id))
    assert [event.details["rule"] for event in events(globex, "tool.approval_refused")] == ["not_found"] * 2
    assert status_of(pending) == ToolApproval.Status.PENDING
    # Nor can globex's runtime use it, approved or not.
    with pytest.raises(services.ApprovalRefused):
        services.consume(
            str(pending.public_id), team=globex, tool=tool, deployment=deployment, conversation="conv-1",
            arguments=REFUND,
        )  # fmt: skip
    assert len(events(globex, "tool.approval_refused")) == 3
    assert events(acme, "tool.approval_refused") == []


def test_requester_cannot_approve_their_own_call(
    ask: Callable[..., ToolApproval], alice: Any, acme: Team, adele: Any
) -> None:
    approval = ask(access_of(alice))
    with pytest.raises(PermissionDenied, match="another approver"):
        services.approve(access_of(alice), str(approval.public_id))
    assert refusal(acme, "self_approval").actor == alice
    assert status_of(approval) == ToolApproval.Status.PENDING
    assert services.approve(access_of(adele), str(approval.public_id)).status == "approved"


def test_creator_of_the_key_cannot_approve_a_call_made_through_it(
    ask: Callable[..., ToolApproval], key: TeamAPIKey, alice: Any, adele: Any, acme: Team
) -> None:
    assert key.created_by == alice
    approval = ask(resolve_key_access(key, "acme"))
    with pytest.raises(PermissionDenied):
        services.reject(access_of(alice), str(approval.public_id))
    refusal(acme, "self_approval")
    assert services.approve(access_of(adele), str(approval.public_id)).status == "approved"


@pytest.mark.parametrize("role", [Role.VIEWER, Role.MEMBER])
def test_viewer_or_member_cannot_approve(
    role: Role, pending: ToolApproval, user_in_role: Callable[[str], Any], acme: Team
) -> None:
    actor = user_in_role(role)
    with pytest.raises(PermissionDenied, match=r"tools\.approve"):
        services.approve(access_of(actor), str(pending.public_id))
    assert refusal(acme, "permission").actor == actor
    assert status_of(pending) == ToolApproval.Status.PENDING


def test_expired_call_cannot_be_approved_and_is_marked_expired(pending: ToolApproval, adele: Any, acme: Team) -> None:
    overdue(pending)
    with pytest.raises(ValidationError, match="expired"):
        services.approve(access_of(adele), str(pending.public_id))
    refusal(acme, "expired")
    assert status_of(pending) == ToolApproval.Status.EXPIRED


def test_expired_approval_cannot_be_used(
    pending: ToolApproval, adele: Any, acme: Team, use: Callable[..., ToolApproval]
) -> None:
    services.approve(access_of(adele), str(pending.public_id))
    overdue(pending)
    with pytest.raises(services.ApprovalRefused, match="expired"):
        use(pending)
    refusal(acme, "expired")
    assert status_of(pending) == ToolApproval.Status.EXPIRED


def test_decided_call_cannot_be_decided_again(pending: ToolApproval, adele: Any, alice: Any, acme: Team) -> None:
    services.reject(access_of(adele), str(pending.public_id))
    with pytest.raises(ValidationError, match="rejected already"):
        services.approve(access_of(alice), str(pending.public_id))
    refusal(acme, "not_pending")
    assert status_of(pending) == ToolApproval.Status.REJECTED


def test_malformed_id_is_not_found(adele: Any, acme: Team) -> None:
    with pytest.raises(Http404):
        services.approve(access_of(adele), "1")
    refusal(acme, "not_found")


# --- two runtimes using one approval at once ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_of_two_concurrent_uses_at_most_one_succeeds(
    pending: ToolApproval, adele: Any, acme: Team, tool: Tool, deployment: Deployment
) -> None:
    services.approve(access_of(adele), str(pending.public_id))
    start, outcomes = threading.Barrier(2), []

    def run() -> None:
        try:
            start.wait()
            services.consume(
                str(pending.public_id), team=acme, tool=tool, deployment=deployment, conversation="conv-1",
                arguments=REFUND,
            )  # fmt: skip
            outcomes.append("ran")
        except services.ApprovalRefused as error:
            outcomes.append(error.rule)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["already_used", "ran"]
    assert len(events(acme, "tool.approval_used")) == 1


# --- the inbox page -----------------------------------------------------------------------------------


def inbox(part: str = "") -> str:
    return reverse("tools:approvals", args=["acme"]) + (f"?part={part}" if part else "")


def decide_url(action: str, approval: ToolApproval) -> str:
    return reverse(f"tools:approval_{action}", args=["acme", approval.public_id])


def test_inbox_shows_the_exact_arguments_escaped(
    ask: Callable[..., ToolApproval], bob: Any, victor: Any, login: Callable[[Any], Client]
) -> None:
    ask(access_of(bob), {"order_id": "A-1042", "note": "<script>alert(1)</script>"})
    page = login(victor).get(inbox()).content.decode()
    assert "refund_order" in page and "support-bot" in page and "bob" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page
    assert 'name="reason"' not in page  # a viewer gets no approve or reject buttons


def test_pending_part_refreshes_itself(pending: ToolApproval, adele: Any, login: Callable[[Any], Client]) -> None:
    part = login(adele).get(inbox("pending")).content.decode()
    assert 'hx-trigger="every 5s"' in part and str(pending.public_id) in part
    assert decide_url("approve", pending) in part and "csrfmiddlewaretoken" in part
    assert "<html" not in part


def test_admin_approves_from_the_inbox(
    pending: ToolApproval, adele: Any, acme: Team, login: Callable[[Any], Client]
) -> None:
    client = login(adele)
    response = client.post(decide_url("approve", pending), {"reason": "ok"})
    assert response.status_code == 302 and response["Location"] == inbox()
    assert status_of(pending) == ToolApproval.Status.APPROVED
    history = client.get(inbox()).content.decode()
    assert "Approved" in history and "adele" in history


def test_viewer_posting_approve_gets_403_and_is_audited(
    pending: ToolApproval, victor: Any, acme: Team, login: Callable[[Any], Client]
) -> None:
    assert login(victor).post(decide_url("approve", pending)).status_code == 403
    assert refusal(acme, "permission").actor == victor
    assert status_of(pending) == ToolApproval.Status.PENDING


def test_expired_call_in_the_inbox_is_answered_with_a_message(
    pending: ToolApproval, adele: Any, acme: Team, login: Callable[[Any], Client]
) -> None:
    overdue(pending)
    response = login(adele).post(decide_url("reject", pending), follow=True)
    assert "expired" in response.content.decode()
    refusal(acme, "expired")


def test_tools_list_links_to_the_inbox(acme: Team, bob: Any, login: Callable[[Any], Client]) -> None:
    assert inbox() in login(bob).get(reverse("tools:list", args=["acme"])).content.decode()


# --- the API ------------------------------------------------------------------------------------------

API = "/api/v1/teams/acme/tool-approvals/"


def post(client: Client, url: str, body: dict[str, Any] | None = None) -> Any:
    return client.post(url, json.dumps(body) if body is not None else "", content_type="application/json")


def test_api_lists_pending_calls_with_their_arguments(
    pending: ToolApproval, bob: Any, bearer: Callable[[Any], Client]
) -> None:
    response = bearer(bob).get(API + "?status=pending")
    assert response.status_code == 200
    (item,) = response.json()["items"]
    assert item["id"] == str(pending.public_id) and item["arguments"] == REFUND
    assert (item["tool"], item["risk"], item["requested_by"]) == ("refund_order", "write", "bob")
    assert bearer(bob).get(API + "?status=used").json()["count"] == 0


def test_api_approve_and_reject(
    ask: Callable[..., ToolApproval], bob: Any, adele: Any, bearer: Callable[[Any], Client]
) -> None:
    first, second = ask(access_of(bob)), ask(access_of(bob))
    client = bearer(adele)
    response = post(client, f"{API}{first.public_id}/approve", {"reason": "fine"})
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["decided_by"]) == ("approved", "adele")
    response = post(client, f"{API}{second.public_id}/reject")
    assert (response.status_code, response.json()["status"]) == (200, "rejected")


@pytest.mark.parametrize(
    ("actor", "status", "rule"),
    [
        pytest.param("victor", 403, "permission", id="viewer"),
        pytest.param("alice", 403, "self_approval", id="requester"),
        pytest.param("charlie", 404, "not_found", id="other team"),
        pytest.param("adele-late", 400, "expired", id="expired"),
    ],
)
def test_api_refusals_are_audited(
    actor: str,
    status: int,
    rule: str,
    ask: Callable[..., ToolApproval],
    alice: Any,
    adele: Any,
    victor: Any,
    charlie: Any,
    acme: Team,
    globex: Team,
    bearer: Callable[[Any], Client],
) -> None:
    approval = ask(access_of(alice))
    users, slug = {"victor": victor, "alice": alice, "charlie": charlie, "adele-late": adele}, "acme"
    if actor == "charlie":
        slug = "globex"
    if actor == "adele-late":
        overdue(approval)
    response = post(bearer(users[actor]), f"/api/v1/teams/{slug}/tool-approvals/{approval.public_id}/approve")
    assert response.status_code == status, response.content
    assert response.json()["detail"]
    refusal(globex if actor == "charlie" else acme, rule)
    assert status_of(approval) == ("expired" if actor == "adele-late" else "pending")


def test_api_refuses_a_team_api_key_approving_its_own_call(
    ask: Callable[..., ToolApproval], alice: Any, acme: Team
) -> None:
    key, secret = account_services.create_team_api_key(access=access_of(alice), name="agent", role=Role.MEMBER)
    approval = ask(resolve_key_access(key, "acme"))
    client = Client(headers={"Authorization": f"Bearer {secret}"})
    response = post(client, f"{API}{approval.public_id}/approve")
    assert response.status_code == 403
    refusal(acme, "permission")
