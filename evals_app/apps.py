from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db import transaction
from django.db.models.signals import post_save


class EvalsAppConfig(AppConfig):
    name = "evals_app"
    verbose_name = "Evaluation"

    def ready(self) -> None:
        from evals_app import gates
        from serving_app import releases
        from studio.celery import register_periodic_task

        # Deployments' gates (eval suites, the forgetting check, the bias probe) are evaluated here.
        releases.register_gate_checker(gates.checks_for)
        # Retrains follow their job, then their gate; new data starts them where a deployment asks for it.
        register_periodic_task("evals-maintenance", "evals_app.tasks.maintenance_tick", every_seconds=60)
        # training_app may not import evals_app (the apps stack in layers): the check after training hangs here.
        post_save.connect(
            version_registered, sender="training_app.ModelVersion", dispatch_uid="evals_forgetting_after_training"
        )


def version_registered(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    """A training job registered a model version: check it for forgetting once the version is committed."""
    if not created or instance.job_id is None or kwargs.get("raw"):
        return
    from evals_app.forgetting import start_after_training

    version_id = instance.pk
    transaction.on_commit(lambda: start_after_training(version_id))
