"""The studio's own CPU per /v1 request and per relayed chunk, in front of a stand-in engine that costs nothing.

``serving_concurrency.py`` measures the studio in front of vLLM, where the studio's CPU is taken from vLLM on the
same cores and every figure swings with vLLM's. This one isolates the studio: the model's "vLLM server" is a
stand-in on loopback (this script run with ``--stand-in``, in a process of its own) that answers
``/v1/route`` for every model and streams ``N`` chat chunks of vLLM's shape, one every ``--interval`` seconds,
then the usage chunk and ``[DONE]``. The studio (``python -m studio.serve``, the embedded default: SQLite,
``DEBUG`` as ``make run`` has it) admits each request as usual (key, deployment, guard policy, usage row) and
relays the stand-in's answer.

Each round sends 16 streamed chat completions at once with one key to one deployment (``serving_concurrency``'s
setup: the starter model and a LoRA adapter of it as ``bench-bot``). The studio's CPU comes from ``/proc``, for
the whole process and for its event-loop thread apart from the others (the API's database threads). Two answer
lengths: 1 chunk (the cost per request) and ``--chunks`` chunks; the cost per relayed chunk is the difference
divided by the extra chunks. With ``--other-studio`` (another checkout, a ``git worktree`` of an older commit)
both studios are measured in the same rounds, alternating which goes first, and the ratios compare them.

    .venv/bin/python bench/studio_relay.py --rounds 10 [--other-studio /tmp/old]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import serving_concurrency as concurrency
from demo_flow import StepFailed, manage, setup_django_here, stop, studio_env
from serving_stack import free_port, start, wait_for

ROOT = Path(__file__).resolve().parent.parent
STREAMS = concurrency.STREAMS


# --- the stand-in engine ------------------------------------------------------------------------


def _chunk(payload: dict[str, Any]) -> bytes:
    data = b"data: " + json.dumps(payload).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, chunks: int, interval: float
) -> None:
    """HTTP/1.1 on one connection, kept alive: ``/v1/route`` names this server as every model's vLLM server; any
    other POST gets a streamed chat answer of ``chunks`` chunks."""
    route = json.dumps({"engine": "vllm", "url": f"http://127.0.0.1:{port}", "model": "stand-in", "ceiling": 4096})
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            await reader.readexactly(length)
            if b"/v1/route" in head.split(b"\r\n")[0]:
                body = route.encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
                )
                writer.write(body)
                continue
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            envelope = {"id": "chatcmpl-stand-in", "object": "chat.completion.chunk", "created": 1, "model": "stand-in"}
            for index in range(chunks):
                delta = {"index": 0, "delta": {"content": f" word{index}"}, "logprobs": None, "finish_reason": None}
                writer.write(_chunk({**envelope, "choices": [delta]}))
                await writer.drain()
                await asyncio.sleep(interval)
            usage = {"prompt_tokens": 10, "completion_tokens": chunks, "total_tokens": chunks + 10}
            writer.write(_chunk({**envelope, "choices": [], "usage": usage}))
            data = b"data: [DONE]\n\n"
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


def serve_stand_in(port: int, chunks: int, interval: float) -> None:
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: _answer(r, w, port, chunks, interval), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def start_stand_in(port: int, chunks: int, interval: float, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, "--stand-in", str(port), str(chunks), str(interval)]
    process = start(command, env=dict(os.environ), log=log)
    time.sleep(0.5)
    return process


# --- measuring ----------------------------------------------------------------------------------


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each live thread of ``pid``, by thread id."""
    seconds = {}
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        seconds[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def measure(sides: dict[str, concurrency.Side], chunks: int, rounds: int) -> dict[str, dict[str, Any]]:
    """``rounds`` rounds of 16 streams on each side, alternating which goes first: per side, the median studio
    CPU per request, the event-loop thread's share and the TTFT percentiles."""
    for side in sides.values():
        concurrency.one_round(side, 8)  # warm: connections, caches
    per_request: dict[str, list[float]] = {name: [] for name in sides}
    ttfts: dict[str, list[float]] = {name: [] for name in sides}
    loop_cpu = dict.fromkeys(sides, 0.0)
    total_cpu = dict.fromkeys(sides, 0.0)
    for number in range(rounds):
        order = list(sides.items()) if number % 2 == 0 else list(reversed(sides.items()))
        for name, side in order:
            assert side.server_pid is not None
            loop_before = thread_cpu(side.server_pid).get(side.server_pid, 0.0)
            result = concurrency.one_round(side, 8)
            loop_cpu[name] += thread_cpu(side.server_pid).get(side.server_pid, 0.0) - loop_before
            total_cpu[name] += result["server_cpu_s"]
            per_request[name].append(result["server_cpu_s"] / STREAMS * 1000)
            ttfts[name] += [answer.ttft_s for answer in result["answers"] if answer.ttft_s is not None]
    return {
        name: {
            "chunks_per_answer": chunks,
            "rounds": rounds,
            "studio_cpu_ms_per_request": round(statistics.median(per_request[name]), 2),
            "every_round_ms": [round(value, 1) for value in per_request[name]],
            "event_loop_share": round(loop_cpu[name] / total_cpu[name], 2) if total_cpu[name] else None,
            "ttft_p50_s": round(concurrency.percentile(ttfts[name], 50) or 0.0, 3),
            "ttft_p95_s": round(concurrency.percentile(ttfts[name], 95) or 0.0, 3),
        }
        for name in sides
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="counted rounds per answer length (default 8)")
    parser.add_argument("--chunks", type=int, default=64, help="chunks of the long answers (default 64)")
    parser.add_argument("--interval", type=float, default=0.004, help="seconds between chunks (default 0.004)")
    parser.add_argument("--other-studio", type=Path, help="another checkout of the studio, measured beside this one")
    parser.add_argument("--max-seconds", type=int, default=900, help="hard cap (default 900)")
    parser.add_argument("--stand-in", nargs=3, metavar=("PORT", "CHUNKS", "INTERVAL"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.stand_in:
        port, chunks, interval = options.stand_in
        serve_stand_in(int(port), int(chunks), float(interval))
        return 0

    def on_signal(signum: int, frame: Any) -> None:
        raise TimeoutError if signum == signal.SIGALRM else KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.alarm(options.max_seconds)
    data_dir = Path(tempfile.mkdtemp(prefix="atelier-studio-relay-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        env, _ = studio_env(data_dir, data_dir / "models")
        setup_django_here(env)
        stand_in_port = free_port()
        env["ATELIER_INFERENCE_URL"] = f"http://127.0.0.1:{stand_in_port}"
        print(f"embedded default in {data_dir} ...", file=sys.stderr)
        starter, adapters = concurrency.prepare_models(data_dir, "q_proj,v_proj")
        manage(["migrate", "--noinput"], env=env, log=data_dir / "migrate.log", timeout=300)
        deployment, _, secret = concurrency.create_deployment(starter, adapters[0])
        stand_in = start_stand_in(stand_in_port, 1, options.interval, data_dir / "stand-in.log")
        studios = {"studio": ROOT, **({"other_studio": options.other_studio} if options.other_studio else {})}
        sides = {}
        for name, checkout in studios.items():
            port, log = free_port(), data_dir / f"web-{name}.log"
            command = [sys.executable, "-m", "studio.serve", "--port", str(port), "--log-level", "warning"]
            processes.append(start(command, env=env, log=log, cwd=checkout))
            wait_for(f"http://127.0.0.1:{port}/healthz", processes[-1], log, 90)
            headers = {"Authorization": f"Bearer {secret}"}
            sides[name] = concurrency.Side(
                f"http://127.0.0.1:{port}", [deployment] * STREAMS, headers, server_pid=processes[-1].pid
            )
        figures: dict[int, dict[str, dict[str, Any]]] = {}
        for chunks in (1, options.chunks):
            stop(stand_in, grace=5)
            stand_in = start_stand_in(stand_in_port, chunks, options.interval, data_dir / "stand-in.log")
            print(f"{chunks}-chunk answers ...", file=sys.stderr)
            figures[chunks] = measure(sides, chunks, options.rounds)
            for name, row in figures[chunks].items():
                print(json.dumps({"scenario": f"{name}_{chunks}_chunks", **row}), flush=True)
        stop(stand_in, grace=5)
        summary: dict[str, Any] = {"scenario": "studio_relay_summary", "extra_chunks": options.chunks - 1}
        for name in sides:
            short = figures[1][name]["studio_cpu_ms_per_request"]
            long = figures[options.chunks][name]["studio_cpu_ms_per_request"]
            summary[f"{name}_cpu_ms_per_request"] = short
            summary[f"{name}_cpu_ms_per_chunk"] = round((long - short) / (options.chunks - 1), 3)
        if options.other_studio:
            for unit in ("request", "chunk"):
                other = summary[f"other_studio_cpu_ms_per_{unit}"]
                summary[f"studio_vs_other_cpu_per_{unit}"] = (
                    round(summary[f"studio_cpu_ms_per_{unit}"] / other, 2) if other else None
                )
        print(json.dumps(summary), flush=True)
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
            stop(process, grace=10)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
