"""The studio's side of generation against the real inference server: streaming, metering, retention, routes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync

from accounts.permissions import resolve_access
from serving_app import catalog
from serving_app.inference import InferenceError, Sampling, StreamUpdate, stream_answer
from serving_app.models import PromptLog, UsageRecord
from tests.conftest import free_port, running_inference_server

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "Say hello."}]
GREEDY = Sampling(max_tokens=12, temperature=0.0)


def _collect(servable: catalog.Servable, team: Any, user: Any, sampling: Sampling = GREEDY) -> list[StreamUpdate]:
    async def run() -> list[StreamUpdate]:
        return [u async for u in stream_answer(servable, MESSAGES, sampling, team=team, user=user, source="playground")]

    # async_to_sync runs the ORM calls on this thread's connection (asyncio.run would leave one open).
    return async_to_sync(run)()


def test_answer_streams_and_is_metered_without_keeping_the_prompt(
    inference_server: str, acme: Any, alice: Any, starter_model: Any
) -> None:
    servable = catalog.resolve_model(resolve_access(alice, "acme"), f"base:{starter_model.pk}")
    updates = _collect(servable, acme, alice)
    last = updates[-1]
    assert last.done and last.text.strip()
    assert len(updates) > 2  # token by token, not one block
    assert last.time_to_first_token_s is not None
    record = UsageRecord.objects.for_team(acme).get()
    assert (record.status, record.source, record.user) == ("ok", "playground", alice)
    assert record.completion_tokens == last.completion_tokens > 0
    assert record.prompt_tokens == last.prompt_tokens > 0
    assert not PromptLog.objects.for_team(acme).exists()  # retention is off by default


def test_prompt_and_answer_are_kept_when_the_team_enables_retention(
    inference_server: str, acme: Any, alice: Any, starter_model: Any
) -> None:
    acme.prompt_retention_days = 30
    acme.save()
    servable = catalog.resolve_model(resolve_access(alice, "acme"), f"base:{starter_model.pk}")
    answer = _collect(servable, acme, alice)[-1].text
    log = PromptLog.objects.for_team(acme).get()
    assert (log.messages, log.answer, log.user) == (MESSAGES, answer, alice)


def test_unreachable_server_is_a_plain_error_and_a_failed_record(
    settings: Any, acme: Any, alice: Any, starter_model: Any
) -> None:
    settings.INFERENCE_URL = f"http://127.0.0.1:{free_port()}"
    servable = catalog.resolve_model(resolve_access(alice, "acme"), f"base:{starter_model.pk}")
    with pytest.raises(InferenceError) as error:
        _collect(servable, acme, alice)
    assert error.value.status == 503
    assert "is not answering" in str(error.value)
    assert UsageRecord.objects.for_team(acme).get().status == "failed"


@pytest.fixture
def second_server(tmp_path: Path, starter_model: Any) -> Iterator[str]:
    """Another OpenAI-compatible server (the engine again: what a vLLM route speaks) serving the starter model."""
    registry = tmp_path / "routed.json"
    registry.write_text(json.dumps({f"base-{starter_model.pk}": {"base": starter_model.path, "adapter": None}}))
    with running_inference_server(registry, tmp_path / "routed.log") as url:
        yield url


def test_a_routed_base_model_is_served_by_its_own_server(
    settings: Any, second_server: str, acme: Any, alice: Any, starter_model: Any
) -> None:
    settings.INFERENCE_URL = f"http://127.0.0.1:{free_port()}"  # the default server is down
    settings.INFERENCE_ROUTES = {starter_model.path: second_server}
    servable = catalog.resolve_model(resolve_access(alice, "acme"), f"base:{starter_model.pk}")
    assert _collect(servable, acme, alice)[-1].text.strip()
    status = httpx.get(f"{second_server}/admin/status").json()
    assert status["generations"] == 1
