"""Answering eval prompts through the inference server, several requests at a time so vLLM batches them.

Greedy (temperature 0) and bounded (``max_tokens``): a run is reproducible and its cost known. The in-process
engine answers one request at a time per base model; the requests then wait their turn on the server. Nothing
here touches the database: the caller resolves the models and stores the answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from serving_app.catalog import Servable
from serving_app.engine.client import InferenceError, stream_chat
from serving_app.inference import server_url


@dataclass(frozen=True)
class Request:
    """One answer to generate: which model, which messages (and declared tools)."""

    servable: Servable
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Generated:
    """A model's answer, or the error that stopped it."""

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    latency_s: float | None = None


async def _answer(
    request: Request, semaphore: asyncio.Semaphore, client: httpx.AsyncClient, max_tokens: int
) -> Generated:
    async with semaphore:
        started = time.monotonic()
        try:
            last = None
            async for update in stream_chat(
                server_url(request.servable),
                request.servable.served_name,
                request.messages,
                max_tokens=max_tokens,
                temperature=0.0,
                top_p=1.0,
                seed=0,
                tools=request.tools or None,
                client=client,
            ):
                last = update
        except InferenceError as error:
            return Generated(error=f"The model refused: {error}", latency_s=time.monotonic() - started)
        except (httpx.HTTPError, OSError) as error:
            return Generated(error=f"The inference server could not be reached ({error.__class__.__name__}).")
        calls = [
            {"name": call.name, "arguments": _arguments(call.arguments)} for call in (last.tool_calls if last else ())
        ]
        return Generated(text=last.text if last else "", tool_calls=calls, latency_s=time.monotonic() - started)


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


async def _answer_all(requests: Sequence[Request], concurrency: int, max_tokens: int) -> list[Generated]:
    semaphore = asyncio.Semaphore(max(1, concurrency))
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=5.0)) as client:
        return list(await asyncio.gather(*(_answer(r, semaphore, client, max_tokens) for r in requests)))


def answer_all(requests: Sequence[Request], *, concurrency: int, max_tokens: int) -> list[Generated]:
    """Each request's answer, in order, with at most ``concurrency`` requests in flight. Never raises for a
    model that fails: its ``Generated.error`` says why. Call from synchronous code (a Celery task)."""
    return asyncio.run(_answer_all(requests, concurrency, max_tokens))
