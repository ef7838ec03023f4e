"""Streaming client for the inference server (what the Gradio playground uses): text deltas plus timings.

    async for update in stream_chat("http://127.0.0.1:8008", "starter", [{"role": "user", "content": "Hi"}]):
        show(update.text)            # the whole answer so far; update.delta is the new part
    update.time_to_first_token_s, update.tokens_per_second, update.finish_reason
    update.tool_calls                # the function calls so far (with ``tools=``), arguments as streamed

``response_format`` and ``tools`` / ``tool_choice`` are passed on as OpenAI's parameters; the in-process
engine refuses them (a 400 that says so), vLLM serves them.

Errors from the server (unknown model, bad parameters, busy) raise ``InferenceError`` with OpenAI's message;
a model whose vLLM server is still starting is waited for (``START_WAIT_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NoReturn

import httpx

# How long a request waits for its model's vLLM server to start (20-40 s on 2 CPU cores; more for big models),
# asking again every START_POLL_S at most.
START_WAIT_S = 240.0
START_POLL_S = 2.0
# How long a client of the inference server or of vLLM keeps an idle connection. Both are uvicorn servers, which
# close a connection idle for 5 s (vLLM's ``VLLM_HTTP_TIMEOUT_KEEP_ALIVE``). A client that keeps idle connections
# longer now and then sends a request just as the server closes one, and gets "Connection reset by peer": 1
# request in 50 sent about 5 s apart with aiohttp's default of 15 s. The studio's and the inference server's
# clients let them go first.
IDLE_CONNECTION_S = 4.0


class InferenceError(RuntimeError):
    """The server refused or failed a request; ``status`` is the HTTP status, ``code`` OpenAI's error code."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass(frozen=True)
class ToolCall:
    """One function call in an answer. ``arguments`` is the JSON text the model wrote: complete once the answer is."""

    index: int
    id: str
    name: str
    arguments: str


def add_tool_call_deltas(calls: tuple[ToolCall, ...], deltas: list[dict[str, Any]]) -> tuple[ToolCall, ...]:
    """``calls`` with one chunk's ``delta.tool_calls`` applied, as OpenAI streams them.

    Each delta names its call by ``index``: the first one of a call brings its ``id`` and function name, the
    later ones pieces of its arguments, which are concatenated in order.
    """
    by_index = {call.index: call for call in calls}
    for position, delta in enumerate(deltas):
        if not isinstance(delta, dict):
            continue
        index = delta.get("index")
        index = index if isinstance(index, int) else position
        function = delta.get("function")
        function = function if isinstance(function, dict) else {}
        call = by_index.get(index, ToolCall(index, "", "", ""))
        by_index[index] = ToolCall(
            index=index,
            id=str(delta.get("id") or call.id),
            name=str(function.get("name") or call.name),
            arguments=call.arguments + str(function.get("arguments") or ""),
        )
    return tuple(by_index[index] for index in sorted(by_index))


@dataclass(frozen=True)
class StreamUpdate:
    """One step of a streamed answer. ``done`` on the last one, which carries the finish reason and token count."""

    delta: str
    text: str
    time_to_first_token_s: float | None
    elapsed_s: float
    completion_tokens: int
    done: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed after the first token (None until two tokens have arrived)."""
        if self.time_to_first_token_s is None or self.completion_tokens < 2:
            return None
        decoding = self.elapsed_s - self.time_to_first_token_s
        return (self.completion_tokens - 1) / decoding if decoding > 0 else None


async def list_models(base_url: str, *, client: httpx.AsyncClient | None = None) -> list[str]:
    """The served model names."""
    async with _client(client) as http:
        response = await http.get(f"{base_url.rstrip('/')}/v1/models")
        if response.status_code >= 400:
            _raise_for_error(response)
        return [entry["id"] for entry in response.json()["data"]]


async def stream_chat(
    base_url: str,
    model: str,
    messages: list[dict[str, str]],
    *,
    max_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 1.0,
    stop: list[str] | None = None,
    seed: int | None = None,
    response_format: dict[str, Any] | None = None,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    client: httpx.AsyncClient | None = None,
) -> AsyncIterator[StreamUpdate]:
    """Stream one chat completion. Stopping the iteration closes the connection, which stops the generation.

    With ``tools``, ``tool_choice`` defaults to "auto" (the model decides); pass "required" or
    ``{"type": "function", "function": {"name": …}}`` to force a call. An update comes with each piece of
    text or of a tool call.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if stop:
        body["stop"] = stop
    if seed is not None:
        body["seed"] = seed
    if response_format is not None:
        body["response_format"] = response_format
    if tools:
        body["tools"] = tools
        body["tool_choice"] = tool_choice or "auto"
    elif tool_choice is not None:
        body["tool_choice"] = tool_choice
    started = time.monotonic()
    first: float | None = None
    text, chunks, finish_reason, usage_tokens, prompt_tokens = "", 0, None, None, 0
    calls: tuple[ToolCall, ...] = ()
    async with _client(client) as http, _opened(http, f"{base_url.rstrip('/')}/v1/chat/completions", body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[len("data: ") :]
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                raise InferenceError(500, chunk["error"].get("message", "generation failed"))
            if chunk.get("usage"):
                usage_tokens = chunk["usage"]["completion_tokens"]
                prompt_tokens = chunk["usage"].get("prompt_tokens", 0)
            for choice in chunk.get("choices", []):
                finish_reason = choice.get("finish_reason") or finish_reason
                message = choice.get("delta") or {}
                delta = message.get("content") or ""
                call_deltas = message.get("tool_calls") or []
                if delta or call_deltas:
                    now = time.monotonic() - started
                    first = now if first is None else first
                    chunks += 1
                    text += delta
                    calls = add_tool_call_deltas(calls, call_deltas)
                    yield StreamUpdate(delta, text, first, now, chunks, tool_calls=calls)
    yield StreamUpdate(
        "",
        text,
        first,
        time.monotonic() - started,
        usage_tokens or chunks,
        done=True,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        tool_calls=calls,
    )


@contextlib.asynccontextmanager
async def _opened(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
    """The streamed response to ``body``; raises ``InferenceError`` for a refusal. While the model's vLLM server
    starts (a 503 with ``Retry-After``), the request is sent again, for up to ``START_WAIT_S``: the answer's
    first token then comes late, instead of an error a person would have to retry by hand."""
    deadline = time.monotonic() + START_WAIT_S
    while True:
        response = await http.send(http.build_request("POST", url, json=body), stream=True)
        try:
            if response.status_code < 400:
                yield response
                return
            await response.aread()
        finally:
            await response.aclose()
        wait = _starting_wait(response)
        if wait is None or time.monotonic() + wait > deadline:
            _raise_for_error(response)
        await asyncio.sleep(wait)


def _starting_wait(response: httpx.Response) -> float | None:
    """Seconds to wait before asking again, when the server says the model is starting; else None."""
    if response.status_code != 503:
        return None
    try:
        return min(float(response.headers.get("Retry-After", "")), START_POLL_S)
    except ValueError:
        return None


@functools.cache
def tls_context() -> ssl.SSLContext:
    """How an inference server on https is verified (httpx's default: certifi's authorities, or SSL_CERT_FILE /
    SSL_CERT_DIR), made once for every client the studio opens to one. httpx reads the certificates afresh for
    each client it makes unless it is given a context: 25 ms of CPU, on the event loop that streams every
    playground column, against 0.3 ms with this one."""
    return httpx.create_ssl_context()


class _client:
    """Use the caller's client, or open (and close) one for this call."""

    def __init__(self, client: httpx.AsyncClient | None) -> None:
        self.given = client
        self.owned: httpx.AsyncClient | None = None

    async def __aenter__(self) -> httpx.AsyncClient:
        if self.given is not None:
            return self.given
        self.owned = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0), verify=tls_context())
        return self.owned

    async def __aexit__(self, *exc: object) -> None:
        if self.owned is not None:
            await self.owned.aclose()


def _raise_for_error(response: httpx.Response) -> NoReturn:
    """The server's refusal (a status of 400 or more) as ``InferenceError``."""
    try:
        error = response.json()["error"]
        message, code = str(error.get("message")), error.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        message, code = response.text[:500] or response.reason_phrase, None
    raise InferenceError(response.status_code, message, code)
