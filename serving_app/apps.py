from django.apps import AppConfig


class ServingAppConfig(AppConfig):
    name = "serving_app"
    verbose_name = "Serving"

    def ready(self) -> None:
        from accounts import key_scopes
        from serving_app.deployments import deployments_of_key, visible_deployments
        from studio.celery import register_periodic_task

        # Team API keys are scoped to deployments: tell accounts' key pages and API how to list them.
        key_scopes.register(key_scopes.KeyScopes(choices=visible_deployments, of_key=deployments_of_key))

        # Prompt retention is counted in days: checking hourly keeps nothing more than an hour too long.
        register_periodic_task("purge-prompt-logs", "serving_app.tasks.purge_prompt_logs", every_seconds=3600)
        register_periodic_task(
            "purge-stored-completions", "serving_app.tasks.purge_stored_completions", every_seconds=3600
        )
        # A deployment's GPU time is charged by the hour it exists (serving_app.costs).
        register_periodic_task("record-serving-spend", "serving_app.tasks.record_serving_spend", every_seconds=3600)
