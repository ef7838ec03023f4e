"""What a GPU worker does with one training job: claim it, prepare its files, launch and watch the trainer.

``run_job(job_id, worker)`` is the body of the Celery task on the pool's queue. Steps:

1. **Claim** the job row with one conditional UPDATE (queued → starting, lease owner and expiry set). A
   second delivery of the same task, or a job cancelled before it started, matches no row: nothing runs.
2. **Prepare** ``<media>/teams/<team>/jobs/<id>/``: ``data/`` (the dataset version's rows copied and split
   into train/eval once, so a resumed attempt trains on the same rows even if the dataset is deleted),
   ``run/run.json`` (the trainer's ``RunConfig``), ``output/`` (checkpoints and artifacts).
3. **Launch** ``python -m training_app.engine`` — through ``accelerate launch`` for DeepSpeed or several
   processes — in a process group of its own, its output appended to ``run/train.log``.
4. **Supervise** once a second: renew the lease (losing it means another worker owns the job: stop),
   copy new metrics lines into ``JobMetric`` and the trainer's status into the row, keep the log tail, and
   on a cancel request create the cancel flag, then SIGTERM the process group after the grace period.
5. **Finish** from what the trainer wrote (``status.json``, ``failure.json``, ``result.json``) — the
   launchers turn every failure into exit code 1 — registering the model version on success. Completion
   is one transaction guarded by the lease, so a job completes once.

The worker never imports torch; the trainer does, in its own processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts import audit
from training_app import jobs, presets
from training_app.engine.config import RunConfig
from training_app.engine.reporting import (
    CANCEL_FLAG,
    FAILURE_FILE,
    METRICS_FILE,
    RESULT_FILE,
    STATUS_FILE,
    SUPERVISOR_PID_ENV,
    read_json,
    readable_log,
)
from training_app.models import JobMetric, JobStatus, TrainingJob

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
LOG_FILE = "train.log"
PIDS_FILE = "launcher.pgid"
LOG_TAIL_LINES = 80
POLL_SECONDS = 1.0


class LostLease(Exception):
    """Another worker (or the reaper) took the job over: this worker must stop touching it."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ---- 1. claim -------------------------------------------------------------------------------------------


def claim(job_id: int, worker: str) -> TrainingJob | None:
    """Take a queued job for ``worker`` (one conditional UPDATE); None when it is not queued any more."""
    now = timezone.now()
    taken = (
        TrainingJob.objects.unscoped()
        .filter(pk=job_id, status=JobStatus.QUEUED)
        .update(
            status=JobStatus.STARTING,
            lease_owner=worker,
            lease_expires_at=now + timedelta(seconds=settings.TRAINING_LEASE_SECONDS),
            heartbeat_at=now,
            attempts=F("attempts") + 1,
            started_at=Coalesce(F("started_at"), now),
            phase="starting",
            message=f"starting on {worker}",
        )
    )
    if not taken:
        return None
    return (
        TrainingJob.objects.unscoped().select_related("team", "base_model", "dataset_version__dataset").get(pk=job_id)
    )


def run_job(job_id: int, worker: str | None = None) -> str:
    """Run one job to its end; returns what happened (for the task's result and the logs)."""
    worker = worker or worker_name()
    job = claim(job_id, worker)
    if job is None:
        log.info("job %s is not queued: nothing to do (duplicate delivery or cancelled)", job_id)
        return "not claimed"
    folder = job.folder()
    try:
        config = prepare(job)
    except PrepareError as problem:
        _complete(job, worker, JobStatus.FAILED, failure=problem.failure)
        return "failed"
    try:
        return _launch_and_supervise(job, worker, config, folder)
    except LostLease:
        log.warning("job %s: lease lost to another worker; stopped supervising", job_id)
        return "lease lost"


# ---- 2. prepare -----------------------------------------------------------------------------------------


class PrepareError(Exception):
    def __init__(self, code: str, message: str, suggestion: str) -> None:
        super().__init__(message)
        self.failure = {"code": code, "message": message, "suggestion": suggestion}


def prepare(job: TrainingJob) -> RunConfig:
    """Write the job's data split and run.json (kept across attempts); raises ``PrepareError``."""
    folder = job.folder()
    data, run_dir, output = folder / "data", folder / "run", folder / "output"
    for path in (data, run_dir, output):
        path.mkdir(parents=True, exist_ok=True)
    base = job.base_model
    if base is None or not Path(base.path).is_dir():
        name = job.lineage.get("base_model", {}).get("name", "the base model")
        raise PrepareError(
            "missing_file",
            f"The base model {name} was deleted after the job was queued.",
            "Clone the job and pick a base model that exists.",
        )
    train_path, eval_path = data / "train.jsonl", data / "eval.jsonl"
    if not (data / "READY").exists():
        _split_rows(job, train_path, eval_path)
        (data / "READY").write_text("train.jsonl and eval.jsonl are complete\n", encoding="utf-8")
    options = {key: value for key, value in job.config.items() if key not in presets.LAUNCH_ONLY}
    plan = (job.estimate or {}).get("memory_plan") if job.config.get("memory_auto") else None
    if isinstance(plan, dict) and plan.get("reason"):
        options["memory_reason"] = str(plan["reason"])
    pool = settings.TRAINING_POOLS.get(job.pool, {})
    config = RunConfig.from_dict(
        {
            **options,
            "model_path": base.path,
            "train_path": str(train_path),
            "eval_path": str(eval_path) if eval_path.exists() and eval_path.stat().st_size else None,
            "output_dir": str(output),
            "run_dir": str(run_dir),
            "kind": job.dataset_version.kind if job.dataset_version else job.lineage["dataset_versions"][0]["kind"],
            "use_cpu": pool.get("accelerator", "cpu") == "cpu",
        }
    )
    config.save(run_dir / "run.json")
    return config


def _split_rows(job: TrainingJob, train_path: Path, eval_path: Path) -> None:
    """Copy the version's rows: its own validation split if it has one, else hold out ``eval_split``."""
    version = job.dataset_version
    if version is None or not version.rows_path.exists():
        name = job.lineage.get("dataset_versions", [{}])[0].get("dataset", "the dataset")
        raise PrepareError(
            "missing_file",
            f"The dataset version of {name} was deleted after the job was queued.",
            "Clone the job and pick a dataset version that exists.",
        )
    if version.validation_path.exists():
        shutil.copyfile(version.rows_path, train_path)
        shutil.copyfile(version.validation_path, eval_path)
        return
    rows = version.row_count or sum(1 for _ in version.rows_path.open("rb"))
    held_out = int(rows * float(job.config.get("eval_split", 0)))
    if rows - held_out < 1:
        held_out = 0
    chosen = set(random.Random(job.config.get("seed", 42)).sample(range(rows), held_out)) if held_out else set()
    with version.rows_path.open("rb") as source, train_path.open("wb") as train, eval_path.open("wb") as held:
        for index, line in enumerate(source):
            (held if index in chosen else train).write(line)


# ---- 3. launch ------------------------------------------------------------------------------------------


def launch_command(config: RunConfig, processes: int) -> list[str]:
    """The trainer's command line: plain Python for one process without DeepSpeed, else accelerate."""
    engine = ["-m", "training_app.engine", "--config", str(Path(config.run_dir) / "run.json")]
    if config.deepspeed == "none" and processes == 1:
        return [sys.executable, *engine]
    mode = ["--use_deepspeed"] if config.deepspeed != "none" else ["--multi_gpu"]
    return [
        sys.executable, "-m", "accelerate.commands.launch", *mode,
        "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *engine,
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _trainer_environment(job: TrainingJob, processes: int) -> dict[str, str]:
    env = {**os.environ, SUPERVISOR_PID_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the trainer has no Django
    if settings.TRAINING_POOLS.get(job.pool, {}).get("accelerator", "cpu") == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, cpu_threads() // processes))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    return env


def cpu_threads() -> int:
    """The threads a CPU pool's trainer may use in all: the worker's own ``OMP_NUM_THREADS`` where the operator set
    one, else the CPUs this process may run on (a container's or ``taskset``'s CPU set, not the machine's count).

    More compute threads than free cores is ruinous for PyTorch on CPU: its OpenMP threads wait for each other by
    spinning: on the 2-core machine, greedy generation beside one busy core took 7.7 s on 2 threads and 1.6 s on 1
    (1.4 s on 2 threads alone). A worker sharing its machine is started with ``OMP_NUM_THREADS`` set to its share.
    """
    explicit = os.environ.get("OMP_NUM_THREADS", "")
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _kill_leftovers(run_dir: Path) -> None:
    """Kill the process group of an earlier attempt that may still run (its worker was killed)."""
    recorded = run_dir / PIDS_FILE
    try:
        pgid = int(recorded.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    recorded.unlink(missing_ok=True)


def _launch_and_supervise(job: TrainingJob, worker: str, config: RunConfig, folder: Path) -> str:
    run_dir = Path(config.run_dir)
    _kill_leftovers(run_dir)
    for stale in (STATUS_FILE, FAILURE_FILE, RESULT_FILE, CANCEL_FLAG):
        (run_dir / stale).unlink(missing_ok=True)
    processes = int(settings.TRAINING_POOLS.get(job.pool, {}).get("devices", 1))
    command = launch_command(config, processes)
    with (run_dir / LOG_FILE).open("ab") as out:
        out.write(f"\n=== attempt {job.attempts} on {worker}: {' '.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            command, cwd=ROOT, env=_trainer_environment(job, processes), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    (run_dir / PIDS_FILE).write_text(str(process.pid), encoding="utf-8")
    supervisor = Supervisor(job, worker, process, run_dir)
    try:
        supervisor.watch()
    except BaseException:
        supervisor.stop_process(signal.SIGKILL)
        raise
    return supervisor.finish()


# ---- 4. supervise ---------------------------------------------------------------------------------------


class Supervisor:
    """Watches one trainer process group and mirrors its reports into the job row."""

    def __init__(self, job: TrainingJob, worker: str, process: subprocess.Popen[bytes], run_dir: Path) -> None:
        self.job = job
        self.worker = worker
        self.process = process
        self.run_dir = run_dir
        self.metrics_offset = 0
        self.metrics_seq = JobMetric.objects.filter(job=job).count()
        self.seen_lines = 0
        self.cancel_seen_at: float | None = None
        self.terminated = False

    def watch(self) -> None:
        """Poll until the trainer exits, heart-beating and relaying cancel requests."""
        while self.process.poll() is None:
            self.beat()
            time.sleep(POLL_SECONDS)
        self.beat(final=True)

    def beat(self, *, final: bool = False) -> None:
        self.ingest_metrics()
        status = read_json(self.run_dir / STATUS_FILE) or {}
        phase = str(status.get("phase") or "")
        now = timezone.now()
        fields: dict[str, Any] = {
            "lease_expires_at": now + timedelta(seconds=settings.TRAINING_LEASE_SECONDS),
            "heartbeat_at": now,
            "log_tail": self.log_tail(),
        }
        if phase:
            fields["phase"] = phase
            fields["message"] = str(status.get("message") or "")[:500]
            fields["step"] = int(status.get("step") or 0)
            fields["max_steps"] = int(status.get("max_steps") or 0)
            fields["eta_seconds"] = status.get("eta_seconds")
        current = TrainingJob.objects.unscoped().filter(pk=self.job.pk).values_list("status", flat=True).first()
        if current == JobStatus.CANCELLING:
            self.relay_cancel()
            fields.pop("message", None)
        elif current == JobStatus.STARTING and phase in ("training", "evaluating", "saving") and not final:
            fields["status"] = JobStatus.RUNNING
        updated = (
            TrainingJob.objects.unscoped()
            .filter(pk=self.job.pk, lease_owner=self.worker, status__in=[JobStatus.STARTING, JobStatus.RUNNING,
                                                                          JobStatus.CANCELLING])
            .update(**fields)
        )  # fmt: skip
        if not updated:
            raise LostLease

    def relay_cancel(self) -> None:
        """Ask the trainer to stop at its next step; SIGTERM its group after the grace period."""
        if self.cancel_seen_at is None:
            self.cancel_seen_at = time.monotonic()
            (self.run_dir / CANCEL_FLAG).write_text("cancelled in the studio\n", encoding="utf-8")
        waited = time.monotonic() - self.cancel_seen_at
        if waited > settings.TRAINING_CANCEL_GRACE_SECONDS and not self.terminated:
            self.terminated = True
            self.stop_process(signal.SIGTERM)
        elif waited > settings.TRAINING_CANCEL_GRACE_SECONDS + 3:
            self.stop_process(signal.SIGKILL)

    def stop_process(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, sig)

    def ingest_metrics(self) -> None:
        """Copy complete new lines of metrics.jsonl into JobMetric (idempotent on (job, seq))."""
        path = self.run_dir / METRICS_FILE
        try:
            with path.open("rb") as source:
                source.seek(self.metrics_offset)
                chunk = source.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]
        if not complete:
            return
        self.metrics_offset += len(complete)
        rows: list[JobMetric] = []
        for line in complete.splitlines():
            self.seen_lines += 1
            if self.seen_lines <= self.metrics_seq:  # already ingested by an earlier attempt
                continue
            try:
                values = json.loads(line)
            except ValueError:
                continue
            rows.append(JobMetric(job_id=self.job.pk, seq=self.seen_lines, step=int(values.get("step") or 0),
                                  values=values))  # fmt: skip
        JobMetric.objects.bulk_create(rows, ignore_conflicts=True)

    def log_tail(self) -> str:
        path = self.run_dir / LOG_FILE
        try:
            with path.open("rb") as source:
                source.seek(max(0, path.stat().st_size - 16_384))
                text = source.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        # The page and the API show the readable log; train.log keeps everything for the operator.
        return "\n".join(readable_log(text).splitlines()[-LOG_TAIL_LINES:])

    # ---- 5. finish --------------------------------------------------------------------------------------

    def finish(self) -> str:
        """Decide the outcome from the trainer's reports and complete the job once."""
        status = read_json(self.run_dir / STATUS_FILE) or {}
        phase = status.get("phase")
        result = read_json(self.run_dir / RESULT_FILE)
        code = self.process.returncode
        if phase == "succeeded" and isinstance(result, dict) and code == 0:
            _complete(self.job, self.worker, JobStatus.SUCCEEDED, result=result)
            return "succeeded"
        if self.cancel_seen_at is not None or phase == "cancelled":
            if self.cancel_seen_at is None:
                # The trainer stopped without being asked: its supervisor check fired, or someone signalled it.
                failure = _unexpected_stop(code)
                _complete(self.job, self.worker, JobStatus.FAILED, failure=failure)
                return "failed"
            _complete(self.job, self.worker, JobStatus.CANCELLED)
            return "cancelled"
        failure = read_json(self.run_dir / FAILURE_FILE)
        if not isinstance(failure, dict) or not failure.get("message"):
            failure = _unexpected_stop(code)
        _complete(self.job, self.worker, JobStatus.FAILED, failure=failure)
        return "failed"


def _unexpected_stop(code: int | None) -> dict[str, str]:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        return {
            "code": "killed",
            "message": f"The trainer was killed by {name}.",
            "suggestion": "SIGKILL usually means the machine's out-of-memory killer: lower the micro-batch or "
            "sequence length, or use LoRA; then clone the job and launch it again.",
        }
    return {
        "code": "error",
        "message": f"The trainer stopped with exit code {code} without saying why.",
        "suggestion": "Read the end of the log below; if it happens again, send the log to your operator.",
    }


def _complete(
    job: TrainingJob,
    worker: str,
    status: str,
    *,
    result: dict[str, Any] | None = None,
    failure: dict[str, Any] | None = None,
) -> bool:
    """Finish the job once (guarded by the lease); registers the model version on success."""
    from training_app import registry

    now = timezone.now()
    with transaction.atomic():
        locked = (
            TrainingJob.objects.unscoped()
            .select_for_update(of=("self",))
            .filter(pk=job.pk, lease_owner=worker)
            .exclude(status__in=[JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
            .select_related("team", "base_model", "dataset_version__dataset", "created_by")
            .first()
        )
        if locked is None:
            return False
        locked.status, locked.finished_at = status, now
        locked.lease_owner, locked.lease_expires_at = "", None
        locked.eta_seconds = 0 if status == JobStatus.SUCCEEDED else None
        if status == JobStatus.SUCCEEDED and result is not None:
            locked.result = result
            locked.step = int(result.get("steps") or locked.step)
            locked.max_steps = max(locked.max_steps, locked.step)
            locked.phase, locked.message = "succeeded", "the model is ready"
        elif status == JobStatus.CANCELLED:
            locked.phase, locked.message = "cancelled", "cancelled"
        elif failure is not None:
            locked.failure = {key: str(value)[:4000] for key, value in failure.items() if value is not None}
            locked.phase, locked.message = "failed", str(failure.get("message", ""))[:500]
        locked.save()
        # "job.cancelled" is the person's request (jobs.cancel_job); the run stopping is "job.stopped".
        outcome = "stopped" if status == JobStatus.CANCELLED else status
        audit.record(f"job.{outcome}", team=locked.team, target=locked, worker=worker)
        jobs.record_job_spend(locked)
        if status == JobStatus.SUCCEEDED and result is not None:
            registry.register_from_job(locked, result)
    return True
