"""Personal tokens and team keys: hashed at rest, shown once, revocable, and the token endpoint."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from accounts import services
from accounts.models import PersonalAccessToken, TeamAPIKey
from accounts.permissions import resolve_access
from tests.factories import PASSWORD


def obtain(client: Client, username: str, password: str) -> Any:
    return client.post(
        "/api/v1/auth/token",
        data=json.dumps({"username": username, "password": password, "name": "laptop"}),
        content_type="application/json",
    )


def test_password_exchange_returns_a_working_token(alice: Any) -> None:
    response = obtain(Client(), "alice", PASSWORD)
    assert response.status_code == 201
    token = response.json()["token"]
    me = Client(headers={"Authorization": f"Bearer {token}"}).get("/api/v1/me")
    assert me.json()["username"] == "alice"


def test_wrong_password_gets_401_without_a_token(alice: Any) -> None:
    response = obtain(Client(), "alice", "wrong password")
    assert response.status_code == 401
    assert "token" not in response.json()
    assert not PersonalAccessToken.objects.filter(user=alice).exists()


def test_token_endpoint_locks_out_after_repeated_failures(alice: Any, bob: Any) -> None:
    client = Client()
    for _ in range(5):
        obtain(client, "alice", "wrong password")
    locked = obtain(client, "alice", PASSWORD)
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.json()["detail"]
    assert obtain(client, "bob", PASSWORD).status_code == 201  # other users are unaffected


@pytest.mark.django_db(transaction=True)
def test_database_dump_contains_no_issued_secret(alice: Any, acme: Any) -> None:
    """pg_dump of the whole database holds neither the personal token, the team key, nor the invite link."""
    _, token = services.create_personal_token(user=alice, name="cli")
    access = resolve_access(alice, "acme")
    _, key = services.create_team_api_key(access=access, name="ci")
    _, invitation = services.create_invitation(access=access, role="member")
    db = connection.settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.fail("This test needs PostgreSQL (make test sets DATABASE_URL).")
    dump = subprocess.run(
        ["pg_dump", "-h", db["HOST"] or "127.0.0.1", "-p", str(db["PORT"] or 5432), "-U", db["USER"], db["NAME"]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "accounts_personalaccesstoken" in dump  # the dump really holds the tables
    # The whole token, and its secret part alone (a token is ``kind_prefix_secret``; the secret may hold "_").
    for secret in (token, token.split("_", 2)[2], key, key.split("_", 2)[2], invitation):
        assert secret not in dump


def test_revoked_token_gets_401(alice: Any) -> None:
    token_row, token = services.create_personal_token(user=alice, name="cli")
    client = Client(headers={"Authorization": f"Bearer {token}"})
    assert client.get("/api/v1/teams/").status_code == 200
    services.revoke_personal_token(user=alice, token=token_row)
    assert client.get("/api/v1/teams/").status_code == 401


def test_a_deactivated_users_token_gets_401(alice: Any) -> None:
    _, token = services.create_personal_token(user=alice, name="cli")
    client = Client(headers={"Authorization": f"Bearer {token}"})
    assert client.get("/api/v1/teams/").status_code == 200
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    assert client.get("/api/v1/teams/").status_code == 401


def test_write_with_a_revoked_token_gets_401_not_a_csrf_403(alice: Any) -> None:
    token_row, token = services.create_personal_token(user=alice, name="cli")
    services.revoke_personal_token(user=alice, token=token_row)
    response = Client(headers={"Authorization": f"Bearer {token}"}).post(
        "/api/v1/teams/", data=json.dumps({"name": "Initech", "slug": "initech"}), content_type="application/json"
    )
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Bearer atl_", "Bearer atl_abc_def", "Token whatever", "Bearer " + "x" * 5000, "Basic YTpi"],
)
def test_malformed_credentials_get_401_not_500(alice: Any, header: str) -> None:
    response = Client(headers={"Authorization": header}).get("/api/v1/teams/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


def test_token_use_records_last_used(alice: Any) -> None:
    token_row, token = services.create_personal_token(user=alice, name="cli")
    assert token_row.last_used_at is None
    Client(headers={"Authorization": f"Bearer {token}"}).get("/api/v1/teams/")
    token_row.refresh_from_db()
    assert token_row.last_used_at is not None


def test_token_page_shows_the_secret_once(alice: Any, login: Any) -> None:
    client = login(alice)
    created = client.post("/accounts/tokens/", {"name": "laptop"})
    row = PersonalAccessToken.objects.get(user=alice)
    secret = created.content.decode().split('id="new-token">')[1].split("<")[0]
    assert secret.startswith(f"atl_{row.prefix}_")
    assert secret not in client.get("/accounts/tokens/").content.decode()


def test_token_can_be_revoked_from_the_page(alice: Any, login: Any) -> None:
    token_row, token = services.create_personal_token(user=alice, name="cli")
    login(alice).post(f"/accounts/tokens/{token_row.pk}/revoke/")
    assert Client(headers={"Authorization": f"Bearer {token}"}).get("/api/v1/me").status_code == 401


def test_someone_elses_token_cannot_be_revoked(alice: Any, bob: Any, login: Any) -> None:
    token_row, _ = services.create_personal_token(user=alice, name="cli")
    assert login(bob).post(f"/accounts/tokens/{token_row.pk}/revoke/").status_code == 404
    token_row.refresh_from_db()
    assert token_row.is_active


def test_team_key_acts_only_in_its_team_with_its_role(alice: Any, acme: Any, charlie: Any) -> None:
    access = resolve_access(alice, "acme")
    _, key = services.create_team_api_key(access=access, name="ci", role="viewer")
    client = Client(headers={"Authorization": f"Bearer {key}"})
    assert client.get("/api/v1/teams/acme/members/").status_code == 200
    assert client.get("/api/v1/teams/globex/").status_code == 404
    invite = client.post("/api/v1/teams/acme/invitations/", data={"role": "member"}, content_type="application/json")
    assert invite.status_code == 403
    assert client.get("/api/v1/me").status_code == 403  # keys have no personal resources


def test_revoked_team_key_gets_401(alice: Any, acme: Any) -> None:
    access = resolve_access(alice, "acme")
    key_row, key = services.create_team_api_key(access=access, name="ci")
    services.revoke_team_api_key(access=access, key=key_row)
    assert Client(headers={"Authorization": f"Bearer {key}"}).get("/api/v1/teams/acme/").status_code == 401
    assert TeamAPIKey.objects.for_team(acme).get().revoked_at is not None
