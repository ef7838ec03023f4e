"""URL namespace of training_app; its pages arrive with the issue that builds them."""

from django.urls import URLPattern

app_name = "training"

urlpatterns: list[URLPattern] = []
