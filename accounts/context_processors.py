"""What the site's shell (navigation, team switcher) needs on every page."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse

from accounts.permissions import teams_of

# The main navigation; a section appears once its app provides the page (no placeholder pages).
NAVIGATION = [
    ("Home", "team_dashboard"),
    ("Datasets", "datasets:list"),
    ("Training", "training:list"),
    ("Models", "training:models"),
    ("Playground", "serving:playground"),
    ("Arena", "serving:arena"),
    ("Deployments", "serving:deployments"),
    ("Tools", "tools:list"),
    ("Evals", "evals:list"),
    ("Usage", "serving:usage"),
    ("Team", "accounts:team_home"),
]


def studio_shell(request: HttpRequest) -> dict[str, Any]:
    if not getattr(request, "user", None) or not request.user.is_authenticated:
        return {}
    access = getattr(request, "access", None)
    items: list[dict[str, Any]] = []
    if access is not None:
        for label, name in NAVIGATION:
            try:
                url = reverse(name, kwargs={"team_slug": access.team.slug})
            except NoReverseMatch:
                continue
            items.append({"label": label, "url": url, "active": False})
        # The section is the longest address the page lives under (the team's own is a prefix of all).
        matching = [item for item in items if request.path.startswith(item["url"])]
        if matching:
            max(matching, key=lambda item: len(item["url"]))["active"] = True
    return {"user_teams": list(teams_of(request.user)), "access": access, "nav_items": items}
