"""Small request/response helpers shared by the views and the API."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    """The client's address as the server saw it (uvicorn's --proxy-headers sets it behind a proxy)."""
    return request.META.get("REMOTE_ADDR") or None


def add_service_errors(form: forms.Form, error: ValidationError) -> None:
    """Show a service's ``ValidationError`` next to the field it names (or at the top of the form)."""
    if hasattr(error, "error_dict"):
        for field, messages in error.message_dict.items():
            form.add_error(field if field in form.fields else None, messages)
    else:
        form.add_error(None, error.messages)


def error_dict(error: ValidationError) -> dict[str, list[str]]:
    """A ``ValidationError`` as ``{field: [messages]}`` (``__all__`` for errors without a field)."""
    if hasattr(error, "error_dict"):
        return error.message_dict
    return {"__all__": error.messages}
