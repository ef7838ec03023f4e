"""Which deployments a team API key may call: said when deploying, listed with the keys, chosen on a key's page.

The key's page (accounts) shows the form; it posts to ``serving:key_deployments``, which does the work
through ``serving_app.deployments.set_key_deployments``.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from accounts import services as account_services
from accounts.models import AuditEvent, Team, TeamAPIKey
from accounts.permissions import TeamAccess
from serving_app.models import Deployment
from training_app.models import ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(acme: Team, alice: Any, model_version: ModelVersion) -> Deployment:
    return Deployment.objects.create(team=acme, name="support-bot", model_version=model_version, created_by=alice)


def test_deploying_with_no_key_says_no_key_can_call_it_yet(alice: Any, login: Any, model_version: ModelVersion) -> None:
    response = login(alice).post(
        "/t/acme/deployments/", {"name": "support-bot", "model_version": model_version.pk}, follow=True
    )

    page = response.content.decode()
    assert "“support-bot” is deployed, but no API key can call it yet: choose keys below" in page
    assert "the keys you chose can call it" not in page


def test_the_key_list_shows_which_deployments_each_key_may_call(
    alice: Any, login: Any, key: TeamAPIKey, deployment: Deployment, owner: TeamAccess
) -> None:
    account_services.create_team_api_key(access=owner, name="idle key")
    deployment.api_keys.add(key)

    page = login(alice).get("/t/acme/keys/").content.decode()

    assert "<th>May call</th>" in page
    assert f'href="/t/acme/deployments/{deployment.pk}/">support-bot</a>' in page
    assert '<span class="muted">no deployment</span>' in page


def test_an_admin_grants_a_key_a_deployment_on_the_key_page(
    alice: Any, login: Any, key: TeamAPIKey, deployment: Deployment
) -> None:
    client: Client = login(alice)
    assert "Deployments this key may call" in client.get(f"/t/acme/keys/{key.pk}/").content.decode()

    response = client.post(f"/t/acme/keys/{key.pk}/deployments/", {"deployments": [deployment.pk]}, follow=True)

    page = response.content.decode()
    assert "Saved: “support widget” may call 1 deployment." in page
    assert (
        f'Deployments it may call: <a class="mono" href="/t/acme/deployments/{deployment.pk}/">support-bot</a>' in page
    )
    assert list(key.deployments.for_team(key.team)) == [deployment]


def test_changing_a_keys_deployments_is_audited(
    alice: Any, login: Any, key: TeamAPIKey, deployment: Deployment
) -> None:
    login(alice).post(f"/t/acme/keys/{key.pk}/deployments/", {"deployments": [deployment.pk]})

    event = AuditEvent.objects.for_team(key.team).get(action="apikey.deployments_changed")
    assert (event.target_id, event.details["added"], event.details["removed"]) == (str(key.pk), ["support-bot"], [])


def test_an_admin_takes_a_deployment_away_from_a_key(
    alice: Any, login: Any, key: TeamAPIKey, deployment: Deployment
) -> None:
    deployment.api_keys.add(key)

    response = login(alice).post(f"/t/acme/keys/{key.pk}/deployments/", {}, follow=True)

    assert "Saved: “support widget” may call 0 deployments." in response.content.decode()
    assert not key.deployments.for_team(key.team).exists()


def test_a_revoked_key_cannot_be_granted_a_deployment(
    alice: Any, login: Any, owner: TeamAccess, key: TeamAPIKey, deployment: Deployment
) -> None:
    account_services.revoke_team_api_key(access=owner, key=key)
    client: Client = login(alice)
    assert "Deployments this key may call" not in client.get(f"/t/acme/keys/{key.pk}/").content.decode()

    response = client.post(f"/t/acme/keys/{key.pk}/deployments/", {"deployments": [deployment.pk]}, follow=True)

    assert "The key “support widget” is revoked: it can call no deployment." in response.content.decode()
    assert not key.deployments.for_team(key.team).exists()


def test_a_member_sees_no_deployment_form_on_a_shared_key(
    bob: Any, login: Any, owner: TeamAccess, key: TeamAPIKey, deployment: Deployment
) -> None:
    from accounts.models import Membership

    account_services.share_object(access=owner, obj=key, member=Membership.objects.get(user=bob), level="view")

    page = login(bob).get(f"/t/acme/keys/{key.pk}/").content.decode()

    assert "It may call no deployment yet." in page
    assert "Deployments this key may call" not in page
