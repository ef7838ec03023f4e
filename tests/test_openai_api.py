"""The OpenAI-compatible API at /v1, called with the official ``openai`` client against the real stack.

uvicorn serves the studio (Django + Gradio) on the test database, wired to the session's real inference
server; the deployment is a real LoRA adapter of the starter model registered as a model version.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCallParam,
    ChatCompletionMessageParam,
)

from accounts import services as account_services
from accounts.models import Team, TeamAPIKey
from accounts.permissions import TeamAccess, resolve_access
from serving_app import deployments, openai_api
from serving_app.models import Deployment, UsageRecord
from tests.factories import adapter_model_version
from training_app.models import BaseModel

pytestmark = pytest.mark.django_db(transaction=True)

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about the sea."}]
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def deployment(owner: TeamAccess, starter_model: BaseModel, lora_adapters: list[Path]) -> Deployment:
    version = adapter_model_version(owner.team, owner.user, starter_model, lora_adapters[0], name="support")
    return deployments.create_deployment(access=owner, name="support-bot", version=version)


def make_key(
    access: TeamAccess, *scoped: Deployment, requests_per_minute: int | None = None, max_tokens: int | None = None
) -> tuple[TeamAPIKey, str]:
    return account_services.create_team_api_key(
        access=access, name="widget", deployments=scoped, requests_per_minute=requests_per_minute,
        max_tokens=max_tokens,
    )  # fmt: skip


def client(studio: str, key: str, **options: Any) -> OpenAI:
    return OpenAI(base_url=f"{studio}/v1", api_key=key, max_retries=0, timeout=120, **options)


def usage_rows(deployment: Deployment) -> list[UsageRecord]:
    return list(UsageRecord.objects.for_team(deployment.team).filter(deployment=deployment).order_by("pk"))


# --- what a client can do -----------------------------------------------------------------------


def test_models_lists_exactly_the_deployments_the_key_may_call(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    other = deployments.create_deployment(access=owner, name="internal-bot", version=deployment.model_version)
    _, key = make_key(owner, deployment)
    api = client(studio_server, key)
    assert [model.id for model in api.models.list()] == ["support-bot"]
    assert api.models.retrieve("support-bot").owned_by == "acme"
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve(other.name)


def test_api_answers_carry_the_security_headers_and_set_no_cookie(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    """/v1 skips the page middleware (sessions, CSRF, messages), not Django's security headers."""
    _, key = make_key(owner, deployment)
    response = httpx.get(
        f"{studio_server}/v1/models",
        headers={"Authorization": f"Bearer {key}"},
        cookies={"sessionid": "not-a-session", "csrftoken": "x" * 32},
    )
    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "set-cookie" not in response.headers
    assert [model["id"] for model in response.json()["data"]] == ["support-bot"]


def test_streamed_chat_completion_arrives_in_chunks_under_the_deployments_name(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    _, key = make_key(owner, deployment)
    stream = client(studio_server, key).chat.completions.create(
        model="support-bot", messages=HELLO, stream=True, max_tokens=12, temperature=0
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text.strip()
    assert {chunk.model for chunk in chunks} == {"support-bot"}
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(chunk.usage is None for chunk in chunks)  # not asked for


def test_non_streamed_completion_reports_usage_and_the_team_is_metered_the_same(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    key_row, key = make_key(owner, deployment)
    answer = client(studio_server, key).chat.completions.create(
        model="support-bot", messages=HELLO, max_tokens=8, temperature=0, seed=1
    )
    assert answer.model == "support-bot" and answer.choices[0].message.content
    assert answer.usage is not None and answer.usage.prompt_tokens > 0 and 0 < answer.usage.completion_tokens <= 8
    (row,) = usage_rows(deployment)
    assert (row.source, row.status, row.api_key_id) == ("api", "ok", key_row.pk)
    assert (row.prompt_tokens, row.completion_tokens) == (answer.usage.prompt_tokens, answer.usage.completion_tokens)


def test_streamed_usage_is_sent_when_asked_and_matches_the_metering(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    _, key = make_key(owner, deployment)
    chunks = list(
        client(studio_server, key).chat.completions.create(
            model="support-bot",
            messages=HELLO,
            stream=True,
            max_tokens=6,
            stream_options={"include_usage": True},
            stop=["\n\n\n"],
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    (row,) = usage_rows(deployment)
    assert (row.prompt_tokens, row.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)


def test_without_max_tokens_the_answer_stays_within_the_context_and_the_keys_ceiling(
    studio_server: str, owner: TeamAccess, deployment: Deployment, starter_model: BaseModel
) -> None:
    from transformers import AutoTokenizer

    # A prompt that leaves fewer tokens in the model's context than the key's ceiling of 16.
    context = starter_model.context_length
    tokenizer = AutoTokenizer.from_pretrained(starter_model.path)

    def prompt_tokens(words: list[str]) -> int:  # counted as the inference server counts them
        messages = [{"role": "user", "content": " ".join(words)}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    words = ["sea"] * 1200
    while prompt_tokens(words) > context - 4:
        words.pop()
    _, key = make_key(owner, deployment, max_tokens=16)
    answer = client(studio_server, key).chat.completions.create(
        model="support-bot", messages=[{"role": "user", "content": " ".join(words)}]
    )
    assert answer.usage is not None and answer.usage.completion_tokens <= context - answer.usage.prompt_tokens < 16


def test_text_completion_answers_whole_and_is_metered(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    _, key = make_key(owner, deployment)
    answer = client(studio_server, key).completions.create(
        model="support-bot", prompt="Once upon a time", max_tokens=8, temperature=0
    )
    assert (answer.object, answer.model) == ("text_completion", "support-bot")
    assert answer.choices[0].text and answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage is not None and 0 < answer.usage.completion_tokens <= 8
    (row,) = usage_rows(deployment)
    assert (row.status, row.completion_tokens) == ("ok", answer.usage.completion_tokens)


def test_streamed_text_completion_arrives_in_chunks_under_the_deployments_name(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    _, key = make_key(owner, deployment)
    chunks = list(
        client(studio_server, key).completions.create(
            model="support-bot", prompt=["Once upon a time"], max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices).strip()
    assert {chunk.model for chunk in chunks} == {"support-bot"}


def test_tool_results_in_messages_reach_the_engine_which_says_what_it_cannot_take(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    _, key = make_key(owner, deployment)
    call: ChatCompletionMessageFunctionToolCallParam = {
        "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    }  # fmt: skip
    conversation: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "Rain, 9 °C"}]},
    ]
    with pytest.raises(openai.BadRequestError, match="in-process engine, which does not take tool calls") as refused:
        client(studio_server, key).chat.completions.create(model="support-bot", messages=conversation)
    assert refused.value.param == "messages.1"


# --- refusals -----------------------------------------------------------------------------------


def test_unknown_parameters_get_400_naming_each_of_them_and_nothing_is_metered(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    _, key = make_key(owner, deployment)
    with pytest.raises(openai.BadRequestError, match="does not take `best_of`, `temperatures`") as refused:
        client(studio_server, key).chat.completions.create(
            model="support-bot", messages=HELLO, extra_body={"temperatures": 0.5, "best_of": 2}
        )
    assert (refused.value.param, refused.value.code) == ("best_of", "unsupported_parameter")


def test_resuming_tool_calls_on_a_deployment_without_studio_tools_is_refused_by_name(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    _, key = make_key(owner, deployment)
    with pytest.raises(openai.BadRequestError, match="applies only to a deployment granted studio tools") as refused:
        client(studio_server, key).chat.completions.create(
            model="support-bot", messages=HELLO, extra_body={"atelier": {"approvals": ["0" * 32]}}
        )
    assert refused.value.param == "atelier"
    assert usage_rows(deployment) == []


def test_tools_on_a_model_served_in_process_get_400_saying_the_engine_does_not_support_them(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    _, key = make_key(owner, deployment)
    with pytest.raises(openai.BadRequestError, match="in-process engine, which does not support `tools`") as refused:
        client(studio_server, key).chat.completions.create(model="support-bot", messages=HELLO, tools=[WEATHER_TOOL])
    assert refused.value.param == "tools"


def test_logit_bias_on_a_model_served_in_process_gets_400_saying_the_engine_does_not_support_it(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    _, key = make_key(owner, deployment)
    unsupported = "in-process engine, which does not support `logit_bias`"
    with pytest.raises(openai.BadRequestError, match=unsupported) as refused:
        client(studio_server, key).chat.completions.create(model="support-bot", messages=HELLO, logit_bias={"7": 5})
    assert refused.value.param == "logit_bias"


def test_revoked_key_gets_401(studio_server: str, owner: TeamAccess, deployment: Deployment) -> None:
    key_row, key = make_key(owner, deployment)
    account_services.revoke_team_api_key(access=owner, key=key_row)
    with pytest.raises(openai.AuthenticationError) as refused:
        client(studio_server, key).chat.completions.create(model="support-bot", messages=HELLO)
    assert refused.value.code == "invalid_api_key"
    assert usage_rows(deployment) == []


@pytest.mark.parametrize("token", ["", "atk_not-a-key", "atk_0123456789ab_" + "x" * 43, "sk-proj-openai-key"], ids=repr)
def test_missing_or_malformed_key_gets_401(studio_server: str, deployment: Deployment, token: str) -> None:
    response = httpx.get(f"{studio_server}/v1/models", headers={"Authorization": f"Bearer {token}"} if token else {})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_personal_token_is_refused_with_what_to_use_instead(
    studio_server: str, alice: Any, deployment: Deployment
) -> None:
    _, token = account_services.create_personal_token(user=alice, name="laptop")
    with pytest.raises(openai.AuthenticationError, match="use a team API key"):
        client(studio_server, token).models.list()


def test_key_of_another_team_gets_401_when_the_team_is_named_and_404_otherwise(
    studio_server: str, deployment: Deployment, globex: Team, charlie: Any
) -> None:
    _, rival_key = make_key(resolve_access(charlie, globex.slug))
    with pytest.raises(openai.AuthenticationError, match="belongs to another team"):
        client(studio_server, rival_key, organization="acme").chat.completions.create(
            model="support-bot", messages=HELLO
        )
    with pytest.raises(openai.NotFoundError):
        client(studio_server, rival_key).chat.completions.create(model="support-bot", messages=HELLO)
    assert usage_rows(deployment) == []


def test_deployment_the_key_may_not_call_reads_like_one_that_does_not_exist(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    _, key = make_key(owner)  # scoped to nothing
    api = client(studio_server, key)
    with pytest.raises(openai.NotFoundError) as not_scoped:
        api.chat.completions.create(model="support-bot", messages=HELLO)
    with pytest.raises(openai.NotFoundError) as missing:
        api.chat.completions.create(model="no-such-bot", messages=HELLO)
    assert not_scoped.value.code == missing.value.code == "model_not_found"
    assert str(not_scoped.value).replace("support-bot", "X") == str(missing.value).replace("no-such-bot", "X")


def test_max_tokens_over_the_keys_ceiling_gets_400_naming_the_limit(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    _, key = make_key(owner, deployment, max_tokens=32)
    with pytest.raises(openai.BadRequestError, match="at most 32 new tokens") as refused:
        client(studio_server, key).chat.completions.create(model="support-bot", messages=HELLO, max_tokens=33)
    assert refused.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError, match="max_completion_tokens is 40"):
        client(studio_server, key).chat.completions.create(
            model="support-bot", messages=HELLO, max_completion_tokens=40
        )


def test_request_over_the_per_minute_limit_gets_429_with_retry_after(
    studio_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    _, key = make_key(owner, deployment, requests_per_minute=2)
    api = client(studio_server, key)
    for _ in range(2):
        api.chat.completions.create(model="support-bot", messages=HELLO, max_tokens=1)
    with pytest.raises(openai.RateLimitError, match="2 requests per minute") as limited:
        api.chat.completions.create(model="support-bot", messages=HELLO, max_tokens=1)
    assert 1 <= int(limited.value.response.headers["Retry-After"]) <= 60
    assert limited.value.code == "rate_limit_exceeded"
    assert [row.status for row in usage_rows(deployment)] == ["ok", "ok", "rejected"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b'{"model": "support-bot"}', "messages"),
        (b'{"model": "support-bot", "messages": [{"role": "wizard", "content": "hi"}]}', "messages.0.role"),
        (b'{"model": "support-bot", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}', "temperature"),
    ],
)
def test_malformed_body_gets_400(
    studio_server: str, owner: TeamAccess, deployment: Deployment, body: bytes, param: str | None
) -> None:
    _, key = make_key(owner, deployment)
    response = httpx.post(
        f"{studio_server}/v1/chat/completions", content=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_a_client_that_disconnects_stops_the_generation(
    studio_server: str, inference_server: str, owner: TeamAccess, deployment: Deployment
) -> None:
    _, key = make_key(owner, deployment, max_tokens=900)
    cancelled_before = httpx.get(f"{inference_server}/admin/status").json()["cancelled"]
    body = {"model": "support-bot", "messages": HELLO, "stream": True, "max_tokens": 900, "temperature": 1.0}
    with httpx.stream(
        "POST", f"{studio_server}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # the first chunk arrived: the generation is running; hang up
    deadline = time.monotonic() + 30
    while httpx.get(f"{inference_server}/admin/status").json()["cancelled"] == cancelled_before:
        assert time.monotonic() < deadline, "the inference server kept generating after the client left"
        time.sleep(0.2)
    while (row := usage_rows(deployment)[0]).status == "started" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert row.status == "failed" and row.completion_tokens < 900


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:41234", True),
        ("http://localhost:8701", True),
        ("http://[::1]:8701", True),
        ("http://vllm-starter:8000", False),
        ("http://10.0.0.5:8000", False),
    ],
)
def test_a_vllm_route_on_loopback_is_taken_only_from_an_inference_server_on_loopback(url: str, loopback: bool) -> None:
    # A vLLM server at 127.0.0.1 behind an inference server on another host is not this machine's.
    assert openai_api._loopback(url) is loopback


def test_requests_that_find_no_fresh_route_share_one_question_to_the_inference_server() -> None:
    # A burst after a quiet spell: 16 requests at once would otherwise each ask /v1/route.
    asked: list[bytes] = []

    async def inference_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        asked.append(await reader.readuntil(b"\r\n\r\n"))
        await asyncio.sleep(0.2)  # the answer takes a while: the others ask meanwhile
        body = json.dumps({"engine": "vllm", "url": "http://127.0.0.1:1", "model": "adapter-1"}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    async def burst() -> list[dict[str, Any]]:
        server = await asyncio.start_server(inference_server, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server:
            http = await openai_api._engine_session()
            return await asyncio.gather(*(openai_api._route(http, url, "studio-burst") for _ in range(16)))

    answers = asyncio.run(asyncio.wait_for(burst(), 30))
    assert len(asked) == 1
    assert [answer["model"] for answer in answers] == ["adapter-1"] * 16
