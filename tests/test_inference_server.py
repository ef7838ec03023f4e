"""The inference server (``python -m serving_app.engine``) as a real process on loopback: the starter model and
two LoRA adapters of it, served through the OpenAI API. Expected answers come from PEFT in this process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving_app.engine.client import InferenceError, StreamUpdate, list_models, stream_chat
from serving_app.engine.server import whole_lines
from tests.conftest import running_inference_server
from tests.factories import make_lora_adapter

ROOT = Path(__file__).resolve().parent.parent
PROMPT = [{"role": "user", "content": "Tell me about the sea."}]
MAX_TOKENS = 10
CEILING = 256
# Tiny: one starter model (15 MB of safetensors) fits, two do not.
BUDGET_GIB = 0.02


def _write_registry(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(entries), encoding="utf-8")
    os.replace(partial, path)


def _greedy_in_process(base_path: Path, adapter: Path | None) -> str:
    """What PEFT answers in this process for PROMPT, greedy, with HF ``generate``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model: Any = AutoModelForCausalLM.from_pretrained(base_path, use_safetensors=True)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        output = model.generate(input_ids=ids, max_new_tokens=MAX_TOKENS, do_sample=False)
    return str(tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True))


@pytest.fixture(scope="module")
def adapters(starter_model_path: Path, tmp_path_factory: Any) -> dict[str, Path]:
    root = Path(tmp_path_factory.mktemp("adapters"))
    folders = {"adapter-a": root / "a", "adapter-b": root / "b"}
    for seed, folder in enumerate(folders.values(), start=1):
        make_lora_adapter(starter_model_path, folder, seed)
    return folders


@pytest.fixture(scope="module")
def expected(starter_model_path: Path, adapters: dict[str, Path]) -> dict[str, str]:
    answers = {"starter": _greedy_in_process(starter_model_path, None)}
    answers.update({name: _greedy_in_process(starter_model_path, folder) for name, folder in adapters.items()})
    return answers


@pytest.fixture(scope="module")
def registry_entries(starter_model_path: Path, adapters: dict[str, Path]) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {"starter": {"base": str(starter_model_path), "adapter": None}}
    entries.update({name: {"base": str(starter_model_path), "adapter": str(path)} for name, path in adapters.items()})
    return entries


@pytest.fixture(scope="module")
def registry_file(tmp_path_factory: Any, registry_entries: dict[str, dict[str, Any]]) -> Path:
    path = Path(tmp_path_factory.mktemp("registry")) / "models.json"
    _write_registry(path, registry_entries)
    return path


@pytest.fixture(scope="module")
def server(registry_file: Path, tmp_path_factory: Any) -> Iterator[str]:
    log = Path(tmp_path_factory.mktemp("server-log")) / "server.log"
    options = ("--memory-budget-gib", str(BUDGET_GIB), "--max-tokens", str(CEILING))
    with running_inference_server(registry_file, log, *options) as url:
        yield url


def _chat(url: str, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def _answer(url: str, model: str) -> str:
    response = _chat(url, model)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def _sse_payloads(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_models_lists_the_served_names(server: str) -> None:
    names = asyncio.run(list_models(server))
    assert sorted(names) == ["adapter-a", "adapter-b", "starter"]


def test_streamed_chat_sends_text_chunks_then_done(server: str) -> None:
    body = {"model": "starter", "messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = _sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"] and c["choices"][0]["delta"]]
    text_deltas = [delta for delta in deltas if delta]
    assert len(text_deltas) >= 3
    assert "".join(text_deltas).strip()
    finishing = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finishing] in (["length"], ["stop"])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] <= MAX_TOKENS
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] >= 1  # an answer may stop before MAX_TOKENS (finish reason "stop")
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_client_streams_the_same_text_as_a_whole_answer_with_timings(server: str, expected: dict[str, str]) -> None:
    async def collect() -> list[Any]:
        return [u async for u in stream_chat(server, "starter", PROMPT, max_tokens=MAX_TOKENS, temperature=0)]

    updates = asyncio.run(collect())
    assert updates[-1].done and updates[-1].text == expected["starter"]
    assert updates[-1].time_to_first_token_s is not None
    assert updates[-1].tokens_per_second is not None and updates[-1].tokens_per_second > 0


def test_each_adapter_answers_what_peft_gives_in_process(server: str, expected: dict[str, str]) -> None:
    answers = {name: _answer(server, name) for name in ("starter", "adapter-a", "adapter-b")}
    assert answers == expected
    assert len(set(answers.values())) == 3, "the adapters must change the greedy answer"


def test_completion_endpoint_reports_usage(server: str) -> None:
    body = {"model": "adapter-a", "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}
    response = httpx.post(f"{server}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "text_completion"
    assert data["usage"]["prompt_tokens"] > 0
    assert 1 <= data["usage"]["completion_tokens"] <= 5


def test_interleaved_requests_get_the_answers_they_get_alone(server: str, expected: dict[str, str]) -> None:
    names = ["adapter-a", "starter", "adapter-b", "starter", "adapter-b", "adapter-a"]

    async def ask(client: httpx.AsyncClient, name: str, stream: bool) -> str:
        body = {"model": name, "messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream}
        if not stream:
            response = await client.post(f"{server}/v1/chat/completions", json=body)
            return str(response.json()["choices"][0]["message"]["content"])
        text = ""
        async with client.stream("POST", f"{server}/v1/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    choices = json.loads(line[len("data: ") :])["choices"]
                    text += choices[0]["delta"].get("content", "") if choices else ""
        return text

    async def run_all() -> list[str]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(*(ask(client, name, i % 2 == 0) for i, name in enumerate(names)))

    assert asyncio.run(run_all()) == [expected[name] for name in names]


def test_unknown_model_is_404_in_openai_format(server: str) -> None:
    response = _chat(server, "no-such-model")
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "model_not_found" and error["param"] == "model"


def test_max_tokens_over_the_ceiling_is_400(server: str) -> None:
    response = _chat(server, "starter", max_tokens=CEILING + 1)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens"
    with pytest.raises(InferenceError) as raised:
        asyncio.run(_first_update(server, CEILING + 1))
    assert raised.value.status == 400


async def _first_update(server: str, max_tokens: int) -> StreamUpdate:
    return await anext(stream_chat(server, "starter", PROMPT, max_tokens=max_tokens))


def test_malformed_request_is_400_in_openai_format(server: str) -> None:
    response = httpx.post(f"{server}/v1/chat/completions", json={"model": "starter"}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"


def test_client_disconnect_stops_the_generation(server: str, expected: dict[str, str]) -> None:
    before = httpx.get(f"{server}/admin/status").json()["cancelled"]
    body = {"model": "starter", "messages": PROMPT, "max_tokens": CEILING, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=60) as response:
        contents = 0
        for line in response.iter_lines():
            contents += '"content": "' in line
            if contents >= 3:
                break  # leaving the block closes the connection mid-answer
    deadline = time.monotonic() + 20
    while httpx.get(f"{server}/admin/status").json()["cancelled"] == before:
        assert time.monotonic() < deadline, "the server kept generating for a client that left"
        time.sleep(0.1)
    assert _answer(server, "starter") == expected["starter"]


def test_loading_a_second_base_over_budget_evicts_the_first(
    server: str,
    registry_file: Path,
    registry_entries: dict[str, dict[str, Any]],
    starter_model_path: Path,
    expected: dict[str, str],
    tmp_path: Path,
) -> None:
    copy = tmp_path / "starter-copy"
    shutil.copytree(starter_model_path, copy)
    _write_registry(registry_file, {**registry_entries, "copy": {"base": str(copy), "adapter": None}})
    try:
        assert _answer(server, "copy") == expected["starter"]  # the registry was re-read: "copy" is served
        status = httpx.get(f"{server}/admin/status").json()
        assert [entry["base"] for entry in status["loaded"]] == [str(copy.resolve())]
        assert _answer(server, "adapter-b") == expected["adapter-b"]
        status = httpx.get(f"{server}/admin/status").json()
        assert [entry["base"] for entry in status["loaded"]] == [str(starter_model_path.resolve())]
        assert status["evictions"] >= 2
    finally:
        _write_registry(registry_file, registry_entries)
    assert httpx.post(f"{server}/admin/reload").json()["models"] == ["adapter-a", "adapter-b", "starter"]


def test_stop_string_cuts_the_answer_before_it(server: str, expected: dict[str, str]) -> None:
    words = expected["starter"].split()
    stop = " " + words[2]
    response = _chat(server, "starter", stop=[stop])
    choice = response.json()["choices"][0]
    assert choice["message"]["content"] == expected["starter"][: expected["starter"].index(stop)]
    assert choice["finish_reason"] == "stop"


def test_sampling_with_a_seed_is_repeatable(server: str) -> None:
    answers = {_answer_sampled(server, seed=7) for _ in range(2)}
    assert len(answers) == 1


def _answer_sampled(server: str, *, seed: int) -> str:
    response = _chat(server, "adapter-a", temperature=1.0, top_p=0.9, seed=seed)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def test_vllms_stream_is_relayed_in_whole_lines_wherever_a_network_read_ends() -> None:
    # The relay renames vLLM's name for the model in each piece it passes on: a read that ends inside the name must
    # not leave half of it in each piece.
    reads = [b'data: {"model":"ada', b'pter-1","n":1}\n\ndata: {"mo', b'del":"adapter-1"}\n\n', b"data: [DONE]"]

    async def received() -> AsyncIterator[bytes]:
        for read in reads:
            yield read

    async def relayed() -> list[bytes]:
        return [piece async for piece in whole_lines(received())]

    assert asyncio.run(relayed()) == [
        b'data: {"model":"adapter-1","n":1}\n\n', b'data: {"model":"adapter-1"}\n\n', b"data: [DONE]",
    ]  # fmt: skip
