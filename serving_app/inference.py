"""The studio's side of generation: stream an answer from the inference server, meter it, keep it if asked.

The playground, the arena and the /v1 API all come through here, so each request is counted in
``UsageRecord`` the same way, and playground prompts are stored (``PromptLog``) only when the team has
set a retention period.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from accounts.models import Team
from serving_app.catalog import Servable, publish
from serving_app.engine.client import InferenceError, StreamUpdate, stream_chat
from serving_app.models import PromptLog, UsageRecord

__all__ = ["InferenceError", "Sampling", "StreamUpdate", "purge_prompt_logs", "server_url", "stream_answer"]


@dataclass(frozen=True)
class Sampling:
    """Generation settings of one answer (the playground's per-column or shared settings)."""

    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


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
        ):
            yield update
    except httpx.TransportError as exc:
        raise InferenceError(503, _unreachable(server_url(servable))) from exc


def server_url(servable: Servable) -> str:
    """The OpenAI-compatible server that serves ``servable``: its base model's route, or the default one."""
    return str(settings.INFERENCE_ROUTES.get(servable.base_path, settings.INFERENCE_URL))


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
