"""What the tools app can do, for its pages and the rest of the studio: the one front door to team tools.

Owners and admins (``tools.manage``) define, change and delete a team's tools; every member reads them, secrets
excepted: a secret (an HTTP tool's headers, a SQL tool's DSN) is encrypted when saved and never shown again, and
the audit trail records that it changed, never what it is. Definitions are checked by ``tools_app.definitions``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from accounts import audit
from accounts.permissions import TeamAccess
from accounts.roles import Perm
from tools_app import definitions, secrets
from tools_app.models import Tool

# A new secret: an HTTP tool's headers ({name: value}) or a SQL tool's DSN.
Secret = dict[str, str] | str


def visible_tools(access: TeamAccess) -> QuerySet[Tool]:
    """The team's tools, by name: every member may see them (their secrets stay hidden from everyone)."""
    return Tool.objects.for_team(access.team).select_related("created_by").order_by("name")


def create_tool(
    *,
    access: TeamAccess,
    kind: str,
    name: str,
    description: str,
    risk: str,
    rate_limit_per_minute: int,
    parameters: Any,
    config: dict[str, Any],
    secret: Secret | None = None,
    ip: str | None = None,
) -> Tool:
    """Define a tool (owners and admins). A SQL tool needs its DSN as ``secret``; an HTTP tool's secret headers
    are optional. Bad input raises ``ValidationError`` keyed by form field (``name``, ``url``, ``query``…)."""
    access.require(Perm.MANAGE_TOOLS)
    fields = _checked(kind, name, description, risk, rate_limit_per_minute, parameters, config)
    secret = _checked_secret(kind, secret)
    if secret is None and kind == Tool.Kind.SQL:
        raise ValidationError({"dsn": "A SQL tool needs the DSN of the database it reads."})
    fields["config"] = _with_header_names(kind, fields["config"], secret if isinstance(secret, dict) else ())
    try:
        with transaction.atomic():
            _require_free_name(access, fields["name"])
            now = timezone.now()
            tool = Tool.objects.create(
                team=access.team, kind=kind, secret=_encrypt(secret), created_by=access.user, created_at=now,
                updated_at=now, **fields,
            )  # fmt: skip
            audit.record(
                "tool.created", access=access, target=tool, ip=ip, kind=kind, risk=tool.risk,
                rate_limit_per_minute=tool.rate_limit_per_minute, calls=tool.target_summary,
                secret="set" if secret is not None else "none",
            )  # fmt: skip
    except IntegrityError as error:  # a concurrent request took the name between the check and the insert
        raise ValidationError({"name": _taken(fields["name"])}) from error
    return tool


def update_tool(
    *,
    access: TeamAccess,
    tool: Tool,
    name: str,
    description: str,
    risk: str,
    rate_limit_per_minute: int,
    parameters: Any,
    config: dict[str, Any],
    secret: Secret | None = None,
    remove_secret: bool = False,
    ip: str | None = None,
) -> Tool:
    """Change a tool's definition (owners and admins); its kind stays.

    ``secret`` None keeps the saved secret; ``remove_secret`` deletes it (a SQL tool's calls then fail until a new
    DSN is saved). Audited, when something changed, with the names of the changed fields; a secret change is
    recorded as such, never its value.
    """
    access.require(Perm.MANAGE_TOOLS)
    if tool.team_id != access.team.pk:
        raise Http404("No such tool.")
    fields = _checked(tool.kind, name, description, risk, rate_limit_per_minute, parameters, config)
    secret = _checked_secret(tool.kind, secret)
    field = _secret_field(tool.kind)
    if secret is not None and remove_secret:
        raise ValidationError({field: "Either enter a new secret or tick “remove”, not both."})
    try:
        with transaction.atomic():
            # Locked until commit: two admins saving at once apply one after the other.
            current = Tool.objects.for_team(access.team).select_for_update().filter(pk=tool.pk).first()
            if current is None:
                raise Http404("No such tool: it was just deleted.")
            if fields["name"].lower() != current.name.lower():
                _require_free_name(access, fields["name"])
            header_names: Iterable[str]
            if secret is not None:
                current.secret, secret_change = _encrypt(secret), "replaced"
                header_names = secret if isinstance(secret, dict) else ()
            elif remove_secret and current.has_secret:
                current.secret, secret_change, header_names = b"", "removed", ()
            else:
                secret_change, header_names = "", current.secret_header_names
            fields["config"] = _with_header_names(tool.kind, fields["config"], header_names)
            changed = _changed_fields(current, fields)
            if not changed and not secret_change:
                return current
            for field_name, value in fields.items():
                setattr(current, field_name, value)
            current.updated_at = timezone.now()
            current.save()
            details: dict[str, Any] = {"changed": changed}
            if secret_change:
                details["secret"] = secret_change
            audit.record("tool.updated", access=access, target=current, ip=ip, **details)
    except IntegrityError as error:
        raise ValidationError({"name": _taken(fields["name"])}) from error
    return current


def delete_tool(*, access: TeamAccess, tool: Tool, ip: str | None = None) -> None:
    """Delete a tool and its encrypted secret (owners and admins); an audit event remains."""
    access.require(Perm.MANAGE_TOOLS)
    if tool.team_id != access.team.pk:
        raise Http404("No such tool.")
    with transaction.atomic():
        audit.record("tool.deleted", access=access, target=tool, ip=ip, name=tool.name, kind=tool.kind)
        Tool.objects.for_team(access.team).filter(pk=tool.pk).delete()


# --- helpers --------------------------------------------------------------------------------------


def _checked(
    kind: str,
    name: str,
    description: str,
    risk: str,
    rate_limit_per_minute: int,
    parameters: Any,
    config: dict[str, Any],
) -> dict[str, Any]:
    return definitions.check_definition(
        kind=kind, name=name, description=description, risk=risk, rate_limit_per_minute=rate_limit_per_minute,
        parameters=parameters, config=config, allowed_hosts=settings.TOOL_ALLOWED_HOSTS,
    )  # fmt: skip


def _checked_secret(kind: str, secret: Secret | None) -> Secret | None:
    """The new secret, checked for the tool's kind; None when none was given."""
    if not secret:
        return None
    if kind == Tool.Kind.HTTP and isinstance(secret, dict):
        return definitions.check_secret_headers(secret)
    if kind == Tool.Kind.SQL and isinstance(secret, str):
        return definitions.check_dsn(secret)
    raise ValidationError({_secret_field(kind): "An HTTP tool's secret is a set of headers; a SQL tool's, a DSN."})


def _secret_field(kind: str) -> str:
    return "dsn" if kind == Tool.Kind.SQL else "secret_headers"


def _with_header_names(kind: str, config: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """An HTTP tool's config lists its secret headers' names (not values), for its pages and its grants."""
    if kind != Tool.Kind.HTTP:
        return config
    return {**config, "secret_header_names": sorted(names)}


def _encrypt(secret: Secret | None) -> bytes:
    return secrets.encrypt_json(secret) if secret is not None else b""


def _changed_fields(tool: Tool, fields: dict[str, Any]) -> list[str]:
    """Names of the fields that differ, a config setting as ``config.<key>`` (its secret header names left out:
    the audit event says ``secret`` when the secret changed)."""
    changed = [name for name, value in fields.items() if name != "config" and getattr(tool, name) != value]
    old, new = tool.config, fields["config"]
    keys = sorted((set(old) | set(new)) - {"secret_header_names"})
    return changed + [f"config.{key}" for key in keys if old.get(key) != new.get(key)]


def _require_free_name(access: TeamAccess, name: str) -> None:
    if Tool.objects.for_team(access.team).filter(name__iexact=name).exists():
        raise ValidationError({"name": _taken(name)})


def _taken(name: str) -> str:
    return f"The team already has a tool named “{name}” (names differ by more than case): choose another."


def reencrypt_secrets() -> tuple[int, list[str]]:
    """Re-encrypt every team's tool secrets with the current (first) key, after a key rotation (operators only).

    Returns how many were re-encrypted and the tools (``team/name``) whose secret no configured key opens: those
    need their secret entered again. Each row is updated on its own, so running it twice is harmless.
    """
    rotated, unreadable = 0, []
    for tool in Tool.objects.unscoped().exclude(secret=b"").select_related("team").order_by("pk"):
        try:
            token = secrets.rotate(tool.secret)
        except secrets.InvalidToken:
            unreadable.append(f"{tool.team.slug}/{tool.name}")
            continue
        Tool.objects.unscoped().filter(pk=tool.pk, secret=tool.secret).update(secret=token)
        rotated += 1
    return rotated, unreadable
