"""URL namespace of serving_app; its pages arrive with the issue that builds them."""

from django.urls import URLPattern

app_name = "serving"

urlpatterns: list[URLPattern] = []
