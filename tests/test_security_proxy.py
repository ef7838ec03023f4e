"""X-Forwarded-For is believed only from the proxies in ATELIER_TRUSTED_PROXIES (the server's entry point)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SPOOFED = "1.2.3.4"
# The server imports this module for ``echo_client_app`` before Django is set up: test helpers that need
# Django (tests.conftest, tests.factories) are imported inside the functions that use them.


async def echo_client_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app answering the client address uvicorn gives it (served by ``studio.serve --app``)."""
    if scope["type"] != "http":
        return
    body = (scope.get("client") or ("", 0))[0].encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


async def echo_scheme_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app answering the scheme (http or https) uvicorn gives it."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": scope["scheme"].encode()})


@contextlib.contextmanager
def served_echo(trusted_proxies: str, app: str = "echo_client_app") -> Iterator[str]:
    """``python -m studio.serve`` serving ``app`` (of this module) with ``ATELIER_TRUSTED_PROXIES`` set; its URL."""
    from tests.conftest import free_port

    port = free_port()
    env = {**os.environ, "ATELIER_TRUSTED_PROXIES": trusted_proxies}
    command = [sys.executable, "-m", "studio.serve", "--app", f"{__name__}:{app}", "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(process, base)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


def wait_until_up(process: subprocess.Popen[bytes], base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"studio.serve exited early: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            httpx.get(base, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail("studio.serve did not answer within 60 s")


def test_forwarded_for_from_loopback_is_ignored_by_default() -> None:
    with served_echo("") as base:
        assert httpx.get(base, headers={"X-Forwarded-For": SPOOFED}).text == "127.0.0.1"


def test_forwarded_for_from_a_trusted_proxy_is_used() -> None:
    with served_echo("127.0.0.1") as base:
        assert httpx.get(base, headers={"X-Forwarded-For": SPOOFED}).text == SPOOFED


@pytest.mark.parametrize("trusted, scheme", [("", "http"), ("127.0.0.1", "https")])
def test_forwarded_proto_makes_a_request_https_only_from_a_trusted_proxy(trusted: str, scheme: str) -> None:
    with served_echo(trusted, app="echo_scheme_app") as base:
        assert httpx.get(base, headers={"X-Forwarded-Proto": "https"}).text == scheme


def test_production_sends_a_plain_http_client_claiming_https_to_https(tmp_path: Path) -> None:
    """Django itself does not believe X-Forwarded-Proto (the server does, from trusted proxies only)."""
    from tests.test_settings import PRODUCTION_ENV, manage

    probe = (
        "from django.test import Client; "
        "r = Client().get('/accounts/login/', HTTP_HOST='atelier.example.com', HTTP_X_FORWARDED_PROTO='https'); "
        "print(r.status_code, r.get('Location'))"
    )
    result = manage("shell", "--no-imports", "-c", probe, env=PRODUCTION_ENV, tmp_path=tmp_path)
    assert result.stdout.split() == ["301", "https://atelier.example.com/accounts/login/"], result.stderr


@pytest.mark.django_db(transaction=True)
def test_lockout_and_audit_record_the_socket_address_not_forwarded_for(studio_server: str, alice: Any) -> None:
    from axes.models import AccessAttempt

    from accounts.models import AuditEvent
    from tests.factories import PASSWORD

    client = httpx.Client(base_url=studio_server, headers={"X-Forwarded-For": SPOOFED})
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', client.get("/accounts/login/").text)
    assert csrf is not None
    form = {"csrfmiddlewaretoken": csrf.group(1), "username": "alice", "password": "wrong password"}
    client.post("/accounts/login/", data=form)
    assert list(AccessAttempt.objects.values_list("ip_address", flat=True)) == ["127.0.0.1"]

    client.post("/accounts/login/", data={**form, "password": PASSWORD})
    token = client.post("/api/v1/auth/token", json={"username": "alice", "password": PASSWORD, "name": "laptop"})
    assert token.status_code in (200, 201), token.text
    assert set(AuditEvent.objects.values_list("ip_address", flat=True)) == {"127.0.0.1"}
