from django.apps import AppConfig


class TrainingAppConfig(AppConfig):
    name = "training_app"
    verbose_name = "Training"

    def ready(self) -> None:
        from django.conf import settings

        from studio.celery import register_periodic_task

        # Often enough that a job whose worker died is requeued within its lease + this period.
        register_periodic_task(
            "reap-training-jobs",
            "training_app.tasks.reap_training_jobs",
            every_seconds=min(30, settings.TRAINING_LEASE_SECONDS),
        )
