"""Celery tasks of the training app: thin wrappers around ``runner`` and ``jobs``."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from training_app import hub, jobs, runner


@shared_task(acks_late=True)
def run_training_job(job_id: int) -> str:
    """On a pool's queue (``gpu`` by default): claim the job and supervise its trainer to the end."""
    return runner.run_job(job_id)


@shared_task
def download_base_model(model_id: int) -> None:
    """On queue ``default``: fetch a Hub model's safetensors files with progress, then register the folder."""
    hub.download(model_id)


@shared_task
def reap_training_jobs() -> dict[str, Any]:
    """Beat job: requeue jobs whose worker died (lease expired) and send jobs that were never sent."""
    return jobs.reap()
