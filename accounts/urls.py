from django.contrib.auth import views as auth_views
from django.urls import include, path, reverse_lazy

from accounts import cost_views, views

app_name = "accounts"

# Under /t/<team_slug>/: TeamScopeMiddleware has checked membership before any of these runs.
team_patterns = [
    path("members/", views.team_home, name="team_home"),
    path("settings/", views.team_settings, name="team_settings"),
    path("audit/", views.audit_log, name="audit_log"),
    path("invitations/", views.invitation_create, name="invitation_create"),
    path("invitations/<int:invitation_id>/revoke/", views.invitation_revoke, name="invitation_revoke"),
    path("members/<int:membership_id>/role/", views.member_role, name="member_role"),
    path("members/<int:membership_id>/remove/", views.member_remove, name="member_remove"),
    path("keys/", views.api_keys, name="api_keys"),
    path("keys/<int:key_id>/", views.api_key_detail, name="api_key_detail"),
    path("keys/<int:key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
    path("keys/<int:key_id>/share/", views.api_key_share, name="api_key_share"),
    path("costs/", cost_views.costs_page, name="costs"),
    path("costs/budget/", cost_views.budget_change, name="budget_change"),
]


urlpatterns = [
    path("accounts/signup/", views.signup, name="signup"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(template_name="accounts/login.html", redirect_authenticated_user=True),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password/reset/",
        auth_views.PasswordResetView.as_view(
            template_name="accounts/password_reset.html",
            email_template_name="accounts/password_reset_email.txt",
            success_url=reverse_lazy("accounts:password_reset_done"),
        ),
        name="password_reset",
    ),
    path(
        "accounts/password/reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name="accounts/password_reset_done.html"),
        name="password_reset_done",
    ),
    path(
        "accounts/password/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            template_name="accounts/password_reset_confirm.html",
            success_url=reverse_lazy("accounts:password_reset_complete"),
        ),
        name="password_reset_confirm",
    ),
    path(
        "accounts/password/reset/complete/",
        auth_views.PasswordResetCompleteView.as_view(template_name="accounts/password_reset_complete.html"),
        name="password_reset_complete",
    ),
    path("accounts/tokens/", views.tokens, name="tokens"),
    path("accounts/tokens/<int:token_id>/revoke/", views.token_revoke, name="token_revoke"),
    path("teams/new/", views.team_create, name="team_create"),
    path("invite/<str:token>/", views.invitation_accept, name="invitation_accept"),
    path("healthz", views.healthz, name="healthz"),
    path("", views.home, name="home"),
    path("t/<slug:team_slug>/", include(team_patterns)),
]
