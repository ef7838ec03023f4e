from __future__ import annotations

from django.apps import AppConfig


class ExportsAppConfig(AppConfig):
    name = "exports_app"
    verbose_name = "Exports"
