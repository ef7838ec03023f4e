"""Tool pages, mounted under /t/<team_slug>/tools/."""

from django.urls import path

from tools_app import activity, views
from tools_app.models import Tool

app_name = "tools"

urlpatterns = [
    path("", views.tool_list, name="list"),
    path("new/http/", views.tool_create, {"kind": Tool.Kind.HTTP}, name="new_http"),
    path("new/sql/", views.tool_create, {"kind": Tool.Kind.SQL}, name="new_sql"),
    path("mcp/new/", views.mcp_server_create, name="mcp_new"),
    path("mcp/<int:server_id>/", views.mcp_server_detail, name="mcp_detail"),
    path("mcp/<int:server_id>/import/", views.mcp_server_import, name="mcp_import"),
    path("mcp/<int:server_id>/delete/", views.mcp_server_delete, name="mcp_delete"),
    path("approvals/", views.approval_list, name="approvals"),
    path("activity/", activity.activity, name="activity"),
    path("approvals/<uuid:approval_id>/approve/", views.approval_approve, name="approval_approve"),
    path("approvals/<uuid:approval_id>/reject/", views.approval_reject, name="approval_reject"),
    path("<int:tool_id>/", views.tool_detail, name="detail"),
    path("<int:tool_id>/edit/", views.tool_edit, name="edit"),
    path("<int:tool_id>/delete/", views.tool_delete, name="delete"),
    path("<int:tool_id>/grants/new/", views.grant_create, name="grant_new"),
    path("<int:tool_id>/grants/<int:grant_id>/edit/", views.grant_edit, name="grant_edit"),
    path("<int:tool_id>/grants/<int:grant_id>/revoke/", views.grant_revoke, name="grant_revoke"),
]
