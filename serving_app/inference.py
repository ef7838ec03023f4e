"""The studio's side of generation: stream an answer from the inference server, meter it, keep it if asked.

The playground, the arena and the /v1 API all come through here, so each request is counted in
``UsageRecord`` the same way, and playground prompts are stored (``PromptLog``) only when the team has
set a retention period. ``engine_of`` tells which engine of the inference server serves a model: vLLM
(many answers at once, JSON schemas and tools) or the in-process fallback (one answer at a time per base
model, plain text only).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from accounts.models import Team
from serving_app.catalog import Servable, publish
from serving_app.engine.client import InferenceError, StreamUpdate, ToolCall, stream_chat, tls_context
from serving_app.models import PromptLog, UsageRecord

__all__ = [
    "ENGINE_LABELS", "EngineInfo", "InferenceError", "Sampling", "StreamUpdate", "ToolCall", "aengine_of", "engine_of",
    "purge_prompt_logs", "server_url", "stream_answer",
]  # fmt: skip

# How long an answer of the inference server's /admin/status is reused: an engine changes only when vLLM
# fails or is restarted, and a page showing every column's engine must not ask once per column.
ENGINE_STATUS_SECONDS = 10.0
ENGINE_STATUS_TIMEOUT = httpx.Timeout(2.0, connect=1.0)
# An engine in a few words, for a figures line (an unknown engine says nothing).
ENGINE_LABELS = {"vllm": "served by vLLM", "in-process": "served by the in-process engine"}


@dataclass(frozen=True)
class Sampling:
    """Generation settings of one answer (the playground's per-column or shared settings).

    ``json_schema``: the answer must be JSON valid against it (sent as ``response_format``). ``tools``: OpenAI
    function declarations the model may call (``tool_choice`` "auto"). Both need vLLM: the in-process
    engine refuses them with a message saying so.
    """

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    json_schema: Mapping[str, Any] | None = None
    tools: tuple[Mapping[str, Any], ...] = ()

    def response_format(self) -> dict[str, Any] | None:
        """OpenAI's ``response_format`` for ``json_schema`` (None without one)."""
        if self.json_schema is None:
            return None
        return {"type": "json_schema", "json_schema": {"name": "answer", "schema": dict(self.json_schema)}}


@dataclass(frozen=True)
class EngineInfo:
    """Which engine of the inference server serves a model: ``name`` is "vllm", "in-process" or "unknown";
    ``detail`` says it in words (for the in-process engine, why vLLM does not serve the model)."""

    name: str
    detail: str

    @property
    def concurrent(self) -> bool:
        """Whether answers of this model (and of others on its base model) are generated at the same time."""
        return self.name == "vllm"

    @property
    def label(self) -> str:
        """A few words for a figures line: "served by vLLM", "served by the in-process engine", or ""."""
        return ENGINE_LABELS.get(self.name, "")


async def stream_answer(
    servable: Servable,
    messages: list[dict[str, str]],
    sampling: Sampling,
    *,
    team: Team,
    user: Any,
    source: str,
) -> AsyncIterator[StreamUpdate]:
    """Stream one chat answer from the inference server, metering it for ``team`` as ``source``.

    ``servable`` must come from ``catalog.resolve_model`` for this request (the permission check).
    Raises ``InferenceError`` when the server refuses or is unreachable.
    """
    await sync_to_async(publish)([servable])
    record = await UsageRecord.objects.acreate(
        team=team, source=source, user=user if user is not None and user.pk else None, model_label=servable.label
    )
    last: StreamUpdate | None = None
    try:
        async for update in _stream(servable, messages, sampling):
            last = update
            yield update
    except BaseException:
        await _finish(record, last, UsageRecord.Status.FAILED)
        raise
    await _finish(record, last, UsageRecord.Status.OK)
    if last is not None and team.prompt_retention_days:
        await PromptLog.objects.acreate(
            team=team, user=record.user, source=source, model_label=servable.label, messages=messages, answer=last.text
        )


async def _stream(
    servable: Servable, messages: list[dict[str, str]], sampling: Sampling
) -> AsyncIterator[StreamUpdate]:
    try:
        async for update in stream_chat(
            server_url(servable),
            servable.served_name,
            messages,
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            response_format=sampling.response_format(),
            tools=[dict(tool) for tool in sampling.tools] or None,
        ):
            yield update
    except httpx.TransportError as exc:
        raise InferenceError(503, _unreachable(server_url(servable))) from exc


def server_url(servable: Servable) -> str:
    """The OpenAI-compatible server that serves ``servable``: its base model's route, or the default one."""
    return str(settings.INFERENCE_ROUTES.get(servable.base_path, settings.INFERENCE_URL))


def engine_of(servable: Servable) -> EngineInfo:
    """Which engine serves ``servable``, as its inference server's ``/admin/status`` says.

    Registers ``servable`` with the server first (``catalog.publish``, as generating does), so a model
    version never asked yet is known. Answers are reused for ``ENGINE_STATUS_SECONDS``. Never raises: a
    server that is down or answers something unexpected gives ``EngineInfo("unknown", why)``. The caller
    has resolved ``servable`` for the person asking (``catalog.resolve_model``). From async code, use
    ``aengine_of``.
    """
    publish([servable])
    url = server_url(servable)
    engines = _ENGINES.fresh(url, servable.served_name)
    if engines is None:
        engines = _ENGINES.store(url, _fetch_engines(url))
    return _engine_info(engines, servable.served_name, url)


async def aengine_of(servable: Servable) -> EngineInfo:
    """``engine_of`` for async code (the playground's handlers): the same answer, the same cache."""
    # Not thread-sensitive: it touches no database, and a slow status request must not hold up the ORM's thread.
    return await sync_to_async(engine_of, thread_sensitive=False)(servable)


class _EngineStatusCache:
    """Each inference server's last ``engines`` (served name → engine in words), or why it could not be read."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, dict[str, str] | Exception]] = {}

    def fresh(self, url: str, served_name: str) -> dict[str, str] | Exception | None:
        """The cached answer for ``url`` if recent, and naming ``served_name`` when the server answered."""
        entry = self.entries.get(url)
        if entry is None or time.monotonic() - entry[0] > ENGINE_STATUS_SECONDS:
            return None
        engines = entry[1]
        if isinstance(engines, dict) and served_name not in engines:
            return None  # published since: ask again
        return engines

    def store(self, url: str, engines: dict[str, str] | Exception) -> dict[str, str] | Exception:
        self.entries[url] = (time.monotonic(), engines)
        return engines


_ENGINES = _EngineStatusCache()


def _fetch_engines(url: str) -> dict[str, str] | Exception:
    """The ``engines`` of the server's ``/admin/status`` answer, or why there are none."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/admin/status", timeout=ENGINE_STATUS_TIMEOUT, verify=tls_context())
        response.raise_for_status()
        engines = response.json().get("engines")
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        return exc
    if not isinstance(engines, dict):
        return ValueError("its status names no engines (an older inference server?)")
    return {str(name): str(engine) for name, engine in engines.items()}


def _engine_info(engines: dict[str, str] | Exception, served_name: str, url: str) -> EngineInfo:
    if isinstance(engines, httpx.TransportError):
        return EngineInfo("unknown", _unreachable(url))
    if isinstance(engines, Exception):
        return EngineInfo("unknown", f"The inference server at {url} did not say which engine it uses: {engines}")
    described = engines.get(served_name)
    if described is None:
        return EngineInfo("unknown", f"The inference server at {url} does not list this model yet.")
    if described == "vllm":
        return EngineInfo("vllm", "vLLM: answers many requests at once, with JSON schemas and tools.")
    if described.startswith("in-process"):
        return EngineInfo("in-process", described)
    return EngineInfo(
        "unknown", f"The inference server at {url} names an engine this studio does not know: {described}"
    )


def _unreachable(url: str) -> str:
    return (
        f"The inference server at {url} is not answering. "
        "Start it with `python -m serving_app.engine` (make run starts it) or ask an operator."
    )


async def _finish(record: UsageRecord, last: StreamUpdate | None, status: str) -> None:
    record.status = status
    if last is not None:
        record.completion_tokens = last.completion_tokens
        record.prompt_tokens = last.prompt_tokens
    # Only the fields this request owns: the row is not shared, but an update keeps the write small.
    await (
        UsageRecord.objects.for_team(record.team)
        .filter(pk=record.pk)
        .aupdate(status=record.status, completion_tokens=record.completion_tokens, prompt_tokens=record.prompt_tokens)
    )


def purge_prompt_logs(now: Any = None) -> int:
    """Delete stored prompts older than each team's retention period (all of them where it is off)."""
    now = now or timezone.now()
    removed = 0
    for team in Team.objects.all():
        logs = PromptLog.objects.for_team(team)
        if team.prompt_retention_days:
            logs = logs.filter(created_at__lt=now - timedelta(days=team.prompt_retention_days))
        removed += logs.delete()[0]
    return removed
