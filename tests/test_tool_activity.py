"""Tool activity: every member reads what became of the team's tool calls, filtered, counted and drawn per day.

The events are written with ``accounts.audit.record`` exactly as the runtime writes them (target the tool; details
tool, deployment, deployment_id, call_id, arguments, conversation, via, and api_key_id when a key called), and the
approval events through ``tools_app.services``. What a user would notice: the right rows for each filter, never
another team's, the counts, a bad filter named on the page (never a 500), and arguments shown as text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from django.core.exceptions import PermissionDenied
from django.test import Client
from django.urls import reverse

from accounts import audit
from accounts.models import AuditEvent, Team, TeamAPIKey
from accounts.permissions import TeamAccess, resolve_access, resolve_key_access
from accounts.roles import Role
from serving_app.models import Deployment
from tests.factories import member, sample_tool
from tools_app import services
from tools_app.activity import OUTCOMES
from tools_app.api import ActivityOutcome
from tools_app.models import Tool, ToolGrant

ORDER = {"order_id": "A-1042"}

# --- the scene --------------------------------------------------------------------------------------


@pytest.fixture
def deployment(acme: Team, model_version: Any) -> Deployment:
    return Deployment.objects.create(team=acme, name="support-bot", model_version=model_version)


@pytest.fixture
def other_deployment(acme: Team, model_version: Any) -> Deployment:
    return Deployment.objects.create(team=acme, name="sales-bot", model_version=model_version)


@pytest.fixture
def tool(acme: Team, alice: Any) -> Tool:
    return sample_tool(acme, alice, name="lookup_order")


@pytest.fixture
def other_tool(acme: Team, alice: Any) -> Tool:
    return sample_tool(acme, alice, name="refund_order")


@pytest.fixture
def victor(acme: Team) -> Any:
    """A viewer of acme: reads the activity like every member."""
    return member(acme, Role.VIEWER, "victor")


def call(
    access: TeamAccess, action: str, tool: Tool, deployment: Deployment, arguments: Any = None, **details: Any
) -> AuditEvent:
    """One event of a tool call, as the runtime records it."""
    return audit.record(
        action, access=access, target=tool, tool=tool.name, deployment=deployment.name,
        deployment_id=deployment.pk, call_id="call_1", arguments=ORDER if arguments is None else arguments,
        conversation="conv-1", via="api" if access.api_key else "playground", **details,
    )  # fmt: skip


@contextmanager
def recorded_on(day: str) -> Iterator[None]:
    """Events written inside are dated ``day`` (noon UTC), as if recorded then."""
    field = AuditEvent._meta.get_field("created_at")
    when = datetime.fromisoformat(f"{day}T12:00:00").replace(tzinfo=UTC)
    saved = field.__dict__.get("_get_default")
    field.__dict__["_get_default"] = lambda: when
    try:
        yield
    finally:
        if saved is None:
            field.__dict__.pop("_get_default", None)
        else:
            field.__dict__["_get_default"] = saved


def activity_page(client: Client, team: str = "acme", **params: Any) -> Any:
    return client.get(reverse("tools:activity", kwargs={"team_slug": team}), params)


def table(response: Any) -> str:
    """The activity table's HTML."""
    html = response.content.decode()
    match = re.search(r'<table id="activity">.*?</table>', html, re.S)
    assert match, html
    return match.group(0)


def row_count(response: Any) -> int:
    return table(response).count('<tr id="event-')


def count_of(response: Any, outcome: str) -> int:
    match = re.search(rf'id="count-{outcome}"[^>]*><b>(\d+)</b>', response.content.decode())
    assert match, outcome
    return int(match.group(1))


# --- what a member sees -----------------------------------------------------------------------------


def test_member_sees_each_step_of_a_call_with_its_outcome(
    acme: Team, alice: Any, bob: Any, tool: Tool, deployment: Deployment, login: Callable[..., Client]
) -> None:
    access = resolve_access(bob, "acme")
    call(access, "tool.call_requested", tool, deployment)
    call(access, "tool.call_executed", tool, deployment, status=200, latency_ms=132, response_bytes=2048)
    response = activity_page(login(bob))
    assert response.status_code == 200
    rows = table(response)
    assert row_count(response) == 2
    assert "Requested" in rows and "Executed" in rows
    assert "HTTP 200" in rows and "132 ms" in rows and "2.0\xa0KB" in rows
    assert "lookup_order" in rows and "support-bot" in rows and "bob" in rows and "via playground" in rows


def test_viewer_may_read_the_activity(victor: Any, login: Callable[..., Client]) -> None:
    assert activity_page(login(victor)).status_code == 200


def test_tools_list_links_to_the_activity(alice: Any, login: Callable[..., Client]) -> None:
    response = login(alice).get(reverse("tools:list", kwargs={"team_slug": "acme"}))
    assert reverse("tools:activity", kwargs={"team_slug": "acme"}) in response.content.decode()


def test_denied_and_failed_calls_show_their_rule_and_error(
    bob: Any, tool: Tool, deployment: Deployment, login: Callable[..., Client]
) -> None:
    access = resolve_access(bob, "acme")
    call(access, "tool.call_denied", tool, deployment, rule="role_not_allowed")
    call(access, "tool.call_failed", tool, deployment, error="timeout", message="No answer in 10 s.", latency_ms=10000)
    rows = table(activity_page(login(bob)))
    assert "rule: role_not_allowed" in rows
    assert "error: timeout" in rows and "No answer in 10 s." in rows and "10,000 ms" in rows


def test_a_key_call_shows_the_key_as_who(
    bob: Any, key: TeamAPIKey, tool: Tool, deployment: Deployment, login: Callable[..., Client]
) -> None:
    call(resolve_key_access(key, "acme"), "tool.call_requested", tool, deployment)
    rows = table(activity_page(login(bob)))
    assert f"API key support widget ({key.display_prefix})" in rows and "via api" in rows


def test_newest_event_comes_first(bob: Any, tool: Tool, deployment: Deployment, login: Callable[..., Client]) -> None:
    access = resolve_access(bob, "acme")
    first = call(access, "tool.call_requested", tool, deployment)
    last = call(access, "tool.call_executed", tool, deployment, status=200)
    rows = table(activity_page(login(bob)))
    assert rows.index(f'id="event-{last.pk}"') < rows.index(f'id="event-{first.pk}"')


def test_catalogue_changes_stay_out_of_the_activity(
    alice: Any, owner: TeamAccess, login: Callable[..., Client]
) -> None:
    audit.record("tool.created", access=owner, target=sample_tool(owner.team, alice, name="new_tool"), kind="http")
    assert row_count(activity_page(login(alice))) == 0


# --- filters ----------------------------------------------------------------------------------------


def test_filter_by_tool_keeps_that_tools_calls(
    bob: Any, tool: Tool, other_tool: Tool, deployment: Deployment, login: Callable[..., Client]
) -> None:
    access = resolve_access(bob, "acme")
    kept = call(access, "tool.call_requested", tool, deployment)
    dropped = call(access, "tool.call_requested", other_tool, deployment)
    rows = table(activity_page(login(bob), tool="lookup_order"))
    assert f"event-{kept.pk}" in rows and f"event-{dropped.pk}" not in rows


def test_a_deleted_tool_can_still_be_picked_by_name(
    alice: Any, owner: TeamAccess, tool: Tool, deployment: Deployment, login: Callable[..., Client]
) -> None:
    event = call(owner, "tool.call_executed", tool, deployment, status=200)
    services.delete_tool(access=owner, tool=tool)
    response = activity_page(login(alice), tool="lookup_order")
    assert response.status_code == 200
    assert '<option value="lookup_order" selected>lookup_order</option>' in response.content.decode()
    assert f"event-{event.pk}" in table(response)


def test_filter_by_tool_keeps_a_renamed_tools_earlier_calls(
    owner: TeamAccess, tool: Tool, deployment: Deployment, alice: Any, login: Callable[..., Client]
) -> None:
    event = call(owner, "tool.call_executed", tool, deployment, status=200)
    Tool.objects.for_team(owner.team).filter(pk=tool.pk).update(name="find_order")
    assert f"event-{event.pk}" in table(activity_page(login(alice), tool="find_order"))


def test_filter_by_deployment_keeps_its_calls_and_approvals(
    alice: Any,
    bob: Any,
    tool: Tool,
    deployment: Deployment,
    other_deployment: Deployment,
    login: Callable[..., Client],
) -> None:
    access = resolve_access(bob, "acme")
    kept = call(access, "tool.call_requested", tool, deployment)
    dropped = call(access, "tool.call_requested", tool, other_deployment)
    grant = ToolGrant.objects.create(team=access.team, tool=tool, deployment=deployment, created_by=alice)
    approval = services.request_approval(
        access=access, tool=tool, deployment=deployment, grant=grant, conversation="conv-1", arguments=ORDER
    )
    asked = AuditEvent.objects.for_team(access.team).get(action="tool.approval_requested")
    services.reject(resolve_access(alice, "acme"), str(approval.public_id), "no")
    rejected = AuditEvent.objects.for_team(access.team).get(action="tool.rejected")
    rows = table(activity_page(login(bob), deployment=deployment.pk))
    assert all(f"event-{e.pk}" in rows for e in (kept, asked, rejected))
    assert f"event-{dropped.pk}" not in rows


def test_filter_by_key_keeps_the_calls_it_made(
    bob: Any, alice: Any, key: TeamAPIKey, tool: Tool, deployment: Deployment, login: Callable[..., Client]
) -> None:
    by_key = call(resolve_key_access(key, "acme"), "tool.call_requested", tool, deployment)
    by_bob = call(resolve_access(bob, "acme"), "tool.call_requested", tool, deployment)
    rows = table(activity_page(login(alice), key=key.pk))
    assert f"event-{by_key.pk}" in rows and f"event-{by_bob.pk}" not in rows


def test_filter_by_member_keeps_what_they_did(
    alice: Any, bob: Any, tool: Tool, deployment: Deployment, login: Callable[..., Client]
) -> None:
    by_bob = call(resolve_access(bob, "acme"), "tool.call_requested", tool, deployment)
    by_alice = call(resolve_access(alice, "acme"), "tool.call_requested", tool, deployment)
    rows = table(activity_page(login(alice), user="bob"))
    assert f"event-{by_bob.pk}" in rows and f"event-{by_alice.pk}" not in rows


def test_filter_by_outcome_keeps_that_outcome_only(
    bob: Any, tool: Tool, deployment: Deployment, login: Callable[..., Client]
) -> None:
    access = resolve_access(bob, "acme")
    call(access, "tool.call_requested", tool, deployment)
    failed = call(access, "tool.call_failed", tool, deployment, error="refused", message="Blocked host.")
    response = activity_page(login(bob), outcome="failed")
    assert row_count(response) == 1 and f"event-{failed.pk}" in table(response)


def test_filter_by_dates_keeps_the_days_in_range(
    bob: Any, tool: Tool, deployment: Deployment, login: Callable[..., Client]
) -> None:
    access = resolve_access(bob, "acme")
    with recorded_on("2025-03-01"):
        before = call(access, "tool.call_requested", tool, deployment)
    with recorded_on("2025-03-10"):
        inside = call(access, "tool.call_requested", tool, deployment)
    with recorded_on("2025-03-20"):
        after = call(access, "tool.call_requested", tool, deployment)
    rows = table(activity_page(login(bob), since="2025-03-05", until="2025-03-15"))
    assert f"event-{inside.pk}" in rows
    assert f"event-{before.pk}" not in rows and f"event-{after.pk}" not in rows


def test_an_approval_refusal_without_tool_details_is_found_through_its_approval(
    alice: Any, bob: Any, tool: Tool, deployment: Deployment, login: Callable[..., Client]
) -> None:
    grant = ToolGrant.objects.create(team=tool.team, tool=tool, deployment=deployment, created_by=alice)
    approval = services.request_approval(
        access=resolve_access(alice, "acme"), tool=tool, deployment=deployment, grant=grant, conversation="c",
        arguments=ORDER,
    )  # fmt: skip
    with pytest.raises(PermissionDenied, match="another approver"):
        services.approve(resolve_access(alice, "acme"), str(approval.public_id))  # she asked for it herself
    refused = AuditEvent.objects.for_team(tool.team).get(action="tool.approval_refused")
    assert "tool" not in refused.details
    rows = table(activity_page(login(bob), tool="lookup_order", outcome="approval_refused"))
    assert f"event-{refused.pk}" in rows and "rule: self_approval" in rows and "support-bot" in rows


# --- counts and chart -------------------------------------------------------------------------------


def test_counts_per_outcome_follow_the_filters(
    bob: Any, tool: Tool, other_tool: Tool, deployment: Deployment, login: Callable[..., Client]
) -> None:
    access = resolve_access(bob, "acme")
    for _ in range(3):
        call(access, "tool.call_requested", tool, deployment)
    call(access, "tool.call_executed", tool, deployment, status=200)
    call(access, "tool.call_denied", tool, deployment, rule="argument_out_of_bounds")
    call(access, "tool.call_requested", other_tool, deployment)
    response = activity_page(login(bob), tool="lookup_order", outcome="executed")
    assert (count_of(response, "requested"), count_of(response, "executed"), count_of(response, "denied")) == (3, 1, 1)
    assert count_of(response, "failed") == 0
    assert row_count(response) == 1


def test_chart_draws_each_day_by_outcome(
    bob: Any, tool: Tool, deployment: Deployment, login: Callable[..., Client]
) -> None:
    access = resolve_access(bob, "acme")
    with recorded_on("2025-03-02"):
        call(access, "tool.call_requested", tool, deployment)
        call(access, "tool.call_executed", tool, deployment, status=200)
    with recorded_on("2025-03-04"):
        call(access, "tool.call_failed", tool, deployment, error="http_error", status=502)
    html = activity_page(login(bob), since="2025-03-01", until="2025-03-05").content.decode()
    chart = re.search(r'<figure[^>]*id="activity-chart".*?</figure>', html, re.S)
    assert chart
    assert "Mar 02: 1 Executed events" in chart.group(0) and "Mar 04: 1 Failed events" in chart.group(0)
    assert chart.group(0).count('<g class="stack">') == 5  # one bar per day of the range


# --- isolation and bad input ------------------------------------------------------------------------


def test_another_teams_events_never_show(
    acme: Team,
    globex: Team,
    alice: Any,
    charlie: Any,
    tool: Tool,
    deployment: Deployment,
    login: Callable[..., Client],
) -> None:
    theirs = sample_tool(globex, charlie, name="lookup_order")
    their_deployment = Deployment.objects.create(
        team=globex, name="support-bot", model_version=deployment.model_version
    )
    event = call(resolve_access(charlie, "globex"), "tool.call_executed", theirs, their_deployment, status=200)
    response = activity_page(login(alice), tool="lookup_order")
    assert f"event-{event.pk}" not in response.content.decode()
    assert count_of(response, "executed") == 0


def test_another_teams_deployment_is_a_bad_filter(
    globex: Team, charlie: Any, alice: Any, deployment: Deployment, login: Callable[..., Client]
) -> None:
    theirs = Deployment.objects.create(team=globex, name="their-bot", model_version=deployment.model_version)
    response = activity_page(login(alice), deployment=theirs.pk)
    assert response.status_code == 400
    assert f"Deployment: “{theirs.pk}” is not a deployment of this team" in response.content.decode()


def test_outsider_gets_404(charlie: Any, acme: Team, login: Callable[..., Client]) -> None:
    assert activity_page(login(charlie)).status_code == 404


def test_unknown_team_gets_404(alice: Any, login: Callable[..., Client]) -> None:
    assert activity_page(login(alice), team="no-such-team").status_code == 404


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"outcome": "exploded"}, "Outcome: “exploded” is not an outcome: pick one from the list"),
        ({"tool": "nope"}, "Tool: “nope” is not a tool of this team"),
        ({"key": "12abc"}, "API key: “12abc” is not an API key of this team"),
        ({"user": "mallory"}, "Member: “mallory” is not a member of this team"),
        ({"since": "March 1st"}, "From: Enter the first day as YYYY-MM-DD"),
        ({"since": "2025-03-10", "until": "2025-03-01"}, "To: “To” is before “From”"),
    ],
)
def test_bad_filter_value_is_named_on_the_page(
    alice: Any, login: Callable[..., Client], params: dict[str, str], message: str
) -> None:
    response = activity_page(login(alice), **params)
    assert response.status_code == 400
    assert message in response.content.decode().replace("&ldquo;", "“")
    assert 'id="activity"' not in response.content.decode()


def test_bad_page_number_shows_the_first_page(
    bob: Any, tool: Tool, deployment: Deployment, login: Callable[..., Client]
) -> None:
    call(resolve_access(bob, "acme"), "tool.call_requested", tool, deployment)
    response = activity_page(login(bob), page="x")
    assert response.status_code == 200 and row_count(response) == 1


def test_fifty_rows_a_page(bob: Any, tool: Tool, deployment: Deployment, login: Callable[..., Client]) -> None:
    access = resolve_access(bob, "acme")
    for _ in range(51):
        call(access, "tool.call_requested", tool, deployment)
    client = login(bob)
    assert row_count(activity_page(client)) == 50
    second = activity_page(client, page=2)
    assert row_count(second) == 1 and "Page 2 of 2" in second.content.decode()


def test_arguments_show_as_text_never_as_markup(
    bob: Any, tool: Tool, deployment: Deployment, login: Callable[..., Client]
) -> None:
    call(
        resolve_access(bob, "acme"), "tool.call_requested", tool, deployment, {"order_id": "<script>alert(1)</script>"}
    )
    html = activity_page(login(bob)).content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in table(activity_page(login(bob)))


# --- the API ----------------------------------------------------------------------------------------


def test_api_lists_filtered_activity(
    bob: Any, alice: Any, tool: Tool, other_tool: Tool, deployment: Deployment, bearer: Callable[..., Client]
) -> None:
    access = resolve_access(bob, "acme")
    executed = call(access, "tool.call_executed", tool, deployment, status=200)
    call(access, "tool.call_requested", tool, deployment)
    call(access, "tool.call_executed", other_tool, deployment, status=200)
    response = bearer(bob).get(
        "/api/v1/teams/acme/tool-activity/", {"tool": "lookup_order", "outcome": "executed", "user": "bob"}
    )
    assert response.status_code == 200
    (item,) = response.json()["items"]
    assert item["id"] == executed.pk and item["outcome"] == "executed" and item["tool"] == "lookup_order"
    assert item["deployment"] == "support-bot" and item["actor"] == "bob" and item["details"]["status"] == 200


def test_api_names_a_bad_filter(alice: Any, bearer: Callable[..., Client]) -> None:
    response = bearer(alice).get("/api/v1/teams/acme/tool-activity/", {"deployment": 999999})
    assert response.status_code == 400
    assert response.json()["errors"]["deployment"] == [
        "“999999” is not a deployment of this team: pick one from the list, or “Any deployment”."
    ]


@pytest.mark.parametrize(("since", "until"), [("0001-01-01", "0001-01-03"), ("", "0001-01-02"), ("9999-12-01", "")])
def test_dates_at_the_ends_of_the_calendar_are_answered(
    bob: Any, login: Callable[..., Client], since: str, until: str
) -> None:
    assert activity_page(login(bob), since=since, until=until).status_code == 200


def test_api_offers_the_outcomes_the_page_offers() -> None:
    assert set(get_args(ActivityOutcome)) == {outcome.value for outcome in OUTCOMES}
