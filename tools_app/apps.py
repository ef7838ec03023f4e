from django.apps import AppConfig


class ToolsAppConfig(AppConfig):
    name = "tools_app"
    verbose_name = "Tools"

    def ready(self) -> None:
        # /v1 (serving_app, a layer below) runs studio tools through this app's loop.
        from serving_app.openai_api import register_studio_tools
        from tools_app.runtime import RUNNER

        register_studio_tools(RUNNER)
