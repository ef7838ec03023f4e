"""Policy + egress overhead per studio tool call, against calling the same loopback tool directly (issue #13).

The goal: from the model's tool call to the request leaving the studio, at most 15 ms more than a direct call at
p95 on this machine. Both sides are timed to the moment the request's first line reaches one loopback HTTP server
(a thread of this process, ``time.perf_counter()`` taken as it parses the request line):

1. ``direct``: ``httpx.get(url)`` from a fresh start time (a new client each call, as the tools worker makes one);
2. ``studio``: ``tools_app.runtime.RUNNER.run`` with a scripted model whose first turn calls the tool, timed from
   just before that model returns the call: the loop's policy step on the database thread (audit
   ``tool.call_requested``, ``policy.decide``, the rate-limit count), then ``tools_app.dispatch.run_call`` → the
   ``tools`` queue → the real tools worker (``celery -A tools_app.sandbox.worker``, solo pool, no database URL) →
   ``egress.fetch``. With ``--inline`` the call runs in this process instead (``ATELIER_TOOLS_EXECUTE_INLINE``).

The studio side is split at the moment ``dispatch.run_call`` is entered: ``decide`` (model's call → dispatch) and
``dispatch`` (dispatch → the request arriving). The two sides alternate call by call after ``--warmup`` calls of
each. Setup, in a temporary ``ATELIER_DATA_DIR``: SQLite there (or ``--database-url``), migrated; the Redis broker
and results ``redis://127.0.0.1:6379/15`` (flushed first); a team, its owner, a team API key, a deployment of a
model version as the tests' factories make one (rows only), a read HTTP tool on the loopback server (with a secret
header, as tools usually have) granted to the deployment and the key.

Prints one JSON line per side (p50/p95/max in ms), then one with the overhead (studio − direct) at p50 and p95, the
ratio of the p95s, the broker and backend, and whether the p95 overhead is within the goal. Never asserts.

    .venv/bin/python bench/tool_call_overhead.py                    # SQLite, Redis, the tools worker
    .venv/bin/python bench/tool_call_overhead.py --inline           # calls run in this process
    createdb -h 127.0.0.1 -U postgres atelier_bench
    .venv/bin/python bench/tool_call_overhead.py --database-url postgres://postgres@127.0.0.1:5432/atelier_bench
    dropdb -h 127.0.0.1 -U postgres atelier_bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import httpx
from demo_flow import StepFailed, setup_django_here, stop, studio_env, tail

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BROKER_URL = "redis://127.0.0.1:6379/15"
GOAL_P95_OVERHEAD_MS = 15.0
TOOL_NAME = "lookup_order"
WORKER_START_S = 60


class ArrivalServer(ThreadingHTTPServer):
    """A loopback server that notes when each request's first line arrives, by path, and answers a small JSON."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ArrivalHandler)
        self.arrivals: dict[str, float] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class ArrivalHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def parse_request(self) -> bool:
        arrived = time.perf_counter()  # the request line has just been read
        parsed = super().parse_request()
        if parsed:
            assert isinstance(self.server, ArrivalServer)
            self.server.arrivals[self.path] = arrived
        return parsed

    def do_GET(self) -> None:
        body = json.dumps({"order": self.path.rsplit("/", 1)[-1], "status": "shipped"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def figures(name: str, values_ms: list[float]) -> dict[str, Any]:
    return {
        "scenario": name,
        "calls": len(values_ms),
        "p50_ms": round(percentile(values_ms, 50), 2),
        "p95_ms": round(percentile(values_ms, 95), 2),
        "max_ms": round(max(values_ms), 2),
    }


# --- setup -----------------------------------------------------------------------------------------------


def create_scene(server_url: str) -> tuple[Any, Any]:
    """A team, its owner, a team API key, a deployment (rows only) and the granted loopback tool; returns the key
    (with its team loaded, as /v1 hands it to the loop) and the deployment."""
    from accounts import services as accounts_services
    from accounts.models import Team, TeamAPIKey
    from accounts.permissions import resolve_access
    from accounts.roles import Role
    from serving_app import deployments
    from tests.factories import ORDER_SCHEMA, finished_job, member, sample_version, starter_like_base_model
    from tools_app import services
    from tools_app.models import Tool

    team = Team.objects.create(name="Bench", slug="bench")
    owner = member(team, Role.OWNER, "bench-owner")
    access = resolve_access(owner, team.slug)
    _, version = finished_job(team, owner, starter_like_base_model(), sample_version(team, owner, "chat"))
    key, _ = accounts_services.create_team_api_key(access=access, name="bench", requests_per_minute=10_000)
    deployment = deployments.create_deployment(access=access, name="bench-bot", version=version, api_keys=[key])
    tool = services.create_tool(
        access=access, kind=Tool.Kind.HTTP, name=TOOL_NAME, description="Look up an order.", risk="read",
        rate_limit_per_minute=10_000, parameters=ORDER_SCHEMA, secret={"X-Api-Key": "sk-bench-0000"},
        config={"method": "GET", "url": f"{server_url}/studio/{{order_id}}", "query_args": [], "body_args": [],
                "timeout_s": 5, "max_response_bytes": 100_000, "result_path": ""},
    )  # fmt: skip
    services.grant_tool(access=access, tool=tool, deployment=deployment, api_keys=[key])
    return TeamAPIKey.objects.for_team(team).select_related("team").get(pk=key.pk), deployment


def start_tools_worker(env: dict[str, str], data_dir: Path) -> subprocess.Popen[bytes]:
    """The real tools worker as ``make run`` starts it (no database URL, no Django settings), once it answers a
    ping on the broker."""
    from django.conf import settings

    from tools_app import dispatch
    from tools_app.sandbox.vault import KEY_FILE_NAME

    worker_env = {name: value for name, value in env.items() if name not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    worker_env.update(CELERY_BROKER_URL=BROKER_URL, CELERY_RESULT_BACKEND=BROKER_URL)
    if settings.SECRETS_KEYS:
        worker_env["ATELIER_SECRETS_KEY"] = ",".join(settings.SECRETS_KEYS)
    else:
        worker_env["ATELIER_SECRETS_KEY_FILE"] = str(settings.DATA_DIR / KEY_FILE_NAME)
    log = data_dir / "tools-worker.log"
    command = [
        sys.executable, "-m", "celery", "-A", "tools_app.sandbox.worker", "worker", "-Q", "tools", "--pool", "solo",
        "--concurrency", "1", "--loglevel", "WARNING", "--hostname", f"bench-tools-{os.getpid()}@%h",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, env=worker_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + WORKER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StepFailed(f"the tools worker exited early:\n{tail(log)}")
        replies = dispatch.queue_client().control.ping(timeout=1) or []
        if any(f"bench-tools-{os.getpid()}" in next(iter(reply)) for reply in replies):
            return process
    stop(process, grace=5)
    raise StepFailed(f"the tools worker did not answer within {WORKER_START_S} s:\n{tail(log)}")


# --- the two sides -----------------------------------------------------------------------------------------


def direct_call(server: ArrivalServer, number: int) -> float:
    """Milliseconds from a fresh start to the direct request's arrival."""
    path = f"/direct/{number}"
    started = time.perf_counter()
    httpx.get(f"{server.url}{path}").raise_for_status()
    return 1000 * (server.arrivals.pop(path) - started)


class StudioSide:
    """Runs the studio's loop for one tool call and times it: model's call → dispatch → the request's arrival."""

    def __init__(self, server: ArrivalServer, key: Any, deployment: Any) -> None:
        from tools_app import dispatch

        self.server, self.key, self.deployment = server, key, deployment
        self.dispatched = 0.0
        run_call: Callable[..., Any] = dispatch.run_call

        def timed_run_call(*args: Any, **kwargs: Any) -> Any:
            self.dispatched = time.perf_counter()
            return run_call(*args, **kwargs)

        dispatch.run_call = timed_run_call  # the loop looks it up on the module at each call

    def call(self, number: int) -> tuple[float, float]:
        """Milliseconds from the model's tool call to the request's arrival, and of those, to ``run_call``."""
        from asgiref.sync import async_to_sync

        from serving_app.openai_api import ChatCompletionRequest, api_tool_run
        from tools_app.runtime import RUNNER

        order = f"B-{number}"
        handed: list[float] = []

        async def model(messages: list[dict[str, Any]], tools: list[dict[str, Any]], choice: Any) -> dict[str, Any]:
            message: dict[str, Any] = {"role": "assistant", "content": "Your order has shipped."}
            if not handed:
                arguments = json.dumps({"order_id": order})
                call = {
                    "id": f"call_{number}",
                    "type": "function",
                    "function": {"name": TOOL_NAME, "arguments": arguments},
                }
                message = {"role": "assistant", "content": None, "tool_calls": [call]}
                handed.append(time.perf_counter())
            finish = "tool_calls" if "tool_calls" in message else "stop"
            only = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            return {"id": "bench", "object": "chat.completion", "created": 0, "model": "bench-bot", "choices": [only]}

        body = ChatCompletionRequest.model_validate(
            {"model": self.deployment.name, "messages": [{"role": "user", "content": f"Where is {order}?"}]}
        )
        answer = async_to_sync(RUNNER.run)(api_tool_run(body, self.key, self.deployment, "127.0.0.1", model))
        [record] = answer["atelier"]["tool_calls"]
        if record["outcome"] != "executed":
            raise StepFailed(f"the studio's call was not executed: {record}")
        arrived = self.server.arrivals.pop(f"/studio/{order}")
        return 1000 * (arrived - handed[0]), 1000 * (self.dispatched - handed[0])


def measure(server: ArrivalServer, studio: StudioSide, calls: int, warmup: int) -> dict[str, list[float]]:
    """``calls`` of each side, alternating, after ``warmup`` of each."""
    for number in range(-warmup, 0):
        direct_call(server, number)
        studio.call(number)
    times: dict[str, list[float]] = {"direct": [], "studio": [], "studio_decide": [], "studio_dispatch": []}
    for number in range(calls):
        times["direct"].append(direct_call(server, number))
        total, decide = studio.call(number)
        times["studio"].append(total)
        times["studio_decide"].append(decide)
        times["studio_dispatch"].append(total - decide)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="counted calls per side (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="uncounted calls per side first (default 10)")
    parser.add_argument("--database-url", help="an empty database to migrate and use (default: SQLite in a temp dir)")
    parser.add_argument("--inline", action="store_true", help="run calls in this process (TOOLS_EXECUTE_INLINE)")
    options = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="atelier-tool-overhead-"))
    server = ArrivalServer()
    Thread(target=server.serve_forever, daemon=True).start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        env, _ = studio_env(data_dir, data_dir / "models")
        env.update(ATELIER_TOOL_ALLOWED_HOSTS="127.0.0.1", LOG_LEVEL="WARNING")
        if options.inline:
            env["ATELIER_TOOLS_EXECUTE_INLINE"] = "1"
        else:
            env.update(CELERY_BROKER_URL=BROKER_URL, CELERY_RESULT_BACKEND=BROKER_URL)
        setup_django_here(env, options.database_url)
        from django.conf import settings
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)
        key, deployment = create_scene(server.url)
        if not options.inline:
            import redis

            redis.Redis.from_url(BROKER_URL).flushdb()
            worker = start_tools_worker(env, data_dir)
        times = measure(server, StudioSide(server, key, deployment), options.calls, options.warmup)
        for name, values in times.items():
            print(json.dumps(figures(name, values)), flush=True)
        direct, studio = figures("direct", times["direct"]), figures("studio", times["studio"])
        overhead_p95 = studio["p95_ms"] - direct["p95_ms"]
        verdict = {
            "overhead_p50_ms": round(studio["p50_ms"] - direct["p50_ms"], 2),
            "overhead_p95_ms": round(overhead_p95, 2),
            "studio_vs_direct_p95": round(studio["p95_ms"] / direct["p95_ms"], 2),
            "goal_p95_overhead_ms": GOAL_P95_OVERHEAD_MS,
            "meets_goal": overhead_p95 <= GOAL_P95_OVERHEAD_MS,
            "execution": "inline" if settings.TOOLS_EXECUTE_INLINE else "tools worker",
            "broker": None if settings.TOOLS_EXECUTE_INLINE else settings.CELERY_BROKER_URL,
            "result_backend": None if settings.TOOLS_EXECUTE_INLINE else settings.CELERY_RESULT_BACKEND,
            "database": settings.DATABASES["default"]["ENGINE"].rsplit(".", 1)[-1],
            "load_1min": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(verdict), flush=True)
        return 0
    except StepFailed as failure:
        print(f"failed: {failure}", file=sys.stderr)
        return 1
    finally:
        if worker is not None:
            stop(worker, grace=10)
        server.shutdown()
        server.server_close()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
