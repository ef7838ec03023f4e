"""The OpenAI-compatible API (/v1) with team API keys: see ``serving_app.openai_api``."""

from django.urls import URLPattern, path, re_path

from serving_app import openai_api

urlpatterns: list[URLPattern] = [
    path("models", openai_api.list_models, name="openai_models"),
    path("models/<str:name>", openai_api.retrieve_model, name="openai_model"),
    path("chat/completions", openai_api.chat_completions, name="openai_chat_completions"),
    path("completions", openai_api.completions, name="openai_completions"),
    # Anything else answers in OpenAI's format too, rather than with the site's HTML 404 page.
    re_path(r"^(?P<path>.*)$", openai_api.unknown_endpoint, name="openai_unknown"),
]
