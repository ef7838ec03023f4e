"""The OpenAI-compatible API on the studio's own host: ``GET /v1/models``, ``POST /v1/chat/completions`` and
``POST /v1/completions``.

    client = OpenAI(base_url="https://studio.example/v1", api_key="atk_…")
    client.chat.completions.create(model="support-bot", messages=[...], stream=True)
    client.completions.create(model="support-bot", prompt="Once upon a time", max_tokens=32)

Only team API keys (``Authorization: Bearer atk_…``) are accepted, never cookies: a key reaches the
deployments it is scoped to (``Deployment.api_keys``), by name; anything else reads as "no such model".
Each generation request is metered and counted against the key's per-minute limit before any work is done
(``serving_app.deployments.start_api_request``), its ``max_tokens`` is held to the key's ceiling, and the
answer is relayed from the inference server that serves the model (``inference.server_url``: the loopback
engine, or a route of ``INFERENCE_ROUTES``) with the deployment's name as ``model``. A client
that disconnects closes the relay, which closes the inference server's stream and stops the generation.

A parameter the endpoint does not take is refused with a 400 naming it, never ignored; the ones it takes
(``serving_app.engine.params``: tools, response_format, logprobs, n, …) go on to the inference server as
sent, which refuses those its engine cannot honour. The inference server is always asked for a stream:
a non-streamed answer is assembled here from it (every choice, its text, tool calls and log-probabilities).

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` so the official clients
raise their usual exceptions (401 ``AuthenticationError``, 404 ``NotFoundError``, 429 ``RateLimitError``…).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from accounts.models import PersonalAccessToken, TeamAPIKey
from accounts.permissions import TeamAccess
from accounts.roles import Role
from accounts.services import authenticate_team_api_key
from serving_app import completions as stored_completions
from serving_app import deployments, guardrails, releases, studio_tools
from serving_app.catalog import Servable, publish, servable_version
from serving_app.database import in_database_thread
from serving_app.engine.client import IDLE_CONNECTION_S
from serving_app.engine.params import CHAT_PARAMS, COMPLETION_PARAMS, listing, unknown_params
from serving_app.guard_filter import AnswerGuard, check_prompt
from serving_app.inference import server_url
from serving_app.models import Deployment, UsageRecord
from training_app.models import ModelVersion

# The most answers one request may ask for (``n``): each is generated in full, up to ``max_tokens``.
MAX_CHOICES = 8
# Seeds the decode loop accepts (a 64-bit generator seed).
SEED_RANGE = (-(2**63), 2**64 - 1)
# 5 s to connect; then at most 300 s between two reads of an answer (a long prompt's first token), none in all.
ENGINE_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=300.0)
# How long the end of a stream's body may take after its ``[DONE]`` for the connection to be kept.
DRAIN_SECONDS = 1.0
KEYS_PAGE_HINT = "team owners and admins create keys under Team → API keys"

View = Callable[..., Coroutine[Any, Any, HttpResponseBase]]


class OpenAIError(Exception):
    """An error answered in OpenAI's format, with its HTTP status (and headers such as ``Retry-After``)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        for name, value in self.headers.items():
            response[name] = value
        return response


def openai_endpoint(view: View) -> View:
    """Bearer-key endpoint: no CSRF (no cookies are read), errors as OpenAI error bodies."""

    @wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return await view(request, *args, **kwargs)
        except OpenAIError as error:
            return error.response()
        except RequestDataTooBig:
            return OpenAIError(413, "The request body is too large; send fewer or shorter messages.").response()

    return csrf_exempt(wrapper)


def _require_method(request: HttpRequest, method: str) -> None:
    if request.method != method:
        raise OpenAIError(405, f"{request.path} accepts {method} requests only.", code="method_not_allowed")


# --- authentication -----------------------------------------------------------------------------


def _unauthorized(message: str) -> OpenAIError:
    return OpenAIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


@dataclass(frozen=True)
class _Credentials:
    """What a request presents: the token of its ``Authorization: Bearer`` header and the team its
    ``OpenAI-Organization`` header names (the clients' ``organization=``), if any."""

    token: str
    organization: str


def _credentials(request: HttpRequest) -> _Credentials:
    """The request's credentials; 401 for a missing or malformed ``Authorization`` header."""
    header = request.headers.get("Authorization", "").strip()
    if not header:
        raise _unauthorized(
            "You didn't provide an API key. Send a team API key as `Authorization: Bearer atk_…` "
            f"(the OpenAI clients' api_key); {KEYS_PAGE_HINT}."
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("Send the API key as `Authorization: Bearer atk_…`.")
    return _Credentials(token, request.headers.get("OpenAI-Organization", "").strip())


def _key_of(credentials: _Credentials) -> TeamAPIKey:
    """The active team API key the credentials present, of the team they name; 401 for anything else."""
    key = authenticate_team_api_key(credentials.token)
    if key is None:
        if PersonalAccessToken.split(credentials.token) is not None:
            raise _unauthorized(
                f"Personal tokens (atl_…) do not work here: use a team API key (atk_…); {KEYS_PAGE_HINT}."
            )
        raise _unauthorized(
            f"Incorrect API key provided, or the key was revoked. Check the key you send, or ask for a new one; "
            f"{KEYS_PAGE_HINT}."
        )
    organization = credentials.organization
    if organization and organization != key.team.slug:
        raise _unauthorized(
            f"This API key belongs to another team than “{organization}” (the OpenAI-Organization header). Use a "
            "key of that team, or leave the organization out."
        )
    return key


async def authenticate(request: HttpRequest) -> TeamAPIKey:
    """The active team API key of the request's ``Authorization: Bearer`` header; 401 for anything else.

    An ``OpenAI-Organization`` header, when sent, must name the key's team.
    """
    return await in_database_thread(_key_of)(_credentials(request))


# --- the request body ---------------------------------------------------------------------------

MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    arguments: str


class ToolCall(BaseModel):
    """A call an assistant message made, as the client sends it back with the conversation."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        # As for the request's parameters, a null field counts as absent (clients send back ``refusal: null``).
        if isinstance(data, dict) and (unknown := unknown_params(data, MESSAGE_FIELDS)):
            raise ValueError(f"a message does not take {listing(unknown)}; leave it out")
        return data

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatMessage:
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a `tool` message needs `tool_call_id`, the id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only `assistant` messages carry `tool_calls`")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class GenerationRequest(BaseModel):
    """The parameters the studio checks itself. The endpoint's other parameters (``Endpoint.params``: unknown
    ones are refused before this model sees them) are kept as sent and passed on to the inference server."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def requested_tokens(self) -> tuple[str, int] | None:
        """(parameter, value) of the new-token limit the client asked for, if any."""
        if self.max_tokens is not None:
            return "max_tokens", self.max_tokens
        return None

    def engine_payload(self, served_name: str, max_tokens: int | None) -> dict[str, Any]:
        """The request for the inference server: as sent, under the served name, always streamed with usage."""
        payload = self.model_dump(
            exclude_none=True, exclude={"max_tokens", "max_completion_tokens", "stream_options", EXTENSION}
        )
        payload.update(model=served_name, stream=True, stream_options={"include_usage": True})  # usage: the meter
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        return payload


class ChatCompletionRequest(GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @property
    def requested_tokens(self) -> tuple[str, int] | None:
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return super().requested_tokens


class CompletionRequest(GenerationRequest):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("send one prompt per request: a string, or a list of one string")
        return prompt


@dataclass(frozen=True)
class Endpoint:
    """A generation endpoint: its path, the parameters it takes, and the object its whole answer is."""

    path: str
    params: frozenset[str]
    request: type[GenerationRequest]
    answer_object: str

    @property
    def chat(self) -> bool:
        return self.request is ChatCompletionRequest


# The studio's own request and answer field (``atelier``): resuming a run of studio tools after approval, and
# what the run did (``tools_app.runtime`` documents both). Never sent to the engine.
EXTENSION = "atelier"
CHAT = Endpoint("/v1/chat/completions", CHAT_PARAMS | {EXTENSION}, ChatCompletionRequest, "chat.completion")
COMPLETIONS = Endpoint("/v1/completions", COMPLETION_PARAMS, CompletionRequest, "text_completion")


def _invalid_json(endpoint: Endpoint) -> OpenAIError:
    needs = "`messages`" if endpoint.chat else "`prompt`"
    return OpenAIError(
        400, f"We could not parse the JSON body of your request: send a JSON object with `model` and {needs}.",
        code="invalid_json",
    )  # fmt: skip


def parse_request(raw: bytes, endpoint: Endpoint) -> GenerationRequest:
    """The request body, validated; 400 naming every parameter the endpoint does not take, or the one to fix."""
    try:
        data = json.loads(raw or b"null")
    except ValueError as error:
        raise _invalid_json(endpoint) from error
    if not isinstance(data, dict):
        raise _invalid_json(endpoint)
    if unknown := unknown_params(data, endpoint.params):
        raise OpenAIError(
            400, f"{endpoint.path} does not take {listing(unknown)}; leave {'it' if len(unknown) == 1 else 'them'} "
            "out.", param=unknown[0], code="unsupported_parameter",
        )  # fmt: skip
    try:
        return endpoint.request.model_validate(data)
    except PydanticValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = str(first["msg"]).removeprefix("Value error, ")
        raise OpenAIError(
            400, f"{param}: {message}" if param else message, param=param, code="invalid_value"
        ) from error


def _check_token_ceiling(body: GenerationRequest, key: TeamAPIKey) -> None:
    asked = body.requested_tokens
    if asked is not None and asked[1] > key.max_tokens:
        param, value = asked
        raise OpenAIError(
            400, f"{param} is {value}, but this API key allows at most {key.max_tokens} new tokens per request. "
            f"Lower {param}, or ask a team admin for a key with a higher limit.", param=param, code="invalid_value",
        )  # fmt: skip


# --- the views ----------------------------------------------------------------------------------


def _model_entry(deployment: Deployment) -> dict[str, Any]:
    created = int(deployment.created_at.timestamp())
    return {"id": deployment.name, "object": "model", "created": created, "owned_by": deployment.team.slug}


def _model_list(key: TeamAPIKey) -> list[dict[str, Any]]:
    return [_model_entry(deployment) for deployment in deployments.deployments_of_key(key)]


def _model_not_found(name: str) -> OpenAIError:
    # The same words whether the name does not exist or the key may not call it.
    return OpenAIError(
        404, f"The model `{name}` does not exist or this API key may not call it. GET /v1/models lists the "
        "deployments this key may call; a team admin adds keys on the deployment's page.",
        param="model", code="model_not_found",
    )  # fmt: skip


@openai_endpoint
async def list_models(request: HttpRequest) -> HttpResponseBase:
    """``GET /v1/models``: the deployments the key may call."""
    _require_method(request, "GET")
    key = await authenticate(request)
    data = await in_database_thread(_model_list)(key)
    return JsonResponse({"object": "list", "data": data})


@openai_endpoint
async def retrieve_model(request: HttpRequest, name: str) -> HttpResponseBase:
    """``GET /v1/models/<name>``: one deployment the key may call, or 404."""
    _require_method(request, "GET")
    key = await authenticate(request)
    deployment = await in_database_thread(deployments.find_deployment_for_key)(key, name)
    if deployment is None:
        raise _model_not_found(name)
    return JsonResponse(_model_entry(deployment))


@openai_endpoint
async def unknown_endpoint(request: HttpRequest, path: str = "") -> HttpResponseBase:
    """Any other /v1 path: OpenAI's 404, saying what this studio serves."""
    raise OpenAIError(
        404, f"Unknown endpoint {request.method} {request.path}. This studio serves GET /v1/models, "
        "GET /v1/models/{model}, POST /v1/chat/completions and POST /v1/completions.", code="unknown_url",
    )  # fmt: skip


@openai_endpoint
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    """``POST /v1/chat/completions``: stream (SSE) or return one answer from a deployment the key may call."""
    return await _generate(request, CHAT)


@openai_endpoint
async def completions(request: HttpRequest) -> HttpResponseBase:
    """``POST /v1/completions``: continue a text prompt, streamed (SSE) or whole, as chat completions do."""
    return await _generate(request, COMPLETIONS)


@dataclass(frozen=True)
class _Target:
    deployment: Deployment
    servable: Servable
    version: ModelVersion  # the version routed to answer (the deployment's, or its canary)


def _admit(
    credentials: _Credentials, body: GenerationRequest, endpoint: Endpoint
) -> tuple[TeamAPIKey, _Target, deployments.ApiRequest, bool, guardrails.Guard | None]:
    """The key the credentials present, the deployment it calls as ``body.model``, made known to the inference
    server, whether it runs studio tools on this endpoint, its guard policy, and the request metered against
    the key's limit: one trip to the database thread for all. 401 for a bad key; 404 when the key may not call
    the model; 400, unmetered, for a resume of studio tools it has none of, or log-probabilities under a guard
    policy."""
    key = _key_of(credentials)
    deployment = deployments.find_deployment_for_key(key, body.model)
    if deployment is None:
        raise _model_not_found(body.model)
    tools = endpoint.chat and studio_tools.granted(deployment)
    if not tools and getattr(body, EXTENSION, None) is not None:
        raise OpenAIError(
            400, f"`{EXTENSION}` applies only to a deployment granted studio tools; `{body.model}` has none.",
            param=EXTENSION, code="unsupported_parameter",
        )  # fmt: skip
    guard = guardrails.guard_for(deployment)
    if guard is not None and (body.model_extra or {}).get("logprobs"):
        raise OpenAIError(
            400, f"`logprobs` is not available on `{body.model}`: its guard policy checks answers before they are "
            "released, and log-probabilities would show the text unchecked. Leave `logprobs` out.",
            param="logprobs", code="unsupported_parameter",
        )  # fmt: skip
    version = releases.route(deployment)  # the current version, or the canary for its share of requests
    target = _Target(deployment, servable_version(version), version)
    publish([target.servable])  # reads the registry; writes it only when the entry is missing
    started = deployments.start_api_request(key=key, deployment=deployment, version=version)
    return key, target, started, tools, guard


async def _generate(request: HttpRequest, endpoint: Endpoint) -> HttpResponseBase:
    """Authenticate, find the deployment, meter the request and relay the inference server's answer."""
    _require_method(request, "POST")
    credentials = _credentials(request)
    try:
        body = parse_request(request.body, endpoint)
    except (OpenAIError, RequestDataTooBig):  # told only to a client whose key is good
        await in_database_thread(_key_of)(credentials)
        raise
    key, target, started, studio_tools, guard = await in_database_thread(_admit)(credentials, body, endpoint)
    if started.retry_after is not None:
        raise OpenAIError(
            429, f"Rate limit reached: this API key may make {key.requests_per_minute} requests per minute. "
            f"Retry in {started.retry_after} s, or ask a team admin for a higher limit.",
            type="requests", code="rate_limit_exceeded", headers={"Retry-After": str(started.retry_after)},
        )  # fmt: skip
    meter = _Meter(started.record)
    guarded = _Guarded(guard, key, target.deployment, request.META.get("REMOTE_ADDR")) if guard else None
    if guarded is not None:
        try:
            body, refused = await guarded.check_prompt(body, endpoint)
        except BaseException:
            await meter.finish()
            await guarded.audit()
            raise
        if refused is not None:
            meter.ok = True
            await meter.finish()
            await guarded.audit()
            return _respond(refused, body)
    meter.store = _Store.of(body, key, target)  # what is kept is what the model was sent (redacted)
    if studio_tools and isinstance(body, ChatCompletionRequest):
        return await _run_studio_tools(request, body, key, target, meter, guarded)
    try:
        _check_token_ceiling(body, key)
        relay = await _open_relay(body, key, target, endpoint)
    except BaseException:
        await meter.finish()
        if guarded is not None:
            await guarded.audit()
        raise
    if body.stream:
        stream = (
            _event_stream(relay, meter, include_usage=body.include_usage) if guarded is None
            else _guarded_stream(relay, meter, guarded, include_usage=body.include_usage)
        )  # fmt: skip
        response = StreamingHttpResponse(stream, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"
        return response
    return JsonResponse(await _whole_answer(relay, meter, endpoint, guarded))


def _respond(answer: dict[str, Any], body: GenerationRequest) -> HttpResponseBase:
    """A whole answer as the client asked for it: JSON, or replayed as a stream."""
    if not body.stream:
        return JsonResponse(answer)
    response = StreamingHttpResponse(
        _replayed(answer, include_usage=body.include_usage), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    return response


# --- guard policies: the prompt checked before generation, the answer before release ---------------------------


@dataclass
class _Guarded:
    """A request under its deployment's guard policy (``serving_app.guard_filter``): the prompt redacted or refused
    before anything is generated, each choice's text released only once checked, and what the policy did
    audited once the request ends, as the key that sent it."""

    guard: guardrails.Guard
    key: TeamAPIKey
    deployment: Deployment
    ip: str | None
    answers: dict[int, AnswerGuard] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    audited: bool = False

    async def check_prompt(
        self, body: GenerationRequest, endpoint: Endpoint
    ) -> tuple[GenerationRequest, dict[str, Any] | None]:
        """The request as the model gets it (personal data replaced), or the refusal when the policy blocks it."""
        if isinstance(body, ChatCompletionRequest):
            messages = [message.model_dump(exclude_none=True) for message in body.messages]
        else:
            assert isinstance(body, CompletionRequest)
            messages = [{"role": "user", "content": body.prompt if isinstance(body.prompt, str) else body.prompt[0]}]
        check = await check_prompt(self.guard.rules, messages, self.guard.classify)
        self.events += [event.as_dict() for event in check.events]
        if check.blocked is not None:
            return body, self.refusal(endpoint, body, check.blocked.as_dict())
        if isinstance(body, ChatCompletionRequest):
            body = body.model_copy(update={"messages": [ChatMessage.model_validate(m) for m in check.messages]})
        else:
            body = body.model_copy(update={"prompt": check.messages[0]["content"]})
        return body, None

    def refusal(self, endpoint: Endpoint, body: GenerationRequest, blocked: dict[str, Any]) -> dict[str, Any]:
        """The whole answer to a refused prompt: the policy's refusal, ``finish_reason`` content_filter."""
        text = self.guard.rules.refusal
        choices = [
            {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
             "finish_reason": "content_filter"} if endpoint.chat
            else {"index": index, "text": text, "logprobs": None, "finish_reason": "content_filter"}
            for index in range(body.n or 1)
        ]  # fmt: skip
        return {
            "id": f"guard-{uuid.uuid4().hex[:24]}", "object": endpoint.answer_object, "created": int(time.time()),
            "model": body.model, "choices": choices,
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            EXTENSION: {"guard": {"blocked": blocked["stage"], "category": blocked["category"],
                                  "revision": self.guard.revision}},
        }  # fmt: skip

    async def filter_chunk(self, chunk: dict[str, Any]) -> bool:
        """Replace each choice's new text in ``chunk`` by what the policy releases now; drop the parts of a
        blocked choice. Whether anything is left to send."""
        kept = []
        for part in chunk.get("choices", []):
            answer = self.answers.setdefault(
                int(part.get("index", 0)), AnswerGuard(self.guard.rules, self.guard.classify)
            )
            if answer.stopped is not None:
                continue  # what a blocked choice still generates goes nowhere
            delta = part.get("delta")
            text = (delta.get("content") or "") if isinstance(delta, dict) else (part.get("text") or "")
            released = await answer.feed(text)
            if part.get("finish_reason") is not None and answer.stopped is None:
                released += await answer.finish()
            if answer.stopped is not None:
                part["finish_reason"] = answer.stopped_reason
                part.pop("logprobs", None)
            if isinstance(delta, dict):
                if released or "content" in delta:
                    delta["content"] = released
                if released or part.get("finish_reason") or any(k != "content" for k in delta):
                    kept.append(part)
            else:
                part["text"] = released
                if released or part.get("finish_reason"):
                    kept.append(part)
        if "choices" in chunk:
            chunk["choices"] = kept
        return bool(kept) or bool(chunk.get("usage"))

    @property
    def all_stopped(self) -> bool:
        return bool(self.answers) and all(answer.stopped is not None for answer in self.answers.values())

    async def whole(self, answer: dict[str, Any]) -> dict[str, Any]:
        """A whole answer's choices as the policy lets them through."""
        for choice in answer.get("choices", []):
            guard = self.answers.setdefault(
                int(choice.get("index", 0)), AnswerGuard(self.guard.rules, self.guard.classify)
            )
            message = choice.get("message")
            text = (message.get("content") or "") if isinstance(message, dict) else (choice.get("text") or "")
            released = await guard.check_whole(text)
            if isinstance(message, dict):
                if message.get("content") is not None or released:
                    message["content"] = released
            else:
                choice["text"] = released
            if guard.stopped is not None:
                choice["finish_reason"] = guard.stopped_reason
                choice["logprobs"] = None
        return answer

    async def audit(self) -> None:
        """Record what the policy did (once), shielded from a client that went away."""
        if self.audited:
            return
        self.audited = True
        for answer in self.answers.values():
            self.events += [event.as_dict() for event in answer.events]
        if not self.events:
            return
        access = TeamAccess(team=self.key.team, role=Role(self.key.role), api_key=self.key)
        record = in_database_thread(guardrails.record)
        await asyncio.shield(
            record(self.events, team=self.key.team, deployment_id=self.deployment.pk, revision=self.guard.revision,
                   via="api", access=access, ip=self.ip)
        )  # fmt: skip


async def _guarded_stream(
    relay: _Relay, meter: _Meter, guarded: _Guarded, *, include_usage: bool
) -> AsyncIterator[bytes]:
    """``_event_stream`` under a guard policy: every chunk parsed, its text replaced by what the policy releases.
    Once every choice is blocked the relay is closed, which stops the generation."""
    try:
        async for payloads in relay.batches():
            events: list[bytes] = []
            for payload in payloads:
                chunk = relay.parse(payload)
                if "error" in chunk:
                    yield b"".join([*events, _sse(chunk)])
                    return
                keep = await guarded.filter_chunk(chunk)
                meter.observe(chunk)
                if not include_usage:
                    chunk.pop("usage", None)
                    keep = keep and bool(chunk.get("choices"))
                if keep:
                    events.append(_sse(chunk))
            if events:
                yield b"".join(events)
            if guarded.all_stopped:
                break
        meter.ok = True
        await meter.finish()
        yield b"data: [DONE]\n\n"
    except Exception as error:  # headers are sent: report it in the stream, as OpenAI does
        yield _sse(OpenAIError(500, f"The generation stopped: {error}", type="server_error").body())
    finally:
        await relay.close()
        await meter.finish()
        await guarded.audit()


# --- relaying the inference server's stream ----------------------------------------------------


@dataclass
class _Store:
    """What a deployment that stores completions keeps of one request: the conversation sent, and the first
    choice's answer as it streams by (``serving_app.completions``)."""

    deployment: Deployment
    version: ModelVersion
    key: TeamAPIKey
    messages: list[dict[str, Any]]
    choice: _Choice = field(default_factory=lambda: _Choice(0))

    @classmethod
    def of(cls, body: GenerationRequest, key: TeamAPIKey, target: _Target) -> _Store | None:
        if not target.deployment.store_completions:
            return None
        if isinstance(body, ChatCompletionRequest):
            messages = [message.model_dump(exclude_none=True) for message in body.messages]
        else:
            assert isinstance(body, CompletionRequest)
            prompt = body.prompt if isinstance(body.prompt, str) else "".join(body.prompt)
            messages = [{"role": "user", "content": prompt}]
        return cls(target.deployment, target.version, key, messages)

    def observe(self, chunk: dict[str, Any]) -> None:
        for part in chunk.get("choices", []):
            if int(part.get("index", 0)) == 0:
                self.choice.add(part)

    def answered(self, answer: dict[str, Any]) -> None:
        """Take the first choice of a whole answer (a studio-tools run's final answer)."""
        choices = answer.get("choices") or []
        if choices:
            message = choices[0].get("message") or {}
            self.choice.message["content"] = message.get("content") or ""
            self.choice.tool_calls = dict(enumerate(message.get("tool_calls") or []))
            self.choice.finish_reason = choices[0].get("finish_reason")

    async def keep(self) -> None:
        whole = self.choice.whole(chat=True)
        message = whole["message"]
        text = message.get("content") or "".join(self.choice.text)
        await in_database_thread(stored_completions.keep)(
            deployment=self.deployment, version=self.version, key=self.key, messages=self.messages, answer=text,
            tool_calls=message.get("tool_calls") or [], finish_reason=whole["finish_reason"] or "",
        )  # fmt: skip


@dataclass
class _Meter:
    """The request's usage row, finished exactly once with the tokens the inference server reported (and the
    exchange stored when it ended well, where the deployment stores completions)."""

    record: UsageRecord
    ok: bool = False
    usage: dict[str, int] = field(default_factory=dict)
    deltas: int = 0
    done: bool = False
    store: _Store | None = None

    async def finish(self) -> None:
        if self.done:
            return
        self.done = True
        # No usage chunk (the client went away): each delta is at least one token.
        completion = self.usage.get("completion_tokens", self.deltas)
        prompt = self.usage.get("prompt_tokens", 0)
        finish = in_database_thread(deployments.finish_api_request)
        # Shielded: a request cancelled by a client disconnect still records what it used.
        await asyncio.shield(finish(self.record, ok=self.ok, prompt_tokens=prompt, completion_tokens=completion))
        if self.ok and self.store is not None:
            await asyncio.shield(self.store.keep())

    def count(self, payload: bytes) -> None:
        """Count a chunk relayed unparsed (it carries no usage) as one delta if it brings text or a tool call."""
        if _TEXT_DELTA.search(payload):
            self.deltas += 1
        if self.store is not None:  # only then is every chunk parsed
            self.store.observe(json.loads(payload))

    def observe(self, chunk: dict[str, Any]) -> None:
        """Take the usage (all choices together) from the chunk that carries it; count the deltas until then."""
        if chunk.get("usage"):
            self.usage = {name: int(chunk["usage"].get(name) or 0) for name in ("prompt_tokens", "completion_tokens")}
        for choice in chunk.get("choices", []):
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("tool_calls") or choice.get("text"):
                self.deltas += 1
        if self.store is not None:
            self.store.observe(chunk)


_DATA, _DONE = b"data: ", b"[DONE]"
# A chunk with a non-empty piece of text or a tool call: at least one token (the meter's fallback count).
_TEXT_DELTA = re.compile(rb'"(?:content|text)": ?"[^"]|"tool_calls": ?\[')
# ``"usage": null`` with the comma that joins it to the other keys (the in-process engine writes it).
_NULL_USAGE = re.compile(rb', ?"usage": ?null|"usage": ?null(?:, ?)?')


@dataclass
class _Relay:
    """An open stream from the engine (the model's vLLM server or the inference server), and the deployment name
    it is answered under.

    The server's SSE lines are passed on as bytes: ``model`` is renamed by replacing its JSON text, and only
    the lines that carry an error or the usage are parsed (JSON escapes the quotes inside strings, so a key
    such as ``"usage"`` cannot be matched by an answer's text).
    """

    response: aiohttp.ClientResponse
    name: str
    served_name: str
    renames: tuple[tuple[bytes, bytes], ...] = field(init=False)

    def __post_init__(self) -> None:
        served, name = json.dumps(self.served_name), json.dumps(self.name)
        self.renames = tuple(
            (f'"model":{space}{served}'.encode(), f'"model":{space}{name}'.encode()) for space in ("", " ")
        )

    async def close(self) -> None:
        """Keep the connection for another request when the answer was read to its end; else close it, which
        stops the generation (a client that went away)."""
        if self.response.content.at_eof():
            self.response.release()
        else:
            self.response.close()

    async def batches(self) -> AsyncIterator[list[bytes]]:
        """The payloads of the server's ``data:`` lines, those of one network read together, until ``[DONE]``."""
        pending = b""
        received_bytes = self.response.content.iter_any()
        async for received in received_bytes:
            *lines, pending = (pending + received).split(b"\n")
            payloads = [line.rstrip(b"\r").removeprefix(_DATA) for line in lines if line.startswith(_DATA)]
            if _DONE in payloads:
                yield payloads[: payloads.index(_DONE)]
                await _read_to_the_end(received_bytes)
                return
            if payloads:
                yield payloads
        last = pending.rstrip(b"\r")  # a last line without its line break
        if last.startswith(_DATA) and last != _DATA + _DONE:
            yield [last.removeprefix(_DATA)]

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """The server's SSE chunks as dicts (``model`` renamed to the deployment), until ``[DONE]``."""
        async for payloads in self.batches():
            for payload in payloads:
                yield self.parse(payload)

    def parse(self, payload: bytes) -> dict[str, Any]:
        chunk: dict[str, Any] = json.loads(payload)
        if "model" in chunk:
            chunk["model"] = self.name
        if "error" in chunk:
            chunk["error"]["message"] = self.rename(str(chunk["error"].get("message", "generation failed")))
        return chunk

    def event(self, payload: bytes, *, include_usage: bool) -> bytes:
        """A chunk without usage or error as the client's SSE event: ``model`` renamed, and without the server's
        ``"usage": null`` unless the client asked for usage."""
        if not include_usage and b'"usage"' in payload:
            payload = _NULL_USAGE.sub(b"", payload, count=1)
        for served, name in self.renames:
            payload = payload.replace(served, name)
        return _DATA + payload + b"\n\n"

    def rename(self, message: str) -> str:
        return message.replace(self.served_name, self.name)


async def _read_to_the_end(rest: AsyncIterator[bytes]) -> None:
    """Read what follows ``[DONE]`` (the end of the body, at once), so that the connection serves another
    request; one whose body does not end soon is closed instead."""
    with contextlib.suppress(TimeoutError, aiohttp.ClientError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in rest:
                pass


def _plain(payload: bytes) -> bool:
    """Whether a chunk may go to the client as it is (renamed): it reports no error and no usage, though it may
    say ``"usage": null``."""
    if b'"error"' in payload:
        return False
    usages = payload.count(b'"usage"')
    return usages == 0 or (usages == 1 and _NULL_USAGE.search(payload) is not None)


_SESSIONS: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
_LIFETIMES: dict[asyncio.AbstractEventLoop, AsyncIterator[None]] = {}


async def _engine_session() -> aiohttp.ClientSession:
    """The HTTP client for the inference and vLLM servers, shared by the requests of one event loop.

    aiohttp rather than httpx: relaying a 64-token answer from a stand-in server on loopback, 16 at once, httpx
    took 130 µs of CPU per chunk read and 3.8 ms per request, aiohttp 38 µs and 0.5 ms (its parser is C; h11's
    is Python). That CPU is taken from the vLLM server beside the studio on a small machine.

    One session per loop, as its connections belong to the loop that opened them (the ASGI server runs one;
    tests run others). Kept connections are reused; the session is closed when its loop ends
    (``_session_lifetime``).
    """
    loop = asyncio.get_running_loop()
    session = _SESSIONS.get(loop)
    if session is None:
        for closed in [other for other in _SESSIONS if other.is_closed()]:  # ended without closing its generators
            _SESSIONS.pop(closed, None)
            _LIFETIMES.pop(closed, None)
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=IDLE_CONNECTION_S)
        session = _SESSIONS[loop] = aiohttp.ClientSession(connector=connector, timeout=ENGINE_TIMEOUT)
        lifetime = _LIFETIMES[loop] = _session_lifetime(loop, session)
        await anext(lifetime)
    return session


async def _session_lifetime(loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession) -> AsyncIterator[None]:
    """Closes ``session`` when its event loop ends: an async generator started on a loop is closed by the loop's
    ``shutdown_asyncgens``, which ``asyncio.run`` (uvicorn, asgiref's ``async_to_sync``) calls before closing it."""
    try:
        yield
    finally:
        _SESSIONS.pop(loop, None)
        _LIFETIMES.pop(loop, None)
        await session.close()


async def _open_relay(body: GenerationRequest, key: TeamAPIKey, target: _Target, endpoint: Endpoint) -> _Relay:
    """Start the generation on the model's vLLM server (``_direct_route``) or else on the inference server; raises
    ``OpenAIError`` for a refusal before the first token.

    Without a ``max_tokens`` from the client, the key's ceiling is asked for. When that does not fit the
    model's context next to the prompt, the request is sent without one: the server then generates at
    most what the context leaves, which is less than the key's ceiling.
    """
    asked = body.requested_tokens
    context = target.servable.context_length
    if asked is not None:
        max_tokens: int | None = asked[1]
    else:
        max_tokens = None if context and key.max_tokens >= context else key.max_tokens
    served_name = target.servable.served_name
    client = await _engine_session()
    direct = await _direct_route(client, target, max_tokens)
    if direct is not None:  # straight to the model's vLLM server, which answers under its own name for it
        url, vllm_name = direct
        payload = body.engine_payload(vllm_name, max_tokens)
        response = await _send_direct(client, f"{url}{endpoint.path}", payload)
        if response is not None:
            return _Relay(response, target.deployment.name, vllm_name)
        _forget_route(target)  # gone, restarted or without the adapter now: ask again next time
    try:
        response = await _send(client, endpoint, body.engine_payload(served_name, max_tokens), target)
    except OpenAIError as error:
        if not (asked is None and max_tokens is not None and error.code == "context_length_exceeded"):
            raise
        response = await _send(client, endpoint, body.engine_payload(served_name, None), target)
    return _Relay(response, target.deployment.name, served_name)


# How long the inference server's answer to /v1/route is reused for a model. Asking costs a round trip and CPU on
# both sides for every request; a stale answer costs little: a vLLM server that went away or dropped the adapter
# refuses the request, which then goes through the inference server (it reloads the adapter) and the answer is
# asked for again. The inference server's least-recently-used adapter count sees a busy model at this interval.
ROUTE_TTL_SECONDS = 5.0
_ROUTES: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
# The questions to /v1/route under way, by event loop (a task belongs to its loop), server and model.
_ASKING: dict[tuple[asyncio.AbstractEventLoop, str, str], asyncio.Task[dict[str, Any]]] = {}


async def _direct_route(
    client: aiohttp.ClientSession, target: _Target, max_tokens: int | None
) -> tuple[str, str] | None:
    """(the vLLM server's URL, vLLM's name for the model) when the request may go straight to the model's vLLM
    server, else None: through the inference server (the in-process engine, a vLLM server that is starting or
    unreachable, a ``max_tokens`` over the server's ceiling — whose refusals the inference server words).

    Sending it there instead of through the inference server saves relaying every token twice; the inference
    server still chooses the server and loads the adapter (``/v1/route``, its answer reused for
    ``ROUTE_TTL_SECONDS``)."""
    inference = server_url(target.servable).rstrip("/")
    route = await _route(client, inference, target.servable.served_name)
    if route.get("engine") != "vllm":
        return None
    ceiling = route.get("ceiling")
    if max_tokens is not None and isinstance(ceiling, int) and max_tokens > ceiling:
        return None
    url, name = route.get("url"), route.get("model")
    if not (isinstance(url, str) and isinstance(name, str)):
        return None
    # A vLLM server on the inference server's loopback is this process's only when the inference server is too
    # (one machine, as in make run); from another container or host that address would be someone else's.
    if _loopback(url) and not _loopback(inference):
        return None
    return url.rstrip("/"), name


async def _route(client: aiohttp.ClientSession, inference: str, served_name: str) -> dict[str, Any]:
    """The inference server's /v1/route answer for ``served_name`` (reused while fresh), or {} when it gave none.

    Requests that find no fresh answer at once (a burst after a quiet spell) share one question to the
    inference server instead of asking it once each."""
    now = time.monotonic()
    cached = _ROUTES.get((inference, served_name))
    if cached is not None and cached[0] > now:
        return cached[1]
    loop = asyncio.get_running_loop()
    asking = _ASKING.get((loop, inference, served_name))
    if asking is None:
        asking = _ASKING[(loop, inference, served_name)] = loop.create_task(_ask_route(client, inference, served_name))
        asking.add_done_callback(lambda _: _ASKING.pop((loop, inference, served_name), None))
    return await asyncio.shield(asking)  # one client going away does not cancel the others' answer


async def _ask_route(client: aiohttp.ClientSession, inference: str, served_name: str) -> dict[str, Any]:
    try:
        async with client.post(f"{inference}/v1/route", json={"model": served_name}) as response:
            route = await response.json(content_type=None) if response.status == 200 else {}
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}
    if not isinstance(route, dict):
        return {}
    if route.get("engine") == "vllm":  # a builtin or absent answer is not kept: the model may move to vLLM soon
        _ROUTES[(inference, served_name)] = (time.monotonic() + ROUTE_TTL_SECONDS, route)
    return route


def _forget_route(target: _Target) -> None:
    _ROUTES.pop((server_url(target.servable).rstrip("/"), target.servable.served_name), None)


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


async def _send_direct(
    client: aiohttp.ClientSession, url: str, payload: dict[str, Any]
) -> aiohttp.ClientResponse | None:
    """vLLM's streamed answer, or None when the request should go through the inference server instead: vLLM
    is not reachable from here or refused it (a refusal is then worded by the inference server, and an adapter
    unloaded since the route was given is loaded again)."""
    try:
        response = await client.post(url, json=payload)
    except (aiohttp.ClientError, TimeoutError):
        return None
    if response.status < 400:
        return response
    response.close()
    return None


async def _send(
    client: aiohttp.ClientSession, endpoint: Endpoint, payload: dict[str, Any], target: _Target
) -> aiohttp.ClientResponse:
    url = f"{server_url(target.servable).rstrip('/')}{endpoint.path}"
    try:
        response = await client.post(url, json=payload)
    except (aiohttp.ClientError, TimeoutError) as error:
        raise OpenAIError(
            503, "The studio's inference server is not answering; retry in a minute. If this lasts, ask the "
            "studio's operator to start it (python -m serving_app.engine).", type="server_error",
            code="service_unavailable", headers={"Retry-After": "30"},
        ) from error  # fmt: skip
    if response.status < 400:
        return response
    async with response:
        try:
            body = await response.read()
        except (aiohttp.ClientError, TimeoutError):
            body = b""
    raise _engine_error(response, body, target)


def _engine_error(response: aiohttp.ClientResponse, body: bytes, target: _Target) -> OpenAIError:
    """The inference server's refusal (``body``), in the client's terms (the deployment's name, not the served
    one)."""
    try:
        error = json.loads(body)["error"]
        message, param, code = str(error.get("message")), error.get("param"), error.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        message = body[:500].decode(errors="replace") or response.reason or str(response.status)
        param, code = None, None
    message = message.replace(target.servable.served_name, target.deployment.name)
    code = code if isinstance(code, str) else None  # vLLM puts the HTTP status there
    status = response.status
    if status == 400:
        return OpenAIError(400, message, param=param, code=code)
    if status == 429:  # the model's queue is full: a short wait helps
        return OpenAIError(429, message, type="requests", code="engine_overloaded", headers={"Retry-After": "2"})
    if status == 503:  # the model's vLLM server is starting or restarting: it says how long to wait
        retry_after = response.headers.get("Retry-After", "10")
        return OpenAIError(
            503, f"The deployment `{target.deployment.name}` is starting: {message}", type="server_error",
            code="model_starting", headers={"Retry-After": retry_after},
        )  # fmt: skip
    return OpenAIError(
        503 if status == 404 else 500, f"The deployment `{target.deployment.name}` cannot answer now: {message}. "
        "Retry shortly; if this lasts, ask a team admin to check the deployment's model.",
        type="server_error", code="model_unavailable",
    )  # fmt: skip


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def _event_stream(relay: _Relay, meter: _Meter, *, include_usage: bool) -> AsyncIterator[bytes]:
    """The client's SSE stream: the server's chunks under the deployment's name, usage only when asked for."""
    try:
        async for payloads in relay.batches():
            events = []
            for payload in payloads:
                if _plain(payload):
                    meter.count(payload)
                    events.append(relay.event(payload, include_usage=include_usage))
                    continue
                chunk = relay.parse(payload)
                if "error" in chunk:
                    yield b"".join([*events, _sse(chunk)])
                    return
                meter.observe(chunk)
                if not include_usage:
                    if not chunk.get("choices"):
                        continue  # the usage-only chunk the studio asked for itself
                    chunk.pop("usage", None)
                events.append(_sse(chunk))
            if events:
                yield b"".join(events)
        meter.ok = True
        await meter.finish()  # metered before the client sees the end, so its usage is there when it looks
        yield b"data: [DONE]\n\n"
    except Exception as error:  # headers are sent: report it in the stream, as OpenAI does
        yield _sse(OpenAIError(500, f"The generation stopped: {error}", type="server_error").body())
    finally:
        await relay.close()  # a client disconnect lands here too: closing stops the generation
        await meter.finish()


@dataclass
class _Choice:
    """One choice of a whole answer, assembled from its stream deltas."""

    index: int
    text: list[str] = field(default_factory=list)  # a text completion's pieces
    message: dict[str, str] = field(default_factory=dict)  # a chat message's string fields, concatenated
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    logprobs: dict[str, list[Any]] | None = None
    finish_reason: str | None = None

    def add(self, part: dict[str, Any]) -> None:
        """Fold in one chunk's part for this choice."""
        for name, value in (part.get("delta") or {}).items():
            if name == "tool_calls":
                for call in value or []:
                    self._add_tool_call(call)
            elif name != "role" and isinstance(value, str):  # content, and reasoning where the server sends it
                self.message[name] = self.message.get(name, "") + value
        if isinstance(part.get("text"), str):
            self.text.append(part["text"])
        if part.get("logprobs"):  # chat: {"content": [...]}; text: {"tokens": [...], "token_logprobs": [...], …}
            self.logprobs = self.logprobs or {}
            for name, value in part["logprobs"].items():
                if isinstance(value, list):
                    self.logprobs.setdefault(name, []).extend(value)
        self.finish_reason = part.get("finish_reason") or self.finish_reason

    def _add_tool_call(self, delta: dict[str, Any]) -> None:
        # The first delta of a call brings its id, type and function name; the next ones its arguments, in pieces.
        call = self.tool_calls.setdefault(
            int(delta.get("index", len(self.tool_calls))),
            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
        )
        for name in ("id", "type"):
            if delta.get(name):
                call[name] = delta[name]
        function = delta.get("function") or {}
        if function.get("name"):
            call["function"]["name"] = function["name"]
        call["function"]["arguments"] += function.get("arguments") or ""

    def whole(self, *, chat: bool) -> dict[str, Any]:
        if not chat:
            return {"index": self.index, "text": "".join(self.text), "logprobs": self.logprobs,
                    "finish_reason": self.finish_reason}  # fmt: skip
        fields = dict(self.message)
        content = fields.pop("content", None)
        message: dict[str, Any] = {"role": "assistant", "content": content or ("" if not self.tool_calls else None)}
        message.update(fields)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[index] for index in sorted(self.tool_calls)]
        return {"index": self.index, "message": message, "logprobs": self.logprobs, "finish_reason": self.finish_reason}


async def _collect(relay: _Relay, endpoint: Endpoint, observe: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """A non-streamed answer (``chat.completion`` or ``text_completion``) without its usage, assembled from the
    stream (so a disconnect still stops it): every choice by index with its text, tool calls, log-probabilities
    and finish reason. ``observe`` sees every chunk (the usage comes in one of them). Closes the relay."""
    first: dict[str, Any] = {}
    choices: dict[int, _Choice] = {}
    try:
        async for chunk in relay.chunks():
            if "error" in chunk:
                raise _stream_error(chunk["error"], answered=bool(choices))
            first = first or chunk
            observe(chunk)
            for part in chunk.get("choices", []):
                index = int(part.get("index", 0))
                choices.setdefault(index, _Choice(index)).add(part)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise OpenAIError(500, f"The generation stopped: {error}", type="server_error") from error
    finally:
        await relay.close()
    return {
        "id": first.get("id", ""),
        "object": endpoint.answer_object,
        "created": first.get("created", int(time.time())),
        "model": relay.name,
        "choices": [choices[index].whole(chat=endpoint.chat) for index in sorted(choices)],
    }


def _stream_error(error: dict[str, Any], *, answered: bool) -> OpenAIError:
    """An error the engine reported in its stream, for a client waiting for the whole answer. A refusal of the
    request (400 or 422) before any answer keeps its status and names the parameter: vLLM checks some parameters
    only once the stream has begun (``logit_bias`` against the vocabulary). Anything else is a 500."""
    message, code, param = str(error.get("message", "generation failed")), error.get("code"), error.get("param")
    if not answered and code in (400, 422):
        return OpenAIError(code, message, param=param if isinstance(param, str) else None)
    return OpenAIError(500, message, type="server_error")


async def _whole_answer(
    relay: _Relay, meter: _Meter, endpoint: Endpoint, guarded: _Guarded | None = None
) -> dict[str, Any]:
    """The whole answer (``_collect``) with the usage of all its choices, metered (and checked, under a guard
    policy, before anything is kept or returned)."""
    try:
        answer = await _collect(relay, endpoint, meter.observe)
        if guarded is not None:
            answer = await guarded.whole(answer)
            if meter.store is not None:
                meter.store.answered(answer)
        meter.ok = True
    finally:
        await meter.finish()
        if guarded is not None:
            await guarded.audit()
    prompt, completion = meter.usage.get("prompt_tokens", 0), meter.usage.get("completion_tokens", meter.deltas)
    answer["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return answer


# --- studio tools: the tools app runs the loop, this module generates each step --------------------------------


async def _run_studio_tools(
    request: HttpRequest, body: ChatCompletionRequest, key: TeamAPIKey, target: _Target, meter: _Meter,
    guarded: _Guarded | None = None,
) -> HttpResponseBase:  # fmt: skip
    """Answer through the tools app's loop: each step a whole generation, all of them metered as one request.
    A streamed request gets the final answer as a stream once the run ends (tool calls run in between)."""
    runner = studio_tools.runner()
    assert runner is not None
    totals = {"prompt_tokens": 0, "completion_tokens": 0}

    async def step(messages: list[dict[str, Any]], tools: list[dict[str, Any]], tool_choice: Any) -> dict[str, Any]:
        data = body.model_dump(exclude_none=True, exclude={EXTENSION, "stream", "stream_options", "tool_choice"})
        data.update(messages=messages, tools=tools)
        if tool_choice is not None:
            data["tool_choice"] = tool_choice
        step_body = ChatCompletionRequest.model_validate(data)
        relay = await _open_relay(step_body, key, target, CHAT)
        usage: dict[str, int] = {}

        def observe(chunk: dict[str, Any]) -> None:
            if chunk.get("usage"):
                usage.update({name: int(chunk["usage"].get(name) or 0) for name in totals})

        answer = await _collect(relay, CHAT, observe)
        for name in totals:
            totals[name] += usage.get(name, 0)
        return answer

    try:
        _check_token_ceiling(body, key)
        answer = await runner.run(api_tool_run(body, key, target.deployment, request.META.get("REMOTE_ADDR"), step))
        if guarded is not None:  # the final answer: what the calls brought back is checked with it
            answer = await guarded.whole(answer)
        meter.ok = True
        if meter.store is not None:
            meter.store.answered(answer)
    finally:
        meter.usage = dict(totals)
        await meter.finish()
        if guarded is not None:
            await guarded.audit()
    prompt, completion = totals["prompt_tokens"], totals["completion_tokens"]
    answer["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    if not body.stream:
        return JsonResponse(answer)
    response = StreamingHttpResponse(
        _replayed(answer, include_usage=body.include_usage), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    return response


def api_tool_run(
    body: ChatCompletionRequest, key: TeamAPIKey, deployment: Deployment, ip: str | None, step: studio_tools.Step
) -> studio_tools.ToolRun:
    """A /v1 chat request as the tools app's runner takes it: run by the key, with what the client asked for."""
    extra = body.model_extra or {}
    return studio_tools.ToolRun(
        access=TeamAccess(team=key.team, role=Role(key.role), api_key=key), deployment=deployment,
        messages=[message.model_dump(exclude_none=True) for message in body.messages], step=step, ip=ip, via="api",
        client_tools=list(extra.get("tools") or []), tool_choice=extra.get("tool_choice"), choices=body.n or 1,
        extension=extra.get(EXTENSION),
    )  # fmt: skip


async def _replayed(answer: dict[str, Any], *, include_usage: bool) -> AsyncIterator[bytes]:
    """A whole ``chat.completion`` as the chunks of a stream: per choice its message, then its finish reason;
    the ``atelier`` field on the last chunk, the usage after it when asked for."""
    base = {
        "id": answer["id"],
        "object": "chat.completion.chunk",
        "created": answer["created"],
        "model": answer["model"],
    }
    for choice in answer["choices"]:
        message = choice["message"]
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": index, **call} for index, call in enumerate(message["tool_calls"])]
        yield _sse({**base, "choices": [{"index": choice["index"], "delta": delta, "finish_reason": None}]})
        last = {"index": choice["index"], "delta": {}, "finish_reason": choice["finish_reason"]}
        yield _sse({**base, "choices": [last], EXTENSION: answer.get(EXTENSION)})
    if include_usage:
        yield _sse({**base, "choices": [], "usage": answer["usage"]})
    yield b"data: [DONE]\n\n"
