"""Account and team pages: sign-up, sessions, teams, invitations, roles, and every kind of bad input."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

from django.core import mail
from django.test import Client
from django.utils import timezone

from accounts import services
from accounts.models import AuditEvent, Invitation, Membership, Team
from accounts.permissions import resolve_access
from accounts.roles import Role
from tests.factories import PASSWORD

STRONG = "a-long-unusual-passphrase-42"


def flashes(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]] if response.context else []


# --- sign-up, login, sessions, password reset ---------------------------------------------------


def test_signup_creates_an_account_and_signs_in(db: None) -> None:
    client = Client()
    response = client.post(
        "/accounts/signup/",
        {"username": "ada", "email": "ada@example.com", "password1": STRONG, "password2": STRONG},
        follow=True,
    )
    assert response.context["user"].username == "ada"
    assert AuditEvent.objects.filter(action="user.signed_up", actor_label="ada").count() == 1


def test_signup_with_a_weak_password_says_why(db: None) -> None:
    response = Client().post(
        "/accounts/signup/", {"username": "ada", "email": "ada@example.com", "password1": "123", "password2": "123"}
    )
    assert response.status_code == 200
    assert "This password is too short" in response.content.decode()


def test_signup_refuses_a_used_email(alice: Any) -> None:
    response = Client().post(
        "/accounts/signup/",
        {"username": "alice2", "email": "ALICE@example.com", "password1": STRONG, "password2": STRONG},
    )
    assert "An account already uses this e-mail" in response.content.decode()


def test_login_rotates_the_session_key_and_logout_kills_it(alice: Any) -> None:
    client = Client()
    client.get("/accounts/login/")
    client.cookies["sessionid"] = "anonymous-session-key-set-before-login"
    client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    session_key = client.cookies["sessionid"].value
    assert session_key != "anonymous-session-key-set-before-login"
    assert client.get("/t/acme/").status_code == 200
    client.post("/accounts/logout/")
    replay = Client()
    replay.cookies["sessionid"] = session_key
    assert replay.get("/t/acme/").status_code == 302  # back to the login page


def test_repeated_failed_logins_lock_that_account_with_429(alice: Any, bob: Any) -> None:
    client = Client()
    for _ in range(5):
        client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    locked = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.content.decode()
    assert client.post("/accounts/login/", {"username": "bob", "password": PASSWORD}).status_code == 302


def test_password_reset_by_email_sets_a_new_password(alice: Any, settings: Any) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    client = Client()
    client.post("/accounts/password/reset/", {"email": "alice@example.com"})
    assert len(mail.outbox) == 1
    link = re.search(r"http://testserver(/accounts/password/reset/\S+/)", mail.outbox[0].body)
    assert link is not None
    form_page = client.get(link.group(1), follow=True)
    client.post(form_page.redirect_chain[-1][0], {"new_password1": STRONG, "new_password2": STRONG})
    assert Client().post("/accounts/login/", {"username": "alice", "password": STRONG}).status_code == 302


# --- teams ----------------------------------------------------------------------------------------


def test_creating_a_team_makes_you_its_owner(alice: Any, login: Any) -> None:
    response = login(alice).post("/teams/new/", {"name": "Research", "slug": "research"})
    assert response.status_code == 302 and response["Location"] == "/t/research/"
    assert Membership.objects.get(team__slug="research", user=alice).role == Role.OWNER


def test_duplicate_team_slug_gets_a_field_error(alice: Any, globex: Any, login: Any) -> None:
    response = login(alice).post("/teams/new/", {"name": "Copy", "slug": "globex"})
    assert response.status_code == 200
    assert "The address “globex” is taken" in response.content.decode()
    assert Team.objects.filter(slug="globex").count() == 1


def test_duplicate_team_slug_in_the_api_is_a_400_naming_the_field(alice: Any, globex: Any, bearer: Any) -> None:
    response = bearer(alice).post(
        "/api/v1/teams/", data=json.dumps({"name": "Copy", "slug": "globex"}), content_type="application/json"
    )
    assert response.status_code == 400
    assert list(response.json()["errors"]) == ["slug"]


def test_reserved_and_malformed_slugs_are_refused(alice: Any, login: Any) -> None:
    client = login(alice)
    assert "is reserved" in client.post("/teams/new/", {"name": "X", "slug": "admin"}).content.decode()
    assert "Use 1" in client.post("/teams/new/", {"name": "X", "slug": "-bad-"}).content.decode()


def test_oversized_fields_get_inline_errors_not_500(alice: Any, login: Any, bearer: Any) -> None:
    page = login(alice).post("/teams/new/", {"name": "x" * 500, "slug": "fine"})
    assert page.status_code == 200
    assert "Ensure this value has at most 80 characters" in page.content.decode()
    api = bearer(alice).post(
        "/api/v1/teams/", data=json.dumps({"name": "x" * 500, "slug": "fine"}), content_type="application/json"
    )
    assert api.status_code == 422
    assert api.json()["detail"][0]["loc"][-1] == "name"


def test_user_in_two_teams_can_switch_between_them(alice: Any, globex: Any, login: Any) -> None:
    Membership.objects.create(team=globex, user=alice, role=Role.VIEWER)
    page = login(alice).get("/t/acme/").content.decode()
    assert 'href="/t/globex/"' in page and 'href="/t/acme/"' in page
    assert login(alice).get("/t/globex/").status_code == 200


def test_home_lists_teams_when_there_are_several(alice: Any, globex: Any, login: Any) -> None:
    Membership.objects.create(team=globex, user=alice, role=Role.VIEWER)
    page = login(alice).get("/").content.decode()
    assert "Acme" in page and "Globex" in page


# --- invitations ----------------------------------------------------------------------------------


def test_invitation_link_is_shown_once_and_works_once(alice: Any, charlie: Any, login: Any) -> None:
    owner = login(alice)
    page = owner.post("/t/acme/invitations/", {"role": "viewer"}, follow=True).content.decode()
    link = re.search(r'id="invitation-link">http://testserver(/invite/[^<]+/)<', page)
    assert link is not None
    assert link.group(1) not in owner.get("/t/acme/members/").content.decode()
    guest = login(charlie)
    assert guest.post(link.group(1)).status_code == 302
    assert Membership.objects.get(team__slug="acme", user=charlie).role == Role.VIEWER
    again = login(charlie).post(link.group(1))
    assert again.status_code == 400
    assert "already been used" in again.content.decode()


def test_expired_invitation_explains_itself(alice: Any, charlie: Any, login: Any) -> None:
    invitation, token = services.create_invitation(access=resolve_access(alice, "acme"), role="member")
    Invitation.objects.for_team(invitation.team).update(expires_at=timezone.now() - timedelta(minutes=1))
    response = login(charlie).post(f"/invite/{token}/")
    assert response.status_code == 400
    assert "expired" in response.content.decode()
    assert not Membership.objects.filter(team__slug="acme", user=charlie).exists()


def test_unknown_invitation_token_is_a_clear_400(charlie: Any, login: Any) -> None:
    response = login(charlie).get("/invite/not-a-real-token/")
    assert response.status_code == 400
    assert "not valid" in response.content.decode()


def test_anonymous_visitor_sees_who_invites_and_can_sign_up(alice: Any) -> None:
    _, token = services.create_invitation(access=resolve_access(alice, "acme"), role="member")
    page = Client().get(f"/invite/{token}/").content.decode()
    assert "<strong>alice</strong> invites you" in page
    assert f"/accounts/signup/?next=/invite/{token}/" in page


def test_admin_cannot_invite_an_owner(alice: Any, user_in_role: Any, bearer: Any) -> None:
    admin = user_in_role(Role.ADMIN)
    response = bearer(admin).post(
        "/api/v1/teams/acme/invitations/", data=json.dumps({"role": "owner"}), content_type="application/json"
    )
    assert response.status_code == 400
    assert "Only an owner can invite another owner" in response.json()["errors"]["role"][0]


def test_accepting_through_the_api(alice: Any, charlie: Any, bearer: Any) -> None:
    created = bearer(alice).post(
        "/api/v1/teams/acme/invitations/", data=json.dumps({"role": "member"}), content_type="application/json"
    )
    token = created.json()["link"].rstrip("/").rsplit("/", 1)[-1]
    accepted = bearer(charlie).post(
        "/api/v1/invitations/accept", data=json.dumps({"token": token}), content_type="application/json"
    )
    assert accepted.status_code == 201 and accepted.json()["role"] == "member"


# --- roles and the last owner -------------------------------------------------------------------


def test_last_owner_cannot_demote_themselves(alice: Any, login: Any, bearer: Any) -> None:
    own = Membership.objects.get(user=alice)
    page = login(alice).post(f"/t/acme/members/{own.pk}/role/", {"role": "member"}, follow=True)
    assert any("last owner" in text for text in flashes(page))
    api = bearer(alice).patch(
        "/api/v1/teams/acme/members/alice", data=json.dumps({"role": "member"}), content_type="application/json"
    )
    assert api.status_code == 400 and "last owner" in api.json()["errors"]["role"][0]
    own.refresh_from_db()
    assert own.role == Role.OWNER


def test_last_owner_cannot_leave(alice: Any, login: Any, bearer: Any) -> None:
    own = Membership.objects.get(user=alice)
    page = login(alice).post(f"/t/acme/members/{own.pk}/remove/", follow=True)
    assert any("last owner" in text for text in flashes(page))
    assert bearer(alice).delete("/api/v1/teams/acme/members/alice").status_code == 400
    assert Membership.objects.filter(pk=own.pk).exists()


def test_owner_can_leave_once_there_is_another_owner(alice: Any, bob: Any, login: Any) -> None:
    Membership.objects.filter(user=bob).update(role=Role.OWNER)
    own = Membership.objects.get(user=alice)
    login(alice).post(f"/t/acme/members/{own.pk}/remove/")
    assert not Membership.objects.filter(pk=own.pk).exists()


def test_role_change_to_an_unknown_role_is_refused(alice: Any, bob: Any, bearer: Any) -> None:
    response = bearer(alice).patch(
        "/api/v1/teams/acme/members/bob", data=json.dumps({"role": "emperor"}), content_type="application/json"
    )
    assert response.status_code == 422
    assert Membership.objects.get(user=bob).role == Role.MEMBER


def test_readme_role_table_matches_the_code() -> None:
    """The README documents the role matrix; this keeps it true."""
    from pathlib import Path

    from accounts.roles import PERM_DESCRIPTIONS, ROLE_PERMISSIONS, Perm

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for perm in Perm:
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{perm}`")), None)
        assert row is not None, f"README has no row for {perm}"
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:5]
        expected = ["✓" if perm in ROLE_PERMISSIONS[role] else "—" for role in Role]
        assert cells == expected, f"README row for {perm} says {cells}, code says {expected}"
        assert PERM_DESCRIPTIONS[perm]


def test_forbidden_page_says_which_role_is_missing(bob: Any, login: Any) -> None:
    response = login(bob).get("/t/acme/audit/")
    assert response.status_code == 403
    assert "Your role (Member) does not allow this (audit.view)" in response.content.decode()


def test_not_found_page_is_the_sites_own(charlie: Any, acme: Any, login: Any) -> None:
    response = login(charlie).get("/t/acme/")
    assert response.status_code == 404
    assert "There is nothing here, or you do not have access to it." in response.content.decode()


def test_a_form_over_the_size_limit_gets_a_413_page_saying_what_to_do(alice: Any, login: Any, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = login(alice).post("/t/acme/keys/", {"name": "x" * 2048})
    assert response.status_code == 413
    assert "larger than the studio accepts in a form (1.0\xa0KB" in response.content.decode()


def test_api_accepts_the_browser_session_but_requires_csrf_for_writes(alice: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice, backend="django.contrib.auth.backends.ModelBackend")
    assert client.get("/api/v1/teams/").json()[0]["slug"] == "acme"
    body = json.dumps({"name": "Labs", "slug": "labs"})
    assert client.post("/api/v1/teams/", data=body, content_type="application/json").status_code == 403
    client.get("/accounts/tokens/")  # any page sets the CSRF cookie
    csrf = client.cookies["csrftoken"].value
    created = client.post("/api/v1/teams/", data=body, content_type="application/json", headers={"X-CSRFToken": csrf})
    assert created.status_code == 201
    assert Team.objects.filter(slug="labs").exists()


def test_seed_demo_is_idempotent(db: None) -> None:
    from django.core.management import call_command

    call_command("seed_demo")
    call_command("seed_demo")
    team = Team.objects.get(slug="demo")
    assert list(Membership.objects.filter(team=team).values_list("user__username", "role")) == [("demo", "owner")]
    assert Client().post("/accounts/login/", {"username": "demo", "password": "atelier-demo-2026"}).status_code == 302


def test_navigation_marks_only_the_current_section(alice: Any, login: Any) -> None:
    page = login(alice).get("/t/acme/datasets/").content.decode()
    nav = page.split('<nav class="mainnav"')[1].split("</nav>")[0]
    assert '<a href="/t/acme/datasets/" aria-current="page">Datasets</a>' in nav
    assert nav.count('aria-current="page"') == 1
