"""REST endpoints for teams, members, invitations, personal tokens, team keys and the audit trail.

No ``from __future__ import annotations`` here: django-ninja reads the annotations at runtime.
"""

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from django.contrib.auth import authenticate, get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Field, Query, Router, Schema, Status
from ninja.pagination import LimitOffsetPagination, paginate
from ninja.schema import DjangoGetter
from pydantic import BeforeValidator, model_validator

from accounts import key_scopes, services
from accounts.http import client_ip
from accounts.models import AuditEvent, Invitation, Membership, PersonalAccessToken, Team, TeamAPIKey
from accounts.permissions import TeamAccess, resolve_access, resolve_key_access, teams_of, visible_objects
from accounts.roles import Perm

router = Router(tags=["accounts"])
User = get_user_model()

RoleName = Literal["owner", "admin", "member", "viewer"]

# The largest id a row can have (PostgreSQL's bigint): a larger number is refused (422 naming the field)
# instead of overflowing in the database.
MAX_ID = 2**63 - 1


def _plain_digits(value: Any) -> Any:
    """An id written in a URL must be the number itself: no sign, spaces or leading zeros ("%096" is not 6)."""
    if isinstance(value, str) and not re.fullmatch(r"[1-9][0-9]*", value):
        raise ValueError("Write the id as plain digits, without leading zeros.")
    return value


# The bounds before the validator: after it, Pydantic would print them into the schema as unknown keywords.
ObjectId = Annotated[int, Field(ge=1, le=MAX_ID), BeforeValidator(_plain_digits)]


def _iso_date(value: Any) -> Any:
    """A date parameter must be written YYYY-MM-DD (Pydantic would also read ``0`` as 1970-01-01)."""
    if isinstance(value, str) and not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise ValueError("Write the date as YYYY-MM-DD.")
    return value


IsoDate = Annotated[date, BeforeValidator(_iso_date)]


class Pagination(LimitOffsetPagination):
    """Ninja's limit/offset pagination with both numbers bounded, so an overflowing one gets 422, not a 500."""

    class Input(Schema):
        limit: int = Field(100, ge=1, le=1000)
        offset: int = Field(0, ge=0, le=MAX_ID)


def team_access(request: HttpRequest, slug: str) -> TeamAccess:
    """The caller's access to team ``slug`` (404 for non-members, as in the site)."""
    if "\x00" in slug:  # no slug has one, and PostgreSQL cannot compare text holding it
        raise Http404("No such team.")
    if isinstance(request.auth, TeamAPIKey):  # type: ignore[attr-defined]
        return resolve_key_access(request.auth, slug)  # type: ignore[attr-defined]
    return resolve_access(request.auth, slug)  # type: ignore[attr-defined]


def acting_user(request: HttpRequest) -> Any:
    """The signed-in person; team API keys cannot act on personal resources."""
    if isinstance(request.auth, TeamAPIKey):  # type: ignore[attr-defined]
        raise PermissionDenied("Team API keys act only inside their team; use a personal token for this.")
    return request.auth  # type: ignore[attr-defined]


# --- schemas ------------------------------------------------------------------------------------


class Error(Schema):
    detail: str
    errors: dict[str, list[str]] | None = None


class RequestBody(Schema):
    """A JSON request body: an object, never a bare number or string.

    Ninja's ``Schema`` reads fields as attributes of whatever it is given, so a scalar would pass as an
    object whose fields all take their defaults.
    """

    @model_validator(mode="before")
    @classmethod
    def _is_an_object(cls, value: Any) -> Any:
        if not isinstance(value._obj if isinstance(value, DjangoGetter) else value, dict):
            raise ValueError("Send a JSON object.")
        return value


class InvalidRequest(Schema):
    """Django Ninja's answer when a parameter or the body does not match the schema (422)."""

    detail: list[dict[str, Any]] = Field(description="One entry per problem: ``loc`` names the field, ``msg`` the fix.")


class TokenRequest(RequestBody):
    username: str = Field(max_length=150)
    password: str = Field(max_length=1024)
    name: str = Field("CLI", max_length=80, description="Where the token will be used.")


class TokenOut(Schema):
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="The secret: shown this once, stored only as a hash.")


class TokenIn(RequestBody):
    name: str = Field(max_length=80)


class TeamIn(RequestBody):
    name: str = Field(max_length=80)
    slug: str = Field(max_length=40, description="Lowercase letters, digits and hyphens.")


class TeamOut(Schema):
    name: str
    slug: str
    created_at: datetime
    role: str | None = Field(None, description="Your role in this team.")


class TeamDetailOut(TeamOut):
    acceptable_use_policy: str = Field(
        description="The acceptable-use policy (Markdown) a key's creator accepts; empty: none."
    )
    acceptable_use_revision: int = Field(description="Goes up by one each time the policy's text changes.")


class MemberOut(Schema):
    username: str
    email: str
    role: str
    joined_at: datetime


class RoleIn(RequestBody):
    role: RoleName


class InvitationIn(RequestBody):
    role: RoleName = "member"
    email: str = Field("", max_length=254)


class InvitationOut(Schema):
    id: int
    role: str
    email: str
    status: str
    created_at: datetime
    expires_at: datetime
    created_by: str | None


class InvitationCreated(InvitationOut):
    link: str = Field(description="The single-use link: shown this once.")


class AcceptIn(RequestBody):
    token: str = Field(max_length=100)


class KeyIn(RequestBody):
    name: str = Field(max_length=80)
    role: Literal["member", "viewer"] = "viewer"
    requests_per_minute: int | None = Field(
        None, description="Requests per minute on the OpenAI-compatible API (/v1); empty: the studio's default."
    )
    max_tokens: int | None = Field(None, description="The most new tokens one /v1 request may ask for; empty: default.")
    deployments: list[ObjectId] = Field(default_factory=list, description="Ids of the deployments it may call at /v1.")
    accept_acceptable_use: bool = Field(
        False,
        description="Accept the team's current acceptable-use policy (GET teams/{slug}/); required when it has one.",
    )


class KeyOut(Schema):
    id: int
    name: str
    role: str
    prefix: str
    requests_per_minute: int
    max_tokens: int
    deployments: list[str] = Field(description="Names of the deployments it may call at /v1.")
    acceptable_use_revision: int | None = Field(
        description="The revision of the team's acceptable-use policy accepted for it (null: none was accepted)."
    )
    acceptable_use_current: bool = Field(
        description="Whether that is the policy as it reads now (true when the team has none)."
    )
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The secret: shown this once, stored only as a hash.")


class ShareIn(RequestBody):
    username: str = Field(max_length=150)
    level: Literal["view", "change"]


class AuditEventOut(Schema):
    id: int
    created_at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str
    target_label: str
    ip_address: str | None
    details: dict[str, Any]

    @staticmethod
    def resolve_actor(event: AuditEvent) -> str:
        return event.actor_label


class AuditFilters(Schema):
    action: str | None = Field(None, max_length=60)
    actor: str | None = Field(None, max_length=150)
    since: IsoDate | None = None
    until: IsoDate | None = None


def _token_out(token: PersonalAccessToken | TeamAPIKey) -> dict[str, Any]:
    out = {
        "id": token.pk,
        "name": token.name,
        "prefix": token.display_prefix,
        "created_at": token.created_at,
        "last_used_at": token.last_used_at,
        "revoked_at": token.revoked_at,
    }
    if isinstance(token, TeamAPIKey):
        out["role"] = token.role
        out["requests_per_minute"] = token.requests_per_minute
        out["max_tokens"] = token.max_tokens
        out["deployments"] = [deployment.name for deployment in key_scopes.of_key(token)]
        out["acceptable_use_revision"] = token.acceptable_use_revision
        out["acceptable_use_current"] = token.accepted_current_acceptable_use
    return out


def _member(access: TeamAccess, username: str) -> Membership:
    if "\x00" in username:  # no username has one, and PostgreSQL cannot compare text holding it
        raise Http404("No such member.")
    return get_object_or_404(Membership.objects.select_related("user"), team=access.team, user__username=username)


def _member_out(membership: Membership) -> dict[str, Any]:
    return {
        "username": membership.user.get_username(),
        "email": membership.user.email,
        "role": membership.role,
        "joined_at": membership.created_at,
    }


def _invitation_out(invitation: Invitation) -> dict[str, Any]:
    return {
        "id": invitation.pk,
        "role": invitation.role,
        "email": invitation.email,
        "status": invitation.status,
        "created_at": invitation.created_at,
        "expires_at": invitation.expires_at,
        "created_by": invitation.created_by.get_username() if invitation.created_by else None,
    }


# --- auth and personal tokens -------------------------------------------------------------------


@router.post("auth/token", auth=None, response={201: TokenCreated, 401: Error, 429: Error})
def obtain_token(request: HttpRequest, body: TokenRequest) -> Status:
    """Exchange a username and password for a new personal token (for the CLI and scripts)."""
    user = authenticate(request, username=body.username, password=body.password)
    if user is None:
        return Status(401, {"detail": "Wrong username or password."})
    token, plaintext = services.create_personal_token(user=user, name=body.name, ip=client_ip(request))
    return Status(201, {**_token_out(token), "token": plaintext})


@router.get("me", response=dict[str, Any])
def me(request: HttpRequest) -> dict[str, Any]:
    user = acting_user(request)
    return {"username": user.get_username(), "email": user.email}


@router.get("tokens/", response=list[TokenOut])
def list_tokens(request: HttpRequest) -> list[dict[str, Any]]:
    return [_token_out(t) for t in PersonalAccessToken.objects.filter(user=acting_user(request))]


@router.post("tokens/", response={201: TokenCreated, 400: Error})
def create_token(request: HttpRequest, body: TokenIn) -> Status:
    token, plaintext = services.create_personal_token(user=acting_user(request), name=body.name, ip=client_ip(request))
    return Status(201, {**_token_out(token), "token": plaintext})


@router.delete("tokens/{token_id}", response={204: None, 404: Error})
def revoke_token(request: HttpRequest, token_id: ObjectId) -> Status:
    user = acting_user(request)
    token = get_object_or_404(PersonalAccessToken, pk=token_id, user=user)
    services.revoke_personal_token(user=user, token=token, ip=client_ip(request))
    return Status(204, None)


# --- teams and members --------------------------------------------------------------------------


@router.get("teams/", response=list[TeamOut])
def list_teams(request: HttpRequest) -> list[dict[str, Any]]:
    if isinstance(request.auth, TeamAPIKey):  # type: ignore[attr-defined]
        key = request.auth  # type: ignore[attr-defined]
        return [{"name": key.team.name, "slug": key.team.slug, "created_at": key.team.created_at, "role": key.role}]
    user = request.auth  # type: ignore[attr-defined]
    roles = dict(Membership.objects.filter(user=user).values_list("team_id", "role"))
    return [{**TeamOut.from_orm(team).dict(), "role": roles[team.pk]} for team in teams_of(user)]


@router.post("teams/", response={201: TeamOut, 400: Error})
def create_team(request: HttpRequest, body: TeamIn) -> Status:
    team = services.create_team(actor=acting_user(request), name=body.name, slug=body.slug, ip=client_ip(request))
    return Status(201, {**TeamOut.from_orm(team).dict(), "role": "owner"})


@router.get("teams/{slug}/", response={200: TeamDetailOut, 404: Error})
def team_detail(request: HttpRequest, slug: str) -> dict[str, Any]:
    access = team_access(request, slug)
    team: Team = access.team
    return {**TeamDetailOut.from_orm(team).dict(), "role": access.role}


@router.get("teams/{slug}/members/", response={200: list[MemberOut], 404: Error})
def list_members(request: HttpRequest, slug: str) -> list[dict[str, Any]]:
    access = team_access(request, slug)
    access.require(Perm.VIEW_TEAM)
    memberships = Membership.objects.filter(team=access.team).select_related("user").order_by("user__username")
    return [_member_out(m) for m in memberships]


@router.patch("teams/{slug}/members/{username}", response={200: MemberOut, 400: Error, 403: Error, 404: Error})
def change_member_role(request: HttpRequest, slug: str, username: str, body: RoleIn) -> dict[str, Any]:
    access = team_access(request, slug)
    access.require(Perm.CHANGE_ROLES)
    membership = services.change_role(
        access=access, membership=_member(access, username), role=body.role, ip=client_ip(request)
    )
    return _member_out(membership)


@router.delete("teams/{slug}/members/{username}", response={204: None, 400: Error, 403: Error, 404: Error})
def remove_member(request: HttpRequest, slug: str, username: str) -> Status:
    """Remove a member; a member may remove themselves (leave the team)."""
    access = team_access(request, slug)
    services.remove_member(access=access, membership=_member(access, username), ip=client_ip(request))
    return Status(204, None)


# --- invitations --------------------------------------------------------------------------------


@router.get("teams/{slug}/invitations/", response={200: list[InvitationOut], 403: Error, 404: Error})
def list_invitations(request: HttpRequest, slug: str) -> list[dict[str, Any]]:
    access = team_access(request, slug)
    access.require(Perm.INVITE_MEMBERS)
    return [_invitation_out(i) for i in Invitation.objects.for_team(access.team).select_related("created_by")]


@router.post("teams/{slug}/invitations/", response={201: InvitationCreated, 400: Error, 403: Error, 404: Error})
def create_invitation(request: HttpRequest, slug: str, body: InvitationIn) -> Status:
    access = team_access(request, slug)
    access.require(Perm.INVITE_MEMBERS)
    invitation, token = services.create_invitation(
        access=access, role=body.role, email=body.email, ip=client_ip(request)
    )
    link = request.build_absolute_uri(reverse("accounts:invitation_accept", args=[token]))
    return Status(201, {**_invitation_out(invitation), "link": link})


@router.delete("teams/{slug}/invitations/{invitation_id}", response={204: None, 400: Error, 403: Error, 404: Error})
def revoke_invitation(request: HttpRequest, slug: str, invitation_id: ObjectId) -> Status:
    access = team_access(request, slug)
    access.require(Perm.INVITE_MEMBERS)
    invitation = get_object_or_404(Invitation.objects.for_team(access.team), pk=invitation_id)
    services.revoke_invitation(access=access, invitation=invitation, ip=client_ip(request))
    return Status(204, None)


@router.post("invitations/accept", response={201: TeamOut, 400: Error})
def accept_invitation(request: HttpRequest, body: AcceptIn) -> Status:
    """Accept an invitation with the token from its link (the part after /invite/)."""
    membership = services.accept_invitation(user=acting_user(request), token=body.token, ip=client_ip(request))
    return Status(201, {**TeamOut.from_orm(membership.team).dict(), "role": membership.role})


# --- team API keys ------------------------------------------------------------------------------


@router.get("teams/{slug}/keys/", response={200: list[KeyOut], 404: Error})
def list_keys(request: HttpRequest, slug: str) -> list[dict[str, Any]]:
    access = team_access(request, slug)
    keys = TeamAPIKey.objects.for_team(access.team).select_related("team")
    return [_token_out(k) for k in visible_objects(access, keys, "view")]


@router.post("teams/{slug}/keys/", response={201: KeyCreated, 400: Error, 403: Error, 404: Error})
def create_key(request: HttpRequest, slug: str, body: KeyIn) -> Status:
    access = team_access(request, slug)
    access.require(Perm.MANAGE_API_KEYS)
    chosen = list(key_scopes.choices(access).filter(pk__in=body.deployments))
    missing = sorted(set(body.deployments) - {deployment.pk for deployment in chosen})
    if missing:
        raise ValidationError(
            {"deployments": [f"no deployment {', '.join(map(str, missing))} in this team (GET deployments)"]}
        )
    key, plaintext = services.create_team_api_key(
        access=access, name=body.name, role=body.role, requests_per_minute=body.requests_per_minute,
        max_tokens=body.max_tokens, deployments=chosen, accept_acceptable_use=body.accept_acceptable_use,
        ip=client_ip(request),
    )  # fmt: skip
    return Status(201, {**_token_out(key), "key": plaintext})


def _visible_key(access: TeamAccess, key_id: int) -> TeamAPIKey:
    key = visible_objects(access, TeamAPIKey.objects.for_team(access.team), "view").filter(pk=key_id).first()
    if key is None:
        raise Http404("No such key.")
    return key


@router.delete("teams/{slug}/keys/{key_id}", response={204: None, 403: Error, 404: Error})
def revoke_key(request: HttpRequest, slug: str, key_id: ObjectId) -> Status:
    access = team_access(request, slug)
    services.revoke_team_api_key(access=access, key=_visible_key(access, key_id), ip=client_ip(request))
    return Status(204, None)


@router.post("teams/{slug}/keys/{key_id}/shares", response={204: None, 400: Error, 403: Error, 404: Error})
def share_key(request: HttpRequest, slug: str, key_id: ObjectId, body: ShareIn) -> Status:
    """Give a member view or change access to one key (guardian object permission)."""
    access = team_access(request, slug)
    access.require(Perm.SHARE_OBJECTS)
    key = _visible_key(access, key_id)
    services.share_object(
        access=access, obj=key, member=_member(access, body.username), level=body.level, ip=client_ip(request)
    )
    return Status(204, None)


@router.delete("teams/{slug}/keys/{key_id}/shares/{username}", response={204: None, 403: Error, 404: Error})
def unshare_key(request: HttpRequest, slug: str, key_id: ObjectId, username: str) -> Status:
    access = team_access(request, slug)
    access.require(Perm.SHARE_OBJECTS)
    key = _visible_key(access, key_id)
    services.unshare_object(access=access, obj=key, member=_member(access, username), ip=client_ip(request))
    return Status(204, None)


# --- audit trail --------------------------------------------------------------------------------


@router.get("teams/{slug}/audit-events/", response={200: list[AuditEventOut], 403: Error, 404: Error})
@paginate(Pagination)
def list_audit_events(request: HttpRequest, slug: str, filters: Query[AuditFilters]) -> QuerySet[AuditEvent]:
    """The team's audit trail, newest first (owners and admins)."""
    access = team_access(request, slug)
    access.require(Perm.VIEW_AUDIT)
    events = AuditEvent.objects.for_team(access.team)
    if filters.action:
        events = events.filter(action__icontains=filters.action)
    if filters.actor:
        events = events.filter(actor_label__icontains=filters.actor)
    if filters.since:
        events = events.filter(created_at__date__gte=filters.since)
    if filters.until:
        events = events.filter(created_at__date__lte=filters.until)
    return events
