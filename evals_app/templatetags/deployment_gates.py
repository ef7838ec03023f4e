"""A deployment's gate and what it says of a version, for the serving app's deployment page.

The serving app sits under the evals app and imports nothing of it: its deployment template loads these tags, so
the page shows the gate's requirements (and links to edit them) without a dependency in the code.
"""

from __future__ import annotations

from typing import Any

from django import template

from accounts.permissions import TeamAccess
from accounts.roles import Perm
from evals_app import gates

register = template.Library()


@register.inclusion_tag("evals/_deployment_gate.html")
def deployment_gate(access: TeamAccess, deployment: Any) -> dict[str, Any]:
    """The gate's requirements, with an edit link for those who manage deployments."""
    return {
        "access": access,
        "deployment": deployment,
        "gate": gates.gate_of(deployment),
        "can_edit": access.can(Perm.MANAGE_DEPLOYMENTS),
    }


@register.inclusion_tag("evals/_gate_report.html")
def gate_report_card(access: TeamAccess, deployment: Any, version: Any, report: Any) -> dict[str, Any]:
    """Each check of the gate for ``version``, and a button starting the suites it was never run through."""
    return {
        "access": access,
        "deployment": deployment,
        "version": version,
        "report": report,
        "can_run": access.can(Perm.RUN_EVALS) and any(check.passed is None for check in report.checks),
    }


@register.inclusion_tag("evals/_deployment_maintenance.html")
def deployment_maintenance(access: TeamAccess, deployment: Any) -> dict[str, Any]:
    """Where the deployment's version came from, newer data to retrain on, the retrains, and the schedule."""
    from evals_app import maintenance

    job = maintenance.source_job(deployment)
    return {
        "access": access,
        "deployment": deployment,
        "job": job,
        "newer": list(maintenance.newer_versions(deployment)[:5]),
        "retrains": list(maintenance.retrains_of(deployment)[:10]),
        "can_retrain": access.can(Perm.LAUNCH_TRAINING) and access.can(Perm.RUN_EVALS),
        "can_manage": access.can(Perm.MANAGE_DEPLOYMENTS),
    }
