"""The playground pages under /t/<team>/: the Compare view (Gradio, in a frame), saved comparisons and presets.

Each view: authorize (``request.access`` comes from ``TeamScopeMiddleware``), call one service of
``serving_app.comparisons``, respond. Chatting happens in the Gradio app, whose handlers check the
caller again on every event.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from accounts import services as account_services
from accounts.forms import ShareForm
from accounts.http import add_service_errors, client_ip
from accounts.models import Membership
from accounts.permissions import TeamAccess, require_object_action, require_perm
from accounts.roles import Perm, Role
from accounts.views import apply_share_form
from serving_app import comparisons
from serving_app.comparisons import ColumnSettings
from serving_app.models import Comparison
from serving_app.mount import frame_url

# Where studio.asgi mounts the Gradio app.
SHARE_LEVELS = account_services.share_levels_for(Comparison)


class PresetForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="What it does, e.g. “terse support agent”.")
    system_prompt = forms.CharField(
        required=False,
        max_length=comparisons.MAX_SYSTEM_PROMPT,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="Sent before the conversation: the model's role, tone and rules.",
    )
    temperature = forms.FloatField(
        min_value=0, max_value=2, initial=0.7, help_text="0 always picks the likeliest word; higher is more varied."
    )
    top_p = forms.FloatField(
        label="Top-p", min_value=0.01, max_value=1, initial=1.0, help_text="Sample only from the likeliest words."
    )
    max_tokens = forms.IntegerField(min_value=1, initial=256)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = settings.PLAYGROUND_MAX_TOKENS
        self.fields["max_tokens"].help_text = f"The longest answer, in tokens (the playground allows at most {limit})."


def _access(request: HttpRequest) -> TeamAccess:
    return request.access  # type: ignore[attr-defined]


def _shareable_members(access: TeamAccess, comparison: Comparison) -> QuerySet[Membership]:
    """Members a comparison can be shared with: not the owners and admins (they see it all), not its author."""
    members = Membership.objects.filter(team=access.team).exclude(role__in=[Role.OWNER, Role.ADMIN])
    if comparison.created_by_id is not None:
        members = members.exclude(user_id=comparison.created_by_id)
    return members


def _comparison(access: TeamAccess, comparison_id: int, action: str = "view") -> tuple[Comparison, set[str]]:
    comparison = get_object_or_404(comparisons.visible_comparisons(access), pk=comparison_id)
    return comparison, require_object_action(access, comparison, action)


@require_perm(Perm.VIEW_TEAM)
def playground(request: HttpRequest, team_slug: str) -> HttpResponse:
    """The side-by-side playground in a frame (``?comparison=<id>`` reopens a saved comparison)."""
    access = _access(request)
    reopen = request.GET.get("comparison", "")
    params = {"comparison": reopen} if reopen.isdigit() else {}
    context = {
        "frame_url": frame_url(access.team.slug, "compare", **params),
        "can_play": access.can(Perm.USE_PLAYGROUND),
    }
    return render(request, "serving/playground.html", context)


@require_perm(Perm.VIEW_TEAM)
def comparison_list(request: HttpRequest, team_slug: str) -> HttpResponse:
    """The saved comparisons this person may open."""
    access = _access(request)
    context = {"comparisons": comparisons.visible_comparisons(access), "can_play": access.can(Perm.USE_PLAYGROUND)}
    return render(request, "serving/comparisons.html", context)


@require_perm(Perm.VIEW_TEAM)
def comparison_detail(request: HttpRequest, team_slug: str, comparison_id: int) -> HttpResponse:
    """A saved comparison read side by side: each turn's answers with their figures; sharing."""
    access = _access(request)
    comparison, actions = _comparison(access, comparison_id)
    members = list(Membership.objects.filter(team=access.team).select_related("user"))
    shares = account_services.shares_of(comparison)
    author = comparison.created_by_id
    context = {
        "comparison": comparison,
        "actions": actions,
        "transcript": transcript(comparison),
        "can_change_visibility": comparisons.can_change_visibility(access, comparison),
        "can_play": access.can(Perm.USE_PLAYGROUND),
        # the sharing panel (accounts/_sharing.html)
        # (the author's own view/change/delete are not a share)
        "shares": [(m, shares[m.user_id]) for m in members if m.user_id in shares and m.user_id != author],
        "can_share": access.can(Perm.SHARE_OBJECTS),
        "has_shareable_members": any(m.role not in (Role.OWNER, Role.ADMIN) and m.user_id != author for m in members),
        "share_form": ShareForm(members=_shareable_members(access, comparison), levels=SHARE_LEVELS),
        "share_url": reverse("serving:comparison_share", args=[team_slug, comparison.pk]),
    }
    return render(request, "serving/comparison.html", context)


@require_POST
@require_perm(Perm.USE_PLAYGROUND)
def comparison_share(request: HttpRequest, team_slug: str, comparison_id: int) -> HttpResponse:
    """Share with a named member (admins), or open to / close from the whole team (``restricted``)."""
    access = _access(request)
    comparison, _ = _comparison(access, comparison_id)
    if "restricted" in request.POST:
        restricted = request.POST["restricted"] == "1"
        comparisons.set_comparison_restricted(
            access=access, comparison=comparison, restricted=restricted, ip=client_ip(request)
        )
        messages.success(
            request,
            "Private now: only its author, the admins and the members it is shared with can open it."
            if restricted
            else "Everyone in the team can open it now.",
        )
    else:
        access.require(Perm.SHARE_OBJECTS)
        apply_share_form(request, access, comparison)
    return redirect("serving:comparison", team_slug, comparison.pk)


@require_perm(Perm.USE_PLAYGROUND)
def comparison_delete(request: HttpRequest, team_slug: str, comparison_id: int) -> HttpResponse:
    """Ask, then delete a saved comparison (its author or an admin)."""
    access = _access(request)
    comparison, _ = _comparison(access, comparison_id, "delete")
    if request.method == "POST":
        comparisons.delete_comparison(access=access, comparison=comparison, ip=client_ip(request))
        messages.success(request, f"Comparison “{comparison.title}” was deleted.")
        return redirect("serving:comparisons", team_slug)
    return render(request, "serving/comparison_confirm_delete.html", {"comparison": comparison})


@require_perm(Perm.VIEW_TEAM)
def preset_list(request: HttpRequest, team_slug: str) -> HttpResponse:
    """The team's prompt presets, and a form to add one (members and above)."""
    access = _access(request)
    form = PresetForm()
    if request.method == "POST":
        access.require(Perm.USE_PLAYGROUND)
        form = PresetForm(request.POST)
        if form.is_valid():
            try:
                data = form.cleaned_data
                column = ColumnSettings.clean(
                    system_prompt=data["system_prompt"],
                    temperature=data["temperature"],
                    top_p=data["top_p"],
                    max_tokens=data["max_tokens"],
                )
                preset = comparisons.create_preset(
                    access=access, name=data["name"], column=column, ip=client_ip(request)
                )
            except ValidationError as error:
                add_service_errors(form, error)
            else:
                messages.success(request, f"Preset “{preset.name}” saved: apply it to a column in the playground.")
                return redirect("serving:presets", team_slug)
    presets = comparisons.team_presets(access)
    context: dict[str, Any] = {
        "form": form,
        "presets": [(preset, comparisons.can_delete_preset(access, preset)) for preset in presets],
        "can_play": access.can(Perm.USE_PLAYGROUND),
    }
    return render(request, "serving/presets.html", context, status=400 if form.errors else 200)


@require_POST
@require_perm(Perm.USE_PLAYGROUND)
def preset_delete(request: HttpRequest, team_slug: str, preset_id: int) -> HttpResponse:
    """Delete a preset (the member who saved it, or an admin)."""
    access = _access(request)
    preset = get_object_or_404(comparisons.team_presets(access), pk=preset_id)
    comparisons.delete_preset(access=access, preset=preset, ip=client_ip(request))
    messages.success(request, f"Preset “{preset.name}” deleted.")
    return redirect("serving:presets", team_slug)


def transcript(comparison: Comparison) -> dict[str, Any]:
    """A saved comparison as its page shows it: the columns, then each turn's answers side by side."""
    columns = comparison.columns
    turns = []
    for turn in comparison.turns:
        answers = list(turn.get("answers") or [])
        cells = []
        for position, column in enumerate(columns):
            answer = answers[position] if position < len(answers) and isinstance(answers[position], dict) else None
            cells.append(
                {
                    "text": (answer or {}).get("text", ""),
                    "figures": comparisons.figures_line(answer) if answer else "Not asked in this column.",
                    "error": (answer or {}).get("error"),
                    # a column whose model was changed mid-conversation names the model that answered
                    "model": answer.get("model") if answer and answer.get("key") != column.get("key") else None,
                }
            )
        turns.append({"prompt": turn.get("prompt", ""), "cells": cells})
    return {"columns": columns, "turns": turns, "width": max(len(columns), 1)}


urlpatterns: list[URLPattern] = [
    path("playground/", playground, name="playground"),
    path("playground/saved/", comparison_list, name="comparisons"),
    path("playground/saved/<int:comparison_id>/", comparison_detail, name="comparison"),
    path("playground/saved/<int:comparison_id>/share", comparison_share, name="comparison_share"),
    path("playground/saved/<int:comparison_id>/delete", comparison_delete, name="comparison_delete"),
    path("playground/presets/", preset_list, name="presets"),
    path("playground/presets/<int:preset_id>/delete", preset_delete, name="preset_delete"),
]
