"""Atelier's project package: settings, URL map, ASGI composition and the Celery app."""

from studio.celery import app as celery_app

__all__ = ["celery_app"]
