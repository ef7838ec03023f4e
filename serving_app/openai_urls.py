"""Placeholder: the OpenAI-compatible API (/v1) with team API keys."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
