"""Placeholder: replaced by the deployments pages."""

from django.urls import URLPattern

urlpatterns: list[URLPattern] = []
