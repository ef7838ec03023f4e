"""The studio's ASGI app as the live-server fixture runs it: ``studio.asgi.app`` plus one test-only reset.

Transactional tests empty the database after each test, and Django then recreates the content types with
new ids. A server process that lives for the whole session would keep the old ids in its content-type
cache, and guardian (which looks permissions up by content type) would find no permissions. Clearing the
cache at every HTTP request keeps the long-lived server in step with the database; nothing else differs.
"""

from __future__ import annotations

from typing import Any

from studio.asgi import app as studio_app  # sets Django up first


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    from django.contrib.contenttypes.models import ContentType  # models import only once Django is set up

    if scope["type"] == "http":
        ContentType.objects.clear_cache()
    await studio_app(scope, receive, send)
