from django.apps import AppConfig


class ServingAppConfig(AppConfig):
    name = "serving_app"
    verbose_name = "Serving"

    def ready(self) -> None:
        from studio.celery import register_periodic_task

        # Prompt retention is counted in days: checking hourly keeps nothing more than an hour too long.
        register_periodic_task("purge-prompt-logs", "serving_app.tasks.purge_prompt_logs", every_seconds=3600)
