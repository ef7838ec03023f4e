"""Static checks of the production deployment in compose/compose.yaml.

The file is parsed with PyYAML; no Docker engine and no network are used. Entry points named by the
services' commands are resolved against the real project (Django is set up by pytest-django).
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO_ROOT / "compose" / "compose.yaml"
APP_DOCKERFILE = "compose/Dockerfile"

BACKING_SERVICES = frozenset({"postgres", "redis"})
APP_SERVICES = frozenset({"migrate", "web", "worker-cpu", "worker-gpu", "inference", "beat", "tools-worker"})
# The tools worker imports no Django and gets none of the studio's environment (its own test says what it gets).
DJANGO_APP_SERVICES = APP_SERVICES - {"tools-worker"}
LONG_RUNNING_APP_SERVICES = ("web", "worker-cpu", "worker-gpu", "inference", "beat")
# App services that run on GPUs: the training worker and the inference server.
GPU_SERVICES = frozenset({"worker-gpu", "inference"})
# One vLLM OpenAI server per base model (official image); the inference server attaches to each.
VLLM_SERVICES = frozenset({"vllm"})
VLLM_IMAGE = "vllm/vllm-openai"
VLLM_DOCKERFILE = "compose/vllm.Dockerfile"

Service = dict[str, Any]


class EntryPointError(Exception):
    """A service command names a program, module, app, queue or command that does not exist."""


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The parsed compose file, loaded once for the module (anchors and merge keys resolved)."""
    with COMPOSE_FILE.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    assert isinstance(document, dict), f"{COMPOSE_FILE} is not a mapping"
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Service]:
    """The `services` mapping of the compose file."""
    found = compose.get("services")
    assert isinstance(found, dict), "compose.yaml has no services mapping"
    return found


def split_command(command: str | list[str]) -> list[str]:
    """Return a compose `command` (string or list form) as an argv list."""
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def option_value(argv: list[str], *names: str) -> str | None:
    """Value of the first option among `names` in argv: `-Q gpu`, `--queues gpu`, `--queues=gpu`, `-Qgpu`."""
    for index, arg in enumerate(argv):
        for name in names:
            if arg == name:
                if index + 1 >= len(argv):
                    raise EntryPointError(f"option {name} has no value")
                return argv[index + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
            if not name.startswith("--") and arg.startswith(name) and len(arg) > len(name):
                return arg[len(name) :]
    return None


def import_module(name: str) -> Any:
    """Import a module by dotted name, turning an ImportError into an EntryPointError."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise EntryPointError(f"cannot import module {name!r}: {exc}") from exc


def app_spec_of_uvicorn(argv: list[str]) -> str:
    """The `MODULE:ATTR` positional argument of a uvicorn command line."""
    options_with_values = {
        "--host", "--port", "--uds", "--fd", "--workers", "--loop", "--http", "--ws",
        "--lifespan", "--env-file", "--log-config", "--log-level", "--root-path",
        "--forwarded-allow-ips", "--app-dir", "--timeout-keep-alive", "--limit-concurrency",
    }  # fmt: skip
    args = iter(argv[1:])
    for arg in args:
        if arg in options_with_values:
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    raise EntryPointError("uvicorn command has no MODULE:ATTR argument")


def check_uvicorn(argv: list[str]) -> None:
    """`uvicorn MODULE:ATTR ...`: MODULE imports and has attribute ATTR."""
    spec = app_spec_of_uvicorn(argv)
    module_name, sep, attr = spec.partition(":")
    if not sep or not attr:
        raise EntryPointError(f"uvicorn app {spec!r} is not of the form MODULE:ATTR")
    module = import_module(module_name)
    if not hasattr(module, attr):
        raise EntryPointError(f"module {module_name!r} has no attribute {attr!r}")


def load_celery_app(app_option: str) -> Any:
    """The Celery app that `celery -A APP` finds, as Celery looks for it: `MODULE:ATTR` when given so, else
    `APP.app` or `APP.celery` when APP holds one, else `APP.celery.app`."""
    from celery import Celery

    if ":" in app_option:
        module_name, _, attr = app_option.partition(":")
    else:
        module_name, attr = app_option, "app"
        held = [
            name for name in ("app", "celery") if isinstance(getattr(import_module(app_option), name, None), Celery)
        ]
        if held:
            attr = held[0]
        else:
            module_name = f"{app_option}.celery"
    app = getattr(import_module(module_name), attr, None)
    if not isinstance(app, Celery):
        raise EntryPointError(f"{module_name}.{attr} is not a celery.Celery app (got {type(app).__name__})")
    return app


def celery_queue_names(app: Any) -> set[str]:
    """Names of the queues declared in the Celery app's `task_queues` setting."""
    return {queue.name for queue in (app.conf.task_queues or ())}


def check_celery(argv: list[str]) -> None:
    """`celery -A APP worker -Q QUEUES` or `celery -A APP beat`: the app exists and declares each queue."""
    app_option = option_value(argv, "-A", "--app")
    if not app_option:
        raise EntryPointError("celery command has no -A/--app option")
    if "worker" in argv:
        app = load_celery_app(app_option)
        queues_option = option_value(argv, "-Q", "--queues")
        if not queues_option:
            raise EntryPointError("celery worker has no -Q/--queues option: it would consume the wrong queue")
        declared = celery_queue_names(app)
        missing = [q for q in queues_option.split(",") if q.strip() not in declared]
        if missing:
            raise EntryPointError(f"queues {missing} are not in app.conf.task_queues {sorted(declared)}")
    elif "beat" in argv:
        load_celery_app(app_option)
    else:
        raise EntryPointError(f"unknown celery subcommand in {argv}")


def check_python(argv: list[str]) -> None:
    """`python -m MODULE ...` (MODULE imports) or `python manage.py CMD ...` (see ``check_manage_py``)."""
    if len(argv) >= 3 and argv[1] == "-m":
        import_module(argv[2])
        return
    check_manage_py(argv)


def check_manage_py(argv: list[str]) -> None:
    """`python manage.py CMD ...`: manage.py exists and CMD is a registered management command."""
    from django.core.management import get_commands

    if len(argv) < 3 or Path(argv[1]).name != "manage.py":
        raise EntryPointError(f"python command is not `python manage.py COMMAND`: {argv}")
    if not (REPO_ROOT / "manage.py").is_file():
        raise EntryPointError("manage.py is missing at the repository root")
    if argv[2] not in get_commands():
        raise EntryPointError(f"{argv[2]!r} is not a Django management command")


ENTRY_POINT_CHECKERS: dict[str, Callable[[list[str]], None]] = {
    "uvicorn": check_uvicorn,
    "celery": check_celery,
    "python": check_python,
    "python3": check_python,
}


def check_entry_point(command: str | list[str]) -> None:
    """Raise EntryPointError unless the command's program and its target exist in the project."""
    argv = split_command(command)
    if not argv:
        raise EntryPointError("empty command")
    checker = ENTRY_POINT_CHECKERS.get(argv[0])
    if checker is None:
        raise EntryPointError(f"unknown program {argv[0]!r} (expected one of {sorted(ENTRY_POINT_CHECKERS)})")
    checker(argv)


def uses_app_image(service: Service) -> bool:
    """Whether the service is built from the project's Dockerfile."""
    build = service.get("build")
    return isinstance(build, dict) and str(build.get("dockerfile", "")).endswith(APP_DOCKERFILE)


def environment_of(service: Service) -> dict[str, str]:
    """The service's environment as a mapping (compose allows a mapping or a list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(str(item).partition("=")[::2] for item in env)
    return {str(key): str(value) for key, value in env.items()}


def gpu_reservations(service: Service) -> list[dict[str, Any]]:
    """Device reservations of the service that ask for a GPU (NVIDIA driver or `gpu` capability)."""
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices") or []
    return [
        device for device in devices if device.get("driver") == "nvidia" or "gpu" in (device.get("capabilities") or [])
    ]


def depends_on_conditions(service: Service) -> dict[str, str]:
    """Map each dependency of the service to its condition (`service_started` for the short form)."""
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in depends.items()}


def test_compose_file_declares_every_expected_service(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose spec has no `version:` key"
    missing = (BACKING_SERVICES | APP_SERVICES | VLLM_SERVICES) - set(compose.get("services", {}))
    assert not missing, f"compose.yaml lacks services {sorted(missing)}"


def test_every_app_service_command_names_a_real_entry_point(services: dict[str, Service]) -> None:
    problems = []
    for name in sorted(APP_SERVICES):
        command = services[name].get("command")
        if not command:
            problems.append(f"service {name!r}: has no command")
            continue
        try:
            check_entry_point(command)
        except EntryPointError as exc:
            problems.append(f"service {name!r}: {exc}")
    assert not problems, "unknown entry points:\n" + "\n".join(problems)


def test_entry_point_check_rejects_unknown_programs_modules_and_commands() -> None:
    bad_commands: list[str | list[str]] = [
        ["gunicorn", "studio.wsgi"],
        ["uvicorn", "studio.no_such_module:app"],
        "python manage.py no_such_command",
        "celery -A studio worker -Q no_such_queue",
        "python -m serving_app.no_such_engine",
    ]
    for command in bad_commands:
        with pytest.raises(EntryPointError):
            check_entry_point(command)


def test_only_the_gpu_worker_the_inference_server_and_vllm_reserve_nvidia_gpus(services: dict[str, Service]) -> None:
    expected = {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    for name in sorted(GPU_SERVICES):
        assert gpu_reservations(services[name]) == [expected], f"{name} must reserve the GPUs"
    for name in sorted(VLLM_SERVICES):
        assert gpu_reservations(services[name]), f"{name} must reserve its GPUs"
    allowed = GPU_SERVICES | VLLM_SERVICES
    others = sorted(
        name
        for name, service in services.items()
        if name not in allowed and (gpu_reservations(service) or "gpus" in service)
    )
    assert not others, f"services {others} reserve a GPU; only {sorted(allowed)} may"


def test_gpu_images_install_torch_from_a_cuda_index(services: dict[str, Service]) -> None:
    for name in sorted(GPU_SERVICES):
        gpu_args = services[name]["build"].get("args", {})
        assert "/whl/cu" in gpu_args.get("TORCH_INDEX_URL", ""), f"{name} must build CUDA torch"
    for name in sorted(APP_SERVICES - GPU_SERVICES):
        args = services[name]["build"].get("args") or {}
        assert "TORCH_INDEX_URL" not in args, f"service {name!r} should use the Dockerfile's CPU default"
    dockerfile = (REPO_ROOT / APP_DOCKERFILE).read_text(encoding="utf-8")
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile


def test_every_app_service_gets_the_shared_production_environment(services: dict[str, Service]) -> None:
    app_services = {name for name, service in services.items() if uses_app_image(service)}
    assert app_services == APP_SERVICES, "exactly the app services are built from compose/Dockerfile"
    for name in sorted(DJANGO_APP_SERVICES):
        env = environment_of(services[name])
        assert env.get("ATELIER_PRODUCTION") == "1", f"service {name!r}: ATELIER_PRODUCTION is not 1"
        assert env.get("DATABASE_URL", "").startswith("postgres://"), f"service {name!r}: DATABASE_URL"
        assert env.get("CELERY_BROKER_URL", "").startswith("redis://"), f"service {name!r}: broker URL"
        assert env.get("ATELIER_DATA_DIR") == "/var/lib/atelier", f"service {name!r}: ATELIER_DATA_DIR"
        volumes = [str(volume) for volume in services[name].get("volumes", [])]
        assert "atelier-data:/var/lib/atelier" in volumes, f"service {name!r}: shared data volume"


def test_long_running_services_wait_for_migrations_and_healthy_backends(
    services: dict[str, Service],
) -> None:
    expected = {
        "migrate": "service_completed_successfully",
        "postgres": "service_healthy",
        "redis": "service_healthy",
    }
    for name in LONG_RUNNING_APP_SERVICES:
        conditions = depends_on_conditions(services[name])
        wrong = {dep: cond for dep, cond in expected.items() if conditions.get(dep) != cond}
        assert not wrong, f"service {name!r} must depend on {wrong}; has {conditions}"
    assert depends_on_conditions(services["migrate"]).get("postgres") == "service_healthy"
    assert "pg_isready" in str(services["postgres"].get("healthcheck", {}).get("test"))
    assert services["redis"].get("healthcheck", {}).get("test"), "redis needs a healthcheck"


def healthcheck_url(service: Service) -> str:
    """The first http:// URL that the service's healthcheck probes."""
    test = service.get("healthcheck", {}).get("test") or []
    match = re.search(r"http://[^\s'\"]+", " ".join(test) if isinstance(test, list) else str(test))
    assert match, "the healthcheck probes no http:// URL"
    return match.group(0)


def test_web_healthcheck_probes_a_url_the_project_serves(services: dict[str, Service]) -> None:
    from django.urls import Resolver404, resolve

    url = healthcheck_url(services["web"])
    assert url.startswith("http://127.0.0.1:8000/"), f"web healthcheck probes {url}, not its own port"
    path = urlsplit(url).path
    try:
        resolve(path)
        served = True
    except Resolver404:
        served = False
    assert served, f"web healthcheck probes {path}, which no Django URL serves"


def test_postgres_redis_and_vllm_are_not_published_to_the_host(services: dict[str, Service]) -> None:
    for name in sorted(BACKING_SERVICES | VLLM_SERVICES):
        service = services[name]
        assert not service.get("ports"), f"service {name!r} publishes ports to the host"
        assert service.get("network_mode") != "host", f"service {name!r} uses the host network"


# --- vLLM: one service per base model, the inference server attached to each ---------------------------


def command_option(service: Service, name: str) -> str:
    """The value of ``--name`` in the service's command (``--name value`` or ``--name=value``)."""
    value = option_value(split_command(service.get("command") or []), name)
    assert value is not None, f"the command has no {name}"
    return value


def vllm_model(service: Service) -> str:
    """The model folder a vLLM service serves: the first argument of ``vllm serve``."""
    argv = split_command(service["entrypoint"]) + split_command(service["command"])
    assert argv[:2] == ["vllm", "serve"], f"a vLLM service runs `vllm serve MODEL ...`, not {argv[:2]}"
    return argv[2]


def attached_vllm_urls(inference: Service) -> dict[str, str]:
    """The vLLM servers the inference server attaches to, base folder → URL, defaults resolved: every
    ``--vllm-url BASE=URL`` of its command and the pairs of its ``ATELIER_VLLM_URLS`` (space-separated)."""
    argv = split_command(inference.get("command") or [])
    pairs = [argv[index + 1] for index, arg in enumerate(argv[:-1]) if arg == "--vllm-url"]
    pairs += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--vllm-url=")]
    pairs += default_of(environment_of(inference).get("ATELIER_VLLM_URLS", "")).split()
    return dict(default_of(pair).split("=", 1) for pair in pairs)


def default_of(value: str) -> str:
    """A compose value with ``${NAME:-default}`` / ``${NAME-default}`` replaced by its default (nested too)."""
    pattern = re.compile(r"\$\{[A-Z0-9_]+:?-([^${}]*)\}")
    while (resolved := pattern.sub(r"\1", value)) != value:
        value = resolved
    return value


def test_vllm_runs_the_official_image_at_a_pinned_version_with_the_studios_plugin(
    services: dict[str, Service],
) -> None:
    dockerfile = (REPO_ROOT / VLLM_DOCKERFILE).read_text(encoding="utf-8")
    [base] = re.findall(r"^FROM (\S+)$", dockerfile, flags=re.MULTILINE)
    [default_tag] = re.findall(r"^ARG VLLM_IMAGE_TAG=(\S+)$", dockerfile, flags=re.MULTILINE)
    assert base == f"{VLLM_IMAGE}:${{VLLM_IMAGE_TAG}}", f"{VLLM_DOCKERFILE} builds on {base!r}"
    assert "COPY vllm_plugin " in dockerfile and "pip install --no-cache-dir --no-deps /opt/atelier-vllm" in dockerfile
    for name in sorted(VLLM_SERVICES):
        build = services[name].get("build", {})
        assert (build.get("context"), build.get("dockerfile")) == ("..", VLLM_DOCKERFILE), f"{name}: build {build}"
        tag = default_of(str(build.get("args", {}).get("VLLM_IMAGE_TAG", "")))
        assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"{name}: tag {tag!r} is not a pinned release"
        assert tag == default_tag, f"{name} builds on {tag}, the Dockerfile's default is {default_tag}"
        assert default_of(str(services[name].get("image", ""))) == f"atelier-vllm:{tag}", f"{name}: image name"


def test_vllm_reserves_as_many_gpus_as_its_tensor_parallel_size(services: dict[str, Service]) -> None:
    for name in sorted(VLLM_SERVICES):
        service = services[name]
        parallel = command_option(service, "--tensor-parallel-size")
        assert "${VLLM_TENSOR_PARALLEL_SIZE" in parallel, f"{name}: tensor parallel size is not a setting"
        assert default_of(parallel) == "1", f"{name}: one GPU unless the setting says otherwise"
        devices = gpu_reservations(service)
        assert [device.get("count") for device in devices] == [parallel], f"{name} must reserve {parallel} GPUs"
        assert devices[0].get("capabilities") == ["gpu"]


def test_vllm_healthcheck_probes_its_own_health_endpoint(services: dict[str, Service]) -> None:
    for name in sorted(VLLM_SERVICES):
        port = command_option(services[name], "--port")
        assert healthcheck_url(services[name]) == f"http://127.0.0.1:{port}/health", f"{name} healthcheck"


def test_vllm_serves_lora_adapters_loaded_at_run_time_under_the_engines_base_name(
    services: dict[str, Service],
) -> None:
    from serving_app.engine.vllm_server import BASE_NAME

    for name in sorted(VLLM_SERVICES):
        service = services[name]
        argv = split_command(service["command"])
        assert "--enable-lora" in argv, f"{name} does not serve adapters"
        assert command_option(service, "--served-model-name") == BASE_NAME
        assert environment_of(service).get("VLLM_ALLOW_RUNTIME_LORA_UPDATING") == "True", name


def test_vllm_reads_models_from_the_shared_volume_read_only_and_never_the_internet(
    compose: dict[str, Any], services: dict[str, Service]
) -> None:
    for name in sorted(VLLM_SERVICES):
        service = services[name]
        assert "atelier-data:/var/lib/atelier:ro" in service.get("volumes", []), f"{name}: volume not read-only"
        assert default_of(vllm_model(service)).startswith("/var/lib/atelier/models/"), f"{name}: model folder"
        env = environment_of(service)
        assert env.get("HF_HUB_OFFLINE") == "1" and env.get("VLLM_NO_USAGE_STATS") == "1", name
        networks = service.get("networks") or ["default"]
        outside = [net for net in networks if not (compose.get("networks", {}).get(net) or {}).get("internal")]
        assert not outside, f"{name} is on networks with a route out: {outside}"


def test_the_inference_server_attaches_to_every_vllm_service_by_base_model(services: dict[str, Service]) -> None:
    inference = services["inference"]
    urls = attached_vllm_urls(inference)
    for name in sorted(VLLM_SERVICES):
        service = services[name]
        expected = f"http://{name}:{command_option(service, '--port')}"
        model = default_of(vllm_model(service))
        assert urls.get(model) == expected, f"the inference server must send {model} to {expected}: {urls}"
        assert set(service.get("networks", [])) <= set(inference.get("networks", [])), f"{name} unreachable"
        # The inference server never keeps more adapters loaded than the server takes.
        assert command_option(inference, "--vllm-max-loras") == command_option(service, "--max-loras")
        assert command_option(inference, "--vllm-max-lora-rank") == command_option(service, "--max-lora-rank")


def test_web_passes_the_inference_routes_setting_on(services: dict[str, Service]) -> None:
    assert "ATELIER_INFERENCE_ROUTES" in environment_of(services["web"])


def test_the_inference_server_takes_every_option_compose_gives_it(services: dict[str, Service]) -> None:
    usage = subprocess.run(
        [sys.executable, "-m", "serving_app.engine", "--help"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    given = [arg.split("=")[0] for arg in split_command(services["inference"]["command"]) if arg.startswith("--")]
    unknown = [option for option in given if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", usage)]
    assert not unknown, f"python -m serving_app.engine does not take {unknown}"


def test_the_tools_worker_holds_the_tool_secrets_key_and_no_studio_credentials(services: dict[str, Service]) -> None:
    worker = services["tools-worker"]
    env = environment_of(worker)
    assert {"DATABASE_URL", "SECRET_KEY", "ATELIER_DATA_DIR"}.isdisjoint(env)
    assert (
        "ATELIER_SECRETS_KEY" in env
        and env["ATELIER_SECRETS_KEY"] == environment_of(services["web"])["ATELIER_SECRETS_KEY"]
    )
    assert not worker.get("volumes"), "the tools worker mounts no data volume"
