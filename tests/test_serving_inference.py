"""The studio's side of generation against the real inference server: streaming, metering, retention, routes;
the streaming client's tool calls and JSON schemas; which engine serves a model."""

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
from serving_app.engine.client import add_tool_call_deltas, stream_chat
from serving_app.inference import (
    InferenceError,
    Sampling,
    StreamUpdate,
    ToolCall,
    aengine_of,
    engine_of,
    stream_answer,
)
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


# --- tool calls and JSON schemas through the streaming client ------------------------------------------------


def test_tool_call_deltas_accumulate_by_index() -> None:
    calls = add_tool_call_deltas((), [{"index": 0, "id": "call_a", "function": {"name": "look_up", "arguments": ""}}])
    calls = add_tool_call_deltas(calls, [{"index": 1, "id": "call_b", "function": {"name": "set_reminder"}}])
    calls = add_tool_call_deltas(calls, [{"index": 0, "function": {"arguments": '{"subject": '}}])
    calls = add_tool_call_deltas(calls, [{"index": 1, "function": {"arguments": '{"day": "Friday"}'}}])
    calls = add_tool_call_deltas(calls, [{"index": 0, "function": {"arguments": '"tides"}'}}])
    assert calls == (
        ToolCall(0, "call_a", "look_up", '{"subject": "tides"}'),
        ToolCall(1, "call_b", "set_reminder", '{"day": "Friday"}'),
    )


def arguments(piece: str) -> dict[str, Any]:
    """A later delta of tool call 0: a piece of its arguments."""
    return {"index": 0, "function": {"arguments": piece}}


def sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks) + b"data: [DONE]\n\n"


def test_stream_chat_sends_schema_and_tools_and_assembles_the_streamed_calls() -> None:
    sent: list[dict[str, Any]] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "look_up", "arguments": ""}}
        body = sse(
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {"tool_calls": [first]}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {"tool_calls": [arguments('{"sub')]}}]},
            {"choices": [{"index": 0, "delta": {"tool_calls": [arguments('ject": 1}')]}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
            {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7}},
        )
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    tools = [{"type": "function", "function": {"name": "look_up", "parameters": {"type": "object"}}}]
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}

    async def run() -> list[StreamUpdate]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
            stream = stream_chat(
                "http://server", "m", MESSAGES, tools=tools, response_format=response_format, client=http
            )
            return [update async for update in stream]

    updates = async_to_sync(run)()
    assert sent[0]["tools"] == tools and sent[0]["tool_choice"] == "auto"
    assert sent[0]["response_format"] == response_format
    assert [len(update.tool_calls) for update in updates] == [1, 1, 1, 1]  # every piece of the call is an update
    last = updates[-1]
    assert last.done and last.finish_reason == "tool_calls" and last.completion_tokens == 7
    assert last.tool_calls == (ToolCall(0, "call_1", "look_up", '{"subject": 1}'),)
    assert last.time_to_first_token_s is not None


def test_stream_chat_leaves_out_tools_and_response_format_when_not_given() -> None:
    sent: list[dict[str, Any]] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, content=sse({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}))

    async def run() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(server)) as http:
            async for _ in stream_chat("http://server", "m", MESSAGES, client=http):
                pass

    async_to_sync(run)()
    assert not {"tools", "tool_choice", "response_format"} & set(sent[0])


# --- which engine serves a model ---------------------------------------------------------------------------


def test_engine_of_a_model_on_the_in_process_engine_says_so_and_why(
    inference_server: str, acme: Any, alice: Any, starter_model: Any
) -> None:
    servable = catalog.resolve_model(resolve_access(alice, "acme"), f"base:{starter_model.pk}")
    engine = engine_of(servable)
    assert engine.name == "in-process" and not engine.concurrent
    assert engine.detail.startswith("in-process (")
    assert engine.label == "served by the in-process engine"


def test_engine_of_is_unknown_when_the_inference_server_is_down(
    settings: Any, acme: Any, alice: Any, starter_model: Any
) -> None:
    settings.INFERENCE_URL = f"http://127.0.0.1:{free_port()}"
    servable = catalog.resolve_model(resolve_access(alice, "acme"), f"base:{starter_model.pk}")
    engine = async_to_sync(aengine_of)(servable)
    assert engine.name == "unknown" and engine.label == ""
    assert "is not answering" in engine.detail
