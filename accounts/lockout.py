"""What a locked-out login attempt gets back (django-axes' ``AXES_LOCKOUT_CALLABLE``)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

LOCKED_MESSAGE = "Too many failed logins for this account from your address; try again later."


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """429 in the API's JSON error format under /api/, the site's own page everywhere else."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": LOCKED_MESSAGE}, status=429)
    return render(request, "accounts/locked_out.html", status=429)
