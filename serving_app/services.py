"""What the serving app can do, for the rest of the studio: the front door other apps and pages call.

Deployments (a model version published at ``/v1`` for chosen team API keys) and the team's usage. The
work itself lives in ``deployments`` (publishing, keys, metering), ``catalog`` (which models a person may
use), ``comparisons`` and ``arena``; other apps import it from here.
"""

from __future__ import annotations

from serving_app.deployments import (
    UsageSummary,
    deployments_of_key,
    keys_of,
    scopable_keys,
    usage_summary,
    visible_deployments,
    visible_key_ids,
)

__all__ = [
    "UsageSummary",
    "deployments_of_key",
    "keys_of",
    "scopable_keys",
    "usage_summary",
    "visible_deployments",
    "visible_key_ids",
]
