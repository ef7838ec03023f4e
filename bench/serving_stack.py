"""Playground streaming through the full stack vs the inference server alone: tokens/s and time to first token.

PERF.md's goal: the full stack (browser's request → uvicorn → Gradio's queue → the playground's ``compare``
handler → the studio's metered stream → the inference server) keeps at least 0.9× the bare engine's
tokens/s. This script builds ``make run``'s embedded default in a temporary ``ATELIER_DATA_DIR`` (as
bench/demo_flow.py does: SQLite, migrate, seed_demo, the starter model cached in ``--models-dir``), starts
the inference server (``python -m serving_app.engine --threads 1``) and the web process (``uvicorn
studio.asgi:app``) pointed at it, and signs in as the demo user through the login form.

The model (``--model``): ``random`` (default) is a 45M-parameter Llama with random weights and the starter
model's tokenizer, built once into ``--models-dir`` and registered as a base model: it answers up to
``--max-tokens`` at about 75 tok/s on one CPU thread, a rate where the relay's cost shows. ``starter`` is the
starter model itself, whose answers end after 10-80 tokens: that measures the fixed costs more than a rate.

One scenario, ``--repeat`` runs per side, alternating which side goes first:

- ``full_stack``: one call of the playground's Gradio API ``compare`` (in a session opened as the site's
  frame opens it, ``/play/?team=demo``) with two columns, both the same model, the same prompt, greedy
  decoding and ``--max-tokens``; the event stream is read as a browser reads it. Per column: time to first
  token (the first event that shows answer text in that column, measured from the POST), and tokens/s =
  (tokens − 1) / (the last event that changed that column's text − the first); the token count is the one
  the handler shows in the column's figures line.
- ``bare_engine`` (the peer, same call): the same two requests sent at once straight to the inference
  server with its streaming client (``serving_app.engine.client.stream_chat``), which times the tokens as
  they arrive.

Both columns share one base model, so the server generates them one after the other (one generation at a
time per loaded model): column 1's figures are a single stream's, column 2's TTFT includes the wait. The
ratio ``tokens_per_second_ratio`` is full stack / bare engine on column 1's median tokens/s;
``ttft_added_ms`` is the difference of the medians. Prints one JSON line (the last line of stdout; DeepSpeed
may print a warning before it); never asserts.

    .venv/bin/python bench/serving_stack.py                 # a few minutes once the starter model exists
    .venv/bin/python bench/serving_stack.py --repeat 9 --max-tokens 256 --model starter
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from demo_flow import StepFailed, manage, stop, studio_env, tail

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serving_app.engine.client import stream_chat  # noqa: E402

DEMO_USER, DEMO_PASSWORD, DEMO_TEAM = "demo", "atelier-demo-2026", "demo"
PROMPT = "Write a few sentences about the sea."
GOAL_RATIO = 0.9


RANDOM_MODEL = "bench-random-llama"


def build_random_model(starter: Path, folder: Path) -> None:
    """A Llama with random weights and the starter model's tokenizer (~45M parameters): it rarely says EOS.

    The starter model ends its answers after 10-80 tokens, too short to time a decode rate; random
    weights keep generating to ``max_tokens`` at a speed closer to a real model's on a GPU.
    """
    import shutil as files

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(starter)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (starter / name).exists():
            files.copy(starter / name, folder / name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(command: list[str], *, env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StepFailed(f"{process.args!r} exited with {process.returncode}:\n{tail(log)}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise StepFailed(f"{url} did not answer within {timeout:.0f} s:\n{tail(log)}")


def sign_in(base: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=120)
    page = client.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    if token is None:
        raise StepFailed("the login page has no CSRF token")
    response = client.post(
        "/accounts/login/",
        data={"csrfmiddlewaretoken": token.group(1), "username": DEMO_USER, "password": DEMO_PASSWORD},
    )
    if response.status_code != 302:
        raise StepFailed(f"logging in as {DEMO_USER} failed ({response.status_code})")
    return client


def open_session(client: httpx.Client) -> str:
    """Run the playground page's load as the site's frame does (``/play/?team=demo``); returns the session."""
    session = uuid.uuid4().hex
    config = client.get("/play/config").json()
    kinds = {component["id"]: component["type"] for component in config["components"]}
    page_load = next(
        dependency["id"]
        for dependency in config["dependencies"]
        if any(trigger[1] == "load" for trigger in dependency["targets"])
        and any(kinds.get(output) == "state" for output in dependency["outputs"])
    )
    joined = client.post(
        f"/play/gradio_api/queue/join?team={DEMO_TEAM}&view=compare",
        json={"data": [], "fn_index": page_load, "session_hash": session, "event_data": None, "trigger_id": None},
    )
    joined.raise_for_status()
    with client.stream("GET", "/play/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: ") and json.loads(line[len("data: ") :]).get("msg") == "process_completed":
                break
    return session


def gradio_call(client: httpx.Client, session: str, api_name: str, data: list[Any]) -> list[tuple[float, str, Any]]:
    """Call a Gradio API in ``session`` and read its event stream: (seconds since the POST, event, data)."""
    started = time.perf_counter()
    posted = client.post(f"/play/gradio_api/call/{api_name}", json={"data": data, "session_hash": session})
    posted.raise_for_status()
    events: list[tuple[float, str, Any]] = []
    with client.stream("GET", f"/play/gradio_api/call/{api_name}/{posted.json()['event_id']}") as stream:
        event = ""
        for line in stream.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                payload = json.loads(line[len("data: ") :])
                events.append((time.perf_counter() - started, event, payload))
                if event in ("complete", "error"):
                    break
    if events and events[-1][1] == "error":
        raise StepFailed(f"{api_name} failed: {events[-1][2]}")
    return events


def model_key(client: httpx.Client, session: str, name: str) -> str:
    """The key of base model ``name`` as the playground's model picker lists it."""
    events = gradio_call(client, session, "models", [])
    for update in events[-1][2]:
        for choice in update.get("choices", []) if isinstance(update, dict) else []:
            label, value = choice if isinstance(choice, list) else (choice, choice)
            if str(label) == f"{name} (base)":
                return str(value)
    raise StepFailed(f"{name} is not in the playground's picker: {events[-1][2]}")


def column_text(chat: Any) -> str:
    """The last assistant message of a chatbot value (Gradio messages format)."""
    if not isinstance(chat, list) or not chat:
        return ""
    last = chat[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant":
        return ""  # the prompt is shown, the answer has not started
    content = last.get("content")
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content or "")


def full_stack_once(client: httpx.Client, session: str, key: str, max_tokens: int) -> list[dict[str, Any]]:
    columns_in: list[Any] = []
    for position in range(4):  # two columns shown; the pre-built columns 3 and 4 stay empty
        model = key if position < 2 else None
        columns_in += [model, [], "", 0.0, 1.0, max_tokens, 0]  # model, history, system, temp, top-p, max, seed
    events = gradio_call(client, session, "compare", [PROMPT, "2", *columns_in])
    columns = []
    for position in range(2):
        # The moments this column's text changed (every event carries all columns: most are the other's tokens).
        times, shown = [], ""
        for at, name, payload in events:
            text = column_text(payload[position]) if name == "generating" else shown
            if text != shown:
                times.append(at)
                shown = text
        figures = str(events[-1][2][4 + position])  # "TTFT 0.12 s · 185 tok/s · 64 tokens"
        found = re.search(r"(\d+) tokens?", figures)
        tokens = int(found.group(1)) if found else 0
        first, last = (times[0], times[-1]) if times else (None, None)
        rate = (tokens - 1) / (last - first) if first is not None and last and last > first and tokens > 1 else None
        columns.append({"ttft_s": first, "tokens_per_second": rate, "tokens": tokens, "text_events": len(times)})
    return columns


def bare_engine_once(engine: str, served_name: str, max_tokens: int) -> list[dict[str, Any]]:
    async def one() -> dict[str, Any]:
        last = None
        async for update in stream_chat(
            engine, served_name, [{"role": "user", "content": PROMPT}], max_tokens=max_tokens, temperature=0.0, seed=0
        ):
            last = update
        assert last is not None
        return {
            "ttft_s": last.time_to_first_token_s,
            "tokens_per_second": last.tokens_per_second,
            "tokens": last.completion_tokens,
        }

    async def both() -> list[dict[str, Any]]:
        return list(await asyncio.gather(one(), one()))

    return asyncio.run(both())


def median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(statistics.median(present), 4) if present else None


def summarize(runs: list[dict[str, Any]], peers: list[dict[str, Any]], max_tokens: int, model: str) -> dict[str, Any]:
    def figures(side: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            f"column_{n + 1}_{name}": median([run["columns"][n][name] for run in side])
            for n in range(2)
            for name in ("ttft_s", "tokens_per_second", "tokens")
        }

    full, bare = figures(runs), figures(peers)
    ratio = (
        round(full["column_1_tokens_per_second"] / bare["column_1_tokens_per_second"], 3)
        if full["column_1_tokens_per_second"] and bare["column_1_tokens_per_second"]
        else None
    )
    added = (
        round((full["column_1_ttft_s"] - bare["column_1_ttft_s"]) * 1000, 1)
        if full["column_1_ttft_s"] is not None and bare["column_1_ttft_s"] is not None
        else None
    )
    return {
        "scenario": "playground_full_stack_vs_bare_engine",
        "model": model,
        "max_tokens": max_tokens,
        "runs": len(runs),
        "full_stack": full,
        "bare_engine": bare,
        "tokens_per_second_ratio": ratio,
        "goal_ratio": GOAL_RATIO,
        "ttft_added_ms": added,
        "load_1min": round(os.getloadavg()[0], 2),
        "every_run": {"full_stack": runs, "bare_engine": peers},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per side (default 5)")
    parser.add_argument("--max-tokens", type=int, default=128, help="new tokens per answer (default 128)")
    parser.add_argument(
        "--model",
        choices=["random", "starter"],
        default="random",
        help="random: a 45M-parameter Llama with random weights, which answers up to --max-tokens (default); "
        "starter: the starter model, whose answers end after 10-80 tokens",
    )
    parser.add_argument("--models-dir", default=str(ROOT / "var" / "bench-models"), help="starter model cache")
    parser.add_argument("--max-seconds", type=int, default=1800, help="hard cap (default 1800)")
    options = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="atelier-serving-bench-"))
    env, _ = studio_env(data_dir, Path(options.models_dir).resolve())
    engine_port, web_port = free_port(), free_port()
    engine, web = f"http://127.0.0.1:{engine_port}", f"http://127.0.0.1:{web_port}"
    env.update(ATELIER_INFERENCE_URL=engine, OMP_NUM_THREADS="1")
    processes: list[subprocess.Popen[bytes]] = []

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(options.max_seconds)
    try:
        print(f"embedded default in {data_dir} ...", file=sys.stderr)
        manage(["migrate", "--noinput"], env=env, log=data_dir / "migrate.log", timeout=300)
        manage(["seed_demo"], env=env, log=data_dir / "seed.log", timeout=120)
        manage(["create_starter_model"], env=env, log=data_dir / "starter.log", timeout=1200)
        models_dir = Path(options.models_dir).resolve()
        model_name = "atelier-starter"
        if options.model == "random":
            model_name, folder = RANDOM_MODEL, models_dir / RANDOM_MODEL
            if not (folder / "model.safetensors").exists():
                build_random_model(models_dir / "atelier-starter", folder)
            register = (
                "from pathlib import Path; from training_app import services; "
                f"services.register_model_folder(path=Path({str(folder)!r}), name={RANDOM_MODEL!r}, "
                "source='server_path')"
            )
            manage(["shell", "-c", register], env=env, log=data_dir / "register.log", timeout=120)
        registry = data_dir / "serving" / "models.json"
        registry.parent.mkdir(parents=True, exist_ok=True)
        engine_log, web_log = data_dir / "engine.log", data_dir / "web.log"
        command = [sys.executable, "-m", "serving_app.engine", "--registry", str(registry), "--port", str(engine_port)]
        processes.append(start([*command, "--threads", "1"], env=env, log=engine_log))
        wait_for(f"{engine}/v1/models", processes[-1], engine_log, 60)
        uvicorn = [
            sys.executable,
            "-m",
            "studio.serve",
            "--port",
            str(web_port),
            "--log-level",
            "warning",
        ]
        processes.append(start(uvicorn, env=env, log=web_log))
        wait_for(f"{web}/healthz", processes[-1], web_log, 90)

        client = sign_in(web)
        session = open_session(client)
        key = model_key(client, session, model_name)
        served_name = key.replace(":", "-")
        print(f"warming up ({key}) ...", file=sys.stderr)
        full_stack_once(client, session, key, 8)  # loads the model, writes the registry entry
        runs, peers = [], []
        for index in range(options.repeat):
            order = ("full", "bare") if index % 2 == 0 else ("bare", "full")
            for side in order:
                if side == "full":
                    runs.append({"columns": full_stack_once(client, session, key, options.max_tokens)})
                else:
                    peers.append({"columns": bare_engine_once(engine, served_name, options.max_tokens)})
            print(f"run {index + 1}/{options.repeat} done", file=sys.stderr)
        print(json.dumps(summarize(runs, peers, options.max_tokens, f"{model_name} on CPU")))
        return 0
    except TimeoutError:
        print(f"stopped: the run passed its {options.max_seconds} s cap", file=sys.stderr)
        return 124
    except StepFailed as failure:
        print(f"failed: {failure}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        for process in processes:
            stop(process, grace=5)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
