"""Eval pages, mounted under /t/<team_slug>/evals/."""

from django.urls import path

from evals_app import views

app_name = "evals"

urlpatterns = [
    path("", views.suite_list, name="list"),
    path("new/", views.suite_create, name="new"),
    path("<int:suite_id>/", views.suite_detail, name="suite"),
    path("<int:suite_id>/edit/", views.suite_edit, name="suite_edit"),
    path("<int:suite_id>/delete/", views.suite_delete, name="suite_delete"),
    path("<int:suite_id>/run/", views.run_create, name="run_new"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
]
