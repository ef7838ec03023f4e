"""The budget banner: ``{% load budgets %}{% budget_banner access %}`` on the launch form and the Costs page.

It says when this month's spend reached the team's soft limit (a warning) or its hard limit (launches refused).
"""

from __future__ import annotations

from typing import Any

from django import template

from accounts import costs
from accounts.permissions import TeamAccess

register = template.Library()


@register.inclusion_tag("accounts/_budget_banner.html")
def budget_banner(access: TeamAccess) -> dict[str, Any]:
    """This month's budget state for ``access.team``: nothing when it is within its limits."""
    return {"access": access, "budget": costs.budget_status(access.team)}
