"""Export pages, mounted under /t/<team_slug>/exports/."""

from django.urls import path

from exports_app import views

app_name = "exports"

urlpatterns = [
    path("settings/", views.export_settings, name="settings"),
    path("versions/<int:version_id>/", views.export_section, name="section"),
    path("versions/<int:version_id>/new", views.export_create, name="create"),
    path("<int:export_id>/download", views.export_download, name="download"),
    path("<int:export_id>/approve", views.export_approve, name="approve"),
    path("<int:export_id>/reject", views.export_reject, name="reject"),
]
