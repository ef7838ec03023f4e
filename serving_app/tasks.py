"""Periodic serving chores run by Celery beat."""

from __future__ import annotations

from celery import shared_task

from serving_app import completions, costs, inference


@shared_task(name="serving_app.tasks.purge_prompt_logs")
def purge_prompt_logs() -> int:
    """Delete stored playground prompts past their team's retention period."""
    return inference.purge_prompt_logs()


@shared_task(name="serving_app.tasks.purge_stored_completions")
def purge_stored_completions() -> int:
    """Delete deployments' stored completions past their retention period."""
    return completions.purge_expired()


@shared_task(name="serving_app.tasks.record_serving_spend")
def record_serving_spend() -> int:
    """Write each deployment's GPU time and tokens served for yesterday and today to the spend ledger."""
    return costs.record_serving_spend()
