"""The arena pages under /t/<team>/: the blind arena (the Gradio view in a frame), the leaderboard, and the export.

Each view: authorize (``request.access`` comes from ``TeamScopeMiddleware``), call one service of
``serving_app.arena``, respond. The leaderboard's interval chart is the studio's ``interval_chart`` tag
(``studio.charts``), drawn on the server as SVG like every other chart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import URLPattern, path
from django.views.decorators.http import require_POST

from accounts.http import client_ip
from accounts.permissions import TeamRequest, require_perm
from accounts.roles import Perm
from serving_app import arena, feedback
from serving_app.arena import LeaderboardRow
from serving_app.mount import frame_url


@require_perm(Perm.VIEW_TEAM)
def arena_page(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The blind arena: the playground's Arena view in a frame, for the roles that may use models."""
    access = request.access
    frame = frame_url(access.team.slug, "arena")
    context = {"frame_url": frame, "can_play": access.can(Perm.USE_PLAYGROUND)}
    return render(request, "serving/arena.html", context)


@require_perm(Perm.VIEW_TEAM)
def leaderboard(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The team's models ranked by their arena votes (Bradley–Terry, 95% bootstrap intervals), and the exports of
    the arena's votes (preference pairs) and of the playground's thumbs up/down (feedback)."""
    access = request.access
    rows = arena.team_leaderboard(access)
    context = {
        "rows": rows,
        "chart": interval_chart(rows),
        "can_export": access.can(Perm.UPLOAD_DATASETS),
        "pending": arena.pending_exports(access.team),
        "feedback_pending": feedback.pending_exports(access.team),
    }
    return render(request, "serving/leaderboard.html", context)


@require_POST
@require_perm(Perm.UPLOAD_DATASETS)
def arena_export(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Turn the decisive votes not exported yet into a new version of the team's preference dataset."""
    return run_export(request, team_slug, arena.export_preferences)


def run_export(request: TeamRequest, team_slug: str, export: Callable[..., Any]) -> HttpResponse:
    """Run a votes export (arena or playground) and open the dataset version it made, or say why none."""
    try:
        result = export(access=request.access, ip=client_ip(request))
    except ValidationError as error:
        messages.info(request, " ".join(error.messages))
        return redirect("serving:leaderboard", team_slug)
    version = result.version
    notice = f"Exported {result.exported} vote(s) to {version.dataset.name} v{version.number}; it is being validated."
    if result.left_out or result.restricted:
        notice += f" Left out: {result.left_out} without usable answers, {result.restricted} on restricted models."
    messages.success(request, notice)
    return redirect("datasets:version", team_slug, version.dataset_id, version.number)


def interval_chart(rows: list[LeaderboardRow]) -> list[tuple[str, float, float, float]]:
    """The leaderboard as the interval chart draws it: each model's score with its 95% interval."""
    return [(row.label, row.score, row.ci_low, row.ci_high) for row in rows]


urlpatterns: list[URLPattern] = [
    path("arena/", arena_page, name="arena"),
    path("arena/leaderboard/", leaderboard, name="leaderboard"),
    path("arena/export", arena_export, name="arena_export"),
]
