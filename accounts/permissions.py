"""Every authorization decision in the studio goes through this module.

Two layers:
- team roles (``accounts.roles``): a non-member gets 404 (a team's existence is not leaked), a member
  whose role lacks the right gets 403;
- django-guardian object permissions for per-object sharing, always on a queryset already filtered
  to the team and always with ``accept_global_perms=False`` (a model-level grant must never widen a
  tenant user's view across teams).

Views reach this through ``TeamScopeMiddleware`` (``request.access``) and ``@require_perm``; the API
and Gradio handlers call ``resolve_access`` directly (Gradio's through ``sync_to_async``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

from django.core.exceptions import PermissionDenied
from django.db.models import Model, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponseBase
from guardian.shortcuts import get_objects_for_user, get_perms

from accounts.models import Membership, Team, TeamAPIKey
from accounts.roles import ROLE_OBJECT_ACTIONS, ROLE_PERMISSIONS, Perm, Role

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

M = TypeVar("M", bound=Model)


@dataclass(frozen=True)
class TeamAccess:
    """Who is acting in which team, with which role: a member (``user``) or a team API key."""

    team: Team
    role: Role
    user: Any = None  # the acting User, or None for a team API key
    api_key: TeamAPIKey | None = None

    @property
    def is_admin(self) -> bool:
        return self.role in (Role.OWNER, Role.ADMIN)

    def can(self, perm: Perm) -> bool:
        return perm in ROLE_PERMISSIONS[self.role]

    def require(self, perm: Perm) -> None:
        """Raise 403 unless the role grants ``perm``."""
        if not self.can(perm):
            raise PermissionDenied(f"Your role ({self.role.label}) does not allow this ({perm}).")

    @property
    def actor_label(self) -> str:
        if self.api_key is not None:
            return f"API key {self.api_key.name} ({self.api_key.display_prefix})"
        return str(self.user.get_username())


class TeamRequest(HttpRequest):
    """A request to a page under ``/t/<team_slug>/``: ``TeamScopeMiddleware`` checked the membership and set
    ``access`` before the view runs (an outsider got 404). A type for the views' signatures, never built."""

    access: TeamAccess


def resolve_access(user: AbstractBaseUser | AnonymousUser | None, team_slug: str) -> TeamAccess:
    """The user's access to the team named in the URL; 404 if there is no such team or no membership."""
    if user is None or not user.is_authenticated:
        raise Http404("No such team.")
    membership = Membership.objects.select_related("team").filter(team__slug=team_slug, user_id=user.pk).first()
    if membership is None:
        raise Http404("No such team.")
    return TeamAccess(team=membership.team, role=Role(membership.role), user=user)


def resolve_key_access(api_key: TeamAPIKey, team_slug: str) -> TeamAccess:
    """A team API key acts only in its own team, with the role it was created with."""
    if api_key.team.slug != team_slug or not api_key.is_active:
        raise Http404("No such team.")
    return TeamAccess(team=api_key.team, role=Role(api_key.role), api_key=api_key)


def teams_of(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Team]:
    """The teams a user belongs to (the team switcher's list)."""
    if not user.is_authenticated:
        return Team.objects.none()
    return Team.objects.filter(memberships__user_id=user.pk).order_by("name")


def require_perm(perm: Perm) -> Callable[[Callable[..., HttpResponseBase]], Callable[..., HttpResponseBase]]:
    """View decorator: 403 unless the member's role grants ``perm`` (membership is checked earlier)."""

    def decorator(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            access: TeamAccess | None = getattr(request, "access", None)
            if access is None:  # a team view mounted outside /t/<slug>/ is a programming error
                raise RuntimeError(f"{view.__name__} needs TeamScopeMiddleware and a team_slug in its URL.")
            access.require(perm)
            return view(request, *args, **kwargs)

        wrapper.required_perm = perm  # type: ignore[attr-defined]  # read by the role-matrix test
        return wrapper

    return decorator


# --- object permissions (django-guardian) ---------------------------------------------------------


def _is_restrictable(model: type[Model]) -> bool:
    """Models with a ``restricted`` flag are open to the team by role unless restricted."""
    return any(field.name == "restricted" for field in model._meta.get_fields())


def visible_objects(access: TeamAccess, queryset: QuerySet[M], action: str) -> QuerySet[M]:
    """The rows of ``queryset`` (already filtered to ``access.team``) the actor may ``action``.

    Owners and admins get every row of their team. Others get the rows shared with them through a
    guardian object permission ``<action>_<model>`` and, for models with a ``restricted`` flag, the
    unrestricted rows their role allows. Model-level permissions are ignored.
    """
    if access.is_admin:
        return queryset
    by_role = (
        queryset.filter(restricted=False)
        if _is_restrictable(queryset.model) and action in ROLE_OBJECT_ACTIONS[access.role]
        else queryset.none()
    )
    if access.user is None:
        return by_role
    codename = f"{action}_{queryset.model._meta.model_name}"
    shared = get_objects_for_user(
        access.user, codename, klass=queryset, accept_global_perms=False, with_superuser=False
    )
    return queryset.filter(Q(pk__in=by_role.values("pk")) | Q(pk__in=shared.values("pk")))


def object_actions(access: TeamAccess, obj: Model) -> set[str]:
    """The actions (``view``, ``change``…) the actor holds on ``obj``, which must be in ``access.team``."""
    if getattr(obj, "team_id", None) != access.team.pk:
        raise Http404("No such object.")
    model_name = obj._meta.model_name or ""
    if access.is_admin:
        custom = {codename.removesuffix(f"_{model_name}") for codename, _ in obj._meta.permissions}
        return set(obj._meta.default_permissions) | custom
    by_role = set(ROLE_OBJECT_ACTIONS[access.role]) if getattr(obj, "restricted", True) is False else set()
    if access.user is None:
        return by_role
    return by_role | {codename.removesuffix(f"_{model_name}") for codename in get_perms(access.user, obj)}


def require_object_action(access: TeamAccess, obj: Model, action: str) -> set[str]:
    """404 when the actor may not even see ``obj``; 403 when they see it but may not ``action`` it.

    Returns every action the actor holds on ``obj``, so a page can show what else is allowed.
    """
    actions = object_actions(access, obj)
    if "view" not in actions:
        raise Http404("No such object.")
    if action not in actions:
        raise PermissionDenied(f"You may not {action} this {obj._meta.verbose_name}.")
    return actions
