"""``/v1``, the OpenAI-compatible API, is answered on the event loop without the page middleware.

A ``/v1`` request carries a team API key in its ``Authorization`` header and nothing else the pages use: no
session, cookie, CSRF token, message or team in the URL applies to it. The page middleware is sync (WhiteNoise,
the team scope), so under ASGI Django would run every ``/v1`` request through a thread of its own and back to the
event loop before the async view streams, with the session, CSRF, authentication and message middleware working
in between for nothing; at 16 concurrent streams on two cores that costs the API a fifth of its throughput
(``bench/serving_concurrency.py``). This middleware comes first in ``MIDDLEWARE``, applies Django's security
middleware (HTTPS redirect, HSTS, nosniff, referrer policy: plain functions of the settings and the request), and
calls the async view that ``/v1``'s URLconf names. An exception from the view still becomes Django's 500
response: Django wraps every middleware in its exception handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.middleware.security import SecurityMiddleware
from django.urls import resolve

PREFIX = "/v1/"


class OpenAIRouteMiddleware:
    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]]) -> None:
        self.get_response = get_response
        self.security = SecurityMiddleware(get_response)
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if not request.path_info.startswith(PREFIX):
            return await self.get_response(request)
        match = resolve(request.path_info)
        if not iscoroutinefunction(match.func):  # every /v1 view is async; anything else takes the usual way
            return await self.get_response(request)
        response = self.security.process_request(request)
        if response is None:
            request.resolver_match = match
            response = await match.func(request, *match.args, **match.kwargs)
        return self.security.process_response(request, response)
