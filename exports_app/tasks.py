"""Celery tasks of the exports app: thin wrappers around ``exports_app.services``."""

from __future__ import annotations

from celery import shared_task

from exports_app import services


@shared_task(name="exports_app.tasks.export_task")
def export_task(export_id: int) -> None:
    """Make one queued export (idempotent: a second delivery does nothing)."""
    services.run(export_id)
