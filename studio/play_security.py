"""Security headers and closed file routes for the Gradio app mounted at /play/.

Django's pages get their Content-Security-Policy from django-csp; Gradio's responses never pass through
Django, so this outer middleware gives them theirs:

- **CSP.** Gradio's page carries its config in inline ``<script>`` elements, so each HTML page gets a
  fresh nonce written into its script tags and scripts are otherwise limited to the studio's own origin:
  text that reaches the page as markup still cannot run. Gradio injects its theme as ``<style>`` elements
  from script and sets ``style`` attributes everywhere, hence ``'unsafe-inline'`` for styles only.
- **Framing.** The site's pages frame /play/, nobody else may: ``frame-ancestors 'self'`` and
  ``X-Frame-Options: SAMEORIGIN`` (Django's pages answer DENY). ``X-Content-Type-Options: nosniff``.
- **No file routes.** No playground or arena component takes a file, yet Gradio's upload route accepts
  any size from any signed-in user into a shared folder and its ``file=`` route serves that folder to
  anyone signed in. Those routes answer 404 here, before Gradio sees the request.
"""

from __future__ import annotations

import json
import re
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Gradio's routes (under its ``/gradio_api`` prefix) that receive or serve files; none is needed.
FILE_ROUTES = re.compile(r"^/gradio_api/(upload|upload_progress|process_recording|file=|file/|proxy=|stream/)")
SCRIPT_TAG = re.compile(rb"<script(?![^>]*\bnonce=)")


def play_policy(nonce: str) -> str:
    """The Content-Security-Policy of a /play/ response whose inline scripts carry ``nonce``."""
    directives = {
        "default-src": "'self'",
        "script-src": f"'self' 'nonce-{nonce}'",
        "style-src": "'self' 'unsafe-inline'",
        "img-src": "'self' data: blob:",
        "font-src": "'self' data:",
        "connect-src": "'self'",
        "media-src": "'self' blob:",
        "worker-src": "'self' blob:",
        "object-src": "'none'",
        "base-uri": "'self'",
        "form-action": "'self'",
        "frame-ancestors": "'self'",
    }
    return "; ".join(f"{name} {value}" for name, value in directives.items())


def _under_prefix(path: str, prefix: str) -> str | None:
    """The path inside the mount (slashes collapsed, as the router would match it), or None when outside."""
    path = re.sub(r"/{2,}", "/", path)
    if path == prefix or path.startswith(prefix + "/"):
        return path[len(prefix) :] or "/"
    return None


class PlaygroundSecurityMiddleware:
    """Closes Gradio's file routes and adds CSP, framing and nosniff headers to every /play/ response."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inner = _under_prefix(scope["path"], self.prefix) if scope["type"] == "http" else None
        if inner is None:
            await self.app(scope, receive, send)
            return
        nonce = secrets.token_urlsafe(16)
        if FILE_ROUTES.match(inner):
            await _not_found(nonce, send)
            return
        if scope["method"] in ("GET", "HEAD") and inner == "/":
            # The page itself: ask for it uncompressed, so that its script tags can be given the nonce.
            headers = [(key, value) for key, value in scope["headers"] if key.lower() != b"accept-encoding"]
            scope = {**scope, "headers": headers}
            await self.app(scope, receive, _NoncedPage(send, nonce))
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _secured(message.get("headers", []), nonce)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _NoncedPage:
    """Buffers an HTML page, writes the nonce into its ``<script>`` tags, then sends it with the headers."""

    def __init__(self, send: Send, nonce: str) -> None:
        self.send = send
        self.nonce = nonce
        self.start: Message | None = None
        self.body = bytearray()

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        self.body += message.get("body", b"")
        if message.get("more_body", False):
            return
        headers = [(k, v) for k, v in self.start.get("headers", []) if k.lower() != b"content-length"]
        body = bytes(self.body)
        if _is_plain_html(headers):
            body = SCRIPT_TAG.sub(f'<script nonce="{self.nonce}"'.encode(), body)
        headers.append((b"content-length", str(len(body)).encode()))
        await self.send({**self.start, "headers": _secured(headers, self.nonce)})
        await self.send({"type": "http.response.body", "body": body})


def _is_plain_html(headers: list[tuple[bytes, bytes]]) -> bool:
    found = {key.lower(): value.lower() for key, value in headers}
    return found.get(b"content-type", b"").startswith(b"text/html") and b"content-encoding" not in found


def _secured(headers: list[tuple[bytes, bytes]], nonce: str) -> list[tuple[bytes, bytes]]:
    """``headers`` with the /play/ security headers in place of any the app set itself."""
    ours = {
        b"content-security-policy": play_policy(nonce).encode(),
        b"x-content-type-options": b"nosniff",
        b"x-frame-options": b"SAMEORIGIN",
        b"referrer-policy": b"same-origin",
    }
    return [(key, value) for key, value in headers if key.lower() not in ours] + list(ours.items())


async def _not_found(nonce: str, send: Send) -> None:
    body = json.dumps({"detail": "Not found: the playground takes no files."}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 404, "headers": _secured(headers, nonce)})
    await send({"type": "http.response.body", "body": body})
