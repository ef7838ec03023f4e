"""Training pages under /t/<team>/ (so far: the base models)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from accounts.permissions import require_perm
from accounts.roles import Perm
from training_app import services


@require_perm(Perm.VIEW_TEAM)
def model_list(request: HttpRequest, team_slug: str) -> HttpResponse:
    models = services.available_models(request.access)  # type: ignore[attr-defined]
    return render(request, "training/models.html", {"models": models})


@require_perm(Perm.VIEW_TEAM)
def model_detail(request: HttpRequest, team_slug: str, model_id: int) -> HttpResponse:
    model = get_object_or_404(services.available_models(request.access), pk=model_id)  # type: ignore[attr-defined]
    return render(request, "training/model_detail.html", {"model": model})
