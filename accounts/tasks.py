"""Celery tasks of the accounts app: thin wrappers around services."""

from __future__ import annotations

from celery import shared_task

from accounts import services


@shared_task
def purge_expired_invitations(older_than_days: int = 30) -> int:
    """Beat job: forget invitation links that expired unused long ago; returns how many went."""
    return services.purge_expired_invitations(older_than_days=older_than_days)
