"""Tenant isolation sweep: an outsider gets 404 on every team route, and changes nothing.

Every Django URL pattern with a ``team_slug`` and every API operation with a ``{slug}`` is found by
walking the URL resolver and the django-ninja routers, and must have an entry in ``SWEEP`` saying how
to fill its other parameters with acme's objects (a meta-test fails on a route missing from the
table, or on a stale entry). The outsider is charlie, owner of globex: signed in for the pages, with
his personal token, and with a globex team API key, for the API.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpResponse
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from ninja.utils import normalize_path

from accounts import services
from accounts.models import (
    AuditEvent,
    Invitation,
    Membership,
    Team,
    TeamAPIKey,
    TeamAPIKeyUserObjectPermission,
)
from accounts.permissions import resolve_access
from accounts.roles import Role
from studio.api import api

API_ROOT = "/api/v1/"
PAGE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# The middleware scopes any view whose URL has a ``team_slug`` kwarg, whatever its converter.
TEAM_KWARG = re.compile(r"<(?:\w+:)?team_slug>")
TEAM_PARAM = re.compile(r"\{(?:\w+:)?slug\}")


# --- what a team route is -----------------------------------------------------------------------


def _walk(patterns: list[Any], prefix: str, namespace: str) -> Iterator[tuple[str, str]]:
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from _walk(entry.url_patterns, route, inner)
        elif isinstance(entry, URLPattern):
            yield (f"{namespace}{entry.name}" if entry.name else route), route


def page_team_routes() -> dict[str, str]:
    """URL name -> full route of every Django view mounted under a team slug."""
    return {name: route for name, route in _walk(get_resolver().url_patterns, "", "") if TEAM_KWARG.search(route)}


def api_team_operations() -> set[tuple[str, str]]:
    """(method, path) of every API operation under ``/api/v1/`` whose path names a team ``{slug}``."""
    get_resolver().url_patterns  # noqa: B018  # building the URLconf binds the ninja routers
    operations = set()
    for prefix, router in api._routers:
        for path, path_view in router.path_operations.items():
            full_path = API_ROOT + normalize_path(f"{prefix}/{path}").lstrip("/")
            if TEAM_PARAM.search(full_path):
                operations |= {(method, full_path) for op in path_view.operations for method in op.methods}
    return operations


# --- acme's objects, and how each route is filled with them -------------------------------------


@dataclass(frozen=True)
class AcmeObjects:
    """One of each thing a team route can name, all belonging to acme."""

    team: Team
    member: Membership  # bob, a member
    invitation: Invitation  # pending
    key: TeamAPIKey  # shared with bob at the "view" level


def _nothing(objects: AcmeObjects) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Probe:
    """How to fill a team route's other parameters, and the body a request sends to try a change."""

    params: Callable[[AcmeObjects], dict[str, Any]] = _nothing
    body: Callable[[AcmeObjects], dict[str, Any]] = _nothing


def _member_id(o: AcmeObjects) -> dict[str, Any]:
    return {"membership_id": o.member.pk}


def _invitation_id(o: AcmeObjects) -> dict[str, Any]:
    return {"invitation_id": o.invitation.pk}


def _key_id(o: AcmeObjects) -> dict[str, Any]:
    return {"key_id": o.key.pk}


def _username(o: AcmeObjects) -> dict[str, Any]:
    return {"username": o.member.user.get_username()}


def _key_and_username(o: AcmeObjects) -> dict[str, Any]:
    return {**_key_id(o), **_username(o)}


# Django routes by URL name; API operations by (method, path). The bodies ask for the most damaging
# change each route can make, so a missing check would show up as a changed database.
SWEEP: dict[str | tuple[str, str], Probe] = {
    "accounts:team_home": Probe(),
    "accounts:team_settings": Probe(body=lambda o: {"name": "Taken over"}),
    "accounts:audit_log": Probe(),
    "accounts:invitation_create": Probe(body=lambda o: {"role": Role.OWNER, "email": "mallory@example.com"}),
    "accounts:invitation_revoke": Probe(params=_invitation_id),
    "accounts:member_role": Probe(params=_member_id, body=lambda o: {"role": Role.VIEWER}),
    "accounts:member_remove": Probe(params=_member_id),
    "accounts:api_keys": Probe(body=lambda o: {"name": "exfiltrate", "role": Role.MEMBER}),
    "accounts:api_key_detail": Probe(params=_key_id),
    "accounts:api_key_revoke": Probe(params=_key_id),
    "accounts:api_key_share": Probe(params=_key_id, body=lambda o: {"member": o.member.pk, "level": "change"}),
    ("GET", "/api/v1/teams/{slug}/"): Probe(),
    ("GET", "/api/v1/teams/{slug}/members/"): Probe(),
    ("PATCH", "/api/v1/teams/{slug}/members/{username}"): Probe(params=_username, body=lambda o: {"role": "viewer"}),
    ("DELETE", "/api/v1/teams/{slug}/members/{username}"): Probe(params=_username),
    ("GET", "/api/v1/teams/{slug}/invitations/"): Probe(),
    ("POST", "/api/v1/teams/{slug}/invitations/"): Probe(body=lambda o: {"role": "owner", "email": ""}),
    ("DELETE", "/api/v1/teams/{slug}/invitations/{invitation_id}"): Probe(params=_invitation_id),
    ("GET", "/api/v1/teams/{slug}/keys/"): Probe(),
    ("POST", "/api/v1/teams/{slug}/keys/"): Probe(body=lambda o: {"name": "exfiltrate", "role": "member"}),
    ("DELETE", "/api/v1/teams/{slug}/keys/{key_id}"): Probe(params=_key_id),
    ("POST", "/api/v1/teams/{slug}/keys/{key_id}/shares"): Probe(
        params=_key_id, body=lambda o: {"username": o.member.user.get_username(), "level": "change"}
    ),
    ("DELETE", "/api/v1/teams/{slug}/keys/{key_id}/shares/{username}"): Probe(params=_key_and_username),
    ("GET", "/api/v1/teams/{slug}/audit-events/"): Probe(),
}

PAGE_ROUTES = sorted(name for name in SWEEP if isinstance(name, str))
API_OPERATIONS = sorted(op for op in SWEEP if isinstance(op, tuple))
PAGE_CASES = [pytest.param(name, method, id=f"{name} {method}") for name in PAGE_ROUTES for method in PAGE_METHODS]
API_CASES = [pytest.param(method, path, id=f"{method} {path}") for method, path in API_OPERATIONS]


def page_url(name: str, objects: AcmeObjects, team_slug: str = "acme") -> str:
    return reverse(name, kwargs={"team_slug": team_slug, **SWEEP[name].params(objects)})


def api_url(method: str, path: str, objects: AcmeObjects, slug: str = "acme") -> str:
    return path.format(slug=slug, **SWEEP[(method, path)].params(objects))


def request_page(client: Client, method: str, name: str, objects: AcmeObjects) -> HttpResponse:
    url, body = page_url(name, objects), SWEEP[name].body(objects)
    if method == "GET":
        return client.get(url)
    return client.generic(method, url, urlencode(body), content_type="application/x-www-form-urlencoded")


def request_api(client: Client, method: str, path: str, objects: AcmeObjects) -> HttpResponse:
    body = SWEEP[(method, path)].body(objects)
    data = json.dumps(body) if body else ""
    return client.generic(method, api_url(method, path, objects), data, content_type="application/json")


def team_state(team: Team) -> dict[str, Any]:
    """Everything a team route could change about ``team``, in a comparable form."""
    return {
        "team": Team.objects.filter(pk=team.pk).values_list("name", "slug").get(),
        "memberships": sorted(Membership.objects.filter(team=team).values_list("user__username", "role")),
        "invitations": sorted(
            Invitation.objects.for_team(team).values_list("pk", "role", "email", "revoked_at", "accepted_at")
        ),
        "keys": sorted(TeamAPIKey.objects.for_team(team).values_list("pk", "name", "role", "revoked_at")),
        "shares": sorted(
            TeamAPIKeyUserObjectPermission.objects.filter(content_object__team=team).values_list(
                "content_object_id", "user__username", "permission__codename"
            )
        ),
        "audit_events": AuditEvent.objects.for_team(team).count(),
    }


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def acme_objects(acme: Team, alice: AbstractBaseUser, bob: AbstractBaseUser) -> AcmeObjects:
    access = resolve_access(alice, acme.slug)
    invitation, _ = services.create_invitation(access=access, role=Role.MEMBER, email="dana@example.com")
    key, _ = services.create_team_api_key(access=access, name="acme deploy", role=Role.MEMBER)
    membership = Membership.objects.get(team=acme, user=bob)
    services.share_object(access=access, obj=key, member=membership, level="view")
    return AcmeObjects(team=acme, member=membership, invitation=invitation, key=key)


@pytest.fixture
def globex_key_client(globex: Team, charlie: AbstractBaseUser) -> Client:
    """An API client holding a globex team API key (the strongest role a key can have)."""
    _, plaintext = services.create_team_api_key(
        access=resolve_access(charlie, globex.slug), name="globex ci", role=Role.MEMBER
    )
    assert plaintext.startswith("atk_")
    return Client(headers={"Authorization": f"Bearer {plaintext}"})


# --- the table covers every route ---------------------------------------------------------------


def test_every_team_route_is_in_the_sweep() -> None:
    """A new team page or API operation without a SWEEP entry fails here, by name."""
    missing = sorted(set(page_team_routes()) - set(SWEEP), key=str) + sorted(api_team_operations() - set(SWEEP))
    assert not missing, f"team routes missing from SWEEP in tests/test_isolation.py: {missing}"


def test_every_sweep_entry_is_a_team_route() -> None:
    """A SWEEP entry whose route was removed or renamed fails here, so the table cannot go stale."""
    routes: set[str | tuple[str, str]] = {*page_team_routes(), *api_team_operations()}
    stale = sorted((entry for entry in SWEEP if entry not in routes), key=str)
    assert not stale, f"SWEEP entries that match no team route: {stale}"


# --- outsiders get 404 and change nothing -------------------------------------------------------


@pytest.mark.parametrize(("name", "method"), PAGE_CASES)
def test_outsider_gets_404_on_every_team_page(
    name: str, method: str, acme_objects: AcmeObjects, charlie: AbstractBaseUser, login: Callable[..., Client]
) -> None:
    before = team_state(acme_objects.team)
    response = request_page(login(charlie), method, name, acme_objects)
    assert response.status_code == 404
    assert team_state(acme_objects.team) == before


@pytest.mark.parametrize(("method", "path"), API_CASES)
def test_outsider_gets_404_on_every_team_api_operation(
    method: str, path: str, acme_objects: AcmeObjects, charlie: AbstractBaseUser, bearer: Callable[..., Client]
) -> None:
    before = team_state(acme_objects.team)
    response = request_api(bearer(charlie), method, path, acme_objects)
    assert response.status_code == 404, response.content
    assert team_state(acme_objects.team) == before


@pytest.mark.parametrize(("method", "path"), API_CASES)
def test_other_teams_api_key_gets_404_on_every_team_api_operation(
    method: str, path: str, acme_objects: AcmeObjects, globex_key_client: Client
) -> None:
    before = team_state(acme_objects.team)
    response = request_api(globex_key_client, method, path, acme_objects)
    assert response.status_code == 404, response.content
    assert team_state(acme_objects.team) == before


# --- anonymous visitors -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "method"), PAGE_CASES)
def test_anonymous_visitor_is_sent_to_login_from_every_team_page(
    name: str, method: str, acme_objects: AcmeObjects
) -> None:
    before = team_state(acme_objects.team)
    response = request_page(Client(), method, name, acme_objects)
    assert response.status_code == 302
    location = urlsplit(response["Location"])
    assert location.path == reverse("accounts:login")
    assert parse_qs(location.query)["next"] == [page_url(name, acme_objects)]
    assert team_state(acme_objects.team) == before


@pytest.mark.parametrize(("method", "path"), API_CASES)
def test_anonymous_caller_gets_401_on_every_team_api_operation(
    method: str, path: str, acme_objects: AcmeObjects
) -> None:
    before = team_state(acme_objects.team)
    response = request_api(Client(), method, path, acme_objects)
    assert response.status_code == 401, response.content
    assert team_state(acme_objects.team) == before


# --- a team's existence is not leaked -----------------------------------------------------------


def test_missing_team_and_foreign_team_pages_look_the_same(
    acme: Team, charlie: AbstractBaseUser, login: Callable[..., Client]
) -> None:
    client = login(charlie)
    foreign = client.get(reverse("accounts:team_home", kwargs={"team_slug": acme.slug}))
    missing = client.get(reverse("accounts:team_home", kwargs={"team_slug": "no-such-team"}))
    assert (foreign.status_code, foreign.content) == (missing.status_code, missing.content)
    assert foreign.status_code == 404


def test_missing_team_and_foreign_team_api_answers_look_the_same(
    acme: Team, charlie: AbstractBaseUser, bearer: Callable[..., Client]
) -> None:
    client = bearer(charlie)
    foreign = client.get(f"{API_ROOT}teams/{acme.slug}/")
    missing = client.get(f"{API_ROOT}teams/no-such-team/")
    assert (foreign.status_code, foreign.content) == (missing.status_code, missing.content)
    assert foreign.status_code == 404


def test_missing_team_and_foreign_team_look_the_same_to_a_team_api_key(acme: Team, globex_key_client: Client) -> None:
    foreign = globex_key_client.get(f"{API_ROOT}teams/{acme.slug}/")
    missing = globex_key_client.get(f"{API_ROOT}teams/no-such-team/")
    assert (foreign.status_code, foreign.content) == (missing.status_code, missing.content)
    assert foreign.status_code == 404
