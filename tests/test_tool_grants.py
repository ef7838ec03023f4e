"""Grants: which tools a deployment may call, triggered by whom, within which argument bounds, approved when.

What a user would notice: the policy allowing or refusing a call with the rule that decided it; owners granting,
changing and revoking through the tool's page, each step in the audit trail; bad constraints answered with a message
naming the argument and the fix; another team's deployment or key refused; members reading grants, not changing them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from accounts import services as account_services
from accounts.models import AuditEvent, Team, TeamAPIKey
from accounts.permissions import TeamAccess, resolve_access
from serving_app import deployments
from serving_app.models import Deployment
from tests.factories import finished_job, sample_tool, sample_version
from tools_app import policy, services
from tools_app.models import Tool, ToolGrant
from tools_app.policy import GrantTerms
from training_app.models import BaseModel, ModelVersion

Login = Callable[[Any], Client]

# --- the policy, without a database ----------------------------------------------------------------

PAYMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string"},
        "amount": {"type": "number"},
        "currency": {"type": "string"},
    },
    "required": ["order_id"],
    "additionalProperties": False,
}
CONSTRAINTS = {
    "order_id": {"pattern": "A-[0-9]{4}"},
    "amount": {"minimum": 1, "maximum": 1000},
    "currency": {"enum": ["EUR", "USD"]},
}
KEY, OTHER_KEY = 7, 8
OK_ARGS = {"order_id": "A-1042", "amount": 20, "currency": "EUR"}


def terms(**overrides: Any) -> GrantTerms:
    fields: dict[str, Any] = {
        "roles": frozenset({"owner", "admin", "member"}), "api_key_ids": frozenset({KEY}),
        "argument_constraints": CONSTRAINTS, "approval": "never", **overrides,
    }  # fmt: skip
    return GrantTerms(**fields)


def payment_tool(risk: str = "read") -> Tool:
    return Tool(name="refund_order", risk=risk, parameters=PAYMENT_SCHEMA)


@pytest.mark.parametrize(
    ("grant", "arguments", "caller", "rule"),
    [
        pytest.param(terms(), OK_ARGS, {"role": "member"}, "", id="member role allowed"),
        pytest.param(terms(), OK_ARGS, {"role": "viewer"}, "the role “viewer” may not trigger", id="viewer denied"),
        pytest.param(terms(roles=frozenset()), OK_ARGS, {"role": "owner"}, "may not trigger", id="no role granted"),
        pytest.param(terms(), OK_ARGS, {"api_key_id": KEY}, "", id="granted key allowed"),
        pytest.param(terms(), OK_ARGS, {"api_key_id": OTHER_KEY}, "the key is not granted this tool", id="other key"),
        pytest.param(None, OK_ARGS, {"api_key_id": KEY}, "the deployment is not granted", id="deployment ungranted"),
        pytest.param(terms(), {**OK_ARGS, "currency": "USD"}, {"role": "member"}, "", id="enum passes"),
        pytest.param(
            terms(),
            {**OK_ARGS, "currency": "GBP"},
            {"role": "member"},
            "argument 'currency' = “GBP” is not one of the grant's allowed values",
            id="enum fails",
        ),
        pytest.param(
            terms(),
            {**OK_ARGS, "order_id": "A-1042x"},
            {"role": "member"},
            "argument 'order_id' = “A-1042x” does not match the grant's pattern",
            id="pattern must match in full",
        ),
        pytest.param(terms(), {**OK_ARGS, "amount": 1000}, {"role": "member"}, "", id="maximum is inclusive"),
        pytest.param(
            terms(),
            {**OK_ARGS, "amount": 5000},
            {"role": "member"},
            "argument 'amount' = 5000 is above the grant's maximum 1000",
            id="maximum fails",
        ),
        pytest.param(
            terms(),
            {**OK_ARGS, "amount": 0.5},
            {"role": "member"},
            "argument 'amount' = 0.5 is below the grant's minimum 1",
            id="minimum fails",
        ),
        pytest.param(terms(), {"order_id": "A-1042"}, {"role": "member"}, "", id="absent optional argument passes"),
        pytest.param(
            terms(),
            {"amount": 20},
            {"role": "member"},
            "arguments do not match the tool's schema: 'order_id' is a required property",
            id="schema: missing",
        ),
        pytest.param(
            terms(),
            {**OK_ARGS, "amount": "20"},
            {"role": "member"},
            "arguments do not match the tool's schema: '20' is not of type 'number' (at “amount”)",
            id="schema: type",
        ),
        pytest.param(
            terms(),
            {**OK_ARGS, "note": "x"},
            {"role": "member"},
            "arguments do not match the tool's schema",
            id="schema: extra argument",
        ),
    ],
)
def test_policy_allows_or_names_the_rule_that_denied(
    grant: GrantTerms | None, arguments: dict[str, Any], caller: dict[str, Any], rule: str
) -> None:
    decision = policy.decide(
        grant, payment_tool(), arguments=arguments, role=caller.get("role"), api_key_id=caller.get("api_key_id")
    )
    assert decision.allowed is (rule == "")
    assert rule in decision.rule
    if decision.denied:
        assert not decision.needs_approval


@pytest.mark.parametrize(
    ("approval", "risk", "needs_approval"),
    [
        ("never", "read", False), ("never", "write", False), ("never", "destructive", False),
        ("always", "read", True), ("always", "write", True), ("always", "destructive", True),
        ("by_risk", "read", False), ("by_risk", "write", True), ("by_risk", "destructive", True),
        ("a-mode-from-a-newer-release", "read", True),
    ],
)  # fmt: skip
def test_approval_follows_the_grant_and_the_tools_risk(approval: str, risk: str, needs_approval: bool) -> None:
    decision = policy.decide(terms(approval=approval), payment_tool(risk), arguments=OK_ARGS, role=None, api_key_id=KEY)
    assert decision.allowed and decision.needs_approval is needs_approval
    assert decision.approval_reason


@pytest.mark.parametrize("caller", [{"role": "owner", "api_key_id": KEY}, {"role": None, "api_key_id": None}])
def test_the_caller_is_named_exactly_once(caller: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        policy.decide(terms(), payment_tool(), arguments=OK_ARGS, **caller)


@pytest.mark.parametrize(
    ("constraints", "problem"),
    [
        ({"refund": {"maximum": 5}}, "“refund” is not an argument of this tool (its arguments: amount, currency"),
        ({"order_id": {"pattern": "A-(["}}, "“order_id”: the pattern is not a valid regular expression"),
        ({"amount": {"minimum": 10, "maximum": 1}}, "“amount”: the minimum 10 is above the maximum 1"),
        ({"amount": {"maximum": "1000"}}, "“amount”: maximum is a number"),
        ({"currency": {"enum": []}}, "“currency”: enum is a non-empty list"),
        ({"currency": {"oneOf": ["EUR"]}}, "unknown constraint “oneOf”"),
        (["amount"], "Write an object keyed by argument name"),
    ],
)
def test_bad_constraints_are_refused_with_the_argument_and_the_fix(constraints: Any, problem: str) -> None:
    problems = policy.check_constraints(constraints, PAYMENT_SCHEMA)
    assert any(problem in message for message in problems), problems


def test_good_constraints_pass() -> None:
    assert policy.check_constraints(CONSTRAINTS, PAYMENT_SCHEMA) == []


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def deployment(owner: TeamAccess, model_version: ModelVersion, key: TeamAPIKey) -> Deployment:
    return deployments.create_deployment(access=owner, name="support-bot", version=model_version, api_keys=[key])


@pytest.fixture
def tool(acme: Team, alice: Any) -> Tool:
    return sample_tool(acme, alice)


@pytest.fixture
def globex_deployment(globex: Team, charlie: Any, base_model_row: BaseModel) -> Deployment:
    _, version = finished_job(globex, charlie, base_model_row, sample_version(globex, charlie, "chat"), name="rival")
    return deployments.create_deployment(access=resolve_access(charlie, globex.slug), name="rival-bot", version=version)


@pytest.fixture
def globex_key(globex: Team, charlie: Any) -> TeamAPIKey:
    return account_services.create_team_api_key(access=resolve_access(charlie, globex.slug), name="globex ci")[0]


@pytest.fixture
def grant(owner: TeamAccess, tool: Tool, deployment: Deployment, key: TeamAPIKey) -> ToolGrant:
    return services.grant_tool(access=owner, tool=tool, deployment=deployment, api_keys=[key])


def url(name: str, *args: Any) -> str:
    return reverse(f"tools:{name}", args=["acme", *args])


def events(team: Team, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.for_team(team).filter(action=action).order_by("pk"))


def text_of(response: Any) -> str:
    return response.content.decode().replace("&quot;", '"').replace("&#x27;", "'")


def grant_form(deployment: Deployment, **overrides: Any) -> dict[str, Any]:
    return {"deployment": deployment.pk, "roles": ["owner", "admin"], "api_keys": [], "approval": "by_risk",
            "argument_constraints": "", **overrides}  # fmt: skip


# --- granting, changing, revoking through the pages -------------------------------------------------


@pytest.mark.django_db
def test_owner_grants_a_tool_from_its_page_and_the_audit_trail_records_it(
    alice: Any, login: Login, tool: Tool, deployment: Deployment, key: TeamAPIKey
) -> None:
    client = login(alice)
    constraints = json.dumps({"order_id": {"pattern": "A-[0-9]{4}"}})
    response = client.post(
        url("grant_new", tool.pk), grant_form(deployment, api_keys=[key.pk], argument_constraints=constraints)
    )
    assert response.status_code == 302 and response["Location"] == url("detail", tool.pk), text_of(response)
    grant = ToolGrant.objects.for_team(tool.team).get()
    assert (grant.deployment, grant.tool, grant.roles, grant.approval) == (
        deployment,
        tool,
        ["owner", "admin"],
        "by_risk",
    )
    assert services.grant_terms(grant).api_key_ids == {key.pk}
    (event,) = events(tool.team, "tool.granted")
    assert event.actor_label == "alice" and event.details["tool"] == "lookup_order"
    assert event.details["deployment"] == "support-bot" and event.details["api_keys"] == [key.display_prefix]
    assert event.details["argument_constraints"] == {"order_id": {"pattern": "A-[0-9]{4}"}}
    page = text_of(client.get(url("detail", tool.pk)))
    assert "Granted to" in page and "support-bot" in page and '"pattern": "A-[0-9]{4}"' in page


@pytest.mark.django_db
def test_owner_changes_a_grant_and_the_audit_trail_names_the_changed_settings(
    alice: Any, login: Login, grant: ToolGrant, tool: Tool
) -> None:
    form = grant_form(grant.deployment, roles=["owner"], approval="always")
    del form["deployment"]
    response = login(alice).post(url("grant_edit", tool.pk, grant.pk), form)
    assert response.status_code == 302, text_of(response)
    grant.refresh_from_db()
    assert (grant.roles, grant.approval) == (["owner"], "always")
    assert services.grant_terms(grant).api_key_ids == frozenset()
    (event,) = events(tool.team, "tool.grant_changed")
    assert event.details["deployment"] == "support-bot"
    assert set(event.details["changed"]) == {"roles", "api_keys", "approval"}
    assert event.details["changed"]["approval"] == {"from": "by_risk", "to": "always"}


@pytest.mark.django_db
def test_revoking_asks_first_then_takes_the_tool_away_and_is_audited(
    alice: Any, login: Login, grant: ToolGrant, tool: Tool
) -> None:
    client = login(alice)
    assert "Revoke the grant" in text_of(client.get(url("grant_revoke", tool.pk, grant.pk)))
    response = client.post(url("grant_revoke", tool.pk, grant.pk))
    assert response.status_code == 302
    assert not ToolGrant.objects.for_team(tool.team).exists()
    assert Tool.objects.for_team(tool.team).filter(pk=tool.pk).exists()
    (event,) = events(tool.team, "tool.revoked")
    assert (event.details["tool"], event.details["deployment"]) == ("lookup_order", "support-bot")


@pytest.mark.django_db
def test_a_new_grant_starts_with_every_role_but_viewer_ticked(
    alice: Any, login: Login, tool: Tool, deployment: Deployment
) -> None:
    page = login(alice).get(url("grant_new", tool.pk)).content.decode()
    ticked = set(re.findall(r'<input type="checkbox" name="roles" value="(\w+)"[^>]*checked', page))
    assert ticked == {"owner", "admin", "member"}


@pytest.mark.django_db
def test_a_constraint_on_an_argument_the_schema_lacks_is_refused_naming_it(
    alice: Any, login: Login, tool: Tool, deployment: Deployment
) -> None:
    form = grant_form(deployment, argument_constraints=json.dumps({"amount": {"maximum": 10}}))
    response = login(alice).post(url("grant_new", tool.pk), form)
    assert response.status_code == 400
    assert "“amount” is not an argument of this tool (its arguments: order_id)" in text_of(response)
    assert not ToolGrant.objects.for_team(tool.team).exists()


@pytest.mark.django_db
def test_an_invalid_pattern_and_bad_json_are_refused(
    alice: Any, login: Login, tool: Tool, deployment: Deployment
) -> None:
    client = login(alice)
    bad_regex = grant_form(deployment, argument_constraints=json.dumps({"order_id": {"pattern": "A-(["}}))
    assert "not a valid regular expression" in text_of(client.post(url("grant_new", tool.pk), bad_regex))
    bad_json = grant_form(deployment, argument_constraints="{order_id: 1}")
    response = client.post(url("grant_new", tool.pk), bad_json)
    assert response.status_code == 400 and "This is not JSON" in text_of(response)
    assert not ToolGrant.objects.for_team(tool.team).exists()


@pytest.mark.django_db
def test_granting_the_same_tool_twice_to_a_deployment_is_refused(
    alice: Any, login: Login, grant: ToolGrant, tool: Tool
) -> None:
    response = login(alice).post(url("grant_new", tool.pk), grant_form(grant.deployment))
    assert response.status_code == 400 and "is granted “lookup_order” already" in text_of(response)


@pytest.mark.django_db
def test_a_key_that_cannot_call_the_deployment_is_refused(
    owner: TeamAccess, tool: Tool, deployment: Deployment
) -> None:
    stranger, _ = account_services.create_team_api_key(access=owner, name="nightly eval")
    with pytest.raises(ValidationError) as error:
        services.grant_tool(access=owner, tool=tool, deployment=deployment, api_keys=[stranger])
    assert "nightly eval cannot call the deployment “support-bot”" in str(error.value.message_dict["api_keys"])


# --- other teams, other roles -----------------------------------------------------------------------


@pytest.mark.django_db
def test_another_teams_deployment_is_refused_by_the_page_and_the_service(
    alice: Any, login: Login, owner: TeamAccess, tool: Tool, globex_deployment: Deployment
) -> None:
    response = login(alice).post(url("grant_new", tool.pk), grant_form(globex_deployment))
    assert response.status_code == 400 and "Select a valid choice" in text_of(response)
    with pytest.raises(ValidationError) as error:
        services.grant_tool(access=owner, tool=tool, deployment=globex_deployment)
    assert "deployment" in error.value.message_dict
    assert not ToolGrant.objects.unscoped().exists()


@pytest.mark.django_db
def test_another_teams_key_is_refused_by_the_page_and_the_service(
    alice: Any, login: Login, owner: TeamAccess, tool: Tool, deployment: Deployment, globex_key: TeamAPIKey
) -> None:
    response = login(alice).post(url("grant_new", tool.pk), grant_form(deployment, api_keys=[globex_key.pk]))
    assert response.status_code == 400 and "Select a valid choice" in text_of(response)
    with pytest.raises(ValidationError) as error:
        services.grant_tool(access=owner, tool=tool, deployment=deployment, api_keys=[globex_key])
    assert error.value.message_dict["api_keys"] == ["Choose API keys of this team."]
    assert not ToolGrant.objects.unscoped().exists()


@pytest.mark.django_db
def test_member_cannot_grant_change_or_revoke(bob: Any, login: Login, grant: ToolGrant, tool: Tool) -> None:
    client = login(bob)
    assert client.get(url("grant_new", tool.pk)).status_code == 403
    assert client.post(url("grant_new", tool.pk), grant_form(grant.deployment)).status_code == 403
    assert client.post(url("grant_edit", tool.pk, grant.pk), {"approval": "never"}).status_code == 403
    assert client.post(url("grant_revoke", tool.pk, grant.pk)).status_code == 403
    assert ToolGrant.objects.for_team(tool.team).get().approval == "by_risk"


@pytest.mark.django_db
def test_member_reads_the_grants_without_the_controls_or_the_key_names(
    bob: Any, login: Login, grant: ToolGrant, tool: Tool, key: TeamAPIKey
) -> None:
    page = text_of(login(bob).get(url("detail", tool.pk)))
    assert "support-bot" in page and "By risk" in page
    assert url("grant_new", tool.pk) not in page and url("grant_revoke", tool.pk, grant.pk) not in page
    assert key.display_prefix not in page


@pytest.mark.django_db
def test_the_deployment_page_lists_its_tools(alice: Any, login: Login, grant: ToolGrant, tool: Tool) -> None:
    page = text_of(login(alice).get(reverse("serving:deployment", args=["acme", grant.deployment.pk])))
    assert "Tools it may call" in page and url("detail", tool.pk) in page


# --- what the runtime gets --------------------------------------------------------------------------


@pytest.mark.django_db
def test_granted_tools_are_what_the_model_is_offered(grant: ToolGrant, tool: Tool, deployment: Deployment) -> None:
    assert services.granted_tools(deployment) == [tool.as_openai_tool()]


@pytest.mark.django_db
def test_the_model_is_shown_a_tools_schema_in_the_order_it_was_written(
    owner: TeamAccess, grant: ToolGrant, deployment: Deployment
) -> None:
    # PostgreSQL's jsonb would sort the keys (shorter first): "required" before "properties", "date" before "title".
    written = {
        "type": "object",
        "properties": {"title": {"type": "string"}, "date": {"type": "string", "description": "YYYY-MM-DD"}},
        "required": ["title", "date"],
    }
    calendar = services.create_tool(
        access=owner, kind=Tool.Kind.HTTP, name="add_calendar_event", description="Add an event.", risk="write",
        rate_limit_per_minute=30, parameters=written,
        config={"method": "POST", "url": "https://calendar.example/events", "query_args": [],
                "body_args": ["title", "date"], "timeout_s": 5, "max_response_bytes": 100_000, "result_path": ""},
    )  # fmt: skip
    services.grant_tool(access=owner, tool=calendar, deployment=deployment)

    [shown] = [tool for tool in services.granted_tools(deployment) if tool["function"]["name"] == "add_calendar_event"]
    assert json.dumps(shown["function"]["parameters"]) == json.dumps(written)


@pytest.mark.django_db
def test_the_operators_admin_shows_a_tools_schema_as_json(tool: Tool, client: Client) -> None:
    from django.contrib.auth import get_user_model

    operator = get_user_model().objects.create_superuser("operator", "operator@example.com", "a-long-passphrase-1")
    client.force_login(operator)

    page = client.get(reverse("admin:tools_app_tool_change", args=[tool.pk]))

    assert page.status_code == 200
    # As written, indented; the admin breaks the lines with <br>.
    assert escape(json.dumps(tool.parameters, indent=2)).replace("\n", "<br>") in page.content.decode()


@pytest.mark.django_db
def test_a_saved_grant_decides_calls_by_its_key(grant: ToolGrant, tool: Tool, key: TeamAPIKey) -> None:
    grant_terms = services.grant_terms(grant)
    allowed = policy.decide(grant_terms, tool, arguments={"order_id": "A-1"}, role=None, api_key_id=key.pk)
    denied = policy.decide(grant_terms, tool, arguments={"order_id": "A-1"}, role=None, api_key_id=key.pk + 1)
    assert allowed.allowed and not allowed.needs_approval  # a read tool, approval by risk
    assert denied.rule == "the key is not granted this tool"
