"""The REST API at /api/v1/ (django-ninja: typed schemas and an OpenAPI 3 document from the same code).

Authentication: ``Authorization: Bearer <token>`` with a personal token (acts as its user) or a team
API key (acts in its team only), or the browser's session (with CSRF). Errors are JSON:
``{"detail": "...", "errors": {"field": ["what to fix"]}}``; a parameter or body that does not match the
schema gets Django Ninja's 422, ``{"detail": [{"loc": [..., "field"], "msg": "..."}]}``. Every operation's
schema lists the error statuses it can answer (``AtelierAPI.get_openapi_schema``).
"""

from __future__ import annotations

import json
from typing import Any

from axes.exceptions import AxesBackendPermissionDenied
from django.core.exceptions import PermissionDenied, RequestDataTooBig, ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.utils.datastructures import MultiValueDict
from ninja import NinjaAPI, Schema
from ninja.errors import AuthenticationError
from ninja.errors import ValidationError as InvalidParameters
from ninja.openapi.schema import OpenAPISchema
from ninja.parser import Parser
from ninja.security import HttpBearer, SessionAuth

from accounts import services
from accounts.api import Error, InvalidRequest
from accounts.api import router as accounts_router
from accounts.cost_api import router as costs_router
from accounts.http import error_dict
from accounts.lockout import LOCKED_MESSAGE
from datasets_app.api import router as datasets_router
from evals_app.api import router as evals_router
from evals_app.distill_api import router as distill_router
from evals_app.gate_api import router as gates_router
from evals_app.guard_api import router as guard_tests_router
from exports_app.api import router as exports_router
from serving_app.api import router as serving_router
from serving_app.cost_api import router as serving_costs_router
from serving_app.guard_api import router as guard_router
from tools_app.api import router as tools_router
from training_app.api import router as training_router


class BearerAuth(HttpBearer):
    """A personal token (``atl_…``) resolves to its user; a team key (``atk_…``) to the key."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        return services.authenticate_personal_token(token) or services.authenticate_team_api_key(token)


def has_nul(value: Any) -> bool:
    """Whether a parsed JSON value or parameter holds a NUL character anywhere (keys included)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(key) or has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(has_nul(item) for item in value)
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number.")


class StrictParser(Parser):
    """JSON bodies and query strings the database can hold: no NUL characters, no NaN or Infinity.

    PostgreSQL refuses both (a server error deep in a query); here they are a 400 or a 422 naming the field.
    """

    def parse_body(self, request: HttpRequest) -> Any:
        data = json.loads(request.body, parse_constant=_refuse_constant)
        if has_nul(data):
            raise ValueError("Text may not contain NUL (\\u0000) characters.")
        return data

    def parse_querydict(self, data: MultiValueDict, list_fields: list[str], request: HttpRequest) -> dict[str, Any]:
        parsed = super().parse_querydict(data, list_fields, request)
        source = "query" if data is request.GET else "form"
        errors = [
            {"type": "value_error", "loc": [source, key], "msg": "Text may not contain NUL (\\u0000) characters."}
            for key, value in parsed.items()
            if has_nul(key) or has_nul(value)
        ]
        if errors:
            raise InvalidParameters(errors)
        return parsed


class BrowserSessionAuth(SessionAuth):
    """The signed-in browser's session, CSRF-checked on writes.

    A request with no signed-in session has nothing to forge: it falls through to 401 (as a GET does)
    instead of failing Ninja's CSRF check with 403, e.g. a write with a revoked bearer token.
    """

    def _get_key(self, request: HttpRequest) -> str | None:
        if not request.user.is_authenticated:
            return None
        return super()._get_key(request)


# The error statuses every operation may answer, with when; ``documented_errors`` picks an operation's.
ERROR_RESPONSES: dict[int, tuple[type[Schema], str]] = {
    400: (Error, "The body could not be read, or a value was refused (``errors`` names the field)."),
    401: (Error, "Missing, malformed, expired or revoked credentials."),
    403: (Error, "Not allowed for your role or credentials, or the browser's CSRF check failed."),
    404: (Error, "No such team or object, or not visible to you."),
    413: (Error, "The request body is larger than the studio accepts."),
    422: (InvalidRequest, "A parameter or the body does not match the schema (``loc`` names the field)."),
}


def documented_errors(operation: dict[str, Any], path: str) -> list[int]:
    """The error statuses an operation of the OpenAPI document can answer, from what it takes."""
    statuses = []
    if operation.get("requestBody"):
        statuses += [400, 413]
    if operation.get("security"):
        statuses += [401, 403]
    if "{" in path:
        statuses.append(404)
    if operation.get("parameters") or operation.get("requestBody"):
        statuses.append(422)
    return statuses


class AtelierAPI(NinjaAPI):
    def get_openapi_schema(self, *, path_prefix: str | None = None, path_params: Any = None) -> OpenAPISchema:
        """Ninja's document, with the error responses each operation can give added where they are missing."""
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model, _ in ERROR_RESPONSES.values():
            components.setdefault(model.__name__, model.model_json_schema(ref_template="#/components/schemas/{model}"))
        for path, operations in schema["paths"].items():
            for operation in operations.values():
                responses = operation["responses"]
                for status in documented_errors(operation, path):
                    if status not in responses and str(status) not in responses:
                        model, description = ERROR_RESPONSES[status]
                        reference = {"$ref": f"#/components/schemas/{model.__name__}"}
                        responses[status] = {
                            "description": description,
                            "content": {"application/json": {"schema": reference}},
                        }
        return schema


api = AtelierAPI(
    title="Atelier API",
    version="1",
    description="Teams, members, invitations, tokens and the audit trail; datasets; base models, training jobs "
    "(settings, estimates, launch, cancel, clone, metrics) and the model registry; serving: deployments (a model "
    "version published for the OpenAI-compatible /v1 API, and the team API keys that may call it) and usage; tools: "
    "the calls waiting for a person's approval; evals: suites of prompts with references and graders, and their runs.",
    auth=[BearerAuth(), BrowserSessionAuth()],
    parser=StrictParser(),
    urls_namespace="api",
)
api.add_router("/", accounts_router)
api.add_router("/", datasets_router)
api.add_router("/", training_router)
api.add_router("/", serving_router)
api.add_router("/", serving_costs_router)
api.add_router("/", costs_router)
api.add_router("/", guard_router)
api.add_router("/", tools_router)
api.add_router("/", evals_router)
api.add_router("/", gates_router)
api.add_router("/", guard_tests_router)
api.add_router("/", distill_router)
api.add_router("/", exports_router)


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


@api.exception_handler(RequestDataTooBig)
def on_too_large(request: HttpRequest, error: RequestDataTooBig) -> HttpResponse:
    return api.create_response(request, {"detail": "The request body is too large."}, status=413)


def not_found(request: HttpRequest, path: str) -> HttpResponse:
    """Any other path under /api/v1/: a JSON 404 like the API's own, never Django's HTML page."""
    return api.create_response(request, {"detail": "Not found."}, status=404)
