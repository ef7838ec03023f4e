"""What the accounts app can do: teams, members, invitations, tokens, keys and sharing.

Each service is a plain function taking keyword arguments, running in one transaction and writing
exactly one audit event for a privileged action. Bad input raises ``ValidationError`` keyed by the
field to fix; views and the API turn that into an inline form error or a JSON 400.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Model
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm
from guardian.utils import get_user_obj_perms_model

from accounts import audit, plain_sql
from accounts.models import (
    RESERVED_SLUGS,
    SLUG_VALIDATOR,
    Invitation,
    Membership,
    PersonalAccessToken,
    Team,
    TeamAPIKey,
    hash_secret,
    secret_matches,
)
from accounts.permissions import TeamAccess, require_object_action
from accounts.roles import Perm, Role, can_assign

if TYPE_CHECKING:
    from serving_app.models import Deployment

User = get_user_model()

# How often a token's "last used" time is written: once a minute is precise enough and keeps every
# API call from being a database write.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# The highest limits a team API key can be given on the OpenAI-compatible API.
MAX_KEY_REQUESTS_PER_MINUTE = 10_000
MAX_KEY_MAX_TOKENS = 32_768


# --- teams --------------------------------------------------------------------------------------


def create_team(*, actor: Any, name: str, slug: str, ip: str | None = None) -> Team:
    """Create a team with ``actor`` as its first owner."""
    name, slug = name.strip(), slug.strip().lower()
    if not name:
        raise ValidationError({"name": "Give the team a name."})
    SLUG_VALIDATOR(slug)
    if slug in RESERVED_SLUGS:
        raise ValidationError({"slug": f"“{slug}” is reserved by the studio; pick another."})
    try:
        with transaction.atomic():
            team = Team.objects.create(name=name, slug=slug)
            Membership.objects.create(team=team, user=actor, role=Role.OWNER)
            audit.record("team.created", actor=actor, team=team, target=team, ip=ip, name=name, slug=slug)
    except IntegrityError as error:
        raise ValidationError({"slug": f"The address “{slug}” is taken; pick another."}) from error
    return team


def rename_team(*, access: TeamAccess, name: str, ip: str | None = None) -> Team:
    access.require(Perm.CHANGE_TEAM)
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the team a name."})
    with transaction.atomic():
        team = Team.objects.select_for_update().get(pk=access.team.pk)
        old = team.name
        team.name = name
        team.save(update_fields=["name"])
        audit.record("team.renamed", access=access, target=team, ip=ip, old=old, new=name)
    return team


def set_training_price(
    *, access: TeamAccess, gpu_hour_price: Decimal | None, currency: str, ip: str | None = None
) -> Team:
    """Set the price per GPU-hour the cost estimate uses (empty: no cost shown)."""
    access.require(Perm.CHANGE_TEAM)
    with transaction.atomic():
        team = Team.objects.select_for_update().get(pk=access.team.pk)
        if team.gpu_hour_price == gpu_hour_price and team.currency == currency:
            return team
        old = f"{team.gpu_hour_price} {team.currency}"
        team.gpu_hour_price, team.currency = gpu_hour_price, currency
        team.save(update_fields=["gpu_hour_price", "currency"])
        audit.record(
            "team.price_changed", access=access, target=team, ip=ip, old=old, new=f"{gpu_hour_price} {currency}"
        )
    return team


def set_prompt_retention(*, access: TeamAccess, days: int | None, ip: str | None = None) -> Team:
    """Keep playground and arena prompts for ``days`` (None: never store them, the default)."""
    access.require(Perm.CHANGE_TEAM)
    with transaction.atomic():
        team = Team.objects.select_for_update().get(pk=access.team.pk)
        if team.prompt_retention_days == days:
            return team
        old = team.prompt_retention_days
        team.prompt_retention_days = days
        team.save(update_fields=["prompt_retention_days"])
        audit.record("team.prompt_retention_changed", access=access, target=team, ip=ip, old=old, new=days)
    return team


# The longest acceptable-use policy a team may write (Team.acceptable_use_policy).
MAX_ACCEPTABLE_USE_CHARS = 20_000


def set_acceptable_use_policy(*, access: TeamAccess, text: str, ip: str | None = None) -> Team:
    """Replace the team's acceptable-use policy (Markdown; empty: none). Owners and admins.

    A changed text is a new revision: keys created from then on accept it, existing keys keep the revision
    they accepted (their page says it is an older one). An unchanged text changes nothing.
    """
    access.require(Perm.CHANGE_TEAM)
    text = text.replace("\r\n", "\n").strip()
    if len(text) > MAX_ACCEPTABLE_USE_CHARS:
        raise ValidationError(
            {"acceptable_use_policy": f"Use at most {MAX_ACCEPTABLE_USE_CHARS:,} characters (this is {len(text):,})."}
        )
    with transaction.atomic():
        team = Team.objects.select_for_update().get(pk=access.team.pk)
        if team.acceptable_use_policy == text:
            return team
        team.acceptable_use_policy = text
        team.acceptable_use_revision += 1
        team.acceptable_use_updated_at = timezone.now()
        team.save(update_fields=["acceptable_use_policy", "acceptable_use_revision", "acceptable_use_updated_at"])
        audit.record(
            "team.acceptable_use_changed", access=access, target=team, ip=ip, revision=team.acceptable_use_revision,
            sha256=team.acceptable_use_sha256 if text else "", removed=not text,
        )  # fmt: skip
    access.team.acceptable_use_policy = team.acceptable_use_policy
    access.team.acceptable_use_revision = team.acceptable_use_revision
    access.team.acceptable_use_updated_at = team.acceptable_use_updated_at
    return team


# --- members ------------------------------------------------------------------------------------


def _locked_owner_count(team: Team) -> int:
    """How many owners the team has, locking their rows until the transaction ends.

    Locking every owner (not only the membership being changed) serializes two owners demoting
    each other at the same moment, so a team can never end up without an owner.
    """
    return len(Membership.objects.select_for_update().filter(team=team, role=Role.OWNER).values_list("pk", flat=True))


def change_role(*, access: TeamAccess, membership: Membership, role: str, ip: str | None = None) -> Membership:
    """Give ``membership`` a new role. Only owners hand out or take away "owner"; a team keeps one owner."""
    access.require(Perm.CHANGE_ROLES)
    if role not in Role.values:
        raise ValidationError({"role": f"“{role}” is not a role; choose one of {', '.join(Role.values)}."})
    if membership.team_id != access.team.pk:
        raise ValidationError({"member": "That person is not a member of this team."})
    if not (can_assign(access.role, membership.role) and can_assign(access.role, role)):
        raise PermissionDenied("Only an owner can grant or take away the owner role.")
    with transaction.atomic():
        membership = Membership.objects.select_for_update().get(pk=membership.pk)
        old = membership.role
        if old == role:
            return membership
        if old == Role.OWNER and _locked_owner_count(access.team) == 1:
            raise ValidationError(
                {"role": "This is the team's last owner: make someone else an owner first, then change this role."}
            )
        membership.role = role
        membership.save(update_fields=["role"])
        audit.record("member.role_changed", access=access, target=membership.user, ip=ip, old_role=old, new_role=role)
    return membership


def remove_member(*, access: TeamAccess, membership: Membership, ip: str | None = None) -> None:
    """Remove a member (or, when it is the actor's own membership, leave the team)."""
    leaving = access.user is not None and membership.user_id == access.user.pk
    if not leaving:
        access.require(Perm.REMOVE_MEMBERS)
        if not can_assign(access.role, membership.role):
            raise PermissionDenied("Only an owner can remove an owner.")
    if membership.team_id != access.team.pk:
        raise ValidationError({"member": "That person is not a member of this team."})
    with transaction.atomic():
        membership = Membership.objects.select_for_update().get(pk=membership.pk)
        if membership.role == Role.OWNER and _locked_owner_count(access.team) == 1:
            raise ValidationError(
                {"member": "This is the team's last owner: make someone else an owner before leaving."}
            )
        user = membership.user
        membership.delete()
        audit.record(
            "member.left" if leaving else "member.removed", access=access, target=user, ip=ip, role=membership.role
        )


# --- invitations --------------------------------------------------------------------------------


def create_invitation(
    *, access: TeamAccess, role: str, email: str = "", ip: str | None = None
) -> tuple[Invitation, str]:
    """A single-use link (returned once, stored hashed) that expires after INVITATION_TTL_HOURS."""
    access.require(Perm.INVITE_MEMBERS)
    if role not in Role.values:
        raise ValidationError({"role": f"“{role}” is not a role; choose one of {', '.join(Role.values)}."})
    if not can_assign(access.role, role):
        raise ValidationError({"role": "Only an owner can invite another owner."})
    token = Invitation.generate_token()
    with transaction.atomic():
        invitation = Invitation.objects.create(
            team=access.team,
            role=role,
            email=email.strip(),
            token_hash=hash_secret(token),
            created_by=access.user,
            expires_at=timezone.now() + timedelta(hours=settings.INVITATION_TTL_HOURS),
        )
        details: dict[str, Any] = {"role": role, **({"email": invitation.email} if invitation.email else {})}
        audit.record("invitation.created", access=access, target=invitation, ip=ip, **details)
    return invitation, token


def revoke_invitation(*, access: TeamAccess, invitation: Invitation, ip: str | None = None) -> None:
    access.require(Perm.INVITE_MEMBERS)
    with transaction.atomic():
        invitation = Invitation.objects.for_team(access.team).select_for_update().get(pk=invitation.pk)
        if invitation.status != "pending":
            raise ValidationError({"invitation": f"This invitation is already {invitation.status}."})
        invitation.revoked_at = timezone.now()
        invitation.save(update_fields=["revoked_at"])
        audit.record("invitation.revoked", access=access, target=invitation, ip=ip)


def find_invitation(token: str) -> Invitation | None:
    """The invitation a link's token belongs to (any state), or None for an unknown token."""
    if not token or len(token) > 100:
        return None
    return Invitation.objects.unscoped().select_related("team").filter(token_hash=hash_secret(token)).first()


def accept_invitation(*, user: Any, token: str, ip: str | None = None) -> Membership:
    """Join the invitation's team with its role; the link then stops working."""
    with transaction.atomic():
        found = find_invitation(token)
        if found is None:
            raise ValidationError({"token": "This invitation link is not valid. Ask for a new one."})
        invitation = Invitation.objects.unscoped().select_for_update().get(pk=found.pk)
        status = invitation.status
        if status == "accepted":
            raise ValidationError({"token": "This invitation link has already been used. Ask for a new one."})
        if status == "revoked":
            raise ValidationError({"token": "This invitation was withdrawn. Ask the team for a new one."})
        if status == "expired":
            raise ValidationError({"token": "This invitation link has expired. Ask the team for a new one."})
        team = found.team
        if Membership.objects.filter(team=team, user=user).exists():
            raise ValidationError({"token": f"You are already a member of {team.name}."})
        membership = Membership.objects.create(team=team, user=user, role=invitation.role)
        invitation.accepted_at = timezone.now()
        invitation.accepted_by = user
        invitation.save(update_fields=["accepted_at", "accepted_by"])
        audit.record(
            "member.joined",
            actor=user,
            team=team,
            target=user,
            ip=ip,
            role=invitation.role,
            invitation_id=invitation.pk,
        )
    return membership


def purge_expired_invitations(*, older_than_days: int = 30) -> int:
    """Delete invitations that expired unused more than ``older_than_days`` ago; returns how many."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    deleted, _ = Invitation.objects.unscoped().filter(accepted_at__isnull=True, expires_at__lt=cutoff).delete()
    return deleted


# --- personal API tokens ------------------------------------------------------------------------


def create_personal_token(*, user: Any, name: str, ip: str | None = None) -> tuple[PersonalAccessToken, str]:
    """A new token for ``user``; the plaintext is returned once and only its hash is stored."""
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Name the token after where it will be used, e.g. “laptop CLI”."})
    plaintext, prefix, digest = PersonalAccessToken.generate()
    with transaction.atomic():
        token = PersonalAccessToken.objects.create(user=user, name=name, prefix=prefix, secret_hash=digest)
        audit.record("token.created", actor=user, target=token, ip=ip)
    return token, plaintext


def revoke_personal_token(*, user: Any, token: PersonalAccessToken, ip: str | None = None) -> None:
    if token.user_id != user.pk:
        raise PermissionDenied("That token is not yours.")
    with transaction.atomic():
        updated = PersonalAccessToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if updated:
            audit.record("token.revoked", actor=user, target=token, ip=ip)


def _touch(model: type[PersonalAccessToken] | type[TeamAPIKey], obj: Any) -> None:
    now = timezone.now()
    if obj.last_used_at is None or now - obj.last_used_at > LAST_USED_RESOLUTION:
        model._base_manager.filter(pk=obj.pk).update(last_used_at=now)
        obj.last_used_at = now


def authenticate_personal_token(raw: str) -> Any | None:
    """The active user a personal token belongs to, or None (unknown, malformed, revoked)."""
    prefix = PersonalAccessToken.split(raw)
    if prefix is None:
        return None
    # Every REST API request asks: SQL written out (``accounts.plain_sql``), the token, then its user.
    token = plain_sql.first(PersonalAccessToken, '"prefix" = %s', [prefix])
    if token is None or not token.is_active or not secret_matches(raw, token.secret_hash):
        return None
    user = plain_sql.first(get_user_model(), '"id" = %s', [token.user_id])
    if user is None or not user.is_active:
        return None
    token.user = user
    _touch(PersonalAccessToken, token)
    return user


# --- team API keys ------------------------------------------------------------------------------


def create_team_api_key(
    *,
    access: TeamAccess,
    name: str,
    role: str = Role.VIEWER,
    requests_per_minute: int | None = None,
    max_tokens: int | None = None,
    deployments: Iterable[Deployment] = (),
    accept_acceptable_use: bool = False,
    ip: str | None = None,
) -> tuple[TeamAPIKey, str]:
    """A team service key acting with ``role`` (member or viewer); plaintext returned once.

    ``requests_per_minute`` and ``max_tokens`` limit the key on the OpenAI-compatible API (empty: the
    studio's defaults, API_KEY_REQUESTS_PER_MINUTE and API_KEY_MAX_TOKENS); ``deployments`` (the team's
    ``serving_app`` deployments) are the ones it may call there. When the team has an acceptable-use
    policy, the creator must accept it (``accept_acceptable_use``); the key records the revision, its
    SHA-256, who accepted it and when.
    """
    access.require(Perm.MANAGE_API_KEYS)
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Name the key after what will use it, e.g. “nightly eval job”."})
    if role not in (Role.MEMBER, Role.VIEWER):
        raise ValidationError({"role": "A team key acts as a member or a viewer."})
    if requests_per_minute is None:
        requests_per_minute = settings.API_KEY_REQUESTS_PER_MINUTE
    if max_tokens is None:
        max_tokens = settings.API_KEY_MAX_TOKENS
    if not 1 <= requests_per_minute <= MAX_KEY_REQUESTS_PER_MINUTE:
        raise ValidationError(
            {"requests_per_minute": f"Choose between 1 and {MAX_KEY_REQUESTS_PER_MINUTE:,} requests per minute."}
        )
    if not 1 <= max_tokens <= MAX_KEY_MAX_TOKENS:
        raise ValidationError({"max_tokens": f"Choose between 1 and {MAX_KEY_MAX_TOKENS:,} tokens per request."})
    deployments = list(deployments)
    if any(getattr(deployment, "team_id", None) != access.team.pk for deployment in deployments):
        raise ValidationError({"deployments": "Choose deployments of this team."})
    plaintext, prefix, digest = TeamAPIKey.generate()
    with transaction.atomic():
        # Locked, so the policy accepted is the one in force when the key is made (not one changed meanwhile).
        team = Team.objects.select_for_update().get(pk=access.team.pk)
        acceptance: dict[str, Any] = {}
        if team.has_acceptable_use_policy:
            if not accept_acceptable_use:
                raise ValidationError(
                    {"accept_acceptable_use": f"Accept {team.name}'s acceptable-use policy (revision "
                     f"{team.acceptable_use_revision}) to create a key: read it on this page, then tick the box "
                     "(API: send \"accept_acceptable_use\": true)."}
                )  # fmt: skip
            acceptance = {
                "acceptable_use_revision": team.acceptable_use_revision,
                "acceptable_use_sha256": team.acceptable_use_sha256,
                "acceptable_use_accepted_at": timezone.now(),
                "acceptable_use_accepted_by": access.user,
            }
        key = TeamAPIKey.objects.create(
            team=access.team, name=name, role=role, prefix=prefix, secret_hash=digest, created_by=access.user,
            requests_per_minute=requests_per_minute, max_tokens=max_tokens, **acceptance,
        )  # fmt: skip
        key.deployments.add(*deployments)
        recorded = ("acceptable_use_revision", "acceptable_use_sha256")
        accepted = {field: value for field, value in acceptance.items() if field in recorded}
        audit.record(
            "apikey.created", access=access, target=key, ip=ip, role=role, requests_per_minute=requests_per_minute,
            max_tokens=max_tokens, deployments=sorted(str(deployment) for deployment in deployments),
            **accepted,
        )  # fmt: skip
    return key, plaintext


def revoke_team_api_key(*, access: TeamAccess, key: TeamAPIKey, ip: str | None = None) -> None:
    """Revoke a key: team admins, or a member the key is shared with at the "change" level."""
    if not access.can(Perm.MANAGE_API_KEYS):
        require_object_action(access, key, "change")
    with transaction.atomic():
        updated = (
            TeamAPIKey.objects.for_team(access.team)
            .filter(pk=key.pk, revoked_at__isnull=True)
            .update(revoked_at=timezone.now())
        )
        if updated:
            audit.record("apikey.revoked", access=access, target=key, ip=ip)


def authenticate_team_api_key(raw: str) -> TeamAPIKey | None:
    prefix = TeamAPIKey.split(raw)
    if prefix is None:
        return None
    # Every /v1 request asks: SQL written out (``accounts.plain_sql``), across teams until the key names its own.
    key = plain_sql.first(TeamAPIKey, '"prefix" = %s', [prefix], unscoped=True)
    if key is None or not key.is_active or not secret_matches(raw, key.secret_hash):
        return None
    team = plain_sql.first(Team, '"id" = %s', [key.team_id])
    if team is None:  # deleted between the two reads
        return None
    key.team = team
    _touch(TeamAPIKey, key)
    return key


# --- sharing (django-guardian object permissions) -----------------------------------------------

# A share level and the actions it grants; a model offers the levels its permissions support.
SHARE_LEVELS: dict[str, tuple[str, ...]] = {
    "view": ("view",),
    "use": ("view", "use"),
    "change": ("view", "use", "change"),
}


def _actions_of(model: type[Model]) -> set[str]:
    """The object-permission actions a model defines (Django's defaults plus its custom ones)."""
    return set(model._meta.default_permissions) | {c.split("_", 1)[0] for c, _ in model._meta.permissions}


def share_levels_for(model: type[Model]) -> list[str]:
    """The share levels that make sense for ``model`` (``use`` only where the model defines it)."""
    return [level for level in SHARE_LEVELS if level in _actions_of(model)]


def share_object(*, access: TeamAccess, obj: Model, member: Membership, level: str, ip: str | None = None) -> None:
    """Give ``member`` exactly ``level`` on ``obj`` (replacing any earlier level). Admins only."""
    access.require(Perm.SHARE_OBJECTS)
    if getattr(obj, "team_id", None) != access.team.pk or member.team_id != access.team.pk:
        raise ValidationError({"member": "Both the object and the member must belong to this team."})
    if level not in share_levels_for(type(obj)):
        raise ValidationError({"level": f"Choose one of: {', '.join(share_levels_for(type(obj)))}."})
    model_name = obj._meta.model_name
    with transaction.atomic():
        _clear_shares(obj, member.user)
        for action in SHARE_LEVELS[level]:
            if action in _actions_of(type(obj)):
                assign_perm(f"{action}_{model_name}", member.user, obj)
        audit.record("object.shared", access=access, target=obj, ip=ip, member=member.user.get_username(), level=level)


def unshare_object(*, access: TeamAccess, obj: Model, member: Membership, ip: str | None = None) -> None:
    access.require(Perm.SHARE_OBJECTS)
    if getattr(obj, "team_id", None) != access.team.pk or member.team_id != access.team.pk:
        raise ValidationError({"member": "Both the object and the member must belong to this team."})
    with transaction.atomic():
        _clear_shares(obj, member.user)
        audit.record("object.unshared", access=access, target=obj, ip=ip, member=member.user.get_username())


def _clear_shares(obj: Model, user: Any) -> None:
    for action in _actions_of(type(obj)):
        remove_perm(f"{action}_{obj._meta.model_name}", user, obj)


def shares_of(obj: Model) -> dict[int, str]:
    """Membership user id -> the share level each member holds on ``obj`` (highest level wins)."""
    available = _actions_of(type(obj))
    permission_model: Any = get_user_obj_perms_model(obj)
    target: dict[str, Any] = (
        {"content_type__model": obj._meta.model_name, "object_pk": str(obj.pk)}
        if permission_model.objects.is_generic()
        else {"content_object": obj}
    )
    held: dict[int, set[str]] = {}
    for user_id, codename in permission_model.objects.filter(**target).values_list("user_id", "permission__codename"):
        held.setdefault(user_id, set()).add(codename.split("_", 1)[0])
    levels: dict[int, str] = {}
    for user_id, actions in held.items():
        granted = [level for level in share_levels_for(type(obj)) if set(SHARE_LEVELS[level]) & available <= actions]
        if granted:
            levels[user_id] = granted[-1]
    return levels


# --- sign-up ------------------------------------------------------------------------------------


def register_user(*, username: str, email: str, password: str, ip: str | None = None) -> Any:
    """Create an account (the form has already validated the password against the validators)."""
    with transaction.atomic():
        user = User.objects.create_user(username=username, email=email, password=password)
        audit.record("user.signed_up", actor=user, target=user, ip=ip)
    return user
