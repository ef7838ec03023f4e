"""16 concurrent streams, base model and LoRA adapters mixed: the vLLM path against the in-process engine.

PERF.md's goals for the serving path on this machine: with 16 concurrent streams, at least 3.5× the
in-process engine's aggregate tokens/s and a time to first token p95 ≤ 0.25 s; 8 different adapters within
25% of base-only throughput; and the full stack (studio ``/v1`` → inference server → vLLM) at least 0.9× vLLM
served directly.

Setup, in a temporary ``ATELIER_DATA_DIR`` (``make run``'s embedded default, as bench/serving_stack.py builds
it: SQLite, migrate): the starter model the tests use (``tests.conftest.starter_models_dir``, created once by
``training_app.engine.starter.ensure_starter_model``) and 8 real random LoRA adapters of it
(``tests.factories.make_lora_adapter``, r 8 on q/v), written to the inference server's registry as ``starter``
and ``adapter-1`` … ``adapter-8``. Every request is a streamed chat completion, greedy (temperature 0, seed 0),
``--max-tokens`` new tokens at most, each of the 16 with its own prompt. The in-process engine has no
``ignore_eos``, so answers may end early: tokens are counted from each stream's ``usage``, and aggregate
tokens/s = all completion tokens of a round / the round's wall time (first request sent → last stream done).
TTFT is each request's time from sending to its first text delta. One warm-up round per scenario (adapters
loaded, caches warm) is not counted; scenarios compared with each other alternate which goes first per round.

Phases (one inference server at a time, so each gets the whole machine):

1. ``in_process_*``: ``python -m serving_app.engine --engine builtin --threads <cores>``; ``mixed`` (8 base
   + 8 requests on 8 different adapters, at once) and ``single`` (4 base requests one after the other).
2. ``vllm_*``: ``python -m serving_app.engine --engine vllm --preload --vllm-max-loras 8`` (vLLM started as its
   child, 30–90 s); the same ``mixed`` and ``single`` through the inference server, then ``base_only`` (16 on
   the base), ``one_adapter`` (16 on ``adapter-1``) and ``adapters_8`` (16 on 8 different adapters, 2 each)
   sent straight to its vLLM server with vLLM's ``ignore_eos``, so that every answer is exactly
   ``--max-tokens`` long (random adapters answer longer than the base model, which would favour them).
3. ``full_stack`` / ``inference_server`` / ``vllm_direct``: the studio (``python -m studio.serve``) in front of
   that inference server, with a team, a deployment of ``adapter-1`` and a team API key made through the
   services; 16 streams of ``/v1/chat/completions`` with the key, the same 16 sent to the inference server,
   and straight to its vLLM server (the adapter under the name the inference server loaded it with). With
   ``--other-studio DIR`` a second studio, started from that checkout (a ``git worktree`` of an older commit),
   stands beside the first as ``full_stack_other``: two versions of the studio compared in the same rounds.
   Then the same three again as ``*_long``, with the model's end tokens banned (``logit_bias`` -100, which ``/v1``
   passes on), so that every answer runs to ``--max-tokens``: the starter model's own answers end after ~12
   tokens, which makes the short scenarios measure the studio's cost per request more than per token.

Prints one JSON line per scenario on stdout (median aggregate tokens/s over ``--rounds``, TTFT p50/p95/max over
every request of those rounds, tokens per request, the 1-minute load average), then a line of ratios against
the goals, and a table of it all on stderr. Never asserts. The servers (vLLM's process group is stopped by
the inference server on SIGTERM) and the temporary folder are removed at the end; ``--max-seconds`` caps the
run (exit 124).

    .venv/bin/python bench/serving_concurrency.py                # about 2-3 minutes on the 2-core machine
    .venv/bin/python bench/serving_concurrency.py --rounds 5 --max-tokens 64
    .venv/bin/python bench/serving_concurrency.py --rounds 5 --pause 1.5 --adapter-modules all-linear
    git worktree add /tmp/before HEAD~1 && .venv/bin/python bench/serving_concurrency.py --skip in_process \
        --rounds 8 --pause 1.5 --other-studio /tmp/before

``--adapter-modules`` picks what the 8 adapters train (the studio's default is ``all-linear``); ``--pause`` gives
each counted round that many seconds of quiet first; ``VLLM_PLUGINS=lora_filesystem_resolver`` in the
environment leaves the studio's vLLM plugin out (vLLM's own CPU LoRA kernels, for a comparison).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from demo_flow import StepFailed, manage, setup_django_here, stop, studio_env, tail
from serving_stack import free_port, start, wait_for

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serving_app.engine.vllm_server import BASE_NAME  # noqa: E402

STREAMS = 16
ADAPTERS = 8
BASE = "starter"
GOALS = {"vllm_vs_in_process": 3.5, "ttft_p95_s": 0.25, "adapters_vs_base": 0.75, "full_stack_vs_vllm": 0.9}
PROMPTS = [
    "Write a few sentences about the sea.", "Describe a quiet morning in a small town.",
    "Explain how a bicycle works.", "Give three tips for writing clear emails.",
    "Tell a short story about a lost key.", "What makes a good cup of tea?",
    "Describe the view from a mountain top.", "How do plants drink water?",
    "Write a short note thanking a colleague.", "Explain what a library is for.",
    "Describe a rainy afternoon.", "Give advice to someone learning to cook.",
    "Why do people keep diaries?", "Describe a busy train station.",
    "Write a few lines about autumn leaves.", "Explain how to plan a short trip.",
]  # fmt: skip
VLLM_START_S = 300


def adapter_name(number: int) -> str:
    return f"adapter-{number}"


@dataclass(frozen=True)
class Side:
    """What one scenario sends to ``url``: one request per entry of ``models``, all at once (or one after the
    other when ``sequential``), with ``headers`` and ``extra`` request parameters."""

    url: str
    models: list[str]
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    sequential: bool = False
    server_pid: int | None = None  # the process in front whose CPU time per request is reported


@dataclass(frozen=True)
class Answer:
    """One streamed request: seconds from sending to the first text and to the end, completion tokens."""

    ttft_s: float | None
    elapsed_s: float
    tokens: int


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int, extra: dict[str, Any]
) -> Answer:
    """One streamed chat completion, timed from sending: the first text delta, the end, ``usage``'s tokens.

    Not ``serving_app.engine.client.stream_chat``: that client cannot send vLLM's own ``ignore_eos``.
    """
    body = {
        "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
        "temperature": 0.0, "seed": 0, "stream": True, "stream_options": {"include_usage": True}, **extra,
    }  # fmt: skip
    started = time.monotonic()
    first, deltas, tokens = None, 0, None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise StepFailed(f"{url} refused {model}: {response.status_code} {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                raise StepFailed(f"{url} failed {model} mid-answer: {chunk['error']}")
            if any(choice.get("delta", {}).get("content") for choice in chunk.get("choices", [])):
                first = first if first is not None else time.monotonic() - started
                deltas += 1
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    return Answer(first, time.monotonic() - started, tokens if tokens is not None else deltas)


async def concurrent_round(side: Side, max_tokens: int) -> dict[str, Any]:
    """Send ``side``'s requests at once (prompt i to model i); the round's answers and wall time."""
    limits = httpx.Limits(max_connections=len(side.models) + 4, max_keepalive_connections=len(side.models) + 4)
    timeout = httpx.Timeout(600.0, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=side.headers) as client:
        started = time.monotonic()
        answers = await asyncio.gather(
            *(
                one_request(client, side.url, model, PROMPTS[index % len(PROMPTS)], max_tokens, side.extra)
                for index, model in enumerate(side.models)
            )
        )
        wall = time.monotonic() - started
    return {"answers": answers, "wall_s": wall}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of process ``pid`` so far (0 without a pid)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(side: Side, max_tokens: int) -> dict[str, Any]:
    """One round of ``side``: its answers, the wall time they took and the CPU time of its server."""
    if not side.sequential:
        cpu_before = cpu_seconds(side.server_pid)
        result = asyncio.run(concurrent_round(side, max_tokens))
        return {**result, "server_cpu_s": cpu_seconds(side.server_pid) - cpu_before}
    alone = [Side(side.url, [model], side.headers, side.extra) for model in side.models]
    rounds = [asyncio.run(concurrent_round(one, max_tokens)) for one in alone]
    return {"answers": [r["answers"][0] for r in rounds], "wall_s": sum(r["wall_s"] for r in rounds)}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of ``values``."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(scenario: str, side: Side, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario's JSON line: median aggregate tokens/s of the rounds, TTFT percentiles of every request."""
    rates = [sum(a.tokens for a in r["answers"]) / r["wall_s"] for r in rounds if r["wall_s"] > 0]
    ttfts = [a.ttft_s for r in rounds for a in r["answers"] if a.ttft_s is not None]
    tokens = [a.tokens for r in rounds for a in r["answers"]]
    return {
        "scenario": scenario,
        "streams": 1 if side.sequential else len(side.models),
        "distinct_adapters": len(set(side.models) - {BASE, BASE_NAME}),
        "ignore_eos": bool(side.extra.get("ignore_eos")),
        "rounds": len(rounds),
        "aggregate_tokens_per_second": round(statistics.median(rates), 1) if rates else None,
        "every_round_tokens_per_second": [round(rate, 1) for rate in rates],
        "ttft_p50_s": round(percentile(ttfts, 50) or 0, 3) if ttfts else None,
        "ttft_p95_s": round(percentile(ttfts, 95) or 0, 3) if ttfts else None,
        "ttft_max_s": round(max(ttfts), 3) if ttfts else None,
        "tokens_per_request_median": statistics.median(tokens) if tokens else None,
        "no_first_token": sum(1 for r in rounds for a in r["answers"] if a.ttft_s is None),
        # The least noise-sensitive figure of the studio's cost: its CPU time per request (the machine is shared).
        "server_cpu_ms_per_request": (
            round(1000 * sum(r.get("server_cpu_s", 0) for r in rounds) / len(tokens), 2)
            if side.server_pid and tokens
            else None
        ),
        "load_1min": round(os.getloadavg()[0], 2),
    }


def mixed_models() -> list[str]:
    """16 requests: 8 on the base model, 8 on 8 different adapters (interleaved)."""
    return [BASE if index % 2 == 0 else adapter_name(index // 2 + 1) for index in range(STREAMS)]


def adapter_models() -> list[str]:
    return [adapter_name(index % ADAPTERS + 1) for index in range(STREAMS)]


def measure(
    sides: dict[str, Side], max_tokens: int, rounds: int, pause_s: float = 0.0
) -> dict[str, list[dict[str, Any]]]:
    """Each side's rounds, rotating which side goes first per round (one warm-up round each first: adapters
    are loaded, caches warm), ``pause_s`` seconds of quiet before each counted round."""
    names = list(sides)
    for name in names:
        one_round(sides[name], max_tokens)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            time.sleep(pause_s)
            results[name].append(one_round(sides[name], max_tokens))
        print(f"  {', '.join(names)}: round {index + 1}/{rounds} done", file=sys.stderr)
    return results


def measure_and_emit(figures: dict[str, dict[str, Any]], sides: dict[str, Side], *sampling: Any) -> None:
    for name, rounds in measure(sides, *sampling).items():
        emit(figures, summarize(name, sides[name], rounds))


# --- setup -----------------------------------------------------------------------------------------------


def prepare_models(data_dir: Path, targets: str) -> tuple[Path, list[Path]]:
    """The tests' starter model (created once, cached) and 8 random LoRA adapters of it on ``targets`` (comma-
    separated module names, or ``all-linear``) in ``data_dir``."""
    from tests.conftest import starter_models_dir
    from tests.factories import make_lora_adapter
    from training_app.engine.starter import ensure_starter_model

    starter = ensure_starter_model(starter_models_dir())
    root = data_dir / "adapters"
    root.mkdir()
    modules = targets if targets == "all-linear" else tuple(targets.split(","))
    adapters = [
        make_lora_adapter(starter, root / adapter_name(n), seed=100 + n, targets=modules)
        for n in range(1, ADAPTERS + 1)
    ]
    return starter, adapters


def write_registry(path: Path, starter: Path, adapters: list[Path]) -> None:
    entries: dict[str, dict[str, str | None]] = {BASE: {"base": str(starter), "adapter": None}}
    for folder in adapters:
        entries[folder.name] = {"base": str(starter), "adapter": str(folder)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries, indent=1), encoding="utf-8")


def create_deployment(starter: Path, adapter: Path) -> tuple[str, str, str]:
    """A team, its owner, the starter model registered, ``adapter`` as a model version deployed as ``bench-bot``
    and a team API key that may call it; returns (deployment name, served name, the key's secret)."""
    from accounts import services as accounts_services
    from accounts.models import Team
    from accounts.permissions import resolve_access
    from accounts.roles import Role
    from serving_app import deployments
    from tests.factories import adapter_model_version, member
    from training_app import services as training_services
    from training_app.models import BaseModel

    team = Team.objects.create(name="Bench", slug="bench")
    owner = member(team, Role.OWNER, "bench-owner")
    access = resolve_access(owner, team.slug)
    base = training_services.register_model_folder(
        path=starter, name="atelier-starter", source=BaseModel.Source.STARTER
    )
    version = adapter_model_version(team, owner, base, adapter, name="bench adapter")
    deployment = deployments.create_deployment(access=access, name="bench-bot", version=version)
    _, secret = accounts_services.create_team_api_key(
        access=access, name="bench", role=Role.MEMBER, requests_per_minute=10_000, deployments=[deployment]
    )
    return deployment.name, f"version-{version.pk}", secret


def start_engine(
    registry: Path, data_dir: Path, name: str, options: list[str], env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    log = data_dir / f"engine-{name}.log"
    command = [sys.executable, "-m", "serving_app.engine", "--registry", str(registry), "--port", str(port)]
    process = start([*command, *options], env=env, log=log)
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/v1/models", process, log, 120)
    return process, url, log


def wait_for_vllm(url: str, process: subprocess.Popen[bytes], log: Path, logs: Path) -> dict[str, Any]:
    """Until the inference server's vLLM server is ready; its status (``url`` of vLLM itself among it)."""
    deadline = time.monotonic() + VLLM_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StepFailed(f"the inference server exited:\n{tail(log)}")
        servers = httpx.get(f"{url}/admin/status", timeout=10).json()["vllm"] or []
        if servers and all(server["state"] == "ready" for server in servers):
            return dict(servers[0])
        if any(server["state"] == "failed" for server in servers):
            break
        time.sleep(1)
    vllm_logs = "".join(tail(path) for path in sorted(logs.glob("*.log")))
    raise StepFailed(f"vLLM did not become ready within {VLLM_START_S} s:\n{vllm_logs}")


# --- output ----------------------------------------------------------------------------------------------


def end_token_ids(model: Path) -> list[int]:
    """The token ids that end the model's answers (its generation config's ``eos_token_id``, one or a list)."""
    eos = json.loads((model / "generation_config.json").read_text(encoding="utf-8")).get("eos_token_id")
    return [eos] if isinstance(eos, int) else list(eos or [])


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 2) if numerator and denominator else None


def verdicts(figures: dict[str, dict[str, Any]], load_before: float) -> dict[str, Any]:
    def rate(name: str) -> float | None:
        return figures.get(name, {}).get("aggregate_tokens_per_second")

    return {
        "scenario": "serving_concurrency_ratios",
        "vllm_vs_in_process_mixed": ratio(rate("vllm_mixed"), rate("in_process_mixed")),
        "vllm_ttft_p95_s_mixed": figures.get("vllm_mixed", {}).get("ttft_p95_s"),
        "adapters_8_vs_base_only": ratio(rate("vllm_adapters_8"), rate("vllm_base_only")),
        "one_adapter_vs_base_only": ratio(rate("vllm_one_adapter"), rate("vllm_base_only")),
        "full_stack_vs_vllm_direct": ratio(rate("full_stack"), rate("vllm_direct")),
        "full_stack_vs_other_studio": ratio(rate("full_stack"), rate("full_stack_other")),
        "inference_server_vs_vllm_direct": ratio(rate("inference_server"), rate("vllm_direct")),
        "full_stack_vs_vllm_direct_long_answers": ratio(rate("full_stack_long"), rate("vllm_direct_long")),
        "inference_server_vs_vllm_direct_long_answers": ratio(rate("inference_server_long"), rate("vllm_direct_long")),
        "vllm_vs_in_process_single": ratio(rate("vllm_single"), rate("in_process_single")),
        "goals": GOALS,
        "load_1min_before": round(load_before, 2),
        "cpus": os.cpu_count(),
    }


def table(figures: dict[str, dict[str, Any]], ratios: dict[str, Any]) -> str:
    lines = [
        "| scenario | streams | aggregate tok/s | TTFT p50 | TTFT p95 | tokens/request | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in figures.items():
        lines.append(
            f"| {name} | {row['streams']} | {row['aggregate_tokens_per_second']} | {row['ttft_p50_s']} s | "
            f"{row['ttft_p95_s']} s | {row['tokens_per_request_median']} | {row['load_1min']} |"
        )
    lines.append("")
    lines += [f"{key}: {value}" for key, value in ratios.items() if key not in ("scenario", "goals")]
    return "\n".join(lines)


def emit(figures: dict[str, dict[str, Any]], row: dict[str, Any]) -> None:
    figures[row["scenario"]] = row
    print(json.dumps(row), flush=True)


# --- main ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="counted rounds per scenario (default 3)")
    parser.add_argument("--max-tokens", type=int, default=64, help="new tokens per answer at most (default 64)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="in-process engine's threads")
    parser.add_argument("--vllm-max-loras", type=int, default=ADAPTERS, help="adapters per vLLM batch (default 8)")
    parser.add_argument(
        "--engine-option", action="append", default=[], help="one more option of the vLLM inference server, "
        "e.g. --engine-option=--vllm-max-lora-rank=8 (repeat for more)",
    )  # fmt: skip
    parser.add_argument(
        "--adapter-modules", default="q_proj,v_proj", help="what the 8 adapters train: module names, comma-"
        "separated (default q_proj,v_proj, as the tests' adapters), or all-linear (the studio's LoRA default)",
    )  # fmt: skip
    parser.add_argument(
        "--pause", type=float, default=0.0, help="seconds of quiet before each counted round (default 0: each "
        "round starts as the last one ends; on the 2-core machine a round sent that way sometimes waits 1-6 s "
        "for its first tokens, even on a plain vLLM server)",
    )  # fmt: skip
    parser.add_argument("--skip", choices=["in_process", "full_stack"], action="append", default=[], help="phases")
    parser.add_argument(
        "--other-studio", type=Path, help="another checkout of the studio (a `git worktree` of an older commit, "
        "say) served beside this one in front of the same inference server and database, as the side "
        "full_stack_other, in the same alternating rounds",
    )  # fmt: skip
    parser.add_argument("--max-seconds", type=int, default=1800, help="hard cap (default 1800)")
    parser.add_argument(
        "--database-url", help="the studio's database instead of the embedded SQLite, e.g. an empty PostgreSQL "
        "database as compose runs it (postgres://postgres@127.0.0.1:5432/atelier_bench)",
    )  # fmt: skip
    options = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="atelier-serving-concurrency-"))
    processes: list[subprocess.Popen[bytes]] = []
    figures: dict[str, dict[str, Any]] = {}

    def on_signal(signum: int, frame: Any) -> None:
        raise TimeoutError if signum == signal.SIGALRM else KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.alarm(options.max_seconds)
    try:
        env, _ = studio_env(data_dir, data_dir / "models")
        setup_django_here(env, options.database_url)
        load_before = os.getloadavg()[0]  # the figures' own load average counts this run's servers too
        print(f"embedded default in {data_dir}; load {load_before:.2f} ...", file=sys.stderr)
        starter, adapters = prepare_models(data_dir, options.adapter_modules)
        registry = data_dir / "serving" / "models.json"
        write_registry(registry, starter, adapters)
        sampling = (options.max_tokens, options.rounds, options.pause)

        def single(url: str) -> Side:
            return Side(url, [BASE] * 4, sequential=True)

        if "in_process" not in options.skip:
            print("in-process engine ...", file=sys.stderr)
            builtin = ["--engine", "builtin", "--threads", str(options.threads)]
            engine, url, _ = start_engine(registry, data_dir, "builtin", builtin, env)
            processes.append(engine)
            sides = {"in_process_mixed": Side(url, mixed_models()), "in_process_single": single(url)}
            measure_and_emit(figures, sides, *sampling)
            stop(engine, grace=10)
            processes.remove(engine)

        print("vLLM (starting, 30-90 s) ...", file=sys.stderr)
        logs = data_dir / "vllm-logs"
        vllm_options = [
            "--engine", "vllm", "--preload", "--vllm-log-dir", str(logs), "--vllm-max-loras",
            str(options.vllm_max_loras), "--vllm-max-model-len", "1024", *options.engine_option,
        ]  # fmt: skip
        engine, url, engine_log = start_engine(registry, data_dir, "vllm", vllm_options, env)
        processes.append(engine)
        vllm = wait_for_vllm(url, engine, engine_log, logs)
        print(f"  vLLM ready after {vllm.get('ready_after_s')} s", file=sys.stderr)
        measure_and_emit(figures, {"vllm_mixed": Side(url, mixed_models()), "vllm_single": single(url)}, *sampling)
        # The adapters' cost alone: straight to vLLM (the adapters are loaded by now, under their served
        # names), every answer exactly --max-tokens long so both sides decode the same number of steps.
        fixed = {"ignore_eos": True}
        sides = {
            "vllm_base_only": Side(vllm["url"], [BASE_NAME] * STREAMS, extra=fixed),
            "vllm_one_adapter": Side(vllm["url"], [adapter_name(1)] * STREAMS, extra=fixed),
            "vllm_adapters_8": Side(vllm["url"], adapter_models(), extra=fixed),
        }
        measure_and_emit(figures, sides, *sampling)

        if "full_stack" not in options.skip:
            print("full stack (studio /v1 -> inference server -> vLLM) ...", file=sys.stderr)
            env["ATELIER_INFERENCE_URL"] = url
            manage(["migrate", "--noinput"], env=env, log=data_dir / "migrate.log", timeout=300)
            deployment, served, secret = create_deployment(starter, adapters[0])
            auth = {"Authorization": f"Bearer {secret}"}
            studios = {"full_stack": ROOT}
            if options.other_studio:
                studios["full_stack_other"] = options.other_studio
            sides = {}
            for name, checkout in studios.items():
                web_port = free_port()
                web_url, web_log = f"http://127.0.0.1:{web_port}", data_dir / f"web-{name}.log"
                command = [sys.executable, "-m", "studio.serve", "--port", str(web_port), "--log-level", "warning"]
                processes.append(start(command, env=env, log=web_log, cwd=checkout))  # its own code comes first
                wait_for(f"{web_url}/healthz", processes[-1], web_log, 90)
                one_round(Side(web_url, [deployment], auth), 8)  # publishes it: the inference server loads the adapter
                sides[name] = Side(web_url, [deployment] * STREAMS, auth, server_pid=processes[-1].pid)
            sides["inference_server"] = Side(url, [served] * STREAMS)
            sides["vllm_direct"] = Side(vllm["url"], [served] * STREAMS)
            measure_and_emit(figures, sides, *sampling)
            # The same three with answers that run to --max-tokens: the model's end tokens banned (OpenAI's
            # logit_bias, which /v1 passes on), so the studio's cost per token shows beside its cost per request.
            # (Not the other studio: a checkout from before /v1 took logit_bias refuses it.)
            long = {"logit_bias": {str(token): -100 for token in end_token_ids(starter)}}
            sides = {
                f"{name}_long": replace(side, extra=long) for name, side in sides.items() if name != "full_stack_other"
            }
            measure_and_emit(figures, sides, *sampling)

        ratios = verdicts(figures, load_before)
        ratios["vllm_inference_server_options"] = vllm_options
        ratios["adapter_modules"] = options.adapter_modules
        ratios["pause_s"] = options.pause
        ratios["lora_kernels"] = vllm.get("lora_kernels")  # "atelier": vllm_plugin's; "vllm": vLLM's own
        print(json.dumps(ratios), flush=True)
        print("\n" + table(figures, ratios), file=sys.stderr)
        return 0
    except TimeoutError:
        print(f"stopped: the run passed its {options.max_seconds} s cap", file=sys.stderr)
        return 124
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except StepFailed as failure:
        print(f"failed: {failure}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        for process in reversed(processes):
            stop(process, grace=20)  # the inference server stops its vLLM process group on SIGTERM
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
