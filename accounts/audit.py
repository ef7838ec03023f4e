"""Writing the audit trail: one ``record`` call per privileged action, inside the action's transaction."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db.models import Model

from accounts.models import AuditEvent

if TYPE_CHECKING:
    from accounts.models import Team
    from accounts.permissions import TeamAccess


def record(
    action: str,
    *,
    access: TeamAccess | None = None,
    actor: Any = None,
    team: Team | None = None,
    target: Model | None = None,
    ip: str | None = None,
    **details: Any,
) -> AuditEvent:
    """Append one event. Pass ``access`` for team actions, or ``actor`` (+ ``team``) for account actions.

    Call it inside the service's transaction, so the event exists exactly when the action does.
    """
    if access is not None:
        team = access.team
        actor = access.user
        label = access.actor_label
        if access.api_key is not None:
            details.setdefault("api_key_id", access.api_key.pk)
    else:
        label = actor.get_username() if actor is not None else "system"
    return AuditEvent.objects.create(
        action=action,
        team=team,
        actor=actor,
        actor_label=label,
        target_type=(target._meta.model_name or "") if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_label=str(target)[:200] if target is not None else "",
        ip_address=ip,
        details=details,
    )
