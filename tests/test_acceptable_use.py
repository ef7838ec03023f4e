"""The team's acceptable-use policy: edited in team settings, accepted (and recorded) by whoever creates an API key,
shown sanitized on the pages and quoted on model cards."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts import services
from accounts.models import AuditEvent, Team, TeamAPIKey
from accounts.permissions import TeamAccess
from training_app.models import ModelVersion

Login = Callable[[Any], Client]

pytestmark = pytest.mark.django_db

POLICY = "# Acme acceptable use\n\nDo **not** use our models for *medical advice*."
SCRIPT = "<script>alert('aup')</script>"


@pytest.fixture
def policy(owner: TeamAccess) -> Team:
    """acme with an acceptable-use policy (revision 1)."""
    return services.set_acceptable_use_policy(access=owner, text=POLICY)


def settings_form(team: Team, policy: str) -> dict[str, Any]:
    return {"name": team.name, "currency": team.currency, "acceptable_use_policy": policy}


def keys_url() -> str:
    return reverse("accounts:api_keys", kwargs={"team_slug": "acme"})


def create_by_api(client: Client, **body: Any) -> Any:
    return client.post("/api/v1/teams/acme/keys/", json.dumps({"name": "ci", **body}), content_type="application/json")


# --- editing the policy -------------------------------------------------------------------------


def test_owner_sets_the_policy_on_the_settings_page(alice: Any, acme: Team, login: Login) -> None:
    url = reverse("accounts:team_settings", kwargs={"team_slug": "acme"})
    response = login(alice).post(url, settings_form(acme, POLICY))
    assert response.status_code == 302
    acme.refresh_from_db()
    assert (acme.acceptable_use_policy, acme.acceptable_use_revision) == (POLICY, 1)


def test_changing_the_policy_is_audited_with_its_revision(owner: TeamAccess, policy: Team) -> None:
    event = AuditEvent.objects.for_team(policy).get(action="team.acceptable_use_changed")
    assert event.details["revision"] == 1
    assert event.details["sha256"] == policy.acceptable_use_sha256


def test_saving_the_same_text_keeps_the_revision(owner: TeamAccess, policy: Team) -> None:
    team = services.set_acceptable_use_policy(access=owner, text=POLICY.replace("\n", "\r\n") + "\n")
    assert team.acceptable_use_revision == 1


def test_member_cannot_change_the_policy(bob: Any, acme: Team, login: Login) -> None:
    url = reverse("accounts:team_settings", kwargs={"team_slug": "acme"})
    response = login(bob).post(url, settings_form(acme, "Anything goes."))
    assert response.status_code == 403
    acme.refresh_from_db()
    assert acme.acceptable_use_policy == ""


def test_script_in_the_policy_never_reaches_the_page(alice: Any, owner: TeamAccess, login: Login) -> None:
    services.set_acceptable_use_policy(access=owner, text=f"Be kind.\n\n{SCRIPT}\n\n<img src=x onerror=alert(1)>")
    page = login(alice).get(keys_url()).content.decode()
    assert "<p>Be kind.</p>" in page  # the Markdown is rendered
    assert SCRIPT not in page
    assert "<img src=x" not in page and '<img src="x"' not in page


def test_javascript_link_in_the_policy_is_not_a_link(alice: Any, owner: TeamAccess, login: Login) -> None:
    services.set_acceptable_use_policy(access=owner, text="[read me](javascript:alert(1)) [terms](https://example.com)")
    page = login(alice).get(keys_url()).content.decode()
    assert 'href="javascript:' not in page
    assert 'href="https://example.com"' in page


def test_team_detail_api_returns_the_policy_and_its_revision(alice: Any, bearer: Any, policy: Team) -> None:
    body = bearer(alice).get("/api/v1/teams/acme/").json()
    assert (body["acceptable_use_policy"], body["acceptable_use_revision"]) == (POLICY, 1)


# --- accepting it when creating a key -----------------------------------------------------------


def test_key_page_without_accepting_is_refused_and_creates_nothing(alice: Any, policy: Team, login: Login) -> None:
    response = login(alice).post(keys_url(), {"name": "ci", "role": "viewer"})
    assert response.status_code == 200
    assert "Accept Acme&#x27;s acceptable-use policy (revision 1)" in response.content.decode()
    assert not TeamAPIKey.objects.for_team(policy).exists()


def test_key_api_without_accepting_gets_400_naming_the_field(alice: Any, bearer: Any, policy: Team) -> None:
    response = create_by_api(bearer(alice))
    assert response.status_code == 400
    assert "accept_acceptable_use" in response.json()["errors"]
    assert not TeamAPIKey.objects.for_team(policy).exists()


def test_key_page_with_acceptance_records_revision_and_who(alice: Any, policy: Team, login: Login) -> None:
    response = login(alice).post(keys_url(), {"name": "ci", "role": "viewer", "accept_acceptable_use": "on"})
    assert response.status_code == 200
    key = TeamAPIKey.objects.for_team(policy).get(name="ci")
    assert key.acceptable_use_revision == 1
    assert key.acceptable_use_sha256 == policy.acceptable_use_sha256
    assert key.acceptable_use_accepted_by == alice
    assert key.acceptable_use_accepted_at is not None


def test_key_api_with_acceptance_records_the_revision(alice: Any, bearer: Any, policy: Team) -> None:
    response = create_by_api(bearer(alice), accept_acceptable_use=True)
    assert response.status_code == 201
    assert (response.json()["acceptable_use_revision"], response.json()["acceptable_use_current"]) == (1, True)


def test_accepting_is_in_the_key_creation_audit_event(alice: Any, bearer: Any, policy: Team) -> None:
    create_by_api(bearer(alice), accept_acceptable_use=True)
    event = AuditEvent.objects.for_team(policy).get(action="apikey.created")
    assert event.details["acceptable_use_revision"] == 1
    assert event.details["acceptable_use_sha256"] == policy.acceptable_use_sha256


def test_key_needs_no_acceptance_without_a_policy(alice: Any, bearer: Any, acme: Team) -> None:
    response = create_by_api(bearer(alice))
    assert response.status_code == 201
    assert response.json()["acceptable_use_revision"] is None


def test_key_form_has_no_checkbox_without_a_policy(alice: Any, acme: Team, login: Login) -> None:
    assert "accept_acceptable_use" not in login(alice).get(keys_url()).content.decode()


def test_changed_policy_shows_the_key_accepted_an_older_revision(
    alice: Any, owner: TeamAccess, policy: Team, login: Login
) -> None:
    key, _ = services.create_team_api_key(access=owner, name="ci", accept_acceptable_use=True)
    services.set_acceptable_use_policy(access=owner, text=POLICY + "\n\nNo spam either.")
    key = TeamAPIKey.objects.for_team(policy).get(pk=key.pk)
    assert key.acceptable_use_revision == 1
    page = login(alice).get(reverse("accounts:api_key_detail", kwargs={"team_slug": "acme", "key_id": key.pk}))
    assert "older revision" in page.content.decode()
    assert "it is now revision 2" in page.content.decode()


def test_key_page_says_a_key_accepted_the_current_revision(
    alice: Any, owner: TeamAccess, policy: Team, login: Login
) -> None:
    key, _ = services.create_team_api_key(access=owner, name="ci", accept_acceptable_use=True)
    page = login(alice).get(reverse("accounts:api_key_detail", kwargs={"team_slug": "acme", "key_id": key.pk}))
    assert "current revision" in page.content.decode()


def test_key_list_api_says_whether_a_key_accepted_the_current_policy(
    alice: Any, bearer: Any, owner: TeamAccess, policy: Team
) -> None:
    services.create_team_api_key(access=owner, name="ci", accept_acceptable_use=True)
    services.set_acceptable_use_policy(access=owner, text="A new policy.")
    [key] = bearer(alice).get("/api/v1/teams/acme/keys/").json()
    assert (key["acceptable_use_revision"], key["acceptable_use_current"]) == (1, False)


# --- on the model card --------------------------------------------------------------------------


def test_version_page_shows_the_policy(alice: Any, policy: Team, model_version: ModelVersion, login: Login) -> None:
    url = reverse("training:version", kwargs={"team_slug": "acme", "version_id": model_version.pk})
    page = login(alice).get(url).content.decode()
    assert 'id="acceptable-use"' in page
    assert "<em>medical advice</em>" in page


def test_model_card_markdown_quotes_the_policy(alice: Any, bearer: Any, policy: Team, model_version: Any) -> None:
    card = bearer(alice).get(f"/api/v1/teams/acme/model-versions/{model_version.pk}/card").content.decode()
    assert "## Acceptable use" in card
    assert "> Do **not** use our models for *medical advice*." in card
    assert f"revision 1, sha256 `{policy.acceptable_use_sha256}`" in card
