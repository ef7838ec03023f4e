"""Celery: the real worker round-trips a task through Redis, and the worker never imports torch."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from accounts.models import Invitation, hash_secret
from accounts.tasks import purge_expired_invitations
from studio.celery import app

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_worker_runs_a_task_through_redis_against_postgres(celery_worker: None, acme: Any, alice: Any) -> None:
    long_ago = timezone.now() - timedelta(days=60)
    for n in range(2):
        Invitation.objects.create(team=acme, role="member", token_hash=hash_secret(f"old-{n}"), expires_at=long_ago)
    Invitation.objects.create(
        team=acme, role="member", token_hash=hash_secret("fresh"), expires_at=timezone.now() + timedelta(days=1)
    )
    result = purge_expired_invitations.delay()
    assert result.get(timeout=60) == 2
    assert list(Invitation.objects.for_team(acme).values_list("token_hash", flat=True)) == [hash_secret("fresh")]


def test_queues_and_delivery_guarantees() -> None:
    assert {queue.name for queue in app.conf.task_queues} == {"default", "gpu"}
    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options["visibility_timeout"] >= 6 * 3600


def test_beat_schedule_includes_the_invitation_purge() -> None:
    entry = app.conf.beat_schedule["purge-expired-invitations"]
    assert entry["task"] == "accounts.tasks.purge_expired_invitations"
    assert entry["task"] in app.tasks


def test_worker_process_never_imports_torch(tmp_path: Path) -> None:
    """Loading the Celery app and every task module (as a worker does) leaves torch unimported."""
    code = (
        "import sys, django; django.setup();"
        "from studio.celery import app; app.loader.import_default_modules();"
        "assert app.tasks, 'no tasks loaded';"
        "print('torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "DJANGO_SETTINGS_MODULE": "studio.settings",
            "PATH": "/usr/bin:/bin",
            "ATELIER_DATA_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
