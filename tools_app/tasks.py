"""Periodic tools chores run by Celery beat (on the studio's worker, not the tools worker)."""

from __future__ import annotations

from celery import shared_task

from tools_app import services


@shared_task(name="tools_app.tasks.purge_tool_results")
def purge_tool_results() -> int:
    """Delete kept tool results past their team's retention period."""
    return services.purge_tool_results()
