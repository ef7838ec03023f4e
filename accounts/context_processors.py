"""What the site's shell (navigation, team switcher) needs on every page."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from accounts.permissions import teams_of

# The main navigation; a section appears once its app provides the page (no placeholder pages).
NAVIGATION = [
    ("Datasets", "datasets:list"),
    ("Training", "training:list"),
    ("Models", "training:models"),
    ("Playground", "serving:playground"),
    ("Team", "accounts:team_home"),
]


def studio_shell(request: HttpRequest) -> dict[str, Any]:
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    access = getattr(request, "access", None)
    items = []
    if access is not None:
        current = request.path
        for label, name in NAVIGATION:
            try:
                url = reverse(name, kwargs={"team_slug": access.team.slug})
            except NoReverseMatch:
                continue
            items.append({"label": label, "url": url, "active": current.startswith(url)})
    return {"user_teams": list(teams_of(request.user)), "access": access, "nav_items": items}
