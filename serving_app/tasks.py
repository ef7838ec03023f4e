"""Periodic serving chores run by Celery beat."""

from __future__ import annotations

from celery import shared_task

from serving_app import inference


@shared_task(name="serving_app.tasks.purge_prompt_logs")
def purge_prompt_logs() -> int:
    """Delete stored playground prompts past their team's retention period."""
    return inference.purge_prompt_logs()
