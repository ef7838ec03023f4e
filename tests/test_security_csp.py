"""Content-Security-Policy on the site's pages: every page carries one, inline script runs only with the nonce."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from tests.routes import TEAM_KWARG

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# A parameter other than the team's slug: such a page needs an object to show, so the sweep leaves it out.
OTHER_PARAM = re.compile(r"<(?:\w+:)?(?!team_slug>)\w+>")

Login = Callable[[Any], Client]


def _patterns(patterns: list[Any], prefix: str = "") -> Iterator[str]:
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from _patterns(entry.url_patterns, route)
        elif isinstance(entry, URLPattern):
            yield route


def page_paths(team_slug: str) -> list[str]:
    """Every Django route with no parameter but the team's slug, as a path for ``team_slug``."""
    paths = []
    for route in _patterns(get_resolver().url_patterns):
        if "^" in route or "(?P" in route or OTHER_PARAM.search(route) or route.startswith(("api/", "v1/")):
            continue  # regex routes (static, admin internals), object pages, JSON APIs
        paths.append("/" + TEAM_KWARG.sub(team_slug, route))
    return sorted(set(paths))


def script_sources(policy: str) -> list[str]:
    directive = next(part.strip() for part in policy.split(";") if part.strip().startswith("script-src "))
    return directive.split()[1:]


def test_every_page_carries_a_csp_without_inline_script(alice: Any, login: Login) -> None:
    client = login(alice)
    missing = []
    for path in page_paths("acme"):
        response = client.get(path)
        policy = response.headers.get("Content-Security-Policy", "")
        if "'unsafe-inline'" in script_sources(policy or "script-src 'unsafe-inline'"):
            missing.append(f"{path} ({response.status_code})")
    assert len(page_paths("acme")) > 20
    assert not missing, "pages without a CSP that forbids inline script: " + ", ".join(missing)


def test_anonymous_and_error_pages_carry_a_csp(client: Client) -> None:
    for path in ("/accounts/login/", "/accounts/signup/", "/no-such-page/", "/t/acme/"):
        assert "script-src 'self'" in client.get(path).headers["Content-Security-Policy"], path


def test_page_nonce_matches_the_policy(alice: Any, login: Login) -> None:
    response = login(alice).get("/t/acme/")
    nonce = re.search(r"'nonce-([^']+)'", response.headers["Content-Security-Policy"])
    assert nonce is not None
    assert f'"inlineStyleNonce": "{nonce.group(1)}"' in response.content.decode()


def test_site_pages_may_not_be_framed(alice: Any, login: Login) -> None:
    response = login(alice).get("/t/acme/")
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"


@pytest.mark.parametrize(
    "template", sorted(TEMPLATES.rglob("*.html")), ids=lambda path: str(path.relative_to(TEMPLATES))
)
def test_template_has_no_inline_script_or_event_handler(template: Path) -> None:
    text = template.read_text(encoding="utf-8")
    inline_scripts = [tag for tag in re.findall(r"<script\b[^>]*>", text) if "src=" not in tag]
    handlers = re.findall(r"\son[a-z]+\s*=", text)
    assert not inline_scripts and not handlers, "move the script into studio/static/js/ (the CSP blocks it)"
