"""Training jobs end to end: a real Celery worker on Redis and PostgreSQL runs the real trainer on CPU.

Five runs go through the whole stack (the starter model, TRL, PEFT, DeepSpeed ZeRO-2 through
``accelerate launch``): the happy path, KTO on feedback rows, cancel, a worker killed mid-run that resumes
from its checkpoint, and a duplicate delivery. They check what a user would see: the job's status, its metrics,
the registered model version (which must load), the audit trail.

What the trainer does with each stage, method and failure (full fine-tune with ZeRO-3, DPO, continued
pretraining, two processes, out of memory, disk full) is proven in tests/test_training_engine.py; here
the runner's part of those cases runs against a stand-in trainer that writes the reports a real one
would (``fake_trainer``): the stage reaching run.json, the launcher line for a multi-device pool, a
trainer's failure report reaching the job, a full model registered as such. Leases, reaping and deleted
inputs need no trainer at all.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from accounts.models import AuditEvent
from accounts.permissions import resolve_access
from tests.conftest import start_worker, worker_env
from tests.factories import ready_version, sample_version, starter_like_base_model
from training_app import jobs, runner
from training_app.engine.config import RunConfig
from training_app.models import JobMetric, JobStatus, ModelVersion, TrainingJob
from training_app.tasks import run_training_job

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
# A real trainer under a real worker: minutes on a busy 2-core machine, the first one building DeepSpeed's op.
REAL_RUN = pytest.mark.timeout(900)

# Small, fast runs that still learn: the sample rows at sequence length 128, a high learning rate.
FAST = {
    "max_steps": 8,
    "max_seq_length": 128,
    "per_device_batch_size": 4,
    "save_steps": 4,
    "learning_rate": 1e-3,
    "warmup_ratio": 0.0,
    "eval_split": 0.15,
}


def launch(user: Any, version: Any, base: Any, *, pool: str = "cpu", **values: Any) -> TrainingJob:
    access = resolve_access(user, version.team.slug)
    return jobs.create_job(
        access=access,
        name=values.pop("name", "test run"),
        base_model=base,
        dataset_version=version,
        pool=pool,
        values={**FAST, **values},
    )


def eventually(condition: Callable[[], Any], *, timeout: float, what: str, poll: float = 0.2) -> Any:
    """Poll ``condition`` until it holds (returning its value); fail naming ``what`` after ``timeout`` s.

    The timeout only keeps a broken run from hanging the suite; nothing is asserted about how long it took.
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(poll)
    return value


def wait_for(job: TrainingJob, predicate: Any, *, timeout: float = 300, what: str = "the job") -> TrainingJob:
    def reached() -> bool:
        job.refresh_from_db()
        return bool(predicate(job))

    try:
        eventually(reached, timeout=timeout, what=what)
    except AssertionError as error:
        raise AssertionError(f"{error}: {job.status} {job.message}\n{job.log_tail}") from None
    return job


def wait_finished(job: TrainingJob, timeout: float = 300) -> TrainingJob:
    return wait_for(job, lambda j: j.is_finished, timeout=timeout, what="finishing")


def losses(job: TrainingJob) -> list[float]:
    return [value for _, value in jobs.metric_series(job, names=("loss",))["loss"]]


# Four chat rows repeated: the held-out rows are copies of training rows, so eight steps at a high learning
# rate must lower the loss on them by a wide margin, whatever the seed (a single step's loss is noise).
LEARNABLE_ROWS = [
    {"messages": [{"role": "user", "content": f"What colour is the {thing}?"},
                  {"role": "assistant", "content": f"The {thing} is {colour}."}]}
    for thing, colour in [("sky", "blue"), ("grass", "green"), ("sun", "yellow"), ("snow", "white")]
] * 16  # fmt: skip
LEARNED_MARGIN = 0.8  # the evaluation loss after training is at most 80% of the loss before
# At the FAST rate of 1e-3 the ratio measured 0.77 for seeds 42, 7 and 1234 (too close to the margin); at
# 3e-3 it measured 0.54-0.55, so the check holds by construction, not by luck.
LEARNABLE_RATE = 3e-3


def learnable_version(user: Any) -> Any:
    return ready_version(user.memberships.first().team, user, LEARNABLE_ROWS, kind="chat", name="Colours")


def assert_learned(job: TrainingJob) -> None:
    """The evaluation loss on rows the run trained on fell by a clear margin (measured before and after)."""
    before, after = job.result["eval_loss_before"], job.result["eval_loss_after"]
    assert after < LEARNED_MARGIN * before, job.result


def assert_loadable(version: ModelVersion) -> None:
    """The artifact loads with plain transformers/PEFT from its safetensors files and generates."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(version.path)
    assert list(folder.glob("*.safetensors")), list(folder.iterdir())
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model: Any
    if version.kind == ModelVersion.Kind.ADAPTER:
        assert version.base_model is not None
        base = AutoModelForCausalLM.from_pretrained(version.base_model.path, use_safetensors=True)
        model = PeftModel.from_pretrained(base, folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    inputs = tokenizer("The river", return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


def trainer_processes(job: TrainingJob) -> list[int]:
    """Processes whose command line mentions this job's folder (trainer, launcher, ranks)."""
    marker = str(job.folder()).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


# ---- the happy path through the whole stack -------------------------------------------------------------


@REAL_RUN
def test_lora_sft_with_zero2_produces_a_loadable_adapter(celery_worker: None, alice: Any, starter_model: Any) -> None:
    version = learnable_version(alice)
    job = wait_finished(
        launch(alice, version, starter_model, deepspeed="zero2", name="chat helper", learning_rate=LEARNABLE_RATE)
    )

    assert job.status == JobStatus.SUCCEEDED, (job.failure, job.log_tail)
    assert job.step == job.max_steps == 8
    assert job.result["hardware"]["zero_stage"] == 2
    assert_learned(job)
    model_version = job.model_version
    assert (model_version.name, model_version.number, model_version.kind) == ("chat helper", 1, "adapter")
    assert model_version.lineage["dataset_versions"][0]["content_hash"] == version.content_hash
    assert model_version.lineage["base_model"]["name"] == "atelier-starter"
    assert model_version.metrics["generations"], "base vs tuned answers on held-out prompts"
    assert_loadable(model_version)
    actions = set(AuditEvent.objects.for_team(version.team).values_list("action", flat=True))
    assert {"job.launched", "job.succeeded", "model_version.registered"} <= actions


# Answers labelled desirable (a colour) or undesirable (a refusal), two of one for each of the other: KTO
# balances the weights from those counts.
FEEDBACK_ROWS = [
    {"prompt": [{"role": "user", "content": f"What colour is the {thing}?"}],
     "completion": [{"role": "assistant", "content": f"The {thing} is {colour}." if good else "I will not say."}],
     "label": good}
    for thing, colour in [("sky", "blue"), ("grass", "green"), ("sun", "yellow"), ("snow", "white")]
    for good in (True, True, False)
] * 4  # fmt: skip


@REAL_RUN
def test_kto_on_feedback_rows_produces_a_loadable_adapter(celery_worker: None, alice: Any, starter_model: Any) -> None:
    team = alice.memberships.first().team
    version = ready_version(team, alice, FEEDBACK_ROWS, kind="feedback", name="Colour feedback")
    job = wait_finished(launch(alice, version, starter_model, stage="kto", name="kto helper", learning_rate=5e-3))

    assert job.status == JobStatus.SUCCEEDED, (job.failure, job.log_tail)
    assert job.result["stage"] == "kto" and job.result["perplexity_after"] is None
    assert losses(job)[-1] < losses(job)[0]
    assert job.model_version.kind == ModelVersion.Kind.ADAPTER
    assert_loadable(job.model_version)


# ---- cancel, failures ------------------------------------------------------------------------------------


@REAL_RUN
def test_cancel_during_training_stops_the_run_and_leaves_no_process(
    celery_worker: None, alice: Any, starter_model: Any
) -> None:
    version = sample_version(alice.memberships.first().team, alice, "chat")
    job = launch(alice, version, starter_model, max_steps=400, save_steps=1000)
    wait_for(job, lambda j: j.status == JobStatus.RUNNING and j.step >= 2, timeout=180, what="training")

    jobs.cancel_job(access=resolve_access(alice, "acme"), job=job)
    job = wait_finished(job, timeout=120)
    assert job.status == JobStatus.CANCELLED
    assert job.step < 400
    eventually(lambda: trainer_processes(job) == [], timeout=30, what="the trainer processes ending")
    assert not hasattr(job, "model_version") or not ModelVersion.objects.for_team(version.team).exists()
    assert AuditEvent.objects.for_team(version.team).filter(action="job.cancelled").count() == 1


# ---- the runner around a stand-in trainer ----------------------------------------------------------------

# Writes the reports a trainer leaves in its run folder (reporting.py's files), from a JSON plan:
# {"status": {...}, "failure": {...} | null, "result": {...} | null, "exit": code}.
FAKE_TRAINER = """
import json, sys
from pathlib import Path
run_dir, plan = Path(sys.argv[1]), json.loads(sys.argv[2])
for name in ("status", "failure", "result"):
    if plan.get(name) is not None:
        (run_dir / (name + ".json")).write_text(json.dumps(plan[name]))
sys.exit(plan["exit"])
"""


@pytest.fixture
def fake_trainer(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Make the runner launch a stand-in that writes the given reports instead of training."""

    def plan(**reports: Any) -> None:
        def command(config: RunConfig, processes: int) -> list[str]:
            return [sys.executable, "-c", FAKE_TRAINER, config.run_dir, json.dumps(reports)]

        monkeypatch.setattr(runner, "launch_command", command)

    return plan


@pytest.fixture
def model_folder_row(tmp_path: Path) -> Any:
    """A base model row whose folder exists (the runner checks it is there; the stand-in reads nothing)."""
    base = starter_like_base_model()
    base.path = str(tmp_path / "model")
    Path(base.path).mkdir()
    base.save(update_fields=["path"])
    return base


@pytest.mark.parametrize(("sample", "stage"), [("preference", "dpo"), ("raw_text", "pretrain"), ("chat", "sft")])
def test_the_stage_and_the_datasets_kind_reach_the_trainers_config(
    alice: Any, model_folder_row: Any, sample: str, stage: str
) -> None:
    version = sample_version(alice.memberships.first().team, alice, sample)
    job = launch(alice, version, model_folder_row, pool="idle", stage=stage)

    config = runner.prepare(job)

    assert (config.stage, config.kind) == (stage, version.kind)
    assert RunConfig.load(Path(config.run_dir) / "run.json").stage == stage


def test_a_multi_device_pool_launches_one_process_per_device_through_accelerate(tmp_path: Path) -> None:
    config = RunConfig.from_dict({"model_path": "m", "train_path": "t", "output_dir": str(tmp_path / "out"),
                                  "run_dir": str(tmp_path / "run"), "kind": "chat", "deepspeed": "zero2"})  # fmt: skip

    command = runner.launch_command(config, processes=2)

    assert command[1:3] == ["-m", "accelerate.commands.launch"] and "--use_deepspeed" in command
    assert command[command.index("--num_processes") + 1] == "2"


def test_a_cpu_trainer_shares_the_threads_its_worker_was_given_among_its_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "4")

    env = runner._trainer_environment(TrainingJob(pool="cpu-2"), processes=2)

    assert env["OMP_NUM_THREADS"] == "2"


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs a machine with more CPUs than the worker may use")
def test_a_cpu_trainer_uses_the_cpus_its_worker_may_run_on_not_the_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # as ``taskset -c 0`` or a container's CPU set would start the worker
    try:
        env = runner._trainer_environment(TrainingJob(pool="cpu"), processes=1)
    finally:
        os.sched_setaffinity(0, allowed)

    assert env["OMP_NUM_THREADS"] == "1"


def test_the_trainers_failure_report_becomes_the_jobs_failure(
    alice: Any, model_folder_row: Any, fake_trainer: Callable[..., None]
) -> None:
    oom = {"code": "out_of_memory", "message": "The GPU ran out of memory during training.",
           "suggestion": "Use QLoRA, or micro-batch 2 with gradient accumulation 2."}  # fmt: skip
    fake_trainer(status={"phase": "failed", "step": 2, "max_steps": 8}, failure=oom, exit=1)
    version = sample_version(alice.memberships.first().team, alice, "chat")
    job = launch(alice, version, model_folder_row, pool="idle")

    assert runner.run_job(job.pk, worker="test-worker") == "failed"
    job.refresh_from_db()
    assert (job.status, job.failure, job.message) == (JobStatus.FAILED, oom, oom["message"])


def test_a_full_fine_tune_registers_a_full_model_version(
    alice: Any, model_folder_row: Any, fake_trainer: Callable[..., None], tmp_path: Path
) -> None:
    model_out = str(tmp_path / "model-out")
    result: dict[str, Any] = {"steps": 8, "artifacts": {"model": model_out}, "hardware": {"zero_stage": 3}}
    fake_trainer(status={"phase": "succeeded", "step": 8, "max_steps": 8}, result=result, exit=0)
    version = sample_version(alice.memberships.first().team, alice, "instruction")
    job = launch(alice, version, model_folder_row, pool="idle", method="full", deepspeed="zero3")

    assert runner.run_job(job.pk, worker="test-worker") == "succeeded"
    model_version = ModelVersion.objects.for_team(version.team).get(job=job)
    assert (model_version.kind, model_version.path) == (ModelVersion.Kind.FULL, result["artifacts"]["model"])


def test_a_dataset_deleted_after_launch_fails_the_job_plainly(alice: Any, starter_model: Any) -> None:
    version = sample_version(alice.memberships.first().team, alice, "chat")
    job = launch(alice, version, starter_model, pool="idle")
    version.dataset.delete()

    assert runner.run_job(job.pk, worker="test-worker") == "failed"
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.failure["code"] == "missing_file"
    assert job.failure["message"] == "The dataset version of Sample chat was deleted after the job was queued."
    assert "Clone the job" in job.failure["suggestion"]


def test_a_base_model_deleted_after_launch_fails_the_job_plainly(
    alice: Any, starter_model: Any, tmp_path: Path
) -> None:
    version = sample_version(alice.memberships.first().team, alice, "chat")
    job = launch(alice, version, starter_model, pool="idle")
    starter_model.delete()

    assert runner.run_job(job.pk, worker="test-worker") == "failed"
    job.refresh_from_db()
    assert job.failure["message"] == "The base model atelier-starter was deleted after the job was queued."


def test_settings_the_trainer_refuses_fail_the_job_with_field_messages(alice: Any, starter_model: Any) -> None:
    """A config that slipped past the form (edited in the database) is still refused by the trainer."""
    version = sample_version(alice.memberships.first().team, alice, "chat")
    job = launch(alice, version, starter_model, pool="idle")
    TrainingJob.objects.for_team(version.team).filter(pk=job.pk).update(config={**job.config, "learning_rate": -1.0})

    assert runner.run_job(job.pk, worker="test-worker") == "failed"
    job.refresh_from_db()
    assert job.failure["code"] == "bad_hyperparameters"
    assert "learning_rate: must be a positive number" in job.failure["message"]


# ---- delivery and leases ---------------------------------------------------------------------------------


def test_a_second_delivery_of_the_same_job_does_nothing(alice: Any, starter_model: Any) -> None:
    version = sample_version(alice.memberships.first().team, alice, "chat")
    job = launch(alice, version, starter_model, pool="idle")

    first = runner.claim(job.pk, "worker-a")
    second = runner.claim(job.pk, "worker-b")

    assert first is not None and second is None
    job.refresh_from_db()
    assert (job.status, job.lease_owner, job.attempts) == (JobStatus.STARTING, "worker-a", 1)
    assert run_training_job.run(job.pk) == "not claimed"


@REAL_RUN
def test_duplicate_delivery_through_the_broker_runs_the_job_once(
    celery_worker: None, alice: Any, starter_model: Any
) -> None:
    version = sample_version(alice.memberships.first().team, alice, "chat")
    job = launch(alice, version, starter_model, max_steps=4)
    duplicate = run_training_job.apply_async(args=[job.pk], queue="gpu")

    job = wait_finished(job)
    assert duplicate.get(timeout=120) in {"not claimed", "succeeded"}
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
    assert ModelVersion.objects.for_team(version.team).count() == 1
    assert AuditEvent.objects.for_team(version.team).filter(action="job.succeeded").count() == 1


def test_an_expired_lease_is_requeued_and_too_many_attempts_fail(alice: Any, starter_model: Any) -> None:
    version = sample_version(alice.memberships.first().team, alice, "chat")
    job = launch(alice, version, starter_model, pool="idle")
    runner.claim(job.pk, "dead-worker")
    later = timezone.now() + timedelta(seconds=settings.TRAINING_LEASE_SECONDS + 1)

    assert jobs.reap(now=later)["requeued"] == 1
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.lease_owner == "" and job.dispatched_at is not None
    assert "dead-worker" in job.message

    outcomes = []
    for _ in range(2, settings.TRAINING_MAX_ATTEMPTS + 1):  # each later attempt's worker dies as well
        assert runner.claim(job.pk, "dead-worker") is not None
        outcomes.append(jobs.reap(now=later))
    assert [o["requeued"] for o in outcomes[:-1]] == [1] * (settings.TRAINING_MAX_ATTEMPTS - 2)
    assert outcomes[-1]["failed"] == 1
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.failure["code"] == "worker_lost"


def test_a_job_whose_enqueue_was_lost_is_sent_by_the_reaper(alice: Any, starter_model: Any) -> None:
    version = sample_version(alice.memberships.first().team, alice, "chat")
    job = launch(alice, version, starter_model, pool="idle")
    TrainingJob.objects.for_team(version.team).filter(pk=job.pk).update(dispatched_at=None)

    assert jobs.reap(now=timezone.now() + timedelta(minutes=5))["dispatched"] == 1
    job.refresh_from_db()
    assert job.dispatched_at is not None


@REAL_RUN
def test_killed_worker_resumes_from_its_checkpoint_and_finishes_once(
    alice: Any, starter_model: Any, tmp_path: Path
) -> None:
    version = sample_version(alice.memberships.first().team, alice, "chat")
    env = worker_env()
    first = start_worker(env, queues="gpu-kill", log=tmp_path / "first.log", name="doomed")
    second = None
    try:
        job = launch(alice, version, starter_model, pool="cpu-kill", max_steps=20, save_steps=4, name="resumed")
        wait_for(job, lambda j: j.step >= 6, timeout=240, what="a checkpoint")
        checkpoints = sorted((job.folder() / "output").glob("checkpoint-*"))
        assert checkpoints, "a complete checkpoint exists before the kill"

        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        # The trainer notices its supervisor is gone and stops at its next step: no orphan keeps training.
        eventually(lambda: trainer_processes(job) == [], timeout=30, what="the orphaned trainer stopping")

        second = start_worker(env, queues="gpu-kill", log=tmp_path / "second.log", name="rescuer")
        # The beat reaper's work, called here: once the dead worker's lease expires the job is requeued.
        eventually(
            lambda: jobs.reap()["requeued"], timeout=settings.TRAINING_LEASE_SECONDS + 30, what="requeue by the reaper"
        )
        job = wait_finished(job, timeout=300)

        assert job.status == JobStatus.SUCCEEDED, (job.failure, job.log_tail)
        assert job.attempts == 2
        assert job.result["resumed_from"], "the second attempt resumed from a checkpoint"
        assert job.result["steps"] == 20
        assert ModelVersion.objects.for_team(version.team).filter(job=job).count() == 1
        assert AuditEvent.objects.for_team(version.team).filter(action="job.succeeded").count() == 1
        assert AuditEvent.objects.for_team(version.team).filter(action="job.requeued_by_reaper").count() == 1
        # The metrics of the steps logged again after the resume replace the earlier ones in the charts.
        steps = [step for step, _ in jobs.metric_series(job, names=("loss",))["loss"]]
        assert steps == sorted(set(steps)) and steps[-1] == 20
        assert JobMetric.objects.filter(job=job).count() >= 20
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


def test_a_rolled_back_launch_enqueues_nothing_and_a_committed_one_is_sent(alice: Any, starter_model: Any) -> None:
    import redis
    from django.db import transaction

    version = sample_version(alice.memberships.first().team, alice, "chat")
    queue = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue.delete("gpu-idle")

    with pytest.raises(RuntimeError), transaction.atomic():
        launch(alice, version, starter_model, pool="idle", name="rolled back")
        raise RuntimeError("the request failed after the job was created")
    assert not TrainingJob.objects.for_team(version.team).exists()
    assert queue.llen("gpu-idle") == 0

    job = launch(alice, version, starter_model, pool="idle", name="committed")
    assert queue.llen("gpu-idle") == 1
    job.refresh_from_db()
    assert job.dispatched_at is not None
