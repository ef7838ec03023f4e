"""The tenant comes from the URL: every ``/t/<team_slug>/...`` view runs with ``request.access`` set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse

from accounts.permissions import TeamRequest, resolve_access


class TeamScopeMiddleware:
    """Resolve the team named in the URL before any team view runs.

    Anonymous visitors are sent to the login page; signed-in non-members get 404 (whether or not the
    team exists), so no team view can forget the membership check.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> HttpResponse | None:
        slug = kwargs.get("team_slug")
        if slug is None:
            return None
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        cast(TeamRequest, request).access = resolve_access(request.user, slug)
        return None
