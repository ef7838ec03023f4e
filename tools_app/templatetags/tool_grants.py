"""The tools granted to a deployment, for the serving app's deployment page.

The serving app sits under the tools app and imports nothing of it: its deployment template loads these tags, so
the page can list the deployment's tools without a dependency in the code.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.db.models import QuerySet

from accounts.permissions import TeamAccess
from tools_app import services
from tools_app.models import ToolGrant

register = template.Library()


@register.simple_tag
def grants_of_deployment(access: TeamAccess, deployment: Any) -> QuerySet[ToolGrant]:
    """The tools granted to ``deployment``, by name (every member may see them)."""
    return services.grants_of_deployment(access, deployment).order_by("tool__name")
