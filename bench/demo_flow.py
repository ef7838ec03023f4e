"""The `make run` demo on CPU, click to model version: Quick LoRA on the starter model and the sample chats.

PERF.md's goal: at most 60 s from "launch" to a ready model version on the 2-core machine. This script
builds the embedded default that ``make run`` starts, in a temporary ``ATELIER_DATA_DIR`` (SQLite, the kombu
filesystem broker and the media folder all inside it; every variable that studio/settings.py reads is
removed from the environment so nothing else leaks in):

1. ``manage.py migrate``, ``manage.py seed_demo`` (the demo user and team) and ``manage.py
   create_starter_model`` with ``ATELIER_MODELS_DIR`` = ``--models-dir`` (default ``var/bench-models``, the
   cache train_cpu.py uses: the starter model is created once, about 50 s on an idle machine, and only
   registered afterwards);
2. two real Celery workers as ``make run`` starts them (prefork, concurrency 1): ``-Q default`` (dataset
   validation) and ``-Q gpu`` (training jobs). Beat (the reaper) is not started: nothing here needs it;
3. a Django-configured child process (this script with ``--child``) that does what the person does:
   ``datasets_app.services.add_sample(chat)`` through the real upload path (validated by the default worker),
   then for each run "launch": ``training_app.jobs.create_job`` with every setting of the "Quick LoRA" preset
   (``presets.apply_preset("quick-lora")``), pool ``cpu``, and waits until the job's ``ModelVersion`` exists.

Two scenarios, run ``--repeat`` times each (default 1):

- ``demo_quick_lora_<N>_steps``: the preset with ``max_steps`` = ``--max-steps`` (default 10): the fixed
  costs of the flow with a short training loop;
- ``demo_quick_lora_3_epochs``: the preset as the demo runs it (``max_steps`` unset: 3 epochs).

Measured per run, from wall-clock timestamps on this machine: ``launch_to_ready_s`` (the time just before
``create_job`` to the ``ModelVersion``'s ``created_at``) and its phases: ``create_job_s`` (validate,
estimate, save, enqueue), ``queued_s`` (until the gpu worker claims the job: the job's ``started_at``),
``prepare_and_spawn_s`` (data split, run.json, trainer process start until the trainer's first status),
``imports_s`` (torch, transformers), ``load_s`` (tokenizer, data, model, trainer), ``training_s``
(``trainer.train``, the validation loss before training included), ``eval_after_s``, ``save_s``,
``check_s`` (reload the saved adapter and generate answers for the held-out prompts) and ``register_s``
(trainer exit, the supervisor's next 1 s poll, the completion transaction). The phases come from the
``updated_at`` of the trainer's ``status.json``, polled every 50 ms: a phase shorter than that can be missed
(null). Also: steps, tokens/s and ``train_runtime_seconds`` from the job's result.

The peer, in the same call: ``bare_engine``, the same ``run.json`` (same data split) run directly as
``python -m training_app.engine --config run.json`` with the worker's environment, no studio around it.
``ratio_vs_bare_engine`` = launch_to_ready / the bare engine's wall time: what the studio adds (queue,
supervisor, registration). Runs alternate (flow first, then the bare engine first, ...). ``--no-peer`` skips it.

Prints JSON lines on stdout: ``demo_setup`` (the setup's timings, ``add_sample`` to a ready version
included), then one line per scenario (medians and every run). Never asserts. Progress goes to stderr.
Exit codes: 0 figures printed; 1 a step failed (its log tail is printed); 124 the ``--max-seconds`` cap
(default 300 + 450 per repeat); 130 interrupted. Workers, trainers and the temporary folder are removed.

    .venv/bin/python bench/demo_flow.py              # about 3-5 minutes on the 2-core machine
    .venv/bin/python bench/demo_flow.py --repeat 3 --max-steps 10
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GOAL_SECONDS = 60.0
PRESET = "quick-lora"
POOL = "cpu"
SAMPLE = "chat"
STATUS_POLL_S = 0.05
READY_POLL_S = 0.25
PHASES = [
    "create_job_s",
    "queued_s",
    "prepare_and_spawn_s",
    "imports_s",
    "load_s",
    "training_s",
    "eval_after_s",
    "save_s",
    "check_s",
    "register_s",
]

_processes: list[subprocess.Popen[bytes]] = []  # process groups this script started, stopped at the end


# ---- the studio's environment and processes (parent) ------------------------------------------------------


def settings_variables() -> list[str]:
    """Every environment variable studio/settings.py reads (so that none of them leaks into the demo)."""
    text = (ROOT / "studio" / "settings.py").read_text(encoding="utf-8")
    names = re.findall(r"env_(?:str|bool|int|json|list)\(\s*\"([A-Z0-9_]+)\"", text)
    names += re.findall(r"os\.environ\.get\(\s*\"([A-Z0-9_]+)\"", text)
    return sorted(set(names))


def studio_env(data_dir: Path, models_dir: Path) -> tuple[dict[str, str], list[str]]:
    """The embedded default of `make run` in ``data_dir``: SQLite, filesystem broker, the CPU pool."""
    env = dict(os.environ)
    dropped = [name for name in settings_variables() if env.pop(name, None) is not None]
    env.update(
        {
            "ATELIER_DATA_DIR": str(data_dir),
            "ATELIER_MODELS_DIR": str(models_dir),
            "DJANGO_SETTINGS_MODULE": "studio.settings",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
    )
    return env, [name for name in dropped if name not in ("ATELIER_DATA_DIR", "ATELIER_MODELS_DIR")]


def setup_django_here(env: dict[str, str], database_url: str | None = None) -> None:
    """Make this process the studio's, with ``env`` (``studio_env``'s) and ``database_url`` if given: Django set up
    and httpx's per-request log lines, which Django's logging config turns on, silenced."""
    if database_url:
        env["DATABASE_URL"] = database_url
    os.environ.clear()
    os.environ.update(env)
    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)


def tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-size:]
    except OSError:
        return ""


class StepFailed(Exception):
    pass


def manage(arguments: list[str], *, env: dict[str, str], log: Path, timeout: float) -> float:
    """Run ``manage.py ARGS`` to its end; returns its wall seconds, raises StepFailed on an error."""
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", *arguments],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _processes.append(process)
        try:
            code = process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            code = 124
        finally:
            stop(process)
    if code != 0:
        raise StepFailed(f"manage.py {' '.join(arguments)} exited with {code}:\n{tail(log)}")
    return time.perf_counter() - started


def start_worker(queue: str, *, env: dict[str, str], log: Path, timeout: float) -> subprocess.Popen[bytes]:
    """A Celery worker as `make run` starts it (prefork, concurrency 1); returns once it logs "ready"."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "studio", "worker", "-Q", queue, "--concurrency", "1",
                "--hostname", f"{queue}-demo-bench-{os.getpid()}@%h", "--loglevel", "INFO",
            ],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    _processes.append(process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StepFailed(f"the celery worker for {queue} exited with {process.returncode}:\n{tail(log)}")
        if re.search(r"@\S+ ready\.", tail(log, 20000)):
            return process
        time.sleep(0.2)
    raise StepFailed(f"the celery worker for {queue} was not ready within {timeout:.0f} s:\n{tail(log)}")


def stop(process: subprocess.Popen[bytes], *, grace: float = 0.0) -> None:
    """Stop a process group this script started: SIGTERM and ``grace`` seconds, then SIGKILL."""
    if process.poll() is None and grace > 0:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):  # whatever of the group is left (a worker's pool child)
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    if process in _processes:
        _processes.remove(process)


def stop_trainers(data_dir: Path) -> None:
    """Kill the trainer process groups the gpu worker started (each records its group in launcher.pgid)."""
    for recorded in data_dir.glob("media/teams/*/jobs/*/run/launcher.pgid"):
        with contextlib.suppress(OSError, ValueError, ProcessLookupError, PermissionError):
            pgid = int(recorded.read_text().strip())
            # Only while that id is still our trainer (its command line names our run.json), never a reused id.
            if str(recorded.parent) in Path(f"/proc/{pgid}/cmdline").read_bytes().decode(errors="replace"):
                os.killpg(pgid, signal.SIGKILL)


# ---- the person's clicks, in a Django-configured child ------------------------------------------------------


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process (and of its children it has waited for), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def machine_times() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far (every core, whoever used them)."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def busy_pct(before: tuple[int, int], after: tuple[int, int]) -> float | None:
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 1) if total > 0 else None


def span(start: float | None, end: float | None) -> float | None:
    return round(end - start, 2) if start is not None and end is not None else None


def one_flow(access: Any, base: Any, version: Any, values: dict[str, Any], name: str, timeout: float) -> dict[str, Any]:
    """Launch one job as the form does and wait for its model version; returns the run's figures."""
    from training_app import jobs
    from training_app.models import ModelVersion, TrainingJob

    load_before = os.getloadavg()[0]
    machine_before = machine_times()
    launched = time.time()
    job = jobs.create_job(access=access, name=name, base_model=base, dataset_version=version, pool=POOL, values=values)
    returned = time.time()
    status_file = job.folder() / "run" / "status.json"
    pid_file = job.folder() / "run" / "launcher.pgid"
    trainer_pid: int | None = None
    trainer_cpu: float | None = None  # the last reading before the trainer exits (polled every 0.25 s)
    seen: dict[str, float] = {}  # the trainer's phase -> its status.json updated_at, first seen
    deadline = time.monotonic() + timeout
    next_check = 0.0
    model_version = None
    observed_ready = None
    while time.monotonic() < deadline:
        status = read_status(status_file)
        if status and isinstance(status.get("updated_at"), int | float):
            phase = str(status.get("phase"))
            if phase == "saving" and "check" in str(status.get("message", "")):
                phase = "checking"
            seen.setdefault(phase, float(status["updated_at"]))
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + READY_POLL_S
            if trainer_pid is None:
                with contextlib.suppress(OSError, ValueError):
                    trainer_pid = int(pid_file.read_text().strip())
            if trainer_pid is not None:
                trainer_cpu = process_cpu_seconds(trainer_pid) or trainer_cpu
            model_version = ModelVersion.objects.unscoped().filter(job_id=job.pk).first()
            if model_version is not None:
                observed_ready = time.time()
                break
            state = TrainingJob.objects.unscoped().filter(pk=job.pk).values_list("status", flat=True).first()
            if state in ("failed", "cancelled"):
                break
        time.sleep(STATUS_POLL_S)
    job.refresh_from_db()
    if model_version is None:
        return {
            "error": f"no model version: the job is {job.status} ({job.message})",
            "failure": job.failure,
            "log_tail": (job.log_tail or "")[-2500:],
            "waited_s": round(time.time() - launched, 1),
        }
    result = job.result or {}
    ready = model_version.created_at.timestamp()
    claimed = job.started_at.timestamp() if job.started_at else None
    trained_until = seen.get("evaluating") or seen.get("saving")
    phases = {
        "create_job_s": span(launched, returned),
        "queued_s": span(returned, claimed),
        "prepare_and_spawn_s": span(claimed, seen.get("starting")),
        "imports_s": span(seen.get("starting"), seen.get("loading")),
        "load_s": span(seen.get("loading"), seen.get("training")),
        "training_s": span(seen.get("training"), trained_until),
        "eval_after_s": span(seen.get("evaluating"), seen.get("saving")),
        "save_s": span(seen.get("saving"), seen.get("checking")),
        "check_s": span(seen.get("checking"), seen.get("succeeded")),
        "register_s": span(seen.get("succeeded"), ready),
    }
    trainer_s = span(seen.get("starting"), seen.get("succeeded"))
    return {
        "job": job.pk,
        "launch_to_ready_s": round(ready - launched, 2),
        "observed_ready_s": round((observed_ready or ready) - launched, 2),
        "phases_s": phases,
        "trainer_process_s": trainer_s,
        "trainer_cpu_s": round(trainer_cpu, 1) if trainer_cpu is not None else None,
        "machine_busy_pct": busy_pct(machine_before, machine_times()),
        "outside_trainer_s": round(ready - launched - trainer_s, 2) if trainer_s is not None else None,
        "steps": result.get("steps"),
        "epochs": result.get("epochs"),
        "tokens_seen": result.get("tokens_seen"),
        "tokens_per_s": result.get("tokens_per_second"),
        "train_runtime_s": result.get("train_runtime_seconds"),
        "trainer_duration_s": result.get("duration_seconds"),
        "loss_first_last": [result.get("train_loss_first"), result.get("train_loss_last")],
        "eval_loss_before_after": [result.get("eval_loss_before"), result.get("eval_loss_after")],
        "model_version": f"{model_version.name} v{model_version.number}",
        "load_1min_before": round(load_before, 2),
        "_run_json": str(job.folder() / "run" / "run.json"),
    }


def bare_engine(template: Path, folder: Path, timeout: float) -> dict[str, Any]:
    """The peer: the job's run.json (same data files) run by ``python -m training_app.engine`` directly."""
    from training_app.engine.config import RunConfig

    config = RunConfig.load(template)
    shutil.rmtree(folder, ignore_errors=True)
    config.run_dir, config.output_dir = str(folder / "run"), str(folder / "output")
    Path(config.run_dir).mkdir(parents=True)
    path = folder / "run.json"
    config.save(path)
    # The environment the gpu worker gives a trainer (runner._trainer_environment), without the supervisor.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(max(1, os.cpu_count() or 1))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    load_before = os.getloadavg()[0]
    machine_before = machine_times()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with (folder / "train.log").open("wb") as out:
        process = subprocess.Popen(  # same process group as this child: stopping the child stops it
            [sys.executable, "-m", "training_app.engine", "--config", str(path)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = 124
    wall = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = children.ru_utime + children.ru_stime - children_before.ru_utime - children_before.ru_stime
    busy = busy_pct(machine_before, machine_times())
    result = read_status(folder / "run" / "result.json")
    if code != 0 or result is None:
        return {"error": f"the engine exited with {code}", "log_tail": tail(folder / "train.log", 2500)}
    shutil.rmtree(folder / "output", ignore_errors=True)
    return {
        "wall_s": round(wall, 2),
        "steps": result.get("steps"),
        "tokens_per_s": result.get("tokens_per_second"),
        "train_runtime_s": result.get("train_runtime_seconds"),
        "trainer_duration_s": result.get("duration_seconds"),
        "cpu_s": round(cpu, 1),
        "load_1min_before": round(load_before, 2),
        "machine_busy_pct": busy,
    }


def median(values: list[Any]) -> float | None:
    numbers = [value for value in values if isinstance(value, int | float)]
    return round(statistics.median(numbers), 2) if numbers else None


def summarize(scenario: str, max_steps: int | None, runs: list[dict[str, Any]], peers: list[dict[str, Any]]) -> str:
    good = [run for run in runs if "error" not in run]
    ready = median([run["launch_to_ready_s"] for run in good])
    line: dict[str, Any] = {
        "scenario": scenario,
        "preset": PRESET,
        "pool": POOL,
        "dataset": f"sample {SAMPLE}",
        "max_steps": max_steps,
        "runs": len(runs),
        "errors": len(runs) - len(good),
        "launch_to_ready_s": ready,
        "goal_s": GOAL_SECONDS,
        "within_goal": ready <= GOAL_SECONDS if ready is not None else None,
        "phases_s": {phase: median([run["phases_s"][phase] for run in good]) for phase in PHASES},
        "outside_trainer_s": median([run["outside_trainer_s"] for run in good]),
        "steps": median([run["steps"] for run in good]),
        "tokens_per_s": median([run["tokens_per_s"] for run in good]),
        "train_runtime_s": median([run["train_runtime_s"] for run in good]),
        "trainer_cpu_s": median([run["trainer_cpu_s"] for run in good]),
        "machine_busy_pct": median([run["machine_busy_pct"] for run in good]),
    }
    if peers:
        good_peers = [peer for peer in peers if "error" not in peer]
        pairs = [
            round(run["launch_to_ready_s"] / peer["wall_s"], 3)
            for run, peer in zip(runs, peers, strict=False)
            if "error" not in run and "error" not in peer
        ]
        peer_wall = median([peer["wall_s"] for peer in good_peers])
        line.update(
            {
                "peer": "bare_engine",
                "peer_wall_s": peer_wall,
                "peer_train_runtime_s": median([peer["train_runtime_s"] for peer in good_peers]),
                "peer_tokens_per_s": median([peer["tokens_per_s"] for peer in good_peers]),
                "peer_cpu_s": median([peer["cpu_s"] for peer in good_peers]),
                "peer_machine_busy_pct": median([peer["machine_busy_pct"] for peer in good_peers]),
                "ratio_vs_bare_engine": round(ready / peer_wall, 3) if ready and peer_wall else None,
                "pair_ratios": pairs,
                "peer_each": peers,
            }
        )
    line["each"] = [{key: value for key, value in run.items() if not key.startswith("_")} for run in runs]
    return json.dumps(line)


def child(plan: dict[str, Any]) -> int:
    """Seeded studio: add the sample, then launch each scenario ``repeat`` times; prints one line each."""
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from accounts.management.commands.seed_demo import DEMO_TEAM_SLUG, DEMO_USERNAME
    from accounts.permissions import resolve_access
    from datasets_app import services as dataset_services
    from datasets_app.models import DatasetVersion
    from training_app import jobs, presets
    from training_app.services import STARTER_MODEL_NAME

    access = resolve_access(get_user_model().objects.get(username=DEMO_USERNAME), DEMO_TEAM_SLUG)
    base = jobs.usable_base_models(access).get(name=STARTER_MODEL_NAME)
    print(f"adding the sample {SAMPLE} dataset (validated by the default worker) ...", file=sys.stderr)
    started = time.time()
    version = dataset_services.add_sample(access=access, sample=SAMPLE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        version = DatasetVersion.objects.unscoped().get(pk=version.pk)
        if version.status not in ("validating", "processing"):
            break
        time.sleep(0.1)
    if not version.is_ready:
        print(f"the sample dataset is {version.status}, not ready: {version}", file=sys.stderr)
        return 1
    setup = {**plan["setup"], "add_sample_to_ready_s": round(time.time() - started, 2), "rows": version.row_count}
    print(json.dumps({"scenario": "demo_setup", **setup}), flush=True)

    scenarios = [(f"demo_quick_lora_{plan['max_steps']}_steps", plan["max_steps"]), ("demo_quick_lora_3_epochs", None)]
    if plan["only"]:
        scenarios = [(name, steps) for name, steps in scenarios if plan["only"] in name]
    work = Path(tempfile.mkdtemp(prefix="peer-", dir=os.environ["ATELIER_DATA_DIR"]))
    for scenario, max_steps in scenarios:
        values = presets.apply_preset(PRESET, {"max_steps": max_steps} if max_steps else None)
        runs: list[dict[str, Any]] = []
        peers: list[dict[str, Any]] = []
        template: Path | None = None
        for index in range(plan["repeat"]):
            peer_first = plan["peer"] and template is not None and index % 2 == 1
            order = ["peer", "flow"] if peer_first else (["flow", "peer"] if plan["peer"] else ["flow"])
            for what in order:
                if what == "flow":
                    print(f"{scenario} run {index + 1}: launch ...", file=sys.stderr)
                    run = one_flow(access, base, version, values, f"Quick LoRA demo ({scenario})", plan["timeout"])
                    runs.append(run)
                    if "error" in run:
                        print(f"  failed: {run['error']}\n{run.get('log_tail', '')}", file=sys.stderr)
                        break
                    template = template or Path(run["_run_json"])
                    print(f"  ready in {run['launch_to_ready_s']} s ({run['steps']} steps)", file=sys.stderr)
                elif template is not None:
                    print(f"{scenario} run {index + 1}: bare engine ...", file=sys.stderr)
                    peer = bare_engine(template, work / f"{scenario}-{index}", plan["timeout"])
                    peers.append(peer)
                    print(f"  bare engine: {peer.get('wall_s', peer.get('error'))} s", file=sys.stderr)
        print(summarize(scenario, max_steps, runs, peers), flush=True)
    return 0


# ---- main ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Output: JSON lines on stdout (demo_setup, then one per scenario); see bench/README.md.",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario (default 1)")
    parser.add_argument("--max-steps", type=int, default=10, help="max_steps of the short scenario (default 10)")
    parser.add_argument("--only", choices=["steps", "epochs"], default=None, help="run one scenario only")
    parser.add_argument("--no-peer", action="store_true", help="skip the bare-engine peer")
    parser.add_argument(
        "--models-dir",
        default=str(ROOT / "var" / "bench-models"),
        help="cache of the starter model (ATELIER_MODELS_DIR)",
    )
    parser.add_argument("--flow-timeout", type=int, default=600, help="cap on one launch-to-ready run (default 600)")
    parser.add_argument("--max-seconds", type=int, default=None, help="hard cap (default 300 + 450 per repeat)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir (its path goes to stderr)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        return child(json.loads(options.child))
    if options.repeat < 1 or options.max_steps < 1:
        parser.error("--repeat and --max-steps must be at least 1")
    cap = options.max_seconds or 300 + 450 * options.repeat

    data_dir = Path(tempfile.mkdtemp(prefix="atelier-demo-flow-"))
    models_dir = Path(options.models_dir).resolve()
    env, dropped = studio_env(data_dir, models_dir)
    deadline = time.monotonic() + cap

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    def on_alarm(signum: int, frame: Any) -> None:
        raise TimeoutError

    def on_terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_terminate)
    signal.alarm(cap)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        print(f"embedded default in {data_dir} (SQLite, filesystem broker) ...", file=sys.stderr)
        setup: dict[str, Any] = {"cpus": os.cpu_count(), "load_1min": round(os.getloadavg()[0], 2)}
        setup["migrate_s"] = round(
            manage(["migrate", "--noinput"], env=env, log=data_dir / "migrate.log", timeout=left()), 2
        )
        setup["seed_demo_s"] = round(manage(["seed_demo"], env=env, log=data_dir / "seed.log", timeout=left()), 2)
        print(f"starter model under {models_dir} (created once, about 50 s) ...", file=sys.stderr)
        setup["create_starter_model_s"] = round(
            manage(["create_starter_model"], env=env, log=data_dir / "starter.log", timeout=left()), 2
        )
        print("starting the celery workers (-Q default, -Q gpu) ...", file=sys.stderr)
        took = time.perf_counter()
        workers.append(start_worker("default", env=env, log=data_dir / "worker-default.log", timeout=min(left(), 90)))
        workers.append(start_worker("gpu", env=env, log=data_dir / "worker-gpu.log", timeout=min(left(), 90)))
        setup["workers_ready_s"] = round(time.perf_counter() - took, 2)
        setup["dropped_env"] = dropped
        plan = {
            "setup": setup,
            "repeat": options.repeat,
            "max_steps": options.max_steps,
            "only": options.only,
            "peer": not options.no_peer,
            "timeout": min(options.flow_timeout, left()),
        }
        process = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(plan)], cwd=ROOT, env=env, start_new_session=True
        )
        _processes.append(process)
        code = process.wait(timeout=left())
        stop(process)
        if code != 0:
            for worker_log in sorted(data_dir.glob("worker-*.log")):
                print(f"--- {worker_log.name}:\n{tail(worker_log)}", file=sys.stderr)
        return 0 if code == 0 else 1
    except (TimeoutError, subprocess.TimeoutExpired):
        print(f"stopped: the run passed its {cap} s cap (--max-seconds)", file=sys.stderr)
        return 124
    except KeyboardInterrupt:
        return 130
    except StepFailed as failure:
        print(f"failed: {failure}", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        for process in [process for process in _processes if process not in workers]:
            stop(process)  # the child (and a bare-engine peer in its group), a manage.py command
        for worker in workers:
            stop(worker, grace=10)  # a warm shutdown, then SIGKILL
        stop_trainers(data_dir)
        if options.keep:
            print(f"kept {data_dir}", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
