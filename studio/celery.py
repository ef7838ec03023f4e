"""The Celery application: queue ``default`` for CPU work, queue ``gpu`` for training jobs.

The worker process never imports torch (CUDA cannot be initialised in a forked child): GPU work runs
in a trainer subprocess that the ``gpu`` task supervises.
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")

app = Celery("studio")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_queues=(Queue("default"), Queue("gpu")),
    task_default_queue="default",
    # A task is acknowledged only once it has finished, so a crashed worker's task is delivered again;
    # tasks claim their work in the database, which makes that second delivery harmless.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_track_started=True,
    broker_connection_retry_on_startup=True,
    result_expires=24 * 3600,
    beat_schedule={},
)
app.autodiscover_tasks()


def register_periodic_task(name: str, task: str, every_seconds: float) -> None:
    """Add ``task`` to the beat schedule; apps call this from their ``AppConfig.ready``."""
    app.conf.beat_schedule[name] = {"task": task, "schedule": every_seconds}
