"""Placeholder: replaced by the playground pages."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
