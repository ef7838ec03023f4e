"""Placeholder: replaced by the arena pages."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
