"""The playground pages under /t/<team>/: the Compare view (Gradio, in a frame), saved comparisons, presets, and
the export of the answers' thumbs up/down votes as a feedback dataset (offered on the arena leaderboard's page).

Each view: authorize (``request.access`` comes from ``TeamScopeMiddleware``), call one service of
``serving_app.comparisons`` (or ``serving_app.feedback``), respond. Chatting and voting happen in the Gradio
app, whose handlers check the caller again on every event.
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from accounts.http import add_service_errors, client_ip
from accounts.permissions import TeamAccess, TeamRequest, require_object_action, require_perm
from accounts.roles import Perm
from accounts.views import apply_share_form, sharing_panel
from serving_app import comparisons, feedback
from serving_app.catalog import resolve_model
from serving_app.comparisons import ColumnSettings
from serving_app.inference import engine_of
from serving_app.models import Comparison
from serving_app.mount import frame_url
from serving_app.pages.arena import run_export

# Where studio.asgi mounts the Gradio app.
# A model's key in the playground's pickers (``serving_app.catalog``): ``base:<id>`` or ``version:<id>``.
MODEL_KEY = re.compile(r"(base|version|deployment):[1-9][0-9]{0,18}")


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


def _comparison(access: TeamAccess, comparison_id: int, action: str = "view") -> tuple[Comparison, set[str]]:
    comparison = get_object_or_404(comparisons.visible_comparisons(access), pk=comparison_id)
    return comparison, require_object_action(access, comparison, action)


@require_perm(Perm.VIEW_TEAM)
def playground(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The side-by-side playground in a frame (``?comparison=<id>`` reopens a saved comparison, ``?model=<key>``
    starts the first column on that model; the frame checks again that this person may use it)."""
    access = request.access
    reopen = request.GET.get("comparison", "")
    params = {"comparison": reopen} if reopen.isdigit() else {}
    model = request.GET.get("model", "")
    if MODEL_KEY.fullmatch(model):
        params["model"] = model
    context = {
        "frame_url": frame_url(access.team.slug, "compare", **params),
        "can_play": access.can(Perm.USE_PLAYGROUND),
    }
    return render(request, "serving/playground.html", context)


@require_perm(Perm.VIEW_TEAM)
def comparison_list(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The saved comparisons this person may open."""
    access = request.access
    context = {"comparisons": comparisons.visible_comparisons(access), "can_play": access.can(Perm.USE_PLAYGROUND)}
    return render(request, "serving/comparisons.html", context)


@require_perm(Perm.VIEW_TEAM)
def comparison_detail(request: TeamRequest, team_slug: str, comparison_id: int) -> HttpResponse:
    """A saved comparison read side by side: each turn's answers with their figures; sharing."""
    access = request.access
    comparison, actions = _comparison(access, comparison_id)
    context = {
        "comparison": comparison,
        "actions": actions,
        "transcript": transcript(comparison),
        "can_change_visibility": comparisons.can_change_visibility(access, comparison),
        "can_play": access.can(Perm.USE_PLAYGROUND),
        # (the author's own view/change/delete are not a share)
        **sharing_panel(
            access,
            comparison,
            reverse("serving:comparison_share", args=[team_slug, comparison.pk]),
            not_a_share=comparison.created_by_id,
        ),
    }
    return render(request, "serving/comparison.html", context)


@require_POST
@require_perm(Perm.USE_PLAYGROUND)
def comparison_share(request: TeamRequest, team_slug: str, comparison_id: int) -> HttpResponse:
    """Share with a named member (admins), or open to / close from the whole team (``restricted``)."""
    access = request.access
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
def comparison_delete(request: TeamRequest, team_slug: str, comparison_id: int) -> HttpResponse:
    """Ask, then delete a saved comparison (its author or an admin)."""
    access = request.access
    comparison, _ = _comparison(access, comparison_id, "delete")
    if request.method == "POST":
        comparisons.delete_comparison(access=access, comparison=comparison, ip=client_ip(request))
        messages.success(request, f"Comparison “{comparison.title}” was deleted.")
        return redirect("serving:comparisons", team_slug)
    return render(request, "serving/comparison_confirm_delete.html", {"comparison": comparison})


@require_perm(Perm.VIEW_TEAM)
def preset_list(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The team's prompt presets, and a form to add one (members and above)."""
    access = request.access
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
def preset_delete(request: TeamRequest, team_slug: str, preset_id: int) -> HttpResponse:
    """Delete a preset (the member who saved it, or an admin)."""
    access = request.access
    preset = get_object_or_404(comparisons.team_presets(access), pk=preset_id)
    comparisons.delete_preset(access=access, preset=preset, ip=client_ip(request))
    messages.success(request, f"Preset “{preset.name}” deleted.")
    return redirect("serving:presets", team_slug)


@require_POST
@require_perm(Perm.UPLOAD_DATASETS)
def feedback_export(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Turn the playground votes not exported yet into a new version of the team's feedback dataset."""
    return run_export(request, team_slug, feedback.export_feedback)


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


@require_perm(Perm.USE_PLAYGROUND)
def model_engine(request: TeamRequest, team_slug: str, key: str) -> HttpResponse:
    """Which engine serves a model (``base:<id>`` or ``version:<id>``), as a fragment for the model's page."""
    if not MODEL_KEY.fullmatch(key):
        raise Http404("No such model.")
    servable = resolve_model(request.access, key)
    return render(request, "serving/_engine.html", {"engine": engine_of(servable)})


urlpatterns: list[URLPattern] = [
    path("playground/", playground, name="playground"),
    path("playground/models/<str:key>/engine", model_engine, name="model_engine"),
    path("playground/saved/", comparison_list, name="comparisons"),
    path("playground/saved/<int:comparison_id>/", comparison_detail, name="comparison"),
    path("playground/saved/<int:comparison_id>/share", comparison_share, name="comparison_share"),
    path("playground/saved/<int:comparison_id>/delete", comparison_delete, name="comparison_delete"),
    path("playground/presets/", preset_list, name="presets"),
    path("playground/presets/<int:preset_id>/delete", preset_delete, name="preset_delete"),
    path("playground/feedback/export", feedback_export, name="feedback_export"),
]
