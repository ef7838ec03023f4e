"""The site's URL map. Team pages live under /t/<team_slug>/; the tenant always comes from the URL."""

from django.contrib import admin
from django.urls import include, path

from studio.api import api

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("t/<slug:team_slug>/datasets/", include("datasets_app.urls")),
    path("t/<slug:team_slug>/", include("training_app.urls")),
    path("t/<slug:team_slug>/", include("serving_app.urls")),
    path("v1/", include("serving_app.openai_urls")),
    path("", include("accounts.urls")),
]
