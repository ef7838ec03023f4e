"""Refuse cross-origin state changes to the Gradio mount (it has no CSRF token of its own)."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SameOriginMiddleware:
    """For non-GET requests under ``protected_prefix``: the ``Origin`` must be this host (or trusted),
    and the browser must not label the request cross-site. (Framing and CSP headers for the mount:
    studio/play_security.py.)
    """

    def __init__(self, app: ASGIApp, protected_prefix: str, trusted_origins: list[str]) -> None:
        self.app = app
        self.prefix = protected_prefix
        self.trusted = {origin.rstrip("/") for origin in trusted_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1"): value.decode("latin-1") for key, value in scope["headers"]}
        if scope["method"] not in SAFE_METHODS and not self._same_origin(headers):
            body = json.dumps({"detail": "Cross-origin request refused."}).encode()
            await send(
                {"type": "http.response.start", "status": 403, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

    def _same_origin(self, headers: dict[str, str]) -> bool:
        origin = headers.get("origin")
        if origin is not None and origin.rstrip("/") in self.trusted:
            return True
        if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        if origin is None:
            return True  # not a browser cross-origin request: browsers send Origin on every non-GET fetch
        return urlsplit(origin).netloc == headers.get("host", "")
