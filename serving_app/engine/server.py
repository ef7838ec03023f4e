"""The OpenAI-compatible HTTP API: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions`` (+ SSE streams).

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a request the client
can fix, 404 for an unknown model, 429 when too many requests already wait for the same base model, 500
when a registered model cannot be loaded. ``/admin/reload`` re-reads the registry and ``/admin/status``
shows what is loaded; the server listens on loopback only and the studio fronts it for users.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from serving_app.engine.generation import GenerationResult, SamplingParams
from serving_app.engine.params import (
    BUILTIN_CHAT_PARAMS,
    BUILTIN_COMPLETION_PARAMS,
    CHAT_PARAMS,
    COMPLETION_PARAMS,
    listing,
    unknown_params,
)
from serving_app.engine.pool import Event, LoadedBase, ModelPool, ModelUnavailable, QueueFull
from serving_app.engine.registry import Registry, ServedModel
from serving_app.engine.vllm_server import (
    Unavailable,
    VllmServer,
    VllmSupervisor,
    adapter_modules,
    adapter_problem,
    adapter_rank,
    served_modules,
)

logger = logging.getLogger(__name__)

# The most new tokens one request may ask for, whatever the model's context allows.
MAX_TOKENS_CEILING = 4096
MAX_STOP_STRINGS = 4


class ApiError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
        code: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# Per endpoint: the parameters it takes on vLLM, and on the in-process engine.
ENDPOINT_PARAMS = {
    "/v1/chat/completions": (CHAT_PARAMS, BUILTIN_CHAT_PARAMS),
    "/v1/completions": (COMPLETION_PARAMS, BUILTIN_COMPLETION_PARAMS),
}


class ChatMessage(BaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class CompletionParams(BaseModel):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None


class ChatRequest(CompletionParams):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(CompletionParams):
    prompt: str | list[str]


def create_app(
    registry: Registry,
    pool: ModelPool,
    *,
    max_tokens_ceiling: int = MAX_TOKENS_CEILING,
    vllm: VllmSupervisor | None = None,
    preload: bool = False,
) -> FastAPI:
    """The FastAPI application serving ``registry``'s models: on ``vllm`` where it can (see ``_route``), else
    from ``pool`` in this process. ``preload``: start the vLLM servers of the registry's bases at once."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if vllm is not None and preload:
            for base in sorted({served.base for served in registry.models().values()}):
                await vllm.server(base, *_lora_needed(base))
        yield
        if vllm is not None:
            await vllm.close()

    app = FastAPI(title="Atelier inference server", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    known = {"models": registry.models()}  # the registry last seen, to unload adapters it dropped

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", "invalid request"))
        return ApiError(400, message, param=param).response()

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        models = registry.models()
        created = int(time.time())
        data = [{"id": name, "object": "model", "created": created, "owned_by": "atelier"} for name in models]
        return {"object": "list", "data": data}

    @app.post("/admin/reload")
    async def reload_registry() -> dict[str, Any]:
        registry.reload()
        await _forget_dropped_adapters()
        return {"models": sorted(registry.models()), "problem": registry.problem}

    @app.get("/admin/status")
    async def status() -> dict[str, Any]:
        stats = pool.stats
        return {
            "loaded": pool.loaded(),
            "vllm": vllm.status() if vllm is not None else None,
            "engines": {name: _engine_choice(served)[1] for name, served in registry.models().items()},
            "registry_problem": registry.problem,
            "generations": stats.generations,
            "cancelled": stats.cancelled,
            "evictions": stats.evictions,
        }

    @app.post("/v1/route")
    async def route(request: Request) -> JSONResponse:
        """Where a client may send its request for ``model`` itself, so that the answer is not relayed twice: the
        model's vLLM server and the name vLLM serves it under (its adapter loaded first), or ``{"engine":
        "builtin"}`` when only this server answers it. A client must check ``max_tokens`` against ``ceiling``
        and the parameters against vLLM's (``ENDPOINT_PARAMS``) itself, and send here what does not fit."""
        name = (await _json_body(request)).get("model")
        if not isinstance(name, str) or not name:
            raise ApiError(400, "model: the name of a served model is required", param="model")
        served = await _served(name)
        server = await _route(served)
        if server is None:
            return JSONResponse({"engine": "builtin"})
        try:
            vllm_name = await server.model_name(served.name, served.adapter)
        except Unavailable as exc:
            raise _unavailable(served.name, str(exc), exc.retry_after) from exc
        except httpx.TransportError as exc:
            raise _unavailable(served.name, f"its vLLM server is not answering ({exc.__class__.__name__})") from exc
        return JSONResponse({"engine": "vllm", "url": server.url, "model": vllm_name, "ceiling": max_tokens_ceiling})

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        body, served, forwarded = await _take(request, ChatRequest, "/v1/chat/completions")
        if forwarded is not None:
            return forwarded
        _check_builtin_messages(body.messages)
        base = await _load_base(served)
        if base.tokenizer.chat_template is None:
            raise ApiError(400, f"{body.model} has no chat template; use /v1/completions", param="messages")
        messages = [{"role": m.role, "content": _message_text(m)} for m in body.messages]
        try:
            text = base.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # a template may reject a conversation (e.g. roles out of order)
            raise ApiError(400, f"the chat template rejected these messages: {exc}", param="messages") from exc
        prompt_ids = base.tokenizer(text, add_special_tokens=False)["input_ids"]
        return await _respond(body, served, base, prompt_ids, chat=True)

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        body, served, forwarded = await _take(request, CompletionRequest, "/v1/completions")
        if forwarded is not None:
            return forwarded
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "send one prompt per request", param="prompt")
            prompt = prompt[0]
        base = await _load_base(served)
        prompt_ids = base.tokenizer(prompt)["input_ids"]
        return await _respond(body, served, base, prompt_ids, chat=False)

    async def _take(
        request: Request, shape: type[CompletionParams], path: str
    ) -> tuple[Any, ServedModel, Response | None]:
        """The request's body and model, and vLLM's answer when vLLM serves it (else None: answer in-process).

        Parameters are checked against what the chosen engine takes (``ENDPOINT_PARAMS``).
        """
        raw = await _json_body(request)
        body = _parse(shape, raw)
        served = await _served(body.model)
        on_vllm, in_process = ENDPOINT_PARAMS[path]
        server = await _route(served)
        if server is None or vllm is None:
            _check_params(raw, in_process, path, builtin=True)
            return body, served, None
        _check_params(raw, on_vllm, path)
        return body, served, await _forward(await vllm.relay_session(), server, served, path, raw, max_tokens_ceiling)

    async def _served(name: str) -> ServedModel:
        if registry.models() is not known["models"]:  # the file changed: unload the adapters it dropped
            await _forget_dropped_adapters()
        served = registry.get(name)
        if served is None:
            raise ApiError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return served

    async def _load_base(served: ServedModel) -> LoadedBase:
        try:
            return await pool.base(served.base)
        except ModelUnavailable as exc:
            raise ApiError(
                500, f"{served.name} cannot be served: {exc}", type="server_error", code="model_unavailable"
            ) from exc

    def _engine_choice(served: ServedModel) -> tuple[bool, str]:
        """(served by vLLM?, in words: the engine and, for the in-process one, why)."""
        if vllm is None:
            return False, "in-process (vLLM is not installed or is turned off)"
        failure = vllm.failure(served.base)
        if failure is not None:
            return False, f"in-process (vLLM could not serve the base model: {failure.splitlines()[0]})"
        if served.adapter is not None:
            problem = adapter_problem(served.adapter, vllm.settings.max_lora_rank)
            if problem is not None:
                return False, f"in-process (vLLM cannot serve this adapter: {problem})"
        return True, "vllm"

    async def _route(served: ServedModel) -> VllmServer | None:
        """The vLLM server to forward to, or None for the in-process engine."""
        if not _engine_choice(served)[0]:
            return None
        assert vllm is not None
        server = await vllm.server(served.base, *_lora_needed(served.base))
        return None if server.state == "failed" else server

    def _lora_needed(base: str) -> tuple[int, frozenset[str] | None]:
        """The largest rank among the registry's adapters on ``base`` that vLLM serves, and the modules they
        train: its vLLM server is started to fit them all, so that a new request seldom restarts it (an adapter
        answered in-process, such as a DoRA one, never restarts it)."""
        assert vllm is not None
        adapters = [
            m.adapter for m in registry.models().values()
            if m.base == base and m.adapter and adapter_problem(m.adapter, vllm.settings.max_lora_rank) is None
        ]  # fmt: skip
        return max(map(adapter_rank, adapters), default=0), served_modules(*map(adapter_modules, adapters))

    async def _forget_dropped_adapters() -> None:
        models = known["models"] = registry.models()
        if vllm is None:
            return
        for server in list(vllm.servers.values()):
            for name, folder in list(server.adapters.items()):
                if name not in models or models[name].adapter != folder:
                    await server.forget(name)

    async def _respond(
        body: CompletionParams, served: ServedModel, base: LoadedBase, prompt_ids: list[int], *, chat: bool
    ) -> JSONResponse | StreamingResponse:
        params = _sampling_params(body, len(prompt_ids), base.context_length, max_tokens_ceiling)
        try:
            events = pool.generate(base, served.adapter, prompt_ids, params)
            first = await anext(events)  # errors before the first token still get a proper status code
        except QueueFull as exc:
            raise ApiError(429, f"{served.name} is busy: {exc}; retry shortly", type="rate_limit_error",
                           code="rate_limit_exceeded") from exc  # fmt: skip
        except ModelUnavailable as exc:
            raise ApiError(500, f"{served.name} cannot be served: {exc}", type="server_error",
                           code="model_unavailable") from exc  # fmt: skip
        shape = _Shape(served.name, chat=chat)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _sse(shape, first, events, include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        text, result = [first.delta], first.result
        async for event in events:
            text.append(event.delta)
            result = event.result or result
        assert result is not None
        return JSONResponse(shape.whole("".join(text), result))

    return app


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        raw = json.loads(await request.body() or b"null")
    except ValueError as exc:
        raise ApiError(400, f"the body is not valid JSON ({exc})", code="invalid_json") from exc
    if not isinstance(raw, dict):
        raise ApiError(400, "the body must be a JSON object with the request's parameters", code="invalid_json")
    return raw


def _parse(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first.get("loc", ())) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg"))
        raise ApiError(400, message, param=param) from exc


def _check_params(raw: dict[str, Any], allowed: frozenset[str], endpoint: str, *, builtin: bool = False) -> None:
    """A 400 naming every parameter this endpoint (or the in-process engine) does not take."""
    unknown = unknown_params(raw, allowed)
    if not unknown:
        return
    names = listing(unknown)
    if builtin and all(key in CHAT_PARAMS | COMPLETION_PARAMS for key in unknown):
        message = (f"This model is served by the in-process engine, which does not support {names}; "
                   "install vLLM (make vllm) to use them, or leave them out.")  # fmt: skip
    else:
        message = f"{endpoint} does not take {names}; leave {'it' if len(unknown) == 1 else 'them'} out."
    raise ApiError(400, message, param=unknown[0], code="unsupported_parameter")


def _check_builtin_messages(messages: list[ChatMessage]) -> None:
    for position, message in enumerate(messages):
        if message.tool_calls or message.tool_call_id or message.role == "tool":
            raise ApiError(
                400, "This model is served by the in-process engine, which does not take tool calls or tool "
                "results in messages; install vLLM (make vllm) to use tools.", param=f"messages.{position}",
                code="unsupported_parameter",
            )  # fmt: skip


async def _forward(
    session: aiohttp.ClientSession,
    server: VllmServer,
    served: ServedModel,
    path: str,
    raw: dict[str, Any],
    ceiling: int,
) -> Response:
    """Send the request on to ``server`` under vLLM's name for the model, and relay its answer as it comes (with
    ``session``, the supervisor's ``relay_session``)."""
    for param in ("max_tokens", "max_completion_tokens"):
        requested = raw.get(param)
        if isinstance(requested, int) and requested > ceiling:
            raise ApiError(400, f"{param} is {requested}; this server allows at most {ceiling}", param=param)
    try:
        name = await server.model_name(served.name, served.adapter)
        upstream = await _post(session, f"{server.url}{path}", {**raw, "model": name})
    except Unavailable as exc:
        raise _unavailable(served.name, str(exc), exc.retry_after) from exc
    except (httpx.TransportError, aiohttp.ClientError, TimeoutError) as exc:
        raise _unavailable(served.name, f"its vLLM server is not answering ({exc.__class__.__name__})") from exc
    # vLLM answers under the name it was sent (for a base model, the identity adapter's or the base's own): the
    # client asked for the served name.
    rename = (f'"model":{json.dumps(name)}'.encode(), f'"model":{json.dumps(served.name)}'.encode())
    streaming = upstream.headers.get("content-type", "").startswith("text/event-stream")
    if not streaming:
        async with upstream:
            try:
                body = await upstream.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _unavailable(served.name, f"its vLLM server stopped ({exc.__class__.__name__})") from exc
        body = body.replace(*rename)
        return Response(body, status_code=upstream.status, media_type="application/json")

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for lines in whole_lines(upstream.content.iter_any()):
                yield lines.replace(*rename)
        except (aiohttp.ClientError, TimeoutError):  # the server died mid-answer: say so in the stream, as OpenAI does
            error = {"message": "the model's server stopped mid-answer; retry", "type": "server_error"}
            yield f"data: {json.dumps({'error': error})}\n\n".encode()
        finally:  # read to its end, the connection serves another answer; else closing it stops the generation
            if upstream.content.at_eof():
                upstream.release()
            else:
                upstream.close()

    return StreamingResponse(
        relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def _post(session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> aiohttp.ClientResponse:
    """POST ``payload``, and once more when the connection was dropped under the request: a kept-alive connection
    the server closed as idle just as the request went out ("Connection reset by peer", or closed before any
    answer). A server run elsewhere may let idle connections go sooner than ours do (``IDLE_CONNECTION_S``).
    Sending a generation again is safe: it changes nothing on the server. A server that takes no connection at
    all is down, and that is not retried."""
    try:
        return await session.post(url, json=payload)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
        if isinstance(error, aiohttp.ClientConnectorError):
            raise
        logger.info("%s dropped the connection under a request (%s); sending it again", url, error)
        return await session.post(url, json=payload)


async def whole_lines(received: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """What ``received`` reads, cut after the last line break of each read (the rest waits for the next one), so
    that no line of an SSE stream is split between two pieces: the model's name is renamed in each piece, and a
    network read may end anywhere."""
    pending = b""
    async for chunk in received:
        pending += chunk
        cut = pending.rfind(b"\n") + 1
        if cut:
            yield pending[:cut]
            pending = pending[cut:]
    if pending:
        yield pending


def _unavailable(name: str, reason: str, retry_after: int = 10) -> ApiError:
    return ApiError(
        503, f"{name} cannot answer right now: {reason}", type="server_error", code="model_starting",
        headers={"Retry-After": str(retry_after)},
    )  # fmt: skip


def _message_text(message: ChatMessage) -> str:
    if isinstance(message.content, list):  # OpenAI content parts: keep the text ones
        return "".join(str(part.get("text", "")) for part in message.content if part.get("type") == "text")
    return message.content or ""


def _sampling_params(body: CompletionParams, prompt_tokens: int, context: int, ceiling: int) -> SamplingParams:
    if body.n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    room = context - prompt_tokens
    if room < 1:
        raise ApiError(400, f"the prompt has {prompt_tokens} tokens, the model's context is {context}",
                       param="messages", code="context_length_exceeded")  # fmt: skip
    requested = body.max_completion_tokens or body.max_tokens
    if requested is not None and requested > ceiling:
        raise ApiError(400, f"max_tokens is {requested}; this server allows at most {ceiling}", param="max_tokens")
    if requested is not None and requested > room:
        raise ApiError(400, f"max_tokens {requested} + the prompt's {prompt_tokens} tokens exceed the model's "
                       f"context of {context} tokens", param="max_tokens", code="context_length_exceeded")  # fmt: skip
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP_STRINGS:
        raise ApiError(400, f"at most {MAX_STOP_STRINGS} stop strings", param="stop")
    return SamplingParams(
        max_tokens=requested or min(room, ceiling),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=tuple(stop),
        seed=body.seed,
    )


class _Shape:
    """OpenAI's response and chunk shapes for chat (``chat.completion``) or text (``text_completion``)."""

    def __init__(self, model: str, *, chat: bool) -> None:
        self.model, self.chat = model, chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def whole(self, text: str, result: GenerationResult) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text, "logprobs": None}
        choice["finish_reason"] = result.finish_reason
        body = self._envelope("chat.completion" if self.chat else "text_completion", [choice])
        body["usage"] = _usage(result)
        return body

    def chunk(self, delta: str | None, finish_reason: str | None = None, *, role: bool = False) -> dict[str, Any]:
        if self.chat:
            content: dict[str, Any] = {} if delta is None else {"content": delta}
            if role:
                content = {"role": "assistant", "content": ""}
            choice: dict[str, Any] = {"index": 0, "delta": content}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None}
        choice["finish_reason"] = finish_reason
        return self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])


def _usage(result: GenerationResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


async def _sse(shape: _Shape, first: Event, events: AsyncIterator[Event], include_usage: bool) -> AsyncIterator[str]:
    """The event stream: a role chunk (chat), one chunk per text delta, the finish chunk, usage, ``[DONE]``."""

    def data(payload: dict[str, Any]) -> str:
        if include_usage:
            payload.setdefault("usage", None)
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    try:
        if shape.chat:
            yield data(shape.chunk(None, role=True))
        event: Event | None = first
        while event is not None:
            if event.delta:
                yield data(shape.chunk(event.delta))
            if event.result is not None:
                yield data(shape.chunk(None, event.result.finish_reason))
                if include_usage:
                    usage = shape._envelope(shape.chunk(None)["object"], [])
                    usage["usage"] = _usage(event.result)
                    yield data(usage)
                break
            event = await anext(events, None)
        yield "data: [DONE]\n\n"
    except Exception as exc:  # headers are sent: report the failure in the stream, as OpenAI does
        yield data({"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})
    finally:
        await events.aclose()  # type: ignore[attr-defined]
