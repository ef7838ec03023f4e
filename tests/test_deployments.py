"""Deployments and usage: the services, the pages under /t/<team>/deployments/ and usage/, and the REST API.

Calling a deployment through /v1 with the official client is in tests/test_openai_api.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts import services as account_services
from accounts.models import AuditEvent, Team, TeamAPIKey
from accounts.permissions import TeamAccess, resolve_access
from accounts.roles import Role
from serving_app import deployments
from serving_app.models import Deployment, UsageRecord
from tests.factories import finished_job, member, sample_version
from training_app.models import BaseModel, ModelVersion

Login = Callable[[Any], Client]

pytestmark = pytest.mark.django_db


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def deployment(owner: TeamAccess, model_version: ModelVersion, key: TeamAPIKey) -> Deployment:
    return deployments.create_deployment(access=owner, name="support-bot", version=model_version, api_keys=[key])


@pytest.fixture
def globex_version(globex: Team, charlie: Any, base_model_row: BaseModel) -> ModelVersion:
    _, version = finished_job(globex, charlie, base_model_row, sample_version(globex, charlie, "chat"), name="rival")
    return version


@pytest.fixture
def globex_key(globex: Team, charlie: Any) -> TeamAPIKey:
    return account_services.create_team_api_key(access=resolve_access(charlie, globex.slug), name="globex ci")[0]


def _url(name: str, *args: Any) -> str:
    return reverse(f"serving:{name}", args=["acme", *args])


def _audit(team: Team, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.for_team(team).filter(action=action))


def _usage(team: Team, **fields: Any) -> UsageRecord:
    return UsageRecord.objects.create(team=team, model_label=fields.pop("model_label", "support-bot"), **fields)


# --- creating and deleting ----------------------------------------------------------------------


def test_owner_deploys_a_version_from_the_page_and_the_audit_trail_records_it(
    alice: Any, login: Login, model_version: ModelVersion, key: TeamAPIKey
) -> None:
    response = login(alice).post(
        _url("deployments"),
        {"name": "support-bot", "model_version": model_version.pk, "api_keys": [key.pk], "description": "FAQ bot"},
    )
    deployment = Deployment.objects.for_team(model_version.team).get()
    assert response.status_code == 302 and response["Location"] == _url("deployment", deployment.pk)
    assert deployment.name == "support-bot" and deployment.model_version == model_version
    assert list(deployments.keys_of(deployment)) == [key]
    (event,) = _audit(model_version.team, "deployment.created")
    assert event.actor_label == "alice" and event.details["api_keys"] == [key.display_prefix]


def test_deployments_page_lists_the_deployment_and_offers_the_form_to_admins(
    alice: Any, login: Login, deployment: Deployment
) -> None:
    page = login(alice).get(_url("deployments")).content.decode()
    assert "support-bot" in page and "support v1" in page
    assert 'id="new-deployment"' in page


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Support Bot", "cannot be a deployment name"),
        ("-bot", "cannot be a deployment name"),
        ("", "This field is required."),
    ],
)
def test_invalid_name_is_refused_next_to_the_field(
    alice: Any, login: Login, model_version: ModelVersion, name: str, message: str
) -> None:
    response = login(alice).post(_url("deployments"), {"name": name, "model_version": model_version.pk})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Deployment.objects.for_team(model_version.team).exists()


def test_a_name_taken_in_the_team_is_refused_with_what_to_do(
    alice: Any, login: Login, deployment: Deployment, model_version: ModelVersion
) -> None:
    response = login(alice).post(_url("deployments"), {"name": "support-bot", "model_version": model_version.pk})
    assert response.status_code == 400
    assert "already has a deployment named “support-bot”; pick another name" in response.content.decode()
    assert Deployment.objects.for_team(model_version.team).count() == 1


def test_the_same_name_is_free_in_another_team(
    deployment: Deployment, globex: Team, charlie: Any, globex_version: ModelVersion
) -> None:
    access = resolve_access(charlie, globex.slug)
    other = deployments.create_deployment(access=access, name="support-bot", version=globex_version)
    assert other.team == globex


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_member_and_viewer_cannot_create_a_deployment(
    role: str, user_in_role: Callable[[str], Any], login: Login, model_version: ModelVersion
) -> None:
    client = login(user_in_role(role))
    response = client.post(_url("deployments"), {"name": "support-bot", "model_version": model_version.pk})
    assert response.status_code == 403
    assert not Deployment.objects.for_team(model_version.team).exists()
    assert 'id="new-deployment"' not in client.get(_url("deployments")).content.decode()


def test_another_teams_version_cannot_be_deployed(
    owner: TeamAccess, alice: Any, login: Login, model_version: ModelVersion, globex_version: ModelVersion
) -> None:
    response = login(alice).post(_url("deployments"), {"name": "stolen", "model_version": globex_version.pk})
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    with pytest.raises(ValidationError, match="does not exist in this team"):
        deployments.create_deployment(access=owner, name="stolen", version=globex_version)
    assert not Deployment.objects.for_team(owner.team).exists()


def test_a_restricted_version_needs_a_use_share_to_be_deployed(
    acme: Team, model_version: ModelVersion, user_in_role: Callable[[str], Any]
) -> None:
    ModelVersion.objects.for_team(acme).filter(pk=model_version.pk).update(restricted=True)
    admin = resolve_access(user_in_role(Role.ADMIN), acme.slug)
    assert deployments.create_deployment(access=admin, name="ok", version=model_version).name == "ok"
    member_access = TeamAccess(team=acme, role=Role.MEMBER, user=user_in_role(Role.MEMBER))
    with pytest.raises(PermissionDenied):  # members cannot deploy at all
        deployments.create_deployment(access=member_access, name="nope", version=model_version)


def test_delete_asks_first_then_removes_and_audits(alice: Any, login: Login, deployment: Deployment) -> None:
    client = login(alice)
    confirm = client.get(_url("deployment_delete", deployment.pk))
    assert confirm.status_code == 200 and "Clients calling" in confirm.content.decode()
    response = client.post(_url("deployment_delete", deployment.pk))
    assert response.status_code == 302 and response["Location"] == _url("deployments")
    assert not Deployment.objects.for_team(deployment.team).exists()
    assert [event.details["name"] for event in _audit(deployment.team, "deployment.deleted")] == ["support-bot"]
    assert client.get(_url("deployment", deployment.pk)).status_code == 404


def test_member_cannot_delete(bob: Any, login: Login, deployment: Deployment) -> None:
    assert login(bob).post(_url("deployment_delete", deployment.pk)).status_code == 403
    assert Deployment.objects.for_team(deployment.team).exists()


def test_usage_survives_the_deployments_deletion(owner: TeamAccess, deployment: Deployment, key: TeamAPIKey) -> None:
    _usage(owner.team, source="api", status="ok", deployment=deployment, api_key=key, prompt_tokens=5)
    deployments.delete_deployment(access=owner, deployment=deployment)
    (row,) = deployments.usage_summary(owner.team).by_deployment
    assert row.label == "support-bot (deleted)" and row.prompt_tokens == 5


# --- the deployment's page and its keys ---------------------------------------------------------


def test_detail_shows_the_version_the_keys_and_snippets_with_the_studios_address(
    alice: Any, login: Login, deployment: Deployment, key: TeamAPIKey
) -> None:
    page = login(alice).get(_url("deployment", deployment.pk)).content.decode()
    assert "support v1" in page and key.display_prefix in page
    assert "curl http://testserver/v1/chat/completions" in page
    assert 'OpenAI(base_url="http://testserver/v1"' in page
    assert 'model="support-bot"' in page


def test_key_scope_form_offers_only_the_teams_active_keys(
    owner: TeamAccess, alice: Any, login: Login, deployment: Deployment, key: TeamAPIKey, globex_key: TeamAPIKey
) -> None:
    revoked, _ = account_services.create_team_api_key(access=owner, name="old laptop")
    account_services.revoke_team_api_key(access=owner, key=revoked)
    page = login(alice).get(_url("deployment", deployment.pk)).content.decode()
    form = page[page.index('action="/t/acme/deployments/') :]
    assert f'value="{key.pk}"' in form
    assert "globex ci" not in page and f'value="{globex_key.pk}"' not in form
    assert f'value="{revoked.pk}"' not in form


def test_admin_changes_which_keys_may_call_it_and_the_change_is_audited(
    owner: TeamAccess, alice: Any, login: Login, deployment: Deployment, key: TeamAPIKey
) -> None:
    second, _ = account_services.create_team_api_key(access=owner, name="nightly eval")
    response = login(alice).post(_url("deployment_keys", deployment.pk), {"api_keys": [second.pk]})
    assert response.status_code == 302
    assert list(deployments.keys_of(deployment)) == [second]
    (event,) = _audit(owner.team, "deployment.keys_changed")
    assert event.details == {"added": [second.display_prefix], "removed": [key.display_prefix]}


def test_saving_the_same_keys_again_changes_nothing(owner: TeamAccess, deployment: Deployment, key: TeamAPIKey) -> None:
    deployments.set_deployment_keys(access=owner, deployment=deployment, api_keys=[key])
    assert _audit(owner.team, "deployment.keys_changed") == []


def test_another_teams_key_cannot_be_given_to_a_deployment(
    owner: TeamAccess, alice: Any, login: Login, deployment: Deployment, key: TeamAPIKey, globex_key: TeamAPIKey
) -> None:
    response = login(alice).post(_url("deployment_keys", deployment.pk), {"api_keys": [globex_key.pk]}, follow=True)
    assert "Choose active API keys of this team" in response.content.decode()
    with pytest.raises(ValidationError, match="Choose API keys of this team"):
        deployments.set_deployment_keys(access=owner, deployment=deployment, api_keys=[globex_key])
    assert list(deployments.keys_of(deployment)) == [key]


def test_member_reads_the_deployment_without_the_key_form_and_cannot_change_keys(
    bob: Any, login: Login, deployment: Deployment, key: TeamAPIKey
) -> None:
    client = login(bob)
    page = client.get(_url("deployment", deployment.pk)).content.decode()
    assert "support-bot" in page and "Choose keys" not in page
    # The key is not shared with bob: he learns that one key may call it, not which.
    assert key.display_prefix not in page and "1 key not shared with you" in page
    assert client.post(_url("deployment_keys", deployment.pk), {"api_keys": []}).status_code == 403
    assert list(deployments.keys_of(deployment)) == [key]


# --- team API keys: limits and deployments ------------------------------------------------------


def test_key_form_sets_the_limits_and_deployments(
    alice: Any, login: Login, deployment: Deployment, settings: Any
) -> None:
    client = login(alice)
    form_page = client.get(reverse("accounts:api_keys", args=["acme"])).content.decode()
    assert f'value="{deployment.pk}"' in form_page
    response = client.post(
        reverse("accounts:api_keys", args=["acme"]),
        {
            "name": "widget",
            "role": "viewer",
            "requests_per_minute": 5,
            "max_tokens": 64,
            "deployments": [deployment.pk],
        },
    )
    assert response.status_code == 200 and re.search(r"atk_[0-9a-f]{12}_", response.content.decode())
    key = TeamAPIKey.objects.for_team(deployment.team).get(name="widget")
    assert (key.requests_per_minute, key.max_tokens) == (5, 64)
    assert list(deployments.deployments_of_key(key)) == [deployment]
    detail = client.get(reverse("accounts:api_key_detail", args=["acme", key.pk])).content.decode()
    assert "<strong>5</strong> requests per minute" in detail and "<strong>64</strong> new tokens" in detail
    assert "support-bot" in detail


def test_key_without_limits_gets_the_studios_defaults(owner: TeamAccess, settings: Any) -> None:
    settings.API_KEY_REQUESTS_PER_MINUTE, settings.API_KEY_MAX_TOKENS = 7, 77
    key, _ = account_services.create_team_api_key(access=owner, name="defaults")
    assert (key.requests_per_minute, key.max_tokens) == (7, 77)


def test_key_limits_out_of_range_are_refused_next_to_the_field(alice: Any, login: Login) -> None:
    response = login(alice).post(
        reverse("accounts:api_keys", args=["acme"]), {"name": "widget", "role": "viewer", "requests_per_minute": 0}
    )
    assert "Ensure this value is greater than or equal to 1." in response.content.decode()
    assert not TeamAPIKey.objects.for_team(Team.objects.get(slug="acme")).exists()


def test_key_cannot_be_created_for_another_teams_deployment(
    owner: TeamAccess, globex: Team, charlie: Any, globex_version: ModelVersion
) -> None:
    rival = deployments.create_deployment(
        access=resolve_access(charlie, globex.slug), name="rival-bot", version=globex_version
    )
    with pytest.raises(ValidationError, match="Choose deployments of this team"):
        account_services.create_team_api_key(access=owner, name="sneaky", deployments=[rival])


# --- metering and the per-minute limit ----------------------------------------------------------


def test_request_over_the_keys_limit_is_rejected_and_says_when_to_retry(
    owner: TeamAccess, deployment: Deployment
) -> None:
    key, _ = account_services.create_team_api_key(access=owner, name="slow", requests_per_minute=2)
    first, second = (deployments.start_api_request(key=key, deployment=deployment) for _ in range(2))
    third = deployments.start_api_request(key=key, deployment=deployment)
    assert not first.rejected and not second.rejected
    assert third.rejected and third.retry_after is not None and 1 <= third.retry_after <= 60
    statuses = UsageRecord.objects.for_team(owner.team).filter(api_key=key).values_list("status", flat=True)
    assert sorted(statuses) == ["rejected", "started", "started"]


def test_rejected_and_old_requests_do_not_count_against_the_limit(owner: TeamAccess, deployment: Deployment) -> None:
    key, _ = account_services.create_team_api_key(access=owner, name="slow", requests_per_minute=1)
    _usage(
        owner.team, source="api", api_key=key, deployment=deployment, created_at=timezone.now() - timedelta(minutes=2)
    )
    _usage(owner.team, source="api", api_key=key, deployment=deployment, status="rejected")
    assert not deployments.start_api_request(key=key, deployment=deployment).rejected
    assert deployments.start_api_request(key=key, deployment=deployment).rejected


def test_each_key_has_its_own_limit(owner: TeamAccess, deployment: Deployment) -> None:
    first, _ = account_services.create_team_api_key(access=owner, name="one", requests_per_minute=1)
    second, _ = account_services.create_team_api_key(access=owner, name="two", requests_per_minute=1)
    assert not deployments.start_api_request(key=first, deployment=deployment).rejected
    assert not deployments.start_api_request(key=second, deployment=deployment).rejected


# --- the usage page -----------------------------------------------------------------------------


def test_usage_page_draws_tokens_per_day_by_source_and_the_tables(
    alice: Any, login: Login, deployment: Deployment, key: TeamAPIKey
) -> None:
    team = deployment.team
    _usage(team, source="api", status="ok", deployment=deployment, api_key=key, prompt_tokens=30, completion_tokens=12)
    _usage(team, source="api", status="rejected", deployment=deployment, api_key=key)
    _usage(team, source="playground", status="ok", user=alice, prompt_tokens=100, completion_tokens=50)
    _usage(team, source="arena", status="ok", created_at=timezone.now() - timedelta(days=3), completion_tokens=9)
    _usage(team, source="arena", status="ok", created_at=timezone.now() - timedelta(days=45), completion_tokens=999)
    page = login(alice).get(_url("usage")).content.decode()
    assert "No tokens used" not in page
    assert _chart(page).count("<rect") == 3  # today: API and playground; 3 days ago: arena
    today = timezone.localdate()
    assert f"{today:%b %d}: 42 API tokens" in page and f"{today:%b %d}: 150 Playground tokens" in page
    assert f"{today - timedelta(days=3):%b %d}: 9 Arena tokens" in page
    y_labels = re.findall(r'text-anchor="end" dominant-baseline="middle">([^<]*)</text>', _chart(page))
    assert y_labels == ["0", "50", "100", "150", "200"]  # round ticks over the busiest day's 192 tokens
    assert f'text-anchor="end">{today:%b %d}</text>' in _chart(page)  # the x axis ends today
    assert "API 42, Playground 150, Arena 9 in total" in _chart(page)  # the summary lists the counts
    assert "999" not in page  # older than 30 days
    deployments_table = page[page.index('id="usage-deployments"') : page.index('id="usage-keys"')]
    cells = re.findall(r'<td class="num">([^<]*)</td>', deployments_table)
    assert "support-bot" in deployments_table and cells == ["1", "1", "30", "12"]
    keys_table = page[page.index('id="usage-keys"') :]
    assert "support widget" in keys_table and re.findall(r'<td class="num">([^<]*)</td>', keys_table) == cells


def test_usage_page_without_usage_says_so(alice: Any, login: Login) -> None:
    page = login(alice).get(_url("usage")).content.decode()
    assert "No tokens used in the last 30 days" in page and "<svg" not in _chart(page)
    assert page.count("No API requests in this period.") == 2


def test_usage_page_does_not_name_keys_unshared_with_a_member(
    bob: Any, login: Login, deployment: Deployment, key: TeamAPIKey
) -> None:
    _usage(deployment.team, source="api", status="ok", deployment=deployment, api_key=key, prompt_tokens=3)
    page = login(bob).get(_url("usage")).content.decode()
    assert "support widget" not in page and "Keys not shared with you" in page


def _chart(page: str) -> str:
    return page[page.index('id="usage-chart"') : page.index("</figure>", page.index('id="usage-chart"'))]


# --- REST ---------------------------------------------------------------------------------------


def _api(client: Client, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body) if body is not None else ""
    return client.generic(method, f"/api/v1/teams/acme/{path}", data, content_type="application/json")


def test_rest_creates_lists_reads_rescopes_and_deletes_a_deployment(
    alice: Any, bearer: Login, owner: TeamAccess, model_version: ModelVersion, key: TeamAPIKey
) -> None:
    client = bearer(alice)
    created = _api(client, "POST", "deployments", {"name": "support-bot", "model_version": model_version.pk,
                                                    "api_keys": [key.pk]})  # fmt: skip
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["name"] == "support-bot" and body["model_version"]["id"] == model_version.pk
    assert [k["prefix"] for k in body["api_keys"]] == [key.display_prefix]
    assert [d["name"] for d in _api(client, "GET", "deployments").json()] == ["support-bot"]
    assert _api(client, "GET", f"deployments/{body['id']}").json()["api_keys"][0]["max_tokens"] == key.max_tokens
    rescoped = _api(client, "PATCH", f"deployments/{body['id']}/keys", {"api_keys": []})
    assert rescoped.status_code == 200 and rescoped.json()["api_keys"] == []
    assert _api(client, "DELETE", f"deployments/{body['id']}").status_code == 204
    assert not Deployment.objects.for_team(owner.team).exists()
    actions = ["deployment.created", "deployment.keys_changed", "deployment.deleted"]
    assert all(_audit(owner.team, action) for action in actions)


def test_rest_refuses_a_bad_name_an_unknown_version_and_another_teams_key(
    alice: Any, bearer: Login, model_version: ModelVersion, globex_version: ModelVersion, globex_key: TeamAPIKey
) -> None:
    client = bearer(alice)
    bad_name = _api(client, "POST", "deployments", {"name": "Bad Name", "model_version": model_version.pk})
    assert bad_name.status_code == 400 and "cannot be a deployment name" in bad_name.json()["errors"]["name"][0]
    foreign = _api(client, "POST", "deployments", {"name": "x", "model_version": globex_version.pk})
    assert foreign.status_code == 400 and "model_version" in foreign.json()["errors"]
    key = _api(client, "POST", "deployments", {"name": "x", "model_version": model_version.pk,
                                                "api_keys": [globex_key.pk]})  # fmt: skip
    assert key.status_code == 400 and f"no active API key {globex_key.pk}" in key.json()["detail"]
    assert not Deployment.objects.for_team(model_version.team).exists()


def test_rest_member_may_read_but_not_create(bob: Any, bearer: Login, deployment: Deployment) -> None:
    client = bearer(bob)
    assert _api(client, "GET", "deployments").status_code == 200
    refused = _api(client, "POST", "deployments", {"name": "x", "model_version": deployment.model_version_id})
    assert refused.status_code == 403
    assert _api(client, "DELETE", f"deployments/{deployment.pk}").status_code == 403


def test_rest_usage_returns_the_days_and_the_tables(
    alice: Any, bearer: Login, deployment: Deployment, key: TeamAPIKey
) -> None:
    _usage(deployment.team, source="api", status="ok", deployment=deployment, api_key=key, prompt_tokens=4,
           completion_tokens=6)  # fmt: skip
    body = _api(bearer(alice), "GET", "usage?days=7").json()
    assert len(body["days"]) == 7 and body["days"][-1]["api"] == 10 and body["totals"]["api"] == 10
    assert body["deployments"][0]["label"] == "support-bot" and body["keys"][0]["key_id"] == key.pk


def test_rest_key_creation_takes_limits_and_deployments(alice: Any, bearer: Login, deployment: Deployment) -> None:
    client = bearer(alice)
    created = _api(client, "POST", "keys/", {"name": "widget", "requests_per_minute": 3, "max_tokens": 32,
                                             "deployments": [deployment.pk]})  # fmt: skip
    assert created.status_code == 201, created.content
    assert created.json()["deployments"] == ["support-bot"] and created.json()["requests_per_minute"] == 3
    unknown = _api(client, "POST", "keys/", {"name": "x", "deployments": [deployment.pk + 1000]})
    assert unknown.status_code == 400 and "no deployment" in unknown.json()["detail"]


# --- isolation ----------------------------------------------------------------------------------

PAGE_ROUTES = [
    ("GET", "deployments", False),
    ("POST", "deployments", False),
    ("GET", "deployment", True),
    ("POST", "deployment_keys", True),
    ("GET", "deployment_delete", True),
    ("POST", "deployment_delete", True),
    ("GET", "usage", False),
]
API_ROUTES = [
    ("GET", "deployments"),
    ("POST", "deployments"),
    ("GET", "deployments/{id}"),
    ("PATCH", "deployments/{id}/keys"),
    ("DELETE", "deployments/{id}"),
    ("GET", "usage"),
]


@pytest.mark.parametrize(("method", "name", "with_id"), PAGE_ROUTES)
def test_outsider_gets_404_on_every_deployment_page(
    method: str, name: str, with_id: bool, charlie: Any, login: Login, deployment: Deployment
) -> None:
    url = _url(name, deployment.pk) if with_id else _url(name)
    data = {"name": "planted", "model_version": deployment.model_version_id, "api_keys": []}
    response = login(charlie).generic(method, url, json.dumps(data) if method == "POST" else "")
    assert response.status_code == 404
    assert Deployment.objects.for_team(deployment.team).get().name == "support-bot"
    assert list(deployments.keys_of(deployment))


@pytest.mark.parametrize(("method", "path"), API_ROUTES)
def test_outsider_gets_404_on_every_deployment_api_route(
    method: str, path: str, charlie: Any, bearer: Login, globex_key: TeamAPIKey, deployment: Deployment
) -> None:
    body = {"name": "planted", "model_version": deployment.model_version_id, "api_keys": []}
    _, raw_key = account_services.create_team_api_key(
        access=resolve_access(charlie, "globex"), name="probe", role=Role.MEMBER
    )
    for client in (bearer(charlie), Client(headers={"Authorization": f"Bearer {raw_key}"})):
        response = _api(client, method, path.format(id=deployment.pk), body if method in ("POST", "PATCH") else None)
        assert response.status_code == 404, (client, response.content)
    assert Deployment.objects.for_team(deployment.team).get().name == "support-bot"
    assert list(deployments.keys_of(deployment))


def test_acme_cannot_name_globex_deployments_under_its_own_team(
    alice: Any, login: Login, bearer: Login, globex: Team, charlie: Any, globex_version: ModelVersion
) -> None:
    rival = deployments.create_deployment(
        access=resolve_access(charlie, globex.slug), name="rival-bot", version=globex_version
    )
    assert login(alice).get(_url("deployment", rival.pk)).status_code == 404
    assert _api(bearer(alice), "GET", f"deployments/{rival.pk}").status_code == 404
    assert _api(bearer(alice), "DELETE", f"deployments/{rival.pk}").status_code == 404
    assert Deployment.objects.for_team(globex).filter(pk=rival.pk).exists()


def test_members_see_only_the_keys_shared_with_them(
    acme: Team, owner: TeamAccess, key: TeamAPIKey, deployment: Deployment
) -> None:
    viewer = member(acme, Role.VIEWER, "vera")
    assert deployments.visible_key_ids(resolve_access(viewer, acme.slug)) == set()
    assert deployments.visible_key_ids(owner) is None
