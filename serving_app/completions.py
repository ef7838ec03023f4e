"""Stored completions: a deployment that opts in keeps its /v1 exchanges, redacted, for a retention period.

They feed distillation and fine-tuning: ``export_completions`` turns the ones not exported yet into a chat dataset
version (each row the conversation sent and the answer given) whose description names the deployment and the
versions that answered. Personal data and secrets are redacted *before* anything is written
(``datasets_app.engine.pii``), so a stored row never holds what the scan finds. Rows older than the deployment's
``completion_retention_days`` are deleted hourly by beat (``purge_expired``).

Only completions that ended well are kept (a failed or cut-off generation is not a good example), and only the
first choice of each (``n`` > 1 asks for alternatives; the first is what a single-answer client shows).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from accounts import audit
from accounts.models import Team, TeamAPIKey
from accounts.permissions import TeamAccess
from accounts.roles import Perm
from datasets_app.engine import pii
from serving_app.exports import upload_rows
from serving_app.models import Deployment, StoredCompletion
from training_app.models import ModelVersion

EXPORT_DATASET_SUFFIX = "completions"
# A stored exchange keeps what a long-context conversation needs, not arbitrary payloads.
MAX_STORED_CHARACTERS = 200_000
MAX_RETENTION_DAYS = 365


def set_storage(
    *, access: TeamAccess, deployment: Deployment, store: bool, retention_days: int, ip: str | None = None
) -> Deployment:
    """Turn storing ``deployment``'s completions on or off and set how many days they are kept (admins)."""
    access.require(Perm.MANAGE_DEPLOYMENTS)
    if deployment.team_id != access.team.pk:
        raise ValidationError({"deployment": "That deployment does not belong to this team."})
    if not 1 <= retention_days <= MAX_RETENTION_DAYS:
        raise ValidationError(
            {"retention_days": f"Keep completions 1 to {MAX_RETENTION_DAYS} days; this is {retention_days}."}
        )
    with transaction.atomic():
        Deployment.objects.for_team(access.team).filter(pk=deployment.pk).update(
            store_completions=store, completion_retention_days=retention_days
        )
        audit.record(
            "deployment.completions_storage_changed", access=access, target=deployment, ip=ip, store=store,
            retention_days=retention_days,
        )  # fmt: skip
    deployment.store_completions, deployment.completion_retention_days = store, retention_days
    return deployment


def keep(
    *,
    deployment: Deployment,
    version: ModelVersion,
    key: TeamAPIKey | None,
    messages: Sequence[Mapping[str, Any]],
    answer: str,
    tool_calls: Sequence[Mapping[str, Any]] = (),
    finish_reason: str = "",
) -> StoredCompletion | None:
    """Store one finished exchange, redacted (nothing when the deployment does not store completions, or when it
    is larger than ``MAX_STORED_CHARACTERS``)."""
    if not deployment.store_completions:
        return None
    counts: Counter[str] = Counter()
    kept_messages = [_redacted_message(message, counts) for message in messages]
    text, findings = pii.redact_findings(answer)
    counts.update(finding.kind for finding in findings)
    size = len(text) + sum(len(str(message.get("content") or "")) for message in kept_messages)
    if size > MAX_STORED_CHARACTERS:
        return None
    return StoredCompletion.objects.create(
        team=deployment.team, deployment=deployment, model_version=version, version_label=str(version), api_key=key,
        messages=kept_messages, answer=text, tool_calls=list(tool_calls), finish_reason=finish_reason[:20],
        redactions=dict(counts),
    )  # fmt: skip


def _redacted_message(message: Mapping[str, Any], counts: Counter[str]) -> dict[str, Any]:
    kept = {name: value for name, value in message.items() if name in ("role", "content", "tool_calls", "name")}
    content = message.get("content")
    if isinstance(content, list):  # content parts: keep their text
        content = "".join(str(part.get("text") or "") for part in content if isinstance(part, Mapping))
    if isinstance(content, str):
        kept["content"], findings = pii.redact_findings(content)
        counts.update(finding.kind for finding in findings)
    return kept


# --- reading ------------------------------------------------------------------------------------


def stored(deployment: Deployment) -> QuerySet[StoredCompletion]:
    return StoredCompletion.objects.for_team(deployment.team).filter(deployment=deployment)


@dataclass(frozen=True)
class StorageSummary:
    total: int
    not_exported: int
    by_version: list[tuple[str, int]]
    latest: list[StoredCompletion]


def summary(deployment: Deployment, latest: int = 5) -> StorageSummary:
    rows = stored(deployment)
    by_version = rows.values("version_label").annotate(count=Count("pk")).order_by("-count", "version_label")
    return StorageSummary(
        total=rows.count(),
        not_exported=rows.filter(exported_at__isnull=True).count(),
        by_version=[(entry["version_label"], entry["count"]) for entry in by_version],
        latest=list(rows.order_by("-created_at", "-pk")[:latest]),
    )


# --- exporting and forgetting -------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionExport:
    version: Any  # the DatasetVersion made
    exported: int
    left_out: int


def export_completions(*, access: TeamAccess, deployment: Deployment, ip: str | None = None) -> CompletionExport:
    """The stored completions not exported yet, as a new version of the chat dataset "<deployment> completions".

    Each row is the conversation sent plus the answer as the last assistant message; the version's description
    names the deployment and the versions that answered (its lineage). Exchanges ending in tool calls, or with an
    empty answer, are left out (and counted). Needs ``datasets.upload``; raises ``ValidationError`` when nothing
    can be exported.
    """
    access.require(Perm.UPLOAD_DATASETS)
    if deployment.team_id != access.team.pk:
        raise ValidationError({"deployment": "That deployment does not belong to this team."})
    with transaction.atomic():
        pending = list(stored(deployment).filter(exported_at__isnull=True).select_for_update().order_by("pk"))
        rows, used, left_out, versions = [], [], 0, Counter[str]()
        for completion in pending:
            if not completion.answer.strip() or completion.tool_calls:
                left_out += 1
                continue
            rows.append({"messages": [*completion.messages, {"role": "assistant", "content": completion.answer}]})
            used.append(completion.pk)
            versions[completion.version_label] += 1
        if not rows:
            raise ValidationError(
                {"completions": f"No stored completions of “{deployment.name}” to export yet"
                 + (f" ({left_out} end in tool calls or are empty and cannot make a row)." if left_out else ".")}
            )  # fmt: skip
        answered = ", ".join(f"{label} ({count})" for label, count in versions.most_common())
        description = (
            f"/v1 completions of the deployment “{deployment.name}”, redacted, answered by {answered}: a teacher's "
            "answers for distillation or fine-tuning."
        )
        version = upload_rows(
            access, rows, name=f"{deployment.name} {EXPORT_DATASET_SUFFIX}",
            filename=f"{deployment.name}-completions.jsonl", description=description, ip=ip,
        )  # fmt: skip
        stored(deployment).filter(pk__in=used).update(exported_at=timezone.now())
        audit.record(
            "deployment.completions_exported", access=access, target=deployment, ip=ip, dataset=version.dataset_id,
            version=version.number, rows=len(rows), left_out=left_out, answered_by=dict(versions),
        )  # fmt: skip
    return CompletionExport(version=version, exported=len(rows), left_out=left_out)


def purge_expired(now: Any = None) -> int:
    """Delete stored completions older than their deployment's retention (turning storage off keeps what was
    stored until it expires: export it first, or delete the deployment to delete it at once)."""
    now = now or timezone.now()
    removed = 0
    for team in Team.objects.all():
        for deployment in Deployment.objects.for_team(team):
            cutoff = now - timedelta(days=deployment.completion_retention_days)
            removed += stored(deployment).filter(created_at__lt=cutoff).delete()[0]
    return removed
