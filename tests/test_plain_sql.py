"""``accounts.plain_sql``: the /v1 hot path's statements with their SQL written out read and write what the ORM
would, and keep team scoping."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from accounts import plain_sql
from accounts.models import Team
from accounts.tenancy import TeamScopeError
from serving_app.models import Deployment, UsageRecord
from training_app.models import ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(acme: Team, alice: Any, model_version: ModelVersion) -> Deployment:
    return Deployment.objects.create(
        team=acme, name="support-bot", model_version=model_version, created_by=alice,
        gate={"metric": "accuracy", "at_least": 0.8}, store_completions=True,
    )  # fmt: skip


def _fields(obj: Any) -> dict[str, Any]:
    return {f.attname: getattr(obj, f.attname) for f in obj._meta.concrete_fields}


def test_a_row_read_with_written_out_sql_equals_the_orms_read_field_for_field(
    acme: Team, deployment: Deployment
) -> None:
    read = plain_sql.first(Deployment, '"name" = %s', ["support-bot"], team_id=acme.pk)

    assert read is not None
    assert _fields(read) == _fields(Deployment.objects.for_team(acme).get(pk=deployment.pk))
    assert read.gate == {"metric": "accuracy", "at_least": 0.8}  # JSON decoded
    assert read.store_completions is True
    assert read.created_at.tzinfo is not None  # aware, as the ORM gives it


def test_a_team_owned_model_is_not_read_without_a_team(deployment: Deployment) -> None:
    with pytest.raises(TeamScopeError, match="Deployment is team-owned"):
        plain_sql.first(Deployment, '"name" = %s', ["support-bot"])


def test_another_teams_row_is_not_read_updated_or_counted(globex: Team, deployment: Deployment) -> None:
    assert plain_sql.first(Deployment, '"name" = %s', ["support-bot"], team_id=globex.pk) is None
    assert not plain_sql.exists(Deployment, '"id" = %s', [deployment.pk], team_id=globex.pk)
    assert plain_sql.count(Deployment, '"id" = %s', [deployment.pk], team_id=globex.pk) == 0
    assert plain_sql.update(Deployment, {"description": "taken"}, '"id" = %s', [deployment.pk], team_id=globex.pk) == 0

    deployment.refresh_from_db()
    assert deployment.description == ""


def test_an_inserted_row_gets_its_id_and_its_fields_defaults(acme: Team, deployment: Deployment) -> None:
    record = plain_sql.insert(
        UsageRecord(team=acme, source=UsageRecord.Source.API, deployment=deployment, model_label="support-bot")
    )

    stored = UsageRecord.objects.for_team(acme).get(pk=record.pk)
    assert _fields(stored) == _fields(record)
    assert stored.status == UsageRecord.Status.STARTED
    assert stored.prompt_tokens == 0


def test_update_sets_the_fields_of_the_matching_rows_only(acme: Team, deployment: Deployment) -> None:
    rows = [
        plain_sql.insert(UsageRecord(team=acme, source=UsageRecord.Source.API, model_label=f"r{n}")) for n in range(2)
    ]

    changed = plain_sql.update(
        UsageRecord, {"status": UsageRecord.Status.OK, "completion_tokens": 12}, '"id" = %s', [rows[0].pk],
        team_id=acme.pk,
    )  # fmt: skip

    assert changed == 1
    first, second = (UsageRecord.objects.for_team(acme).get(pk=row.pk) for row in rows)
    assert (first.status, first.completion_tokens) == (UsageRecord.Status.OK, 12)
    assert (second.status, second.completion_tokens) == (UsageRecord.Status.STARTED, 0)


def test_a_datetime_condition_compares_as_the_orm_does(acme: Team) -> None:
    now = timezone.now()
    for age in (90, 30, 5):
        plain_sql.insert(
            UsageRecord(
                team=acme, source=UsageRecord.Source.API, model_label="r", created_at=now - timedelta(seconds=age)
            )
        )
    since = now - timedelta(seconds=60)

    counted = plain_sql.count(
        UsageRecord, '"created_at" > %s', [plain_sql.prepare(UsageRecord, "created_at", since)], team_id=acme.pk
    )

    assert counted == UsageRecord.objects.for_team(acme).filter(created_at__gt=since).count() == 2
