"""Dataset pages, mounted under /t/<team_slug>/datasets/."""

from django.urls import path

from datasets_app import views

app_name = "datasets"

urlpatterns = [
    path("", views.dataset_list, name="list"),
    path("samples/", views.add_sample, name="sample"),
    path("mix/", views.mix, name="mix"),
    path("<int:dataset_id>/", views.dataset_detail, name="detail"),
    path("<int:dataset_id>/upload/", views.version_upload, name="upload_version"),
    path("<int:dataset_id>/delete/", views.dataset_delete, name="delete"),
    path("<int:dataset_id>/edit/", views.dataset_edit, name="edit"),
    path("<int:dataset_id>/share/", views.dataset_share, name="share"),
    path("<int:dataset_id>/v<int:number>/", views.version_detail, name="version"),
    path("<int:dataset_id>/v<int:number>/rows/", views.version_rows, name="rows"),
    path("<int:dataset_id>/v<int:number>/mapping/", views.version_mapping, name="mapping"),
    path("<int:dataset_id>/v<int:number>/mapping/preview/", views.version_mapping_preview, name="mapping_preview"),
    path("<int:dataset_id>/v<int:number>/keep-valid/", views.version_keep_valid, name="keep_valid"),
    path("<int:dataset_id>/v<int:number>/curate/", views.version_curate, name="curate"),
    path("<int:dataset_id>/v<int:number>/source/", views.version_source, name="source"),
    path("<int:dataset_id>/v<int:number>/download.<str:fmt>", views.version_download, name="download"),
]
