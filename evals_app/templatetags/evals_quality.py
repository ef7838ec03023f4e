"""``{% load evals_quality %}{% quality_card version %}``: the forgetting check and the bias probe of a model
version, on its page. The training app's template includes it without importing the evals app (the apps stack in
layers, evals on top)."""

from __future__ import annotations

from typing import Any

from django import template

from accounts.roles import Perm
from evals_app import bias, forgetting
from evals_app.policy import team_policy

register = template.Library()


@register.inclusion_tag("evals/_quality_card.html", takes_context=True)
def quality_card(context: template.Context, version: Any) -> dict[str, Any]:
    """The version's newest forgetting check (running or finished) and newest finished probe run, with the team's
    limits, and whether the viewer may start a check or a probe."""
    access = context.get("access")
    check = forgetting.newest_check(version)
    probe = bias.latest_probe(version)
    policy = team_policy(version.team)
    limits = check.limits if check is not None else {}
    change = check.perplexity_change if check is not None else None
    return {
        "access": access,
        "version": version,
        "check": check,
        "perplexity_change": None if change is None else 100 * change,
        "perplexity_limit": 100 * float(limits.get("max_perplexity_increase", policy.max_perplexity_increase)),
        "suite_count": len(forgetting.regression_suites(version)),
        "run_count": len(forgetting.runs_of(check)) if check is not None and check.is_active else 0,
        "probe": probe,
        "probe_over_limit": probe is not None and (probe.max_gap or 0) > policy.max_bias_gap,
        "policy": policy,
        "can_run": access is not None and access.can(Perm.RUN_EVALS),
        "csrf_token": context.get("csrf_token"),
    }


@register.filter
def figure(figures: Any, measure: str) -> Any:
    """One measure's figures from a probe report's group row or gaps (``{{ group|figure:measure }}``)."""
    return figures.get(measure) if isinstance(figures, dict) else None
