"""Celery tasks of the evals app (queue ``default``): thin wrappers around services."""

from __future__ import annotations

from celery import shared_task

from evals_app import services


@shared_task(name="evals_app.tasks.run_eval_task")
def run_eval_task(run_id: int) -> None:
    """Answer, grade and summarize one queued eval run (idempotent: a second delivery does nothing)."""
    services.run_eval(run_id)
