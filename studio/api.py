"""The REST API at /api/v1/ (django-ninja: typed schemas and an OpenAPI 3 document from the same code).

Authentication: ``Authorization: Bearer <token>`` with a personal token (acts as its user) or a team
API key (acts in its team only), or the browser's session (with CSRF). Errors are JSON:
``{"detail": "...", "errors": {"field": ["what to fix"]}}``.
"""

from __future__ import annotations

from typing import Any

from axes.exceptions import AxesBackendPermissionDenied
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from ninja import NinjaAPI
from ninja.errors import AuthenticationError
from ninja.security import HttpBearer, SessionAuth

from accounts import services
from accounts.api import router as accounts_router
from accounts.http import error_dict
from accounts.lockout import LOCKED_MESSAGE
from datasets_app.api import router as datasets_router
from serving_app.api import router as serving_router
from training_app.api import router as training_router


class BearerAuth(HttpBearer):
    """A personal token (``atl_…``) resolves to its user; a team key (``atk_…``) to the key."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        return services.authenticate_personal_token(token) or services.authenticate_team_api_key(token)


api = NinjaAPI(
    title="Atelier API",
    version="1",
    description="Teams, members, invitations, tokens and the audit trail; datasets; base models, training jobs "
    "(settings, estimates, launch, cancel, clone, metrics) and the model registry; serving: deployments (a model "
    "version published for the OpenAI-compatible /v1 API, and the team API keys that may call it) and usage.",
    auth=[BearerAuth(), SessionAuth()],
    urls_namespace="api",
)
api.add_router("/", accounts_router)
api.add_router("/", datasets_router)
api.add_router("/", training_router)
api.add_router("/", serving_router)


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, error: ValidationError) -> HttpResponse:
    errors = error_dict(error)
    first = next(iter(errors.values()))[0]
    return api.create_response(request, {"detail": first, "errors": errors}, status=400)


@api.exception_handler(PermissionDenied)
def on_permission_denied(request: HttpRequest, error: PermissionDenied) -> HttpResponse:
    return api.create_response(request, {"detail": str(error) or "Not allowed."}, status=403)


@api.exception_handler(Http404)
def on_not_found(request: HttpRequest, error: Http404) -> HttpResponse:
    return api.create_response(request, {"detail": str(error) or "Not found."}, status=404)


@api.exception_handler(AuthenticationError)
def on_unauthenticated(request: HttpRequest, error: AuthenticationError) -> HttpResponse:
    response = api.create_response(
        request, {"detail": "Missing, malformed, expired or revoked credentials."}, status=401
    )
    response["WWW-Authenticate"] = "Bearer"
    return response


@api.exception_handler(AxesBackendPermissionDenied)
def on_locked_out(request: HttpRequest, error: AxesBackendPermissionDenied) -> HttpResponse:
    return api.create_response(request, {"detail": LOCKED_MESSAGE}, status=429)
