"""A team's limits for the quality checks (``EvalsPolicy``): read by the forgetting check, the bias probe and
deployment gates, changed by the team's admins (``team.change``) on the evals settings page or through the API."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts import audit
from accounts.models import Team
from accounts.permissions import TeamAccess
from accounts.roles import Perm
from evals_app.models import EvalsPolicy

# Each limit and the range it may take (a share: 0.10 is 10 %, or 10 points of pass rate).
LIMITS = {
    "max_perplexity_increase": (0.0, 10.0, "how much the version's perplexity may rise, as a share (0.10 = 10 %)"),
    "max_pass_rate_drop": (0.0, 1.0, "how far a regression suite's pass rate may fall, as a share (0.05 = 5 points)"),
    "max_bias_gap": (0.0, 1.0, "the largest gap between groups a bias probe may show (0..1)"),
}


def team_policy(team: Team) -> EvalsPolicy:
    """The team's policy: its saved one, or an unsaved one with the defaults."""
    return EvalsPolicy.objects.for_team(team).first() or EvalsPolicy(team=team)


@transaction.atomic
def update_policy(
    *,
    access: TeamAccess,
    max_perplexity_increase: Any,
    max_pass_rate_drop: Any,
    max_bias_gap: Any,
    check_after_training: bool,
    ip: str | None = None,
) -> EvalsPolicy:
    """Save the team's limits (owners and admins: ``team.change``); audited. ``ValidationError`` names the field."""
    access.require(Perm.CHANGE_TEAM)
    values = {"max_perplexity_increase": max_perplexity_increase, "max_pass_rate_drop": max_pass_rate_drop,
              "max_bias_gap": max_bias_gap}  # fmt: skip
    errors = {}
    for field, value in values.items():
        low, high, meaning = LIMITS[field]
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            errors[field] = f"Give a number from {low:g} to {high:g}: {meaning}."
    if errors:
        raise ValidationError(errors)
    policy, _ = EvalsPolicy.objects.for_team(access.team).update_or_create(
        team=access.team,
        defaults={**{field: float(value) for field, value in values.items()},
                  "check_after_training": bool(check_after_training), "updated_by": access.user,
                  "updated_at": timezone.now()},
    )  # fmt: skip
    audit.record("eval.policy_changed", access=access, target=policy, ip=ip, **policy.limits(),
                 check_after_training=policy.check_after_training)  # fmt: skip
    return policy
