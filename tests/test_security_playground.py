"""The Gradio app at /play/: its security headers, Gradio's file routes closed (real ASGI app under uvicorn), and a
model's tool calls shown as text."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from serving_app.engine.client import ToolCall
from serving_app.ui.compare import tool_call_message
from serving_app.ui.text import code_block
from tests.test_gradio_mount import signed_in

pytestmark = pytest.mark.django_db(transaction=True)


def upload(client: httpx.Client, path: str = "/play/gradio_api/upload") -> httpx.Response:
    """A same-origin upload, as Gradio's own page would send it."""
    files = {"files": ("notes.txt", b"private notes of one user", "text/plain")}
    return client.post(path, files=files, headers={"Origin": str(client.base_url).rstrip("/")})


def test_playground_page_carries_csp_nosniff_and_framing(studio_server: str, alice: Any) -> None:
    response = signed_in(studio_server, "alice").get("/play/")
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'self'" in policy and "object-src 'none'" in policy
    assert response.headers["x-frame-options"] == "SAMEORIGIN"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_playground_scripts_run_only_with_the_page_nonce(studio_server: str, alice: Any) -> None:
    response = signed_in(studio_server, "alice").get("/play/")
    nonce = re.search(r"script-src 'self' 'nonce-([^']+)'(;|$)", response.headers["content-security-policy"])
    assert nonce is not None  # no 'unsafe-inline' for scripts
    tags = re.findall(r"<script\b[^>]*>", response.text)
    assert tags and all(f'nonce="{nonce.group(1)}"' in tag for tag in tags)


def test_playground_api_responses_carry_the_headers(studio_server: str, alice: Any) -> None:
    for response in (signed_in(studio_server, "alice").get("/play/config"), httpx.get(f"{studio_server}/play/")):
        assert "frame-ancestors 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"


def test_upload_is_refused_for_a_signed_in_user(studio_server: str, alice: Any) -> None:
    client = signed_in(studio_server, "alice")
    assert upload(client).status_code == 404
    assert upload(client, "/play//gradio_api//upload").status_code == 404


def test_no_user_downloads_a_file_by_path(studio_server: str, alice: Any, bob: Any) -> None:
    uploaded = upload(signed_in(studio_server, "bob"))
    path = uploaded.json()[0] if uploaded.status_code == 200 else "/tmp/gradio/any/notes.txt"
    response = signed_in(studio_server, "alice").get(f"/play/gradio_api/file={path}")
    assert response.status_code == 404
    assert b"private notes" not in response.content


# --- a model's tool calls are its text: shown, never rendered ------------------------------------------------

PAYLOAD = "<img src=x onerror=alert(1)>"


def test_a_tool_calls_name_is_escaped_in_its_card_title() -> None:
    card = tool_call_message(ToolCall(0, "call_1", f"look_up{PAYLOAD}", "{}"))
    assert card["metadata"]["title"] == "Tool call: look\\_up&lt;img src=x onerror=alert(1)&gt;"


def test_a_tool_calls_arguments_stay_inside_their_code_block() -> None:
    arguments = '{"subject": "```\\n</code><script>alert(1)</script>"}'
    card = tool_call_message(ToolCall(0, "call_1", "look_up", arguments), complete=False)
    fence, body = card["content"].split("\n", 1)
    assert fence == "````json"  # longer than any run of backticks in the arguments
    assert body == f"{arguments}\n````"


def test_a_code_block_fence_outlasts_any_backticks_in_its_text() -> None:
    assert code_block("plain") == "```\nplain\n```"
    assert code_block("a ````` b", "json") == "``````json\na ````` b\n``````"
