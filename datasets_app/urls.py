"""URL namespace of datasets_app; its pages arrive with the issue that builds them."""

from django.urls import URLPattern

app_name = "datasets"

urlpatterns: list[URLPattern] = []
