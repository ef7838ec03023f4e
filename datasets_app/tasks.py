"""Celery tasks of the datasets app (queue ``default``): thin wrappers around services."""

from __future__ import annotations

from celery import shared_task

from datasets_app import services


@shared_task
def validate_version(version_id: int) -> None:
    """Validate, normalize and describe one uploaded dataset version (idempotent)."""
    services.run_validation(version_id)


@shared_task
def curate_version(version_id: int) -> None:
    """Apply one curation step, making the rows, hash and statistics of a new version (idempotent)."""
    services.run_curation(version_id)
