"""The studio's /v1 in front of vLLM: what the official ``openai`` client gets for the parameters only vLLM serves
(tools, structured answers, several choices, log-probabilities) and under concurrent streams.

The deployment is a LoRA version of the starter model, built once for the module: its rows are committed, since
the studio's own process must see them (the tests only read), and flushed when the module ends, as a
transactional test's are. Its answers are nonsense, so the tests check shapes and constraints, never words.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import override_settings
from openai import APIStatusError, OpenAI
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageParam,
    ChatCompletionNamedToolChoiceParam,
)

from accounts import services as account_services
from accounts.models import TeamAPIKey
from accounts.permissions import TeamAccess
from serving_app.models import Deployment, UsageRecord
from tests.conftest import VLLM_START_S, wait_for_vllm
from tests.factories import starter_deployment
from tests.test_serving_vllm import vllm_status

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the weather in Oslo?"}]
CITY_MAX = 12
WEATHER_TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": CITY_MAX},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
FORCE_WEATHER: ChatCompletionNamedToolChoiceParam = {"type": "function", "function": {"name": "get_weather"}}
# Room for the answer object: its strings are bounded by the schema and vLLM writes it without whitespace.
SCHEMA_TOKENS = 60
# Room for the forced call: vLLM constrains its arguments to the schema but, unlike a response_format, lets the
# model put any whitespace between the tokens (about 75 tokens for the starter model's greedy call).
TOOL_TOKENS = 160

# Each test runs in a transaction of its own and only reads: the module's rows are committed by ``studio``.
pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Studio:
    """The module's deployment on the vLLM-backed studio, and how to call it."""

    url: str
    deployment: Deployment
    key: str
    crowd_key: TeamAPIKey  # the concurrency test's own key, to count its usage rows
    crowd_secret: str

    def client(self, key: str | None = None) -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=key or self.key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def studio(
    vllm_studio_server: str, django_db_blocker: Any, starter_model_path: Path, lora_adapters: list[Path]
) -> Iterator[Studio]:
    fast_hash = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    with django_db_blocker.unblock(), override_settings(PASSWORD_HASHERS=fast_hash):
        _, access, deployment = starter_deployment(starter_model_path, lora_adapters[0], name="support-bot")
        _, key = new_key(access, deployment)
        crowd_key, crowd_secret = new_key(access, deployment)
    yield Studio(vllm_studio_server, deployment, key, crowd_key, crowd_secret)
    with django_db_blocker.unblock():
        call_command("flush", interactive=False, verbosity=0)


def new_key(access: TeamAccess, deployment: Deployment) -> tuple[TeamAPIKey, str]:
    return account_services.create_team_api_key(
        access=access, name="widget", deployments=[deployment], requests_per_minute=600
    )


def arguments_fit_the_weather_schema(arguments: str) -> bool:
    parsed = json.loads(arguments)
    return (
        set(parsed) == {"city", "unit"}
        and isinstance(parsed["city"], str)
        and len(parsed["city"]) <= CITY_MAX
        and parsed["unit"] in ("celsius", "fahrenheit")
    )


def test_a_forced_tool_call_streams_arguments_that_fit_the_tools_schema(studio: Studio) -> None:
    stream = studio.client().chat.completions.create(
        model="support-bot", messages=HELLO, tools=[WEATHER_TOOL], tool_choice=FORCE_WEATHER,
        max_tokens=TOOL_TOKENS, temperature=0, stream=True,
    )  # fmt: skip
    names, arguments = [], []
    for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            assert call.index == 0
            if call.function and call.function.name:
                names.append(call.function.name)
            arguments.append((call.function and call.function.arguments) or "")

    assert names == ["get_weather"]
    assert arguments_fit_the_weather_schema("".join(arguments))


def test_a_forced_tool_call_answered_whole_carries_the_call_and_its_finish_reason(studio: Studio) -> None:
    answer = studio.client().chat.completions.create(
        model="support-bot", messages=HELLO, tools=[WEATHER_TOOL], tool_choice=FORCE_WEATHER,
        max_tokens=TOOL_TOKENS, temperature=0,
    )  # fmt: skip

    (choice,) = answer.choices
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"
    assert arguments_fit_the_weather_schema(call.function.arguments)
    assert choice.finish_reason in ("stop", "tool_calls")


def test_a_json_schema_response_format_gives_an_answer_that_validates(studio: Studio) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 10}, "happy": {"type": "boolean"}},
        "required": ["name", "happy"],
        "additionalProperties": False,
    }
    answer = studio.client().chat.completions.create(
        model="support-bot", messages=HELLO, max_tokens=SCHEMA_TOKENS, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "mood", "schema": schema, "strict": True}},
    )  # fmt: skip

    parsed = json.loads(answer.choices[0].message.content or "")
    assert set(parsed) == {"name", "happy"}
    assert isinstance(parsed["name"], str) and len(parsed["name"]) <= 10 and isinstance(parsed["happy"], bool)


def test_sixteen_concurrent_streams_all_finish_and_each_is_metered(studio: Studio) -> None:
    api = studio.client(studio.crowd_secret)

    def streamed_text(seed: int) -> str:
        stream = api.chat.completions.create(
            model="support-bot", messages=HELLO, max_tokens=8, temperature=1.0, seed=seed, stream=True
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(streamed_text, range(16)))

    assert all(text for text in texts)
    rows = list(UsageRecord.objects.for_team(studio.deployment.team).filter(api_key=studio.crowd_key))
    assert [(row.status, 0 < row.completion_tokens <= 8) for row in rows] == [("ok", True)] * 16


def test_n_2_returns_two_choices(studio: Studio) -> None:
    answer = studio.client().chat.completions.create(
        model="support-bot", messages=HELLO, n=2, max_tokens=8, temperature=1.0, seed=7
    )

    assert [choice.index for choice in answer.choices] == [0, 1]
    assert all(choice.message.content and choice.finish_reason for choice in answer.choices)


def test_logprobs_come_for_every_token_with_the_top_alternatives_asked_for(studio: Studio) -> None:
    answer = studio.client().chat.completions.create(
        model="support-bot", messages=HELLO, logprobs=True, top_logprobs=2, max_tokens=8, temperature=0
    )

    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None and answer.usage is not None
    assert len(logprobs.content) == answer.usage.completion_tokens
    assert all(len(token.top_logprobs) == 2 and token.logprob <= 0 for token in logprobs.content)


def test_logit_bias_makes_every_token_of_the_answer_the_favoured_one(studio: Studio, starter_model_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(starter_model_path)
    favoured = tokenizer.encode(" blue", add_special_tokens=False)[0]
    answer = studio.client().chat.completions.create(
        model="support-bot", messages=HELLO, max_tokens=6, temperature=0, logit_bias={str(favoured): 100}
    )

    (choice,) = answer.choices
    assert choice.message.content == tokenizer.decode([favoured] * 6)
    assert choice.finish_reason == "length"


def test_a_logit_bias_on_a_token_outside_the_vocabulary_gets_400(studio: Studio, starter_model_path: Path) -> None:
    from transformers import AutoTokenizer

    outside = len(AutoTokenizer.from_pretrained(starter_model_path)) + 10
    with pytest.raises(APIStatusError) as refused:
        studio.client().chat.completions.create(
            model="support-bot", messages=HELLO, max_tokens=6, logit_bias={str(outside): 5}
        )
    assert refused.value.status_code == 400
    assert str(outside) in refused.value.message
    assert refused.value.body["param"] == "logit_bias"  # type: ignore[index]


def test_a_text_completion_returns_the_logprobs_of_its_tokens(studio: Studio) -> None:
    answer = studio.client().completions.create(
        model="support-bot", prompt="Once upon a time", logprobs=1, max_tokens=8, temperature=0
    )

    choice = answer.choices[0]
    assert choice.text and choice.logprobs is not None and answer.usage is not None
    assert (
        len(choice.logprobs.tokens or []) == len(choice.logprobs.token_logprobs or []) == answer.usage.completion_tokens
    )


def refusal(api: OpenAI) -> APIStatusError | None:
    """The error a short request to the deployment gets, or None when it is answered."""
    try:
        api.chat.completions.create(model="support-bot", messages=HELLO, max_tokens=4, temperature=0)
    except APIStatusError as error:
        return error
    return None


def test_while_a_crashed_vllm_restarts_the_client_gets_503_with_retry_after_then_answers(
    studio: Studio, vllm_inference_server: str, tmp_path: Path
) -> None:
    # Last in the module: the other tests' requests would wait for the restart too.
    api = studio.client()
    os.killpg(vllm_status(vllm_inference_server)["pid"], signal.SIGKILL)

    refused = refusal(api)
    deadline = time.monotonic() + 30
    while refused is None:  # the supervisor notices the exit within a moment
        assert time.monotonic() < deadline, "vLLM was killed but the deployment still answers"
        time.sleep(0.2)
        refused = refusal(api)
    assert (refused.status_code, refused.code) == (503, "model_starting"), refused.message
    assert int(refused.response.headers["Retry-After"]) > 0

    deadline = time.monotonic() + VLLM_START_S
    while vllm_status(vllm_inference_server)["restarts"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    wait_for_vllm(vllm_inference_server, tmp_path)
    assert vllm_status(vllm_inference_server)["restarts"] == 1
    answer = api.chat.completions.create(model="support-bot", messages=HELLO, max_tokens=4, temperature=0)
    assert answer.choices[0].message.content  # the adapter is loaded again on demand
