"""Training jobs end to end: a real Celery worker on Redis and PostgreSQL runs the real trainer on CPU.

Each job fine-tunes the studio's starter model on one of the sample datasets for a few steps (TRL,
PEFT, DeepSpeed ZeRO-2/3 through ``accelerate launch``), and the tests check what a user would see:
the job's status, its metrics, the registered model version (which must load), the audit trail. The
reliability cases of SECURITY.md are here too: cancel, a worker killed mid-run, duplicate delivery,
lease expiry, injected out-of-memory and disk-full failures, deleted inputs.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.utils import timezone

from accounts.models import AuditEvent
from accounts.permissions import resolve_access
from tests.conftest import start_worker, worker_env
from tests.factories import sample_version
from training_app import jobs, runner
from training_app.models import JobMetric, JobStatus, ModelVersion, TrainingJob
from training_app.tasks import run_training_job

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

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


def wait_for(job: TrainingJob, predicate: Any, *, timeout: float = 300, what: str = "the job") -> TrainingJob:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if predicate(job):
            return job
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout} s: {job.status} {job.message}\n{job.log_tail}")


def wait_finished(job: TrainingJob, timeout: float = 300) -> TrainingJob:
    return wait_for(job, lambda j: j.is_finished, timeout=timeout, what="finishing")


def losses(job: TrainingJob) -> list[float]:
    return [value for _, value in jobs.metric_series(job, names=("loss",))["loss"]]


def assert_learned(job: TrainingJob) -> None:
    """The training loss went down, and so did the validation loss measured before and after."""
    series = losses(job)
    assert len(series) >= 4, series
    assert sum(series[-2:]) / 2 < sum(series[:2]) / 2, series
    assert job.result["eval_loss_after"] < job.result["eval_loss_before"], job.result


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


@pytest.fixture
def inject(shared_media_root: Path) -> Any:
    """Write the failure-injection file the test worker's trainers read; removed afterwards."""
    path = shared_media_root / "inject-failure.json"

    def write(kind: str, **options: Any) -> None:
        path.write_text(json.dumps({"kind": kind, **options}), encoding="utf-8")

    yield write
    path.unlink(missing_ok=True)


# ---- the four stages and methods -------------------------------------------------------------------------


def test_lora_sft_with_zero2_produces_a_loadable_adapter(celery_worker: None, alice: Any, starter_model: Any) -> None:
    version = sample_version(alice.memberships.first().team, alice, "chat")
    job = wait_finished(launch(alice, version, starter_model, deepspeed="zero2", name="chat helper"))

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


def test_full_fine_tune_with_zero3_produces_a_loadable_model(
    celery_worker: None, alice: Any, starter_model: Any
) -> None:
    version = sample_version(alice.memberships.first().team, alice, "instruction")
    job = wait_finished(launch(alice, version, starter_model, method="full", deepspeed="zero3", learning_rate=5e-4))

    assert job.status == JobStatus.SUCCEEDED, (job.failure, job.log_tail)
    assert job.result["hardware"]["zero_stage"] == 3
    assert_learned(job)
    assert job.model_version.kind == ModelVersion.Kind.FULL
    assert_loadable(job.model_version)


def test_dpo_on_preference_data(celery_worker: None, alice: Any, starter_model: Any) -> None:
    version = sample_version(alice.memberships.first().team, alice, "preference")
    job = wait_finished(launch(alice, version, starter_model, stage="dpo", learning_rate=5e-4))

    assert job.status == JobStatus.SUCCEEDED, (job.failure, job.log_tail)
    series = losses(job)
    # DPO's loss starts at log(2) (the policy equals the reference) and falls as chosen answers win.
    assert series[0] == pytest.approx(0.6931, abs=0.01)
    assert min(series[-3:]) < series[0], series
    assert_loadable(job.model_version)


def test_continued_pretraining_on_raw_text(celery_worker: None, alice: Any, starter_model: Any) -> None:
    version = sample_version(alice.memberships.first().team, alice, "raw_text")
    job = wait_finished(launch(alice, version, starter_model, stage="pretrain", packing=True))

    assert job.status == JobStatus.SUCCEEDED, (job.failure, job.log_tail)
    assert_learned(job)
    assert_loadable(job.model_version)


def test_two_process_run_produces_the_same_kind_of_artifact(
    celery_worker: None, alice: Any, starter_model: Any
) -> None:
    version = sample_version(alice.memberships.first().team, alice, "chat")
    job = wait_finished(launch(alice, version, starter_model, pool="cpu-2", deepspeed="zero2", max_steps=6))

    assert job.status == JobStatus.SUCCEEDED, (job.failure, job.log_tail)
    assert job.result["hardware"]["processes"] == 2
    assert job.model_version.kind == ModelVersion.Kind.ADAPTER
    assert_loadable(job.model_version)


# ---- cancel, failures ------------------------------------------------------------------------------------


def test_cancel_during_training_stops_within_ten_seconds_and_leaves_no_process(
    celery_worker: None, alice: Any, starter_model: Any
) -> None:
    version = sample_version(alice.memberships.first().team, alice, "chat")
    job = launch(alice, version, starter_model, max_steps=400, save_steps=1000)
    wait_for(job, lambda j: j.status == JobStatus.RUNNING and j.step >= 2, timeout=180, what="training")

    asked = time.monotonic()
    jobs.cancel_job(access=resolve_access(alice, "acme"), job=job)
    job = wait_finished(job, timeout=10)
    assert job.status == JobStatus.CANCELLED
    assert time.monotonic() - asked < 10
    assert job.step < 400
    time.sleep(1)
    assert trainer_processes(job) == []
    assert not hasattr(job, "model_version") or not ModelVersion.objects.for_team(version.team).exists()
    assert AuditEvent.objects.for_team(version.team).filter(action="job.cancelled").count() == 1


def test_injected_out_of_memory_fails_with_the_documented_message(
    celery_worker: None, alice: Any, starter_model: Any, inject: Any
) -> None:
    inject("oom", after_steps=2)
    version = sample_version(alice.memberships.first().team, alice, "chat")
    job = wait_finished(launch(alice, version, starter_model))

    assert job.status == JobStatus.FAILED
    assert job.failure["code"] == "out_of_memory"
    assert job.failure["message"] == "The GPU ran out of memory during training."
    assert "QLoRA" in job.failure["suggestion"] and "micro-batch 2" in job.failure["suggestion"]
    assert job.message == job.failure["message"]


def test_injected_disk_full_fails_with_the_documented_message(
    celery_worker: None, alice: Any, starter_model: Any, inject: Any
) -> None:
    inject("disk_full")
    version = sample_version(alice.memberships.first().team, alice, "chat")
    job = wait_finished(launch(alice, version, starter_model))

    assert job.status == JobStatus.FAILED
    assert job.failure["code"] == "disk_full"
    assert job.failure["message"] == "The disk holding this run's checkpoints and model files is full."
    assert "Free space" in job.failure["suggestion"]


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
        deadline = time.monotonic() + 30
        while trainer_processes(job) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert trainer_processes(job) == []

        second = start_worker(env, queues="gpu-kill", log=tmp_path / "second.log", name="rescuer")
        # The beat reaper's work, called here: once the dead worker's lease expires the job is requeued.
        deadline = time.monotonic() + settings.TRAINING_LEASE_SECONDS + 30
        while jobs.reap()["requeued"] == 0:
            assert time.monotonic() < deadline, "the job was not requeued after its lease expired"
            time.sleep(1)
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
