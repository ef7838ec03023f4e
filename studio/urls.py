"""The site's URL map. Team pages live under /t/<team_slug>/; the tenant always comes from the URL."""

from django.contrib import admin
from django.urls import include, path, re_path

from studio.api import api, not_found
from studio.dashboard import team_dashboard

# A request Django refuses before any view (too large, too many fields) gets a page saying why.
handler400 = "studio.errors.bad_request"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    re_path(r"^api/v1/(?P<path>.*)$", not_found),
    path("t/<slug:team_slug>/datasets/", include("datasets_app.urls")),
    path("t/<slug:team_slug>/", include("training_app.urls")),
    path("t/<slug:team_slug>/", include("serving_app.urls")),
    path("t/<slug:team_slug>/tools/", include("tools_app.urls")),
    path("t/<slug:team_slug>/evals/", include("evals_app.urls")),
    path("t/<slug:team_slug>/exports/", include("exports_app.urls")),
    path("v1/", include("serving_app.openai_urls")),
    # The team's home page; its members and roles are at /t/<team_slug>/members/ (accounts).
    path("t/<slug:team_slug>/", team_dashboard, name="team_dashboard"),
    path("", include("accounts.urls")),
]
