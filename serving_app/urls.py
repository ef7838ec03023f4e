"""URL namespace of serving_app, mounted at /t/<team_slug>/: each page module lists its own routes."""

from django.urls import URLPattern

from serving_app.pages import arena, costs, deployments, guard, playground

app_name = "serving"

urlpatterns: list[URLPattern] = [
    *playground.urlpatterns,
    *arena.urlpatterns,
    *deployments.urlpatterns,
    *guard.urlpatterns,
    *costs.urlpatterns,
]
