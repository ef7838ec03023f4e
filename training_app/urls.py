"""Training pages, mounted under /t/<team_slug>/."""

from django.urls import path

from training_app import views

app_name = "training"

urlpatterns = [
    path("models/", views.model_list, name="models"),
    path("models/<int:model_id>/", views.model_detail, name="model_detail"),
]
