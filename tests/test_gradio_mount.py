"""The Gradio mount at /play/: Django-session auth, CORS allow-list, and cross-origin refusal.

These run against the real ASGI app under uvicorn (FastAPI + Gradio + Django) on the test database.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)


def signed_in(base: str, username: str) -> httpx.Client:
    """An HTTP client that logged in through the site's own login form (session cookie + CSRF)."""
    client = httpx.Client(base_url=base, timeout=120)
    page = client.get("/accounts/login/")
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert csrf is not None
    response = client.post(
        "/accounts/login/", data={"csrfmiddlewaretoken": csrf.group(1), "username": username, "password": PASSWORD}
    )
    assert response.status_code == 302, response.text[:500]
    return client


def call_gradio(client: httpx.Client, api_name: str, **headers: str) -> httpx.Response:
    return client.post(f"/play/gradio_api/call/{api_name}", json={"data": []}, headers=headers)


def test_anonymous_visitor_gets_401_on_the_playground(studio_server: str) -> None:
    assert httpx.get(f"{studio_server}/play/").status_code == 401
    assert httpx.get(f"{studio_server}/play/config").status_code == 401


def test_signed_in_users_name_reaches_the_gradio_handler(studio_server: str, alice: Any) -> None:
    client = signed_in(studio_server, "alice")
    assert client.get("/play/").status_code == 200
    started = call_gradio(client, "whoami")
    assert started.status_code == 200
    result = client.get(f"/play/gradio_api/call/whoami/{started.json()['event_id']}")
    assert "event: complete" in result.text
    assert "Signed in as **alice**" in result.text
    assert "Acme (/t/acme/)" in result.text


def test_handler_refuses_a_session_that_logged_out(studio_server: str, alice: Any) -> None:
    client = signed_in(studio_server, "alice")
    cookie = client.cookies.get("sessionid")
    csrf = client.cookies.get("csrftoken") or ""
    client.post("/accounts/logout/", headers={"X-CSRFToken": csrf})
    stale = httpx.Client(base_url=studio_server, cookies={"sessionid": cookie or ""})
    assert stale.get("/play/").status_code == 401


def test_foreign_origin_post_is_refused(studio_server: str, alice: Any) -> None:
    client = signed_in(studio_server, "alice")
    response = call_gradio(client, "whoami", Origin="http://evil.example")
    assert response.status_code == 403
    cross_site = call_gradio(client, "whoami", **{"Sec-Fetch-Site": "cross-site"})
    assert cross_site.status_code == 403
    same_origin = call_gradio(client, "whoami", Origin=studio_server)
    assert same_origin.status_code == 200


def test_foreign_origin_is_not_reflected_by_cors(studio_server: str, alice: Any) -> None:
    client = signed_in(studio_server, "alice")
    response = client.get("/play/config", headers={"Origin": "http://evil.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_playground_may_only_be_framed_by_the_studio(studio_server: str, alice: Any) -> None:
    response = signed_in(studio_server, "alice").get("/play/")
    assert "frame-ancestors 'self'" in response.headers["content-security-policy"]


def test_playground_page_loads_no_external_script_or_style(studio_server: str, alice: Any) -> None:
    html = signed_in(studio_server, "alice").get("/play/").text
    external = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://(?!127\.0\.0\.1)[^"]+)"', html)
    assert external == []
