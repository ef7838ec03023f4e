"""Account and team pages. Each view: parse input, authorize, call one service, respond."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Model, Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from accounts import key_scopes, services
from accounts.forms import (
    AuditFilterForm,
    InvitationForm,
    RenameTeamForm,
    RoleForm,
    ShareForm,
    SignupForm,
    TeamAPIKeyForm,
    TeamForm,
    TokenForm,
)
from accounts.http import add_service_errors, client_ip, error_dict
from accounts.models import AuditEvent, Invitation, Membership, PersonalAccessToken, TeamAPIKey
from accounts.permissions import (
    TeamAccess,
    TeamRequest,
    require_object_action,
    require_perm,
    teams_of,
    visible_objects,
)
from accounts.roles import PERM_DESCRIPTIONS, ROLE_PERMISSIONS, Perm, Role, can_assign

User = get_user_model()


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness for load balancers and compose: the database answers."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return HttpResponse("ok", content_type="text/plain")


# --- account ------------------------------------------------------------------------------------


def signup(request: HttpRequest) -> HttpResponse:
    form = SignupForm(request.POST or None)
    next_url = request.GET.get("next", "")
    if request.method == "POST" and form.is_valid():
        user = services.register_user(
            username=form.cleaned_data["username"],
            email=form.cleaned_data["email"],
            password=form.cleaned_data["password1"],
            ip=client_ip(request),
        )
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome, {user.get_username()}.")
        if next_url.startswith("/") and not next_url.startswith("//"):
            return redirect(next_url)
        return redirect("accounts:home")
    return render(request, "accounts/signup.html", {"form": form, "next": next_url})


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Where login lands: the only team, or the list of teams (with a way to make one)."""
    teams = list(teams_of(request.user))
    if len(teams) == 1:
        return redirect("team_dashboard", team_slug=teams[0].slug)
    return render(request, "accounts/home.html", {"teams": teams})


@login_required
def team_create(request: HttpRequest) -> HttpResponse:
    form = TeamForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            team = services.create_team(actor=request.user, ip=client_ip(request), **form.cleaned_data)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"Team “{team.name}” created. Invite your colleagues below.")
            return redirect("team_dashboard", team_slug=team.slug)
    return render(request, "accounts/team_create.html", {"form": form})


@login_required
def tokens(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None)
    new_token = None
    if request.method == "POST" and form.is_valid():
        _, new_token = services.create_personal_token(
            user=request.user, name=form.cleaned_data["name"], ip=client_ip(request)
        )
        form = TokenForm()
    token_list = PersonalAccessToken.objects.filter(user=request.user)  # type: ignore[misc]  # login_required
    return render(request, "accounts/tokens.html", {"form": form, "tokens": token_list, "new_token": new_token})


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(PersonalAccessToken, pk=token_id, user=request.user)
    services.revoke_personal_token(user=request.user, token=token, ip=client_ip(request))
    messages.success(request, f"Token “{token.name}” revoked: it no longer works.")
    return redirect("accounts:tokens")


def invitation_accept(request: TeamRequest, token: str) -> HttpResponse:
    """Show who invites whom to what; a signed-in visitor accepts with one click."""
    invitation = services.find_invitation(token)
    error = None
    if request.method == "POST" and request.user.is_authenticated:
        try:
            membership = services.accept_invitation(user=request.user, token=token, ip=client_ip(request))
        except ValidationError as problem:
            error = problem.messages[0]
        else:
            messages.success(request, f"You joined {membership.team.name} as {membership.get_role_display()}.")
            return redirect("team_dashboard", team_slug=membership.team.slug)
    elif invitation is None:
        error = "This invitation link is not valid. Ask the team for a new one."
    elif invitation.status != "pending":
        error = {
            "accepted": "This invitation link has already been used. Ask for a new one.",
            "revoked": "This invitation was withdrawn. Ask the team for a new one.",
            "expired": "This invitation link has expired. Ask the team for a new one.",
        }[invitation.status]
    context = {"invitation": invitation, "error": error, "token": token}
    return render(request, "accounts/invitation_accept.html", context, status=400 if error else 200)


# --- team pages (request.access set by TeamScopeMiddleware) -------------------------------------


@require_perm(Perm.VIEW_TEAM)
def team_home(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Members, their roles, and (for admins) invitations."""
    access = request.access
    members = Membership.objects.filter(team=access.team).select_related("user").order_by("user__username")
    assignable = [role for role in Role.values if can_assign(access.role, role)]
    rows = [
        {
            "membership": m,
            "role_url": reverse("accounts:member_role", args=[team_slug, m.pk]),
            "remove_url": reverse("accounts:member_remove", args=[team_slug, m.pk]),
            "is_me": m.user_id == request.user.pk,
            "can_change_role": access.can(Perm.CHANGE_ROLES)
            and m.user_id != request.user.pk
            and can_assign(access.role, m.role),
            "can_remove": m.user_id != request.user.pk
            and access.can(Perm.REMOVE_MEMBERS)
            and can_assign(access.role, m.role),
        }
        for m in members
    ]
    context = {
        "rows": rows,
        "assignable_roles": [(value, Role(value).label) for value in assignable],
        "invitation_form": InvitationForm(allowed_roles=assignable),
        "invitations": Invitation.objects.for_team(access.team).select_related("created_by")[:50]
        if access.can(Perm.INVITE_MEMBERS)
        else [],
        "role_matrix": _role_matrix(),
        "roles": [role.label for role in Role],
        # Shown once, right after it was made (post/redirect/get keeps it out of the URL).
        "new_invitation_link": request.session.pop("new_invitation_link", None),
    }
    return render(request, "accounts/team_home.html", context)


def _role_matrix() -> list[tuple[str, list[bool]]]:
    return [(PERM_DESCRIPTIONS[perm], [perm in ROLE_PERMISSIONS[role] for role in Role]) for perm in Perm]


@require_POST
@require_perm(Perm.INVITE_MEMBERS)
def invitation_create(request: TeamRequest, team_slug: str) -> HttpResponse:
    access = request.access
    form = InvitationForm(request.POST)
    if form.is_valid():
        try:
            _, token = services.create_invitation(access=access, ip=client_ip(request), **form.cleaned_data)
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            link = request.build_absolute_uri(reverse("accounts:invitation_accept", args=[token]))
            request.session["new_invitation_link"] = link
    else:
        messages.error(
            request, "; ".join(f"{field}: {' '.join(map(str, errors))}" for field, errors in form.errors.items())
        )
    return redirect("accounts:team_home", team_slug=team_slug)


@require_POST
@require_perm(Perm.INVITE_MEMBERS)
def invitation_revoke(request: TeamRequest, team_slug: str, invitation_id: int) -> HttpResponse:
    access = request.access
    invitation = get_object_or_404(Invitation.objects.for_team(access.team), pk=invitation_id)
    try:
        services.revoke_invitation(access=access, invitation=invitation, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, "Invitation withdrawn: its link no longer works.")
    return redirect("accounts:team_home", team_slug=team_slug)


@require_POST
@require_perm(Perm.CHANGE_ROLES)
def member_role(request: TeamRequest, team_slug: str, membership_id: int) -> HttpResponse:
    access = request.access
    membership = get_object_or_404(Membership.objects.select_related("user"), pk=membership_id, team=access.team)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose one of the listed roles.")
    else:
        try:
            services.change_role(
                access=access, membership=membership, role=form.cleaned_data["role"], ip=client_ip(request)
            )
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            messages.success(
                request, f"{membership.user.get_username()} is now {Role(form.cleaned_data['role']).label}."
            )
    return redirect("accounts:team_home", team_slug=team_slug)


@require_POST
@require_perm(Perm.VIEW_TEAM)  # anyone may leave; removing someone else is checked by the service
def member_remove(request: TeamRequest, team_slug: str, membership_id: int) -> HttpResponse:
    access = request.access
    membership = get_object_or_404(Membership.objects.select_related("user"), pk=membership_id, team=access.team)
    leaving = membership.user_id == request.user.pk
    try:
        services.remove_member(access=access, membership=membership, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("accounts:team_home", team_slug=team_slug)
    if leaving:
        messages.success(request, f"You left {access.team.name}.")
        return redirect("accounts:home")
    messages.success(request, f"{membership.user.get_username()} was removed from the team.")
    return redirect("accounts:team_home", team_slug=team_slug)


@require_perm(Perm.CHANGE_TEAM)
def team_settings(request: TeamRequest, team_slug: str) -> HttpResponse:
    access = request.access
    team = access.team
    initial = {
        "name": team.name,
        "gpu_hour_price": team.gpu_hour_price,
        "currency": team.currency,
        "prompt_retention_days": team.prompt_retention_days,
        "acceptable_use_policy": team.acceptable_use_policy,
    }
    form = RenameTeamForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            if data["name"] != team.name:
                services.rename_team(access=access, name=data["name"], ip=client_ip(request))
            services.set_training_price(
                access=access, gpu_hour_price=data["gpu_hour_price"], currency=data["currency"], ip=client_ip(request)
            )
            services.set_prompt_retention(access=access, days=data["prompt_retention_days"], ip=client_ip(request))
            services.set_acceptable_use_policy(access=access, text=data["acceptable_use_policy"], ip=client_ip(request))
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, "Team settings saved.")
            return redirect("accounts:team_settings", team_slug=team_slug)
    return render(request, "accounts/team_settings.html", {"form": form})


@require_perm(Perm.VIEW_AUDIT)
def audit_log(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The team's audit trail, newest first, filterable; htmx swaps only the table on filter changes."""
    access = request.access
    form = AuditFilterForm(request.GET or None)
    events = AuditEvent.objects.for_team(access.team).select_related("actor")
    if form.is_valid():
        data = form.cleaned_data
        if data["action"]:
            events = events.filter(action__icontains=data["action"])
        if data["actor"]:
            events = events.filter(actor_label__icontains=data["actor"])
        if data["since"]:
            events = events.filter(created_at__date__gte=data["since"])
        if data["until"]:
            events = events.filter(created_at__date__lte=data["until"])
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    actions = AuditEvent.objects.for_team(access.team).order_by("action").values_list("action", flat=True).distinct()
    context = {"form": form, "page": page, "actions": list(actions)}
    template = "accounts/_audit_table.html" if request.htmx else "accounts/audit_log.html"  # type: ignore[attr-defined]
    return render(request, template, context)


# --- team API keys (the first object shared through django-guardian) ---------------------------


@require_perm(Perm.VIEW_TEAM)
def api_keys(request: TeamRequest, team_slug: str) -> HttpResponse:
    access = request.access
    if request.method == "POST":
        access.require(Perm.MANAGE_API_KEYS)
    # The deployments a new key may call (the serving app owns them); only admins see the form.
    choices = key_scopes.choices(access) if access.can(Perm.MANAGE_API_KEYS) else None
    # With a policy, the form asks to accept it (the service refuses a key without that).
    policy = access.team.acceptable_use_revision if access.team.has_acceptable_use_policy else None
    form = TeamAPIKeyForm(request.POST or None, deployments=choices, acceptable_use_revision=policy)
    new_key = None
    if request.method == "POST" and form.is_valid():
        try:
            _, new_key = services.create_team_api_key(access=access, ip=client_ip(request), **form.cleaned_data)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            form = TeamAPIKeyForm(deployments=choices, acceptable_use_revision=policy)
    keys = (
        visible_objects(access, TeamAPIKey.objects.for_team(access.team), "view")
        .select_related("created_by")
        .prefetch_related(Prefetch("deployments", queryset=key_scopes.choices(access), to_attr="callable"))
    )
    return render(request, "accounts/api_keys.html", {"form": form, "keys": keys, "new_key": new_key})


@require_perm(Perm.VIEW_TEAM)
def api_key_detail(request: TeamRequest, team_slug: str, key_id: int) -> HttpResponse:
    access = request.access
    key = get_object_or_404(
        TeamAPIKey.objects.for_team(access.team).select_related("created_by", "acceptable_use_accepted_by"), pk=key_id
    )
    actions = require_object_action(access, key, "view")
    context = {
        "key": key,
        "actions": actions,
        "deployments": key_scopes.of_key(key),
        # The form that changes them posts to the serving app (serving:key_deployments), which does the work.
        "team_deployments": key_scopes.choices(access)
        if key.is_active and access.can(Perm.MANAGE_DEPLOYMENTS) and access.can(Perm.MANAGE_API_KEYS)
        else None,
        **sharing_panel(access, key, reverse("accounts:api_key_share", args=[team_slug, key.pk])),
    }
    return render(request, "accounts/api_key_detail.html", context)


@require_POST
@require_perm(Perm.VIEW_TEAM)
def api_key_revoke(request: TeamRequest, team_slug: str, key_id: int) -> HttpResponse:
    access = request.access
    key = get_object_or_404(TeamAPIKey.objects.for_team(access.team), pk=key_id)
    services.revoke_team_api_key(access=access, key=key, ip=client_ip(request))
    messages.success(request, f"Key “{key.name}” revoked: it no longer works.")
    return redirect("accounts:api_key_detail", team_slug=team_slug, key_id=key.pk)


@require_POST
@require_perm(Perm.SHARE_OBJECTS)
def api_key_share(request: TeamRequest, team_slug: str, key_id: int) -> HttpResponse:
    access = request.access
    key = get_object_or_404(TeamAPIKey.objects.for_team(access.team), pk=key_id)
    apply_share_form(request, access, key)
    return redirect("accounts:api_key_detail", team_slug=team_slug, key_id=key.pk)


def sharing_panel(access: TeamAccess, obj: Model, share_url: str, *, not_a_share: int | None = None) -> dict[str, Any]:
    """The context of the sharing panel (``accounts/_sharing.html``) for ``obj``: who it is shared with, and the
    form to share it (posted to ``share_url``, handled by ``apply_share_form``).

    Owners and admins always have access, so they are neither listed nor offered. ``not_a_share`` is a member
    whose rights come from elsewhere (a comparison's author): left out of both.
    """
    members = list(Membership.objects.filter(team=access.team).select_related("user"))
    shares = services.shares_of(obj)
    offered = Membership.objects.filter(team=access.team).exclude(role__in=[Role.OWNER, Role.ADMIN])
    if not_a_share is not None:
        offered = offered.exclude(user_id=not_a_share)
    return {
        "shares": [(m, shares[m.user_id]) for m in members if m.user_id in shares and m.user_id != not_a_share],
        "can_share": access.can(Perm.SHARE_OBJECTS),
        "has_shareable_members": any(
            m.role not in (Role.OWNER, Role.ADMIN) and m.user_id != not_a_share for m in members
        ),
        "share_form": ShareForm(members=offered.select_related("user"), levels=services.share_levels_for(type(obj))),
        "share_url": share_url,
    }


def apply_share_form(request: HttpRequest, access: TeamAccess, obj: Model) -> None:
    """Handle a sharing panel's POST for ``obj``: share at a level, or remove a member's access.

    The outcome is a flash message; the caller redirects back to the object's page.
    """
    members = Membership.objects.filter(team=access.team).select_related("user")
    form = ShareForm(request.POST, members=members, levels=services.share_levels_for(type(obj)))
    if not form.is_valid():
        messages.error(request, "Choose a member of this team and a level.")
    elif request.POST.get("remove"):
        services.unshare_object(access=access, obj=obj, member=form.cleaned_data["member"], ip=client_ip(request))
        messages.success(request, "Access removed.")
    else:
        try:
            services.share_object(access=access, obj=obj, ip=client_ip(request), **form.cleaned_data)
        except ValidationError as error:
            messages.error(request, " ".join(error_dict(error).get("level", error.messages)))
        else:
            messages.success(request, "Shared.")
