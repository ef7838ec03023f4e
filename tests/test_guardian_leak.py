"""The django-guardian global-permission trap, and the tenant-scoped manager that backs it up.

``get_objects_for_user`` honours model-level permissions by default, so one ``view_teamapikey`` grant
would show a user every team's keys. Here bob, a member of acme, holds the model-level
``view_teamapikey`` and ``change_teamapikey`` permissions and must still see (and touch) only the
keys shared with him, in ``visible_objects``, the API and the pages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from accounts import services
from accounts.models import Membership, Team, TeamAPIKey
from accounts.permissions import TeamAccess, resolve_access, visible_objects
from accounts.tenancy import TeamScopeError

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse as Response

User = get_user_model()
SURFACES = pytest.mark.parametrize("surface", ["page", "api"])


@pytest.fixture
def owner_access(acme: Team, alice: Any) -> TeamAccess:
    return resolve_access(alice, acme.slug)


@pytest.fixture
def bob_membership(acme: Team, bob: Any) -> Membership:
    return Membership.objects.select_related("user").get(team=acme, user=bob)


@pytest.fixture
def bob_with_model_perms(bob: Any) -> Any:
    """bob, holding the model-level view and change permissions on team API keys (never do this)."""
    bob.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="accounts", codename__in=["view_teamapikey", "change_teamapikey"]
        )
    )
    fresh = User.objects.get(pk=bob.pk)  # no cached permissions
    assert fresh.has_perm("accounts.view_teamapikey") and fresh.has_perm("accounts.change_teamapikey")
    return fresh


@pytest.fixture
def acme_key(owner_access: TeamAccess) -> TeamAPIKey:
    return services.create_team_api_key(access=owner_access, name="acme nightly eval")[0]


@pytest.fixture
def other_acme_key(owner_access: TeamAccess) -> TeamAPIKey:
    return services.create_team_api_key(access=owner_access, name="acme release bot")[0]


@pytest.fixture
def globex_key(globex: Team, charlie: Any) -> TeamAPIKey:
    return services.create_team_api_key(access=resolve_access(charlie, globex.slug), name="globex secret pipeline")[0]


@pytest.fixture
def all_keys(acme_key: TeamAPIKey, other_acme_key: TeamAPIKey, globex_key: TeamAPIKey) -> list[TeamAPIKey]:
    return [acme_key, other_acme_key, globex_key]


def visible_to(user: Any, team: Team) -> list[TeamAPIKey]:
    access = resolve_access(user, team.slug)
    return list(visible_objects(access, TeamAPIKey.objects.for_team(team), "view"))


def names_in_api(client: Client) -> list[str]:
    response = client.get("/api/v1/teams/acme/keys/")
    assert response.status_code == 200
    return [key["name"] for key in response.json()]


def names_in_page(client: Client) -> list[str]:
    response = client.get(reverse("accounts:api_keys", args=["acme"]))
    assert response.status_code == 200
    return [key.name for key in response.context["keys"]]


def listed_names(surface: str, user: Any, login: Callable[..., Client], bearer: Callable[..., Client]) -> list[str]:
    return names_in_page(login(user)) if surface == "page" else names_in_api(bearer(user))


def share(owner_access: TeamAccess, key: TeamAPIKey, membership: Membership, level: str) -> None:
    services.share_object(access=owner_access, obj=key, member=membership, level=level)


# --- a model-level grant widens nothing -----------------------------------------------------------


@pytest.mark.usefixtures("all_keys")
def test_model_level_permission_shows_no_key_of_another_team(acme: Team, bob_with_model_perms: Any) -> None:
    visible = visible_to(bob_with_model_perms, acme)
    assert [key for key in visible if key.team_id != acme.pk] == []


@pytest.mark.usefixtures("all_keys")
def test_model_level_permission_shows_no_unshared_key_of_own_team(acme: Team, bob_with_model_perms: Any) -> None:
    assert visible_to(bob_with_model_perms, acme) == []


@SURFACES
@pytest.mark.usefixtures("all_keys")
def test_key_list_ignores_model_level_permission(
    surface: str, bob_with_model_perms: Any, login: Callable[..., Client], bearer: Callable[..., Client]
) -> None:
    assert listed_names(surface, bob_with_model_perms, login, bearer) == []


@SURFACES
@pytest.mark.usefixtures("all_keys")
def test_shared_key_is_the_only_one_listed(
    surface: str,
    acme: Team,
    acme_key: TeamAPIKey,
    owner_access: TeamAccess,
    bob_membership: Membership,
    bob_with_model_perms: Any,
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    share(owner_access, acme_key, bob_membership, "view")
    assert visible_to(bob_with_model_perms, acme) == [acme_key]
    assert listed_names(surface, bob_with_model_perms, login, bearer) == [acme_key.name]


@SURFACES
@pytest.mark.usefixtures("all_keys")
def test_unshared_key_disappears_from_the_list(
    surface: str,
    acme: Team,
    acme_key: TeamAPIKey,
    owner_access: TeamAccess,
    bob_membership: Membership,
    bob_with_model_perms: Any,
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    share(owner_access, acme_key, bob_membership, "view")
    services.unshare_object(access=owner_access, obj=acme_key, member=bob_membership)
    assert visible_to(bob_with_model_perms, acme) == []
    assert listed_names(surface, bob_with_model_perms, login, bearer) == []


def revoke(surface: str, client: Client, team_slug: str, key: TeamAPIKey) -> Response:
    if surface == "page":
        return client.post(reverse("accounts:api_key_revoke", args=[team_slug, key.pk]))
    return client.delete(f"/api/v1/teams/{team_slug}/keys/{key.pk}")


def is_active(key: TeamAPIKey) -> bool:
    return TeamAPIKey.objects.unscoped().get(pk=key.pk).is_active


@SURFACES
def test_model_level_permission_cannot_revoke_an_unshared_key(
    surface: str,
    acme_key: TeamAPIKey,
    bob_with_model_perms: Any,
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    client = login(bob_with_model_perms) if surface == "page" else bearer(bob_with_model_perms)
    assert revoke(surface, client, "acme", acme_key).status_code == 404
    assert is_active(acme_key)


@SURFACES
def test_model_level_permission_cannot_reach_another_teams_key_through_own_team(
    surface: str,
    globex_key: TeamAPIKey,
    bob_with_model_perms: Any,
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    client = login(bob_with_model_perms) if surface == "page" else bearer(bob_with_model_perms)
    assert revoke(surface, client, "acme", globex_key).status_code == 404
    assert is_active(globex_key)


def test_model_level_permission_does_not_open_an_unshared_key_page(
    acme_key: TeamAPIKey, bob_with_model_perms: Any, login: Callable[..., Client]
) -> None:
    response = login(bob_with_model_perms).get(reverse("accounts:api_key_detail", args=["acme", acme_key.pk]))
    assert response.status_code == 404


# --- object shares: "change" may revoke, "view" may not -------------------------------------------


@SURFACES
def test_member_with_change_share_can_revoke_the_key(
    surface: str,
    acme_key: TeamAPIKey,
    owner_access: TeamAccess,
    bob_membership: Membership,
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    share(owner_access, acme_key, bob_membership, "change")
    client = login(bob_membership.user) if surface == "page" else bearer(bob_membership.user)
    response = revoke(surface, client, "acme", acme_key)
    assert response.status_code < 400
    assert not is_active(acme_key)


@SURFACES
def test_member_with_view_share_gets_403_revoking_the_key(
    surface: str,
    acme_key: TeamAPIKey,
    owner_access: TeamAccess,
    bob_membership: Membership,
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    share(owner_access, acme_key, bob_membership, "view")
    client = login(bob_membership.user) if surface == "page" else bearer(bob_membership.user)
    response = revoke(surface, client, "acme", acme_key)
    assert response.status_code == 403
    assert is_active(acme_key)


@SURFACES
def test_model_level_change_permission_does_not_upgrade_a_view_share(
    surface: str,
    acme_key: TeamAPIKey,
    owner_access: TeamAccess,
    bob_membership: Membership,
    bob_with_model_perms: Any,
    login: Callable[..., Client],
    bearer: Callable[..., Client],
) -> None:
    share(owner_access, acme_key, bob_membership, "view")
    client = login(bob_with_model_perms) if surface == "page" else bearer(bob_with_model_perms)
    assert revoke(surface, client, "acme", acme_key).status_code == 403
    assert is_active(acme_key)


# --- the tenant-scoped manager refuses to run without a team ---------------------------------------

UNSCOPED_READS: dict[str, Callable[[], Any]] = {
    "all": lambda: list(TeamAPIKey.objects.all()),
    "count": lambda: TeamAPIKey.objects.count(),
    "filter": lambda: list(TeamAPIKey.objects.filter(name__startswith="globex")),
    "get": lambda: TeamAPIKey.objects.get(name="globex secret pipeline"),
    "first": lambda: TeamAPIKey.objects.first(),
    "exists": lambda: TeamAPIKey.objects.exists(),
    "values_list": lambda: list(TeamAPIKey.objects.values_list("name", flat=True)),
    "index": lambda: TeamAPIKey.objects.order_by("pk")[0],
    "iterator": lambda: list(TeamAPIKey.objects.iterator()),
    "in_bulk": lambda: TeamAPIKey.objects.in_bulk(),
    "update": lambda: TeamAPIKey.objects.update(name="renamed"),
    "delete": lambda: TeamAPIKey.objects.filter(name__startswith="globex").delete(),
}


@pytest.mark.parametrize("name", sorted(UNSCOPED_READS))
@pytest.mark.usefixtures("all_keys")
def test_team_owned_query_without_a_team_raises(name: str) -> None:
    with pytest.raises(TeamScopeError):
        UNSCOPED_READS[name]()


@pytest.mark.usefixtures("all_keys")
def test_scoped_query_returns_only_the_teams_rows(acme: Team) -> None:
    names = sorted(TeamAPIKey.objects.for_team(acme).values_list("name", flat=True))
    assert names == ["acme nightly eval", "acme release bot"]


COMBINED_WITH_UNSCOPED: dict[str, Callable[[Team], Any]] = {
    "or": lambda team: list(TeamAPIKey.objects.for_team(team) | TeamAPIKey.objects.filter(name__startswith="globex")),
    "union": lambda team: list(TeamAPIKey.objects.for_team(team).union(TeamAPIKey.objects.all())),
}


@pytest.mark.parametrize("name", sorted(COMBINED_WITH_UNSCOPED))
@pytest.mark.usefixtures("all_keys")
def test_combining_a_scoped_query_with_an_unscoped_one_raises(name: str, acme: Team) -> None:
    """A scoped query must not carry an unscoped one (every team's rows) past the check."""
    with pytest.raises(TeamScopeError):
        COMBINED_WITH_UNSCOPED[name](acme)


def test_sharing_panel_explains_when_there_is_nobody_to_share_with(alice: Any, acme: Team, login: Any) -> None:
    key, _ = services.create_team_api_key(access=resolve_access(alice, "acme"), name="solo")
    page = login(alice).get(f"/t/acme/keys/{key.pk}/").content.decode()
    assert "everyone already has access" in page
    assert 'name="member"' not in page
