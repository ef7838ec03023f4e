"""The arena pages under /t/<team>/: the blind arena (the Gradio view in a frame), the leaderboard, and the export.

Each view: authorize (``request.access`` comes from ``TeamScopeMiddleware``), call one service of
``serving_app.arena``, respond. The leaderboard's interval chart is drawn here as SVG, like the
training pages' charts: no JavaScript library, nothing fetched from elsewhere.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import URLPattern, path
from django.views.decorators.http import require_POST

from accounts.http import client_ip
from accounts.permissions import TeamAccess, require_perm
from accounts.roles import Perm
from serving_app import arena
from serving_app.arena import LeaderboardRow
from serving_app.mount import frame_url

# Where studio.asgi mounts the Gradio app.
CHART_WIDTH, CHART_ROW, CHART_TOP, CHART_BOTTOM = 720, 26, 8, 30
CHART_LEFT, CHART_RIGHT = 220, 16


def _access(request: HttpRequest) -> TeamAccess:
    return request.access  # type: ignore[attr-defined]


@require_perm(Perm.VIEW_TEAM)
def arena_page(request: HttpRequest, team_slug: str) -> HttpResponse:
    """The blind arena: the playground's Arena view in a frame, for the roles that may use models."""
    access = _access(request)
    frame = frame_url(access.team.slug, "arena")
    context = {"frame_url": frame, "can_play": access.can(Perm.USE_PLAYGROUND)}
    return render(request, "serving/arena.html", context)


@require_perm(Perm.VIEW_TEAM)
def leaderboard(request: HttpRequest, team_slug: str) -> HttpResponse:
    """The team's models ranked by their arena votes (Bradley–Terry, 95% bootstrap intervals)."""
    access = _access(request)
    rows = arena.team_leaderboard(access)
    context = {
        "rows": rows,
        "chart": interval_chart(rows),
        "can_export": access.can(Perm.UPLOAD_DATASETS),
        "pending": arena.pending_exports(access.team),
    }
    return render(request, "serving/leaderboard.html", context)


@require_POST
@require_perm(Perm.UPLOAD_DATASETS)
def arena_export(request: HttpRequest, team_slug: str) -> HttpResponse:
    """Turn the decisive votes not exported yet into a new version of the team's preference dataset."""
    try:
        result = arena.export_preferences(access=_access(request), ip=client_ip(request))
    except ValidationError as error:
        messages.info(request, " ".join(error.messages))
        return redirect("serving:leaderboard", team_slug)
    version = result.version
    notice = f"Exported {result.exported} vote(s) to {version.dataset.name} v{version.number}; it is being validated."
    if result.left_out or result.restricted:
        notice += f" Left out: {result.left_out} without usable answers, {result.restricted} on restricted models."
    messages.success(request, notice)
    return redirect("datasets:version", team_slug, version.dataset_id, version.number)


def interval_chart(rows: list[LeaderboardRow]) -> dict[str, Any] | None:
    """The geometry of the leaderboard's SVG: one row per model, its 95% interval as a bar, its score a dot."""
    if not rows:
        return None
    low = min(row.ci_low for row in rows)
    high = max(row.ci_high for row in rows)
    room = max((high - low) * 0.05, 10.0)
    low, high = low - room, high + room
    plot = CHART_WIDTH - CHART_LEFT - CHART_RIGHT

    def x(score: float) -> float:
        return round(CHART_LEFT + (score - low) / (high - low) * plot, 1)

    bottom = CHART_TOP + CHART_ROW * len(rows)
    ticks = [low + (high - low) * share for share in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return {
        "width": CHART_WIDTH,
        "height": bottom + CHART_BOTTOM,
        "left": CHART_LEFT,
        "right": CHART_WIDTH - CHART_RIGHT,
        "top": CHART_TOP,
        "bottom": bottom,
        "label_x": CHART_LEFT - 8,
        "ticks": [{"x": x(value), "label": f"{value:.0f}"} for value in ticks],
        "rows": [
            {
                "y": CHART_TOP + CHART_ROW * index + CHART_ROW // 2,
                "label": row.label,
                "low": x(row.ci_low),
                "high": x(row.ci_high),
                "score": x(row.score),
                "title": f"{row.label}: {row.score:.0f} (95% interval {row.ci_low:.0f}–{row.ci_high:.0f})",
            }
            for index, row in enumerate(rows)
        ],
        "summary": "Arena scores with 95% intervals: "
        + "; ".join(f"{row.label} {row.score:.0f} ({row.ci_low:.0f}–{row.ci_high:.0f})" for row in rows),
    }


urlpatterns: list[URLPattern] = [
    path("arena/", arena_page, name="arena"),
    path("arena/leaderboard/", leaderboard, name="leaderboard"),
    path("arena/export", arena_export, name="arena_export"),
]
