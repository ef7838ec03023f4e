"""Streaming client for the inference server (what the Gradio playground uses): text deltas plus timings.

    async for update in stream_chat("http://127.0.0.1:8008", "starter", [{"role": "user", "content": "Hi"}]):
        show(update.text)            # the whole answer so far; update.delta is the new part
    update.time_to_first_token_s, update.tokens_per_second, update.finish_reason

Errors from the server (unknown model, bad parameters, busy) raise ``InferenceError`` with OpenAI's message.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


class InferenceError(RuntimeError):
    """The server refused or failed a request; ``status`` is the HTTP status, ``code`` OpenAI's error code."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


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
    client: httpx.AsyncClient | None = None,
) -> AsyncIterator[StreamUpdate]:
    """Stream one chat completion. Stopping the iteration closes the connection, which stops the generation."""
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
    started = time.monotonic()
    first: float | None = None
    text, chunks, finish_reason, usage_tokens, prompt_tokens = "", 0, None, None, 0
    async with (
        _client(client) as http,
        http.stream("POST", f"{base_url.rstrip('/')}/v1/chat/completions", json=body) as response,
    ):
        if response.status_code >= 400:
            await response.aread()
            _raise_for_error(response)
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
                delta = choice.get("delta", {}).get("content") or ""
                if delta:
                    now = time.monotonic() - started
                    first = now if first is None else first
                    chunks += 1
                    text += delta
                    yield StreamUpdate(delta, text, first, now, chunks)
    yield StreamUpdate(
        "",
        text,
        first,
        time.monotonic() - started,
        usage_tokens or chunks,
        done=True,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
    )


class _client:
    """Use the caller's client, or open (and close) one for this call."""

    def __init__(self, client: httpx.AsyncClient | None) -> None:
        self.given = client
        self.owned: httpx.AsyncClient | None = None

    async def __aenter__(self) -> httpx.AsyncClient:
        if self.given is not None:
            return self.given
        self.owned = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0))
        return self.owned

    async def __aexit__(self, *exc: object) -> None:
        if self.owned is not None:
            await self.owned.aclose()


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        message, code = str(error.get("message")), error.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        message, code = response.text[:500] or response.reason_phrase, None
    raise InferenceError(response.status_code, message, code)
