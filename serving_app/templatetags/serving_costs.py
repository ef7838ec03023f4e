"""The serving cost card of a deployment's page: ``{% load serving_costs %}{% serving_cost access deployment %}``.

A tag rather than view context, so the deployment page's view stays as it is and the card is one include.
"""

from __future__ import annotations

from typing import Any

from django import template

from accounts.permissions import TeamAccess
from accounts.roles import Perm
from serving_app import costs
from serving_app.models import Deployment
from serving_app.pages.costs import ServingPlanForm
from studio import units

register = template.Library()
register.filter("memory", units.memory)


@register.simple_tag
def serving_cost(access: TeamAccess, deployment: Deployment, candidate: Any = None) -> dict[str, Any]:
    """The deployment's serving estimate (with a canary: ``costs.serving_costs``), a smaller model's at the same
    plan, and ``candidate``'s (a version the promote form is about to publish), with the plan form for those who
    manage deployments."""
    can_manage = access.can(Perm.MANAGE_DEPLOYMENTS)
    plan = {"precision": deployment.serving_precision, "context_length": deployment.serving_context_length,
            "concurrency": deployment.expected_concurrency}  # fmt: skip
    current, canary = costs.serving_costs(deployment)
    return {
        "current": current,
        "canary": canary,
        "smaller": costs.candidate_cost(access, deployment),
        "promoting": costs.deployment_cost(deployment, candidate) if candidate is not None else None,
        "form": ServingPlanForm(initial=plan) if can_manage else None,
    }
