from django.apps import AppConfig


class ToolsAppConfig(AppConfig):
    name = "tools_app"
    verbose_name = "Tools"

    def ready(self) -> None:
        # /v1 and the playground (serving_app, a layer below) run studio tools through this app's loop.
        from serving_app import studio_tools
        from studio.celery import register_periodic_task
        from tools_app.runtime import RUNNER

        studio_tools.register(RUNNER)
        # Results are kept for days: checking hourly keeps nothing more than an hour too long.
        register_periodic_task("purge-tool-results", "tools_app.tasks.purge_tool_results", every_seconds=3600)
