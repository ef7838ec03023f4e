"""Load benchmark: N concurrent signed-in users on the team list/detail pages, against /healthz.

    .venv/bin/python bench/pages_load.py [--users 50] [--seconds 20]
        [--database-url postgres://postgres@127.0.0.1:5432/atelier_bench | sqlite://]

What it does, on loopback only, bounded in time (hard cap) and in requests:

1. a fresh database (PostgreSQL: drop + create ``atelier_bench``; SQLite: a file in a temporary
   data dir), ``manage.py migrate`` and ``collectstatic`` with ``DEBUG=0``;
2. seeds a team "bench" through ``accounts.services`` (this same file, run as a subprocess with
   ``--seed``): N members (one owner, ~30 % admins, the rest members), 20 team API keys (each
   member has one shared with them), >= 200 team audit events, one personal token per user;
3. starts ``uvicorn studio.asgi:app`` (``--server-workers``, default 1) on a free port and logs
   every user in through the real login form (CSRF token from the form; no failed attempt, so
   django-axes never locks anyone out);
4. scenario "team pages": for ``--seconds``, N async clients (one session each; no think time by
   default, ``--think-ms`` for a jittered pause) loop over the pages their role may see: members
   list, keys list, key detail, audit trail (owners/admins) and ``GET /api/v1/teams/bench/members/``
   with a bearer token;
5. peer: the same N clients on ``/healthz`` (a trivial Django view through the same stack) for the
   same duration, so the ratio shows how much of the latency is the pages' own work.

Prints one JSON line per scenario (and one per-path breakdown) on stdout; progress goes to stderr.
It never asserts: it prints figures. The server is stopped and the database dropped on exit,
Ctrl-C or error. The server runs with ``DEBUG=0`` and the caller's environment otherwise, so
``DJANGO_SETTINGS_MODULE`` / ``DATABASE_POOL_SIZE`` can point it at a candidate configuration
(both are reported in the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/atelier_bench"
TEAM_SLUG = "bench"
API_KEYS = 20
AUDIT_EVENTS = 200
GOAL_P95_MS = 300
RESERVED_PORTS = {8000, 8765}  # the demo server and other engineers' servers
SETUP_BUDGET_S = 90  # migrate + collectstatic + seed + server start + logins (~35 s measured), at most
LOGIN_CONCURRENCY = 4  # password hashing is CPU-bound: more only queues on 2 cores
KEY_DETAIL = f"/t/{TEAM_SLUG}/keys/<id>/"
PASSWORD_ENV = "ATELIER_BENCH_PASSWORD"  # noqa: S105 - the variable's name; the value is random per run


class HardCapReached(Exception):
    """The whole run went past its time budget."""


def log(message: str) -> None:
    print(f"[pages_load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- database ---------------------------------------------------------------------------------------


@dataclass
class Database:
    url: str
    engine: str  # "postgresql" or "sqlite"
    name: str
    admin_conninfo: dict[str, Any] = field(default_factory=dict)
    sqlite_path: Path | None = None

    @classmethod
    def from_url(cls, url: str, data_dir: Path) -> Database:
        parts = urlsplit(url)
        if parts.scheme in ("postgres", "postgresql", "pgsql"):
            name = parts.path.lstrip("/")
            # The database is dropped before and after the run: refuse anything not named for it.
            if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or "bench" not in name:
                raise SystemExit(f"refusing database {name!r}: it is dropped, so its name must contain 'bench'")
            host = parts.hostname or "127.0.0.1"
            if host not in ("127.0.0.1", "localhost", "::1"):
                raise SystemExit(f"refusing host {host!r}: the benchmark runs on loopback only")
            conninfo: dict[str, Any] = {
                "host": host,
                "port": parts.port or 5432,
                "user": unquote(parts.username or "postgres"),
                "dbname": "postgres",
                "autocommit": True,
                "connect_timeout": 10,
            }
            if parts.password:
                conninfo["password"] = unquote(parts.password)
            return cls(url=url, engine="postgresql", name=name, admin_conninfo=conninfo)
        if parts.scheme == "sqlite":
            # As dj-database-url reads it: sqlite:///rel/path, sqlite:////abs/path; bare sqlite:// = temporary.
            raw = unquote(parts.path)[1:]
            path = (ROOT / raw if not Path(raw).is_absolute() else Path(raw)) if raw else data_dir / "bench.sqlite3"
            if path.exists() and "bench" not in path.name:
                raise SystemExit(f"refusing {path}: the benchmark deletes it, so its name must contain 'bench'")
            return cls(url=f"sqlite:///{path}", engine="sqlite", name=path.name, sqlite_path=path)
        raise SystemExit(f"unsupported --database-url scheme {parts.scheme!r} (postgres:// or sqlite://)")

    def _admin(self, statement: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(**self.admin_conninfo) as conn:
            conn.execute(sql.SQL(statement).format(sql.Identifier(self.name)))

    def recreate(self) -> None:
        if self.engine == "postgresql":
            self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            self._admin("CREATE DATABASE {}")
        else:
            self.drop()
            if self.sqlite_path is not None:
                self.sqlite_path.parent.mkdir(parents=True, exist_ok=True)

    def drop(self) -> None:
        if self.engine == "postgresql":
            self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        elif self.sqlite_path is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(f"{self.sqlite_path}{suffix}").unlink(missing_ok=True)


# --- seeding (runs in a subprocess: ``pages_load.py --seed OUT.json``) ----------------------------------


def seed(out_path: Path, users: int) -> None:
    """Build the "bench" team through the project's own services and write what the clients need."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")
    import django

    django.setup()
    from accounts import services
    from accounts.models import AuditEvent, Invitation, Membership
    from accounts.permissions import resolve_access
    from accounts.roles import Role

    password = os.environ[PASSWORD_ENV]
    ip = "127.0.0.1"
    owner = services.register_user(username="bench-owner", email="owner@bench.test", password=password, ip=ip)
    team = services.create_team(actor=owner, name="Bench", slug=TEAM_SLUG, ip=ip)
    owner_access = resolve_access(owner, TEAM_SLUG)

    # Everyone joins through an invitation link, as a member; the owner then promotes ~30 % to admin.
    n_admins = max(0, round(users * 0.3) - 1)
    people = [owner]
    for i in range(1, users):
        user = services.register_user(username=f"bench-{i:03d}", email=f"u{i}@bench.test", password=password, ip=ip)
        _, token = services.create_invitation(access=owner_access, role=Role.MEMBER, email=user.email, ip=ip)
        services.accept_invitation(user=user, token=token, ip=ip)
        people.append(user)
    for user in people[1 : 1 + n_admins]:
        membership = Membership.objects.get(team=team, user=user)
        services.change_role(access=owner_access, membership=membership, role=Role.ADMIN, ip=ip)
    admin_accesses = [resolve_access(user, TEAM_SLUG) for user in people[: 1 + n_admins]]

    keys = []
    for i in range(API_KEYS):
        access = admin_accesses[i % len(admin_accesses)]
        role = Role.MEMBER if i % 2 else Role.VIEWER
        key, _ = services.create_team_api_key(access=access, name=f"ci job {i:02d}", role=role, ip=ip)
        keys.append(key)

    # Each plain member sees one key shared with them (members see only what is shared).
    shared: dict[int, list[int]] = {}
    for j, user in enumerate(people[1 + n_admins :]):
        key = keys[j % len(keys)]
        membership = Membership.objects.get(team=team, user=user)
        level = "change" if j % 3 == 0 else "view"
        services.share_object(access=owner_access, obj=key, member=membership, level=level, ip=ip)
        shared[user.pk] = [key.pk]

    # Fill the trail up to AUDIT_EVENTS with invitation churn: links created, some withdrawn.
    n = 0
    while AuditEvent.objects.for_team(team).count() < AUDIT_EVENTS:
        access = admin_accesses[n % len(admin_accesses)]
        invitation, _ = services.create_invitation(
            access=access, role=Role.MEMBER, email=f"guest{n}@example.test", ip=ip
        )
        if n % 3 != 2 and AuditEvent.objects.for_team(team).count() < AUDIT_EVENTS:
            services.revoke_invitation(access=access, invitation=invitation, ip=ip)
        n += 1

    out: dict[str, Any] = {"users": [], "key_ids": [k.pk for k in keys]}
    roles = dict(Membership.objects.filter(team=team).values_list("user_id", "role"))
    for user in people:
        _, token = services.create_personal_token(user=user, name="bench", ip=ip)
        role = roles[user.pk]
        visible = out["key_ids"] if role in (Role.OWNER, Role.ADMIN) else shared.get(user.pk, [])
        out["users"].append({"username": user.username, "role": role, "token": token, "key_ids": visible})
    out["team_audit_events"] = AuditEvent.objects.for_team(team).count()
    out["invitations"] = Invitation.objects.for_team(team).count()
    out["memberships"] = Membership.objects.filter(team=team).count()
    out_path.write_text(json.dumps(out))


# --- the server ---------------------------------------------------------------------------------------


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port


def manage(env: dict[str, str], *args: str, timeout: float) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    log(f"manage.py {args[0]}: {time.monotonic() - started:.1f} s")


def cpu_seconds(session: int) -> float | None:
    """User + system CPU time of every live process in a session (the server and its workers), via /proc."""
    total, found = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[3] == str(session):
            total += int(fields[11]) + int(fields[12])
            found = True
    return total / os.sysconf("SC_CLK_TCK") if found else None


def machine_cpu() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat: how loaded it was, by anyone."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """How busy all the machine's cores were between two ``machine_cpu`` readings, in percent."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round(100 * (after[0] - before[0]) / (after[1] - before[1]), 1)


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_healthy(base: str, process: subprocess.Popen[bytes], server_log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited early:\n{server_log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"uvicorn did not answer /healthz within {timeout:.0f} s:\n{server_log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


# --- the clients ------------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    ms: float
    status: str

    @property
    def ok(self) -> bool:
        return self.status == "200"


def pages_for(index: int, user: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, path) a user of this role visits, in order; users open different keys' detail pages."""
    team = f"/t/{TEAM_SLUG}"
    pages = [(f"{team}/members/", f"{team}/members/"), (f"{team}/keys/", f"{team}/keys/")]
    if user["key_ids"]:
        key_id = user["key_ids"][index % len(user["key_ids"])]
        pages.append((KEY_DETAIL, f"{team}/keys/{key_id}/"))
    if user["role"] in ("owner", "admin"):
        pages.append((f"{team}/audit/", f"{team}/audit/"))
    pages.append((f"/api/v1/teams/{TEAM_SLUG}/members/", f"/api/v1/teams/{TEAM_SLUG}/members/"))
    return pages


async def log_in(client: Any, username: str, password: str) -> None:
    form = await client.get("/accounts/login/")
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
    if form.status_code != 200 or match is None:
        raise RuntimeError(f"login form for {username}: HTTP {form.status_code}, no CSRF token")
    response = await client.post(
        "/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": match.group(1), "next": ""},
    )
    # One attempt only: a failure is reported, never retried, so django-axes (5 failures) never locks.
    if response.status_code != 302 or "sessionid" not in client.cookies:
        raise RuntimeError(f"login of {username} failed: HTTP {response.status_code} {response.text[:300]!r}")


async def run_scenario(
    clients: list[Any],
    plans: list[list[tuple[str, str]]],
    headers: list[dict[str, str]],
    seconds: float,
    max_requests: int,
    think_s: float,
) -> tuple[list[Result], float]:
    import httpx

    results: list[Result] = []
    started = time.perf_counter()
    end = started + seconds

    async def worker(i: int) -> None:
        plan, client = plans[i], clients[i]
        step = i  # spread the clients over the pages
        jitter = random.Random(i)  # think times vary, so that users do not click in lock-step
        if think_s:
            await asyncio.sleep(jitter.uniform(0, think_s))
        while time.perf_counter() < end and len(results) < max_requests:
            label, path = plan[step % len(plan)]
            step += 1
            t0 = time.perf_counter()
            try:
                response = await client.get(path, headers=headers[i] if path.startswith("/api/") else None)
                status = str(response.status_code)
            except httpx.HTTPError as error:
                status = type(error).__name__
            results.append(Result(label, (time.perf_counter() - t0) * 1000, status))
            if think_s:
                await asyncio.sleep(think_s * jitter.uniform(0.5, 1.5))

    await asyncio.gather(*(worker(i) for i in range(len(clients))))
    return results, time.perf_counter() - started


def percentile(sorted_ms: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list, rounded to 0.1 ms (None when empty)."""
    if not sorted_ms:
        return None
    return round(sorted_ms[max(0, math.ceil(q / 100 * len(sorted_ms)) - 1)], 1)


def summarize(results: list[Result], elapsed: float) -> dict[str, Any]:
    ms = sorted(r.ms for r in results)
    return {
        "requests": len(results),
        "errors": sum(not r.ok for r in results),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": round(ms[-1], 1) if ms else None,
        "rps": round(len(results) / elapsed, 1) if elapsed else None,
        "statuses": dict(Counter(r.status for r in results)),
    }


async def drive(args: argparse.Namespace, base: str, seeded: dict[str, Any], server_pid: int) -> list[dict[str, Any]]:
    import httpx

    password = os.environ[PASSWORD_ENV]
    users = seeded["users"]
    timeout = httpx.Timeout(args.request_timeout)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=timeout, follow_redirects=False))
            for _ in users
        ]
        started = time.monotonic()
        gate = asyncio.Semaphore(LOGIN_CONCURRENCY)

        async def login_one(client: Any, username: str) -> None:
            async with gate:
                await log_in(client, username, password)

        await asyncio.gather(*(login_one(c, u["username"]) for c, u in zip(clients, users, strict=True)))
        log(f"{len(users)} users logged in through /accounts/login/: {time.monotonic() - started:.1f} s")

        plans = [pages_for(i, u) for i, u in enumerate(users)]
        headers = [{"Authorization": f"Bearer {u['token']}"} for u in users]
        healthz = [[("/healthz", "/healthz")] for _ in users]

        warm, _ = await run_scenario(clients, plans, headers, args.warmup_seconds, args.max_requests, 0)
        bad = Counter((r.label, r.status) for r in warm if not r.ok)
        log(f"warm-up: {len(warm)} requests" + (f", NOT OK: {dict(bad)}" if bad else ", all 200"))

        figures: dict[str, Any] = {}
        for name, plan in (("pages", plans), ("healthz", healthz)):
            cpu_server, cpu_client, cpu_machine = cpu_seconds(server_pid), self_cpu_seconds(), machine_cpu()
            log(f"scenario {name}: {len(users)} clients for {args.seconds} s")
            results, elapsed = await run_scenario(
                clients, plan, headers, args.seconds, args.max_requests, args.think_ms / 1000
            )
            server_after, machine_after = cpu_seconds(server_pid), machine_cpu()
            server_cpu = server_after - cpu_server if server_after is not None and cpu_server is not None else None
            figures[name] = {
                **summarize(results, elapsed),
                # CPU the server spent per request: the pages' cost, less sensitive to a busy machine than latency.
                "server_cpu_ms_per_req": round(1000 * server_cpu / len(results), 2)
                if server_cpu is not None and results
                else None,
                "server_cpu_pct": round(100 * server_cpu / elapsed, 1) if server_cpu is not None else None,
                "client_cpu_pct": round(100 * (self_cpu_seconds() - cpu_client) / elapsed, 1),
                "machine_busy_pct": busy_pct(cpu_machine, machine_after),
                "_results": results,
            }

    pages, peer = figures["pages"], figures["healthz"]
    common = {
        "users": len(users),
        "seconds": args.seconds,
        "think_ms": args.think_ms,
        "database": args.engine,
        "debug": False,
        "pool_size": int(os.environ.get("DATABASE_POOL_SIZE", "0")),
        "uvicorn_workers": args.server_workers,
        "settings": os.environ.get("DJANGO_SETTINGS_MODULE", "studio.settings"),
    }
    by_path: dict[str, list[Result]] = defaultdict(list)
    for result in pages.pop("_results"):
        by_path[result.label].append(result)
    peer.pop("_results")
    ratio = round(pages["p95_ms"] / peer["p95_ms"], 2) if pages["p95_ms"] and peer["p95_ms"] else None
    n = len(users)
    return [
        {
            "scenario": f"team_pages_{n}_users",
            **pages,
            "goal_p95_ms": GOAL_P95_MS,
            "peer": "healthz",
            "peer_p95_ms": peer["p95_ms"],
            "ratio_p95_vs_peer": ratio,
            **common,
        },
        {"scenario": f"healthz_{n}_users", **peer, "peer_of": f"team_pages_{n}_users", **common},
        {
            "scenario": f"team_pages_{n}_users_by_path",
            "p95_ms": {label: percentile(sorted(r.ms for r in rs), 95) for label, rs in by_path.items()},
            "p50_ms": {label: percentile(sorted(r.ms for r in rs), 50) for label, rs in by_path.items()},
            "requests": {label: len(rs) for label, rs in by_path.items()},
            "errors": {label: sum(not r.ok for r in rs) for label, rs in by_path.items()},
        },
    ]


# --- main ---------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50, help="concurrent signed-in users (2-200)")
    parser.add_argument("--seconds", type=float, default=20, help="duration of each scenario (1-60)")
    parser.add_argument(
        "--database-url", default=DEFAULT_DATABASE_URL, help="postgres://…/<name with 'bench'> or sqlite://"
    )
    parser.add_argument("--warmup-seconds", type=float, default=3, help="unrecorded pass before the scenarios")
    parser.add_argument("--think-ms", type=float, default=0, help="mean pause between requests, ±50%%")
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop a scenario after this many requests")
    parser.add_argument("--server-workers", type=int, default=1, help="uvicorn worker processes (1-4)")
    parser.add_argument("--request-timeout", type=float, default=30, help="a slower request counts as an error")
    parser.add_argument("--seed", type=Path, help=argparse.SUPPRESS)  # internal: the seeding subprocess
    args = parser.parse_args()
    if not 2 <= args.users <= 200:
        parser.error("--users must be between 2 and 200")
    if not 1 <= args.seconds <= 60:
        parser.error("--seconds must be between 1 and 60")
    if not 1 <= args.server_workers <= 4:
        parser.error("--server-workers must be between 1 and 4")
    if not 1 <= args.request_timeout <= 60:
        parser.error("--request-timeout must be between 1 and 60")
    if not 0 <= args.think_ms <= 10_000 or args.max_requests < 1:
        parser.error("--think-ms must be between 0 and 10000, --max-requests at least 1")
    if not 0 <= args.warmup_seconds <= 10:
        parser.error("--warmup-seconds must be between 0 and 10")
    return args


def main() -> int:
    args = parse_args()
    if args.seed is not None:
        seed(args.seed, args.users)
        return 0

    hard_cap = int(SETUP_BUDGET_S + args.warmup_seconds + 2 * args.seconds + args.request_timeout)

    def on_alarm(signum: int, frame: Any) -> None:
        raise HardCapReached(f"hard cap of {hard_cap} s reached")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(hard_cap)

    data_dir = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    server: subprocess.Popen[bytes] | None = None
    database: Database | None = None
    server_log = data_dir / "uvicorn.log"
    try:
        database = Database.from_url(args.database_url, data_dir)
        args.engine = database.engine
        os.environ[PASSWORD_ENV] = secrets.token_urlsafe(18)
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("ATELIER_PRODUCTION", "STATIC_ROOT", "MEDIA_ROOT")
        }
        env.update(
            DATABASE_URL=database.url,
            ATELIER_DATA_DIR=str(data_dir),
            CELERY_BROKER_URL="filesystem://",  # nothing is enqueued; never touch anyone's Redis
            DEBUG="0",
            ALLOWED_HOSTS="127.0.0.1",
            PYTHONUNBUFFERED="1",
        )
        log(f"data dir {data_dir}, database {database.engine} {database.name}, hard cap {hard_cap} s")
        database.recreate()
        manage(env, "migrate", "--noinput", timeout=90)
        manage(env, "collectstatic", "--noinput", timeout=60)

        started = time.monotonic()
        seed_out = data_dir / "seed.json"
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--seed", str(seed_out), "--users", str(args.users)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"seeding failed:\n{(done.stdout + done.stderr)[-3000:]}")
        seeded = json.loads(seed_out.read_text())
        log(
            f"seeded team {TEAM_SLUG!r}: {seeded['memberships']} members "
            f"({Counter(u['role'] for u in seeded['users'])}), {len(seeded['key_ids'])} API keys, "
            f"{seeded['team_audit_events']} audit events, {seeded['invitations']} invitations: "
            f"{time.monotonic() - started:.1f} s"
        )

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        started = time.monotonic()
        command = [sys.executable, "-m", "studio.serve", "--workers", str(args.server_workers)]
        with server_log.open("wb") as out:
            server = subprocess.Popen(
                [*command, "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as a whole
            )
        wait_healthy(base, server, server_log, timeout=60)
        log(f"uvicorn up on {base}: {time.monotonic() - started:.1f} s")

        lines = asyncio.run(drive(args, base, seeded, server.pid))
        for line in lines:
            print(json.dumps(line), flush=True)
        if lines[0]["errors"] or lines[1]["errors"]:
            tail = server_log.read_text(errors="replace")[-2000:]
            log(f"errors were recorded; server log tail:\n{tail}")
        return 0
    except HardCapReached as error:
        log(f"stopped: {error}")
        return 124
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # finish cleaning up even on a second Ctrl-C
        stop(server)
        if database is not None:
            try:
                database.drop()
            except Exception as error:
                log(f"could not drop database {database.name}: {error}")
        shutil.rmtree(data_dir, ignore_errors=True)
        log("server stopped, database dropped, data dir removed")


if __name__ == "__main__":
    sys.exit(main())
