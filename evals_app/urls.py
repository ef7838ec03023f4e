"""Eval pages, mounted under /t/<team_slug>/evals/."""

from django.urls import path

from evals_app import distill_views, gate_views, guard_views, views

app_name = "evals"

urlpatterns = [
    path("", views.suite_list, name="list"),
    path("new/", views.suite_create, name="new"),
    path("<int:suite_id>/", views.suite_detail, name="suite"),
    path("<int:suite_id>/edit/", views.suite_edit, name="suite_edit"),
    path("<int:suite_id>/delete/", views.suite_delete, name="suite_delete"),
    path("<int:suite_id>/run/", views.run_create, name="run_new"),
    path("runs/<int:run_id>/", views.run_detail, name="run"),
    path("settings/", views.policy_page, name="policy"),
    path("versions/<int:version_id>/forgetting/", views.forgetting_create, name="forgetting_new"),
    path("probes/", views.probe_set_list, name="probe_sets"),
    path("probes/new/", views.probe_set_create, name="probe_set_new"),
    path("probes/default/", views.probe_set_default, name="probe_set_default"),
    path("probes/<int:set_id>/", views.probe_set_detail, name="probe_set"),
    path("probes/<int:set_id>/edit/", views.probe_set_edit, name="probe_set_edit"),
    path("probes/<int:set_id>/delete/", views.probe_set_delete, name="probe_set_delete"),
    path("probes/<int:set_id>/run/", views.probe_run_create, name="probe_run_new"),
    path("probe-runs/<int:run_id>/", views.probe_run_detail, name="probe_run"),
    path("distill/", distill_views.distill_list, name="distillations"),
    path("distill/<int:distillation_id>/", distill_views.distill_detail, name="distillation"),
    path("distill/<int:distillation_id>/compare", distill_views.distill_compare, name="distillation_compare"),
    path("gates/<int:deployment_id>/", gate_views.gate_edit, name="gate"),
    path("gates/<int:deployment_id>/run", gate_views.gate_run, name="gate_run"),
    path("gates/<int:deployment_id>/retrain", gate_views.retrain_start, name="retrain"),
    path("gates/<int:deployment_id>/retrain-schedule", gate_views.retrain_schedule, name="retrain_schedule"),
    *guard_views.urlpatterns,
]
