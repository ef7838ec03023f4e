"""Training pages, mounted under /t/<team_slug>/."""

from django.urls import path

from training_app import views

app_name = "training"

urlpatterns = [
    path("training/", views.job_list, name="list"),
    path("training/new", views.job_new, name="new"),
    path("training/estimate", views.job_estimate, name="estimate"),
    path("training/compare", views.job_compare, name="compare"),
    path("training/<int:job_id>/", views.job_detail, name="job"),
    path("training/<int:job_id>/cancel", views.job_cancel, name="cancel"),
    path("training/<int:job_id>/delete", views.job_delete, name="job_delete"),
    path("training/<int:job_id>/config.yaml", views.job_config, name="config"),
    path("models/", views.model_list, name="models"),
    path("models/<int:model_id>/", views.model_detail, name="model_detail"),
    path("models/<int:model_id>/retry", views.model_retry, name="model_retry"),
    path("models/<int:model_id>/delete", views.model_delete, name="model_delete"),
    path("models/hub/", views.model_add_hub, name="model_add_hub"),
    path("models/versions/<int:version_id>/", views.version_detail, name="version"),
    path("models/versions/<int:version_id>/card", views.version_card, name="version_card"),
    path("models/versions/<int:version_id>/download", views.version_download, name="version_download"),
    path("models/versions/<int:version_id>/delete", views.version_delete, name="version_delete"),
    path("models/versions/<int:version_id>/share", views.version_share, name="version_share"),
]
