"""Deployments: model versions published under a name for the OpenAI-compatible API, and what it meters.

A deployment binds a name unique in the team (``support-bot``) to a model version; the team API keys
listed on it may call it at ``/v1`` (``serving_app.openai_api``). Every /v1 request is a ``UsageRecord``
inserted *before* the request is answered, which is also how a key's per-minute limit is counted:
across web processes, the database is the only shared view of "how many requests in the last minute".
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.urls import reverse
from django.utils import timezone

from accounts import audit, costs, plain_sql
from accounts.models import Team, TeamAPIKey
from accounts.permissions import TeamAccess, visible_objects
from accounts.roles import Perm
from serving_app.models import DEPLOYMENT_NAME_VALIDATOR, Deployment, Release, UsageRecord
from training_app.models import BaseModel, ModelVersion
from training_app.services import visible_versions

# The window a key's ``requests_per_minute`` is counted over.
RATE_WINDOW = timedelta(seconds=60)
# Rows shown under "recent requests" on a deployment's page.
RECENT_REQUESTS = 10

KeyLinks = Any  # the auto-created Deployment.api_keys through model (no static type)


# --- reading ------------------------------------------------------------------------------------


def visible_deployments(access: TeamAccess) -> QuerySet[Deployment]:
    """The team's deployments (every member may see them), with their model version and base model."""
    return (
        Deployment.objects.for_team(access.team)
        .select_related("model_version", "model_version__base_model", "canary_version", "created_by")
        .order_by("name")
    )


def deployable_versions(access: TeamAccess) -> QuerySet[ModelVersion]:
    """The model versions ``access`` may publish: those they may ``use`` (restricted ones need a share)."""
    return visible_versions(access, "use").order_by("name", "-number")


def scopable_keys(access: TeamAccess) -> QuerySet[TeamAPIKey]:
    """The team's active API keys: the ones a deployment can be opened to."""
    return TeamAPIKey.objects.for_team(access.team).filter(revoked_at__isnull=True).order_by("name")


def keys_of(deployment: Deployment) -> QuerySet[TeamAPIKey]:
    """The team API keys that may call ``deployment`` (revoked ones included, marked by ``revoked_at``)."""
    return deployment.api_keys.for_team(deployment.team).order_by("name")


def deployments_of_key(key: TeamAPIKey) -> QuerySet[Deployment]:
    """The deployments ``key`` may call, by name."""
    return (
        key.deployments.for_team(key.team)
        .select_related("team", "model_version__base_model", "canary_version__base_model")
        .order_by("name")
    )


def visible_key_ids(access: TeamAccess) -> set[int] | None:
    """Ids of the team keys ``access`` may see (shared ones for members); None means all (admins)."""
    if access.is_admin:
        return None
    keys = visible_objects(access, TeamAPIKey.objects.for_team(access.team), "view")
    return set(keys.values_list("pk", flat=True))


# --- changing -----------------------------------------------------------------------------------


def require_complete_card(version: ModelVersion) -> None:
    """Refuse (``ValidationError`` on ``model_version``) to publish a version whose model card lacks its intended
    use, out-of-scope uses or known limitations: every path that makes a version live calls this first."""
    missing = version.missing_card_fields
    if missing:
        fields = missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} and {missing[-1]}"
        page = reverse("training:version", args=[version.team.slug, version.pk])
        raise ValidationError(
            {"model_version": f"Model card incomplete: fill in {fields} on {page} (the page of {version}), then "
             "publish it again."}
        )  # fmt: skip


def create_deployment(
    *,
    access: TeamAccess,
    name: str,
    version: ModelVersion,
    api_keys: Iterable[TeamAPIKey] = (),
    description: str = "",
    ip: str | None = None,
) -> Deployment:
    """Publish ``version`` as ``name``, callable at /v1 by ``api_keys``. Admins only.

    The person must be allowed to ``use`` the version, its model card must be complete
    (``require_complete_card``) and the name must be free in the team. Bad input raises
    ``ValidationError`` keyed by ``name``, ``model_version``, ``api_keys`` or ``description``.
    """
    access.require(Perm.MANAGE_DEPLOYMENTS)
    costs.check_budget(team=access.team)  # a deployment reserves GPUs: over the hard budget, it is a refused launch
    name = name.strip()
    _check_name(name)
    if version.team_id != access.team.pk or not deployable_versions(access).filter(pk=version.pk).exists():
        raise ValidationError(
            {
                "model_version": "That model version does not exist in this team or you may not use it; pick one "
                "from the team's models."
            }
        )
    require_complete_card(version)
    if len(description) > 2000:
        raise ValidationError({"description": f"Use at most 2000 characters (this is {len(description)})."})
    keys = _team_keys(access, api_keys)
    if Deployment.objects.for_team(access.team).filter(name=name).exists():
        raise ValidationError({"name": _taken(name)})
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                team=access.team, name=name, model_version=version, description=description.strip(),
                created_by=access.user,
            )  # fmt: skip
            links = _key_links()
            links.objects.bulk_create(links(deployment=deployment, teamapikey=key) for key in keys)
            Release.objects.create(  # the first row of its history (serving_app.releases)
                team=access.team, deployment=deployment, action=Release.Action.CREATED, model_version=version,
                version_label=str(version), created_by=access.user,
            )  # fmt: skip
            audit.record(
                "deployment.created", access=access, target=deployment, ip=ip, model_version=str(version),
                model_version_id=version.pk, api_keys=[key.display_prefix for key in keys],
            )  # fmt: skip
    except IntegrityError as error:  # a concurrent request took the name between the check and the insert
        raise ValidationError({"name": _taken(name)}) from error
    return deployment


def delete_deployment(*, access: TeamAccess, deployment: Deployment, ip: str | None = None) -> None:
    """Remove a deployment: its name stops answering at /v1 at once. Its usage rows stay (labelled)."""
    access.require(Perm.MANAGE_DEPLOYMENTS)
    if deployment.team_id != access.team.pk:
        raise ValidationError({"deployment": "That deployment does not belong to this team."})
    with transaction.atomic():
        audit.record(
            "deployment.deleted", access=access, target=deployment, ip=ip, name=deployment.name,
            model_version_id=deployment.model_version_id,
        )  # fmt: skip
        Deployment.objects.for_team(access.team).filter(pk=deployment.pk).delete()


def set_deployment_keys(
    *, access: TeamAccess, deployment: Deployment, api_keys: Iterable[TeamAPIKey], ip: str | None = None
) -> Deployment:
    """Make exactly ``api_keys`` the keys that may call ``deployment``; audited when something changed."""
    access.require(Perm.MANAGE_DEPLOYMENTS)
    if deployment.team_id != access.team.pk:
        raise ValidationError({"deployment": "That deployment does not belong to this team."})
    keys = {key.pk: key for key in _team_keys(access, api_keys)}
    with transaction.atomic():
        # Lock the deployment row: two admins saving at once apply one after the other.
        Deployment.objects.for_team(access.team).select_for_update().filter(pk=deployment.pk).first()
        added, removed = _relink("deployment", deployment, "teamapikey", keys, label="prefix")
        if added or removed:
            audit.record(
                "deployment.keys_changed", access=access, target=deployment, ip=ip,
                added=[key.display_prefix for key in added],
                removed=[f"{TeamAPIKey.KIND}_{prefix}…" for prefix in removed],
            )  # fmt: skip
    return deployment


def set_key_deployments(
    *, access: TeamAccess, key: TeamAPIKey, deployments: Iterable[Deployment], ip: str | None = None
) -> TeamAPIKey:
    """Make exactly ``deployments`` the ones ``key`` may call at /v1 (the key's page, the other side of
    ``set_deployment_keys``); audited as ``apikey.deployments_changed`` when something changed. Admins only."""
    access.require(Perm.MANAGE_DEPLOYMENTS)
    access.require(Perm.MANAGE_API_KEYS)
    if key.team_id != access.team.pk:
        raise ValidationError({"api_key": "That API key does not belong to this team."})
    if not key.is_active:
        raise ValidationError({"deployments": f"The key “{key.name}” is revoked: it can call no deployment."})
    chosen = {deployment.pk: deployment for deployment in deployments}
    if any(deployment.team_id != access.team.pk for deployment in chosen.values()):
        raise ValidationError({"deployments": "Choose deployments of this team."})
    with transaction.atomic():
        # Lock the key row: two admins saving the same key's deployments apply one after the other.
        TeamAPIKey.objects.for_team(access.team).select_for_update().filter(pk=key.pk).first()
        added, removed = _relink("teamapikey", key, "deployment", chosen, label="name")
        if added or removed:
            audit.record(
                "apikey.deployments_changed", access=access, target=key, ip=ip,
                added=sorted(deployment.name for deployment in added), removed=sorted(removed),
            )  # fmt: skip
    return key


def _key_links() -> KeyLinks:
    # The through table directly: the key and deployment managers refuse queries without a team scope.
    return Deployment.api_keys.through


def _relink(side: str, owner: Any, other: str, chosen: dict[int, Any], *, label: str) -> tuple[list[Any], list[str]]:
    """Make exactly ``chosen`` (pk → row) the ``other`` rows linked to ``owner`` in the key↔deployment table.

    ``side`` and ``other`` are the table's two columns (``deployment``, ``teamapikey``). Returns the rows
    added and the ``label`` field of those removed (for the audit trail); both empty when nothing changed.
    Call inside the transaction that locks ``owner``.
    """
    links = _key_links()
    current = dict(links.objects.filter(**{side: owner}).values_list(f"{other}_id", f"{other}__{label}"))
    added = [row for pk, row in chosen.items() if pk not in current]
    removed = [pk for pk in current if pk not in chosen]
    links.objects.filter(**{side: owner, f"{other}_id__in": removed}).delete()
    links.objects.bulk_create((links(**{side: owner, other: row}) for row in added), ignore_conflicts=True)
    return added, [current[pk] for pk in removed]


def _check_name(name: str) -> None:
    if not name:
        raise ValidationError({"name": "Name the deployment: clients send this name as `model`, e.g. support-bot."})
    try:
        DEPLOYMENT_NAME_VALIDATOR(name)
    except ValidationError as error:
        raise ValidationError(
            {
                "name": f"“{name}” cannot be a deployment name. {DEPLOYMENT_NAME_VALIDATOR.message} For example: "
                "support-bot."
            }
        ) from error


def _taken(name: str) -> str:
    return f"This team already has a deployment named “{name}”; pick another name or delete that deployment first."


def _team_keys(access: TeamAccess, api_keys: Iterable[TeamAPIKey]) -> list[TeamAPIKey]:
    """``api_keys`` after checking each is an active key of this team."""
    keys = list(api_keys)
    for key in keys:
        if key.team_id != access.team.pk:
            raise ValidationError({"api_keys": "Choose API keys of this team."})
        if not key.is_active:
            raise ValidationError({"api_keys": f"The key “{key.name}” is revoked; choose an active key."})
    return keys


# --- the /v1 API: finding a deployment, counting and metering requests -------------------------


def find_deployment_for_key(key: TeamAPIKey, name: str) -> Deployment | None:
    """The deployment called ``name`` in the key's team, if ``key`` may call it (None otherwise), with its
    version and base model (and its canary's, for a deployment that has one).

    Every /v1 request asks this, so its SQL is written out (``accounts.plain_sql``): the deployment by name among
    those listed for the key, then each version and base model by id. Through the ORM, with its joins, this was
    the most expensive read of a /v1 request.
    """
    links = Deployment.api_keys.through._meta
    listed = (  # the ids of the deployments listed for the key
        f"SELECT {plain_sql.quote(links.get_field('deployment').column)} FROM {plain_sql.quote(links.db_table)} "  # noqa: S608
        f"WHERE {plain_sql.quote(links.get_field('teamapikey').column)} = %s"
    )
    deployment = plain_sql.first(Deployment, f'"name" = %s AND "id" IN ({listed})', [name, key.pk], team_id=key.team_id)
    if deployment is None:
        return None
    version = _version_of(deployment.team_id, deployment.model_version_id)
    if version is None:
        return None
    deployment.team = key.team
    deployment.model_version = version
    if deployment.canary_version_id is not None:
        deployment.canary_version = _version_of(deployment.team_id, deployment.canary_version_id)
    return deployment


def _version_of(team_id: int, version_id: int) -> ModelVersion | None:
    """The team's model version ``version_id`` with its base model (None when gone), for the /v1 lookup above."""
    version = plain_sql.first(ModelVersion, '"id" = %s', [version_id], team_id=team_id)
    if version is not None:
        version.base_model = (
            plain_sql.first(BaseModel, '"id" = %s', [version.base_model_id]) if version.base_model_id else None
        )
    return version


@dataclass(frozen=True)
class ApiRequest:
    """A metered /v1 request: its usage row and, when over the key's limit, seconds until it may retry."""

    record: UsageRecord
    retry_after: int | None = None

    @property
    def rejected(self) -> bool:
        return self.retry_after is not None


def start_api_request(*, key: TeamAPIKey, deployment: Deployment, version: ModelVersion | None = None) -> ApiRequest:
    """Insert the request's usage row, then count it against ``key.requests_per_minute``.

    The row goes in first and the count covers the key's non-rejected rows of the last 60 s up to and
    including it, so concurrent requests in several processes cannot all slip under the limit. A request
    over the limit is marked rejected (kept: the usage page shows it) and ``retry_after`` says when a slot
    frees up. ``version`` is the one routed to answer (``releases.route``): a canary's requests are told apart.
    """
    team = key.team
    # Every /v1 request runs these two statements: their SQL is written out (``accounts.plain_sql``).
    record = plain_sql.insert(
        UsageRecord(
            team=team, source=UsageRecord.Source.API, deployment=deployment, api_key=key, model_label=deployment.name,
            model_version=version,
        )
    )  # fmt: skip
    now = record.created_at
    count = plain_sql.count(
        UsageRecord,
        '"api_key_id" = %s AND "created_at" > %s AND "id" <= %s AND "status" <> %s',
        [
            key.pk,
            plain_sql.prepare(UsageRecord, "created_at", now - RATE_WINDOW),
            record.pk,
            UsageRecord.Status.REJECTED,
        ],
        team_id=team.pk,
    )
    if count <= key.requests_per_minute:
        return ApiRequest(record)
    UsageRecord.objects.for_team(team).filter(pk=record.pk).update(status=UsageRecord.Status.REJECTED)
    record.status = UsageRecord.Status.REJECTED
    # The next request fits once (count - limit) of the counted rows have left the window. The rows counted
    # above, through the ORM this time (a rejection is rare): the two conditions must stay the same.
    counted = (
        UsageRecord.objects.for_team(team)
        .filter(api_key=key, created_at__gt=now - RATE_WINDOW, pk__lte=record.pk)
        .exclude(status=UsageRecord.Status.REJECTED)
    )
    oldest = list(
        counted.order_by("created_at", "pk").values_list("created_at", flat=True)[: count - key.requests_per_minute]
    )
    frees_at = (oldest[-1] if oldest else now) + RATE_WINDOW
    return ApiRequest(record, retry_after=max(1, math.ceil((frees_at - timezone.now()).total_seconds())))


def finish_api_request(record: UsageRecord, *, ok: bool, prompt_tokens: int, completion_tokens: int) -> None:
    """Store how a /v1 request ended and the tokens it used (prompt and completion)."""
    status = UsageRecord.Status.OK if ok else UsageRecord.Status.FAILED
    changes = {"status": status, "prompt_tokens": max(0, prompt_tokens), "completion_tokens": max(0, completion_tokens)}
    plain_sql.update(UsageRecord, changes, '"id" = %s', [record.pk], team_id=record.team_id)


# --- usage --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageRow:
    """Requests and tokens of one deployment or one key over the summary's period."""

    label: str
    requests: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    deployment_id: int | None = None
    key_id: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def plus(self, other: UsageRow) -> UsageRow:
        return UsageRow(
            label=self.label, requests=self.requests + other.requests,
            rate_limited=self.rate_limited + other.rate_limited,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            deployment_id=self.deployment_id, key_id=self.key_id,
        )  # fmt: skip


@dataclass(frozen=True)
class DayUsage:
    """Tokens (prompt + completion) of one day, by source (``api``, ``playground``, ``arena``)."""

    day: date
    tokens: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.tokens.values())


@dataclass(frozen=True)
class UsageSummary:
    """A team's usage over the last ``days`` days: tokens per day and source, /v1 per deployment and key."""

    since: datetime
    days: list[DayUsage]
    by_deployment: list[UsageRow]
    by_key: list[UsageRow]
    totals: dict[str, int] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return sum(self.totals.values())


# How a row of tokens reads in the aggregation queries below.
_TOKENS = Sum(F("prompt_tokens") + F("completion_tokens"))
_ROW_AGGREGATES: dict[str, Any] = {
    "requests": Count("pk", filter=~Q(status=UsageRecord.Status.REJECTED)),
    "rate_limited": Count("pk", filter=Q(status=UsageRecord.Status.REJECTED)),
    "prompt": Sum("prompt_tokens"),
    "completion": Sum("completion_tokens"),
}
HIDDEN_KEYS_LABEL = "Keys not shared with you"


def usage_summary(team: Team, days: int = 30, *, visible_keys: set[int] | None = None) -> UsageSummary:
    """Tokens per day for the last ``days`` days (today included) by source, and /v1 usage per deployment and key.

    ``visible_keys`` (from ``visible_key_ids``) folds the keys a member may not see into one row.
    """
    today = timezone.localdate()
    first_day = today - timedelta(days=days - 1)
    since = timezone.make_aware(datetime.combine(first_day, datetime.min.time()))
    records = UsageRecord.objects.for_team(team).filter(created_at__gte=since)
    per_day: dict[date, dict[str, int]] = {
        first_day + timedelta(days=offset): {source: 0 for source in UsageRecord.Source.values}
        for offset in range(days)
    }
    daily = records.annotate(day=TruncDate("created_at")).values("day", "source").annotate(tokens=_TOKENS)
    for row in daily.order_by():
        if row["day"] in per_day and row["source"] in per_day[row["day"]]:
            per_day[row["day"]][row["source"]] += row["tokens"] or 0
    totals = {source: sum(tokens[source] for tokens in per_day.values()) for source in UsageRecord.Source.values}
    api = records.filter(source=UsageRecord.Source.API)
    return UsageSummary(
        since=since,
        days=[DayUsage(day, tokens) for day, tokens in per_day.items()],
        by_deployment=_by_deployment(api),
        by_key=_by_key(api, visible_keys),
        totals=totals,
    )


def _row(label: str, values: dict[str, Any], **ids: int | None) -> UsageRow:
    return UsageRow(
        label=label, requests=values["requests"], rate_limited=values["rate_limited"],
        prompt_tokens=values["prompt"] or 0, completion_tokens=values["completion"] or 0, **ids,
    )  # fmt: skip


def _by_deployment(api: QuerySet[UsageRecord]) -> list[UsageRow]:
    rows: dict[Any, UsageRow] = {}
    grouped = api.values("deployment_id", "deployment__name", "model_label").annotate(**_ROW_AGGREGATES)
    for values in grouped.order_by():
        deployment_id = values["deployment_id"]
        label = values["deployment__name"] or f"{values['model_label']} (deleted)"
        row = _row(label, values, deployment_id=deployment_id)
        group = deployment_id or label
        rows[group] = rows[group].plus(row) if group in rows else row
    return sorted(rows.values(), key=lambda row: (-row.total_tokens, row.label))


def _by_key(api: QuerySet[UsageRecord], visible_keys: set[int] | None) -> list[UsageRow]:
    rows: list[UsageRow] = []
    folded: dict[str, UsageRow] = {}  # keys the viewer may not see, and deleted keys: one row each
    grouped = api.values("api_key_id", "api_key__name", "api_key__prefix").annotate(**_ROW_AGGREGATES)
    for values in grouped.order_by():
        key_id = values["api_key_id"]
        if key_id is not None and (visible_keys is None or key_id in visible_keys):
            label = f"{values['api_key__name']} ({TeamAPIKey.KIND}_{values['api_key__prefix']}…)"
            rows.append(_row(label, values, key_id=key_id))
            continue
        row = _row(HIDDEN_KEYS_LABEL if key_id is not None else "Deleted keys", values)
        folded[row.label] = folded[row.label].plus(row) if row.label in folded else row
    rows.sort(key=lambda row: (-row.total_tokens, row.label))
    return rows + list(folded.values())


@dataclass(frozen=True)
class RecentRequest:
    """One /v1 request as a deployment's page lists it."""

    created_at: datetime
    key_label: str
    status: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class DeploymentUsage:
    """What a deployment's page shows: the last days' totals and the latest requests."""

    days: int
    totals: UsageRow
    recent: list[RecentRequest]


def deployment_usage(deployment: Deployment, days: int = 7, *, visible_keys: set[int] | None = None) -> DeploymentUsage:
    """Requests and tokens of ``deployment`` over the last ``days`` days, and its latest requests.

    Keys outside ``visible_keys`` (see ``visible_key_ids``) are not named.
    """
    records = UsageRecord.objects.for_team(deployment.team).filter(deployment=deployment)
    window = records.filter(created_at__gte=timezone.now() - timedelta(days=days))
    totals = _row(deployment.name, window.aggregate(**_ROW_AGGREGATES), deployment_id=deployment.pk)
    recent = [
        RecentRequest(
            created_at=record.created_at,
            key_label=_key_label(record.api_key, visible_keys),
            status=record.get_status_display(),
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
        )
        for record in records.select_related("api_key").order_by("-created_at", "-pk")[:RECENT_REQUESTS]
    ]
    return DeploymentUsage(days=days, totals=totals, recent=recent)


def _key_label(key: TeamAPIKey | None, visible_keys: set[int] | None) -> str:
    if key is None:
        return "a deleted key"
    if visible_keys is not None and key.pk not in visible_keys:
        return "a key not shared with you"
    return str(key)
