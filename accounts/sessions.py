"""Reading the Django session from outside Django (the Gradio mount on the same ASGI app)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest


def user_from_session_key(session_key: str | None) -> Any | None:
    """The active, authenticated user of a Django session key, or None.

    Goes through ``django.contrib.auth.get_user``, so a session invalidated by logout or by a
    password change is refused exactly as Django itself refuses it.
    """
    if not session_key or len(session_key) > 64:
        return None
    engine = import_module(settings.SESSION_ENGINE)
    request = HttpRequest()
    request.session = engine.SessionStore(session_key)
    user = get_user(request)
    return user if user.is_authenticated and user.is_active else None


auser_from_session_key = sync_to_async(user_from_session_key)


async def auser_from_cookies(cookies: dict[str, str]) -> Any | None:
    """The signed-in user behind a request's cookies (async: safe to call from Gradio and FastAPI)."""
    return await auser_from_session_key(cookies.get(settings.SESSION_COOKIE_NAME))
