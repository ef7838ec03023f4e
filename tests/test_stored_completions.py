"""Stored completions: a deployment that opts in keeps its /v1 exchanges, redacted, exports them as a chat dataset
(what distillation and fine-tuning start from) and forgets them after its retention period.

The /v1 tests call the real stack (uvicorn serving the studio, the session's inference server, a LoRA adapter of
the starter model) with the official ``openai`` client, as tests/test_openai_api.py does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from openai import OpenAI

from accounts import services as account_services
from accounts.models import AuditEvent
from accounts.permissions import TeamAccess
from datasets_app import services as dataset_services
from datasets_app.models import DatasetVersion
from serving_app import completions, deployments
from serving_app.models import Deployment, StoredCompletion
from tests.factories import adapter_model_version
from training_app.models import BaseModel, ModelVersion

Login = Callable[[Any], Client]

CUSTOMER = [
    {"role": "system", "content": "You answer for Acme support."},
    {"role": "user", "content": "My order A-1042 never came. Write to jane.doe@example.com or call +44 20 7946 0958."},
]


@pytest.fixture
def deployment(owner: TeamAccess, model_version: ModelVersion) -> Deployment:
    deployment = deployments.create_deployment(access=owner, name="support-bot", version=model_version)
    return completions.set_storage(access=owner, deployment=deployment, store=True, retention_days=30)


def _keep(deployment: Deployment, answer: str = "Sorry! A new parcel ships today.", **fields: Any) -> Any:
    return completions.keep(
        deployment=deployment, version=deployment.model_version, key=None, messages=CUSTOMER, answer=answer, **fields
    )


# --- keeping ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_personal_data_is_redacted_before_it_is_kept(deployment: Deployment) -> None:
    kept = _keep(deployment, answer="I wrote to jane.doe@example.com: a new parcel ships today.")

    row = StoredCompletion.objects.for_team(deployment.team).get(pk=kept.pk)
    stored_text = json.dumps(row.messages) + row.answer
    assert "jane.doe@example.com" not in stored_text and "7946" not in stored_text
    assert row.messages[1]["content"] == "My order A-1042 never came. Write to [EMAIL] or call [PHONE]."
    assert row.answer == "I wrote to [EMAIL]: a new parcel ships today."
    assert row.redactions == {"email": 2, "phone": 1}


@pytest.mark.django_db
def test_nothing_is_kept_while_storage_is_off(owner: TeamAccess, deployment: Deployment) -> None:
    completions.set_storage(access=owner, deployment=deployment, store=False, retention_days=30)

    assert _keep(deployment) is None
    assert not StoredCompletion.objects.for_team(deployment.team).exists()


@pytest.mark.django_db
def test_a_retention_out_of_range_is_refused_and_a_change_is_audited(owner: TeamAccess, deployment: Deployment) -> None:
    with pytest.raises(ValidationError) as error:
        completions.set_storage(access=owner, deployment=deployment, store=True, retention_days=0)
    assert error.value.message_dict["retention_days"] == ["Keep completions 1 to 365 days; this is 0."]

    events = AuditEvent.objects.for_team(deployment.team).filter(action="deployment.completions_storage_changed")
    assert [event.details["retention_days"] for event in events] == [30]


@pytest.mark.django_db
def test_completions_past_their_retention_are_deleted_and_newer_ones_stay(deployment: Deployment) -> None:
    old, new = _keep(deployment), _keep(deployment)
    StoredCompletion.objects.for_team(deployment.team).filter(pk=old.pk).update(
        created_at=timezone.now() - timedelta(days=31)
    )

    assert completions.purge_expired() == 1
    assert list(completions.stored(deployment).values_list("pk", flat=True)) == [new.pk]


# --- exporting ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_export_makes_a_chat_dataset_naming_the_deployment_and_the_versions_that_answered(
    owner: TeamAccess, deployment: Deployment
) -> None:
    _keep(deployment)
    _keep(deployment, answer="", tool_calls=[{"id": "c1", "type": "function", "function": {"name": "refund"}}])

    export = completions.export_completions(access=owner, deployment=deployment)

    assert (export.exported, export.left_out) == (1, 1)
    version = DatasetVersion.objects.for_team(deployment.team).get(pk=export.version.pk)
    assert version.dataset.name == "support-bot completions"
    assert "“support-bot”" in version.dataset.description and "support v1 (1)" in version.dataset.description
    with dataset_services.open_source(access=owner, version=version) as source:  # validated in the background
        row = json.loads(source.read().decode().splitlines()[0])
    assert row["messages"][-1] == {"role": "assistant", "content": "Sorry! A new parcel ships today."}
    assert row["messages"][1]["content"].endswith("Write to [EMAIL] or call [PHONE].")
    with pytest.raises(ValidationError) as error:  # each completion is exported once
        completions.export_completions(access=owner, deployment=deployment)
    assert "No stored completions of “support-bot” to export yet" in error.value.messages[0]


# --- pages and API ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_admin_turns_storage_on_from_the_page_and_reads_the_latest(
    alice: Any, login: Login, owner: TeamAccess, model_version: ModelVersion
) -> None:
    deployment = deployments.create_deployment(access=owner, name="support-bot", version=model_version)
    client = login(alice)
    url = reverse("serving:deployment_completions", args=["acme", deployment.pk])

    assert client.post(url, {"store": "on", "retention_days": 14}).status_code == 302
    deployment.refresh_from_db()
    assert deployment.store_completions and deployment.completion_retention_days == 14
    _keep(deployment)
    page = client.get(reverse("serving:deployment", args=["acme", deployment.pk])).content.decode()
    assert 'id="stored-completions"' in page and "[EMAIL]" in page and "email × 1" in page


@pytest.mark.django_db
def test_a_member_sees_how_many_are_kept_but_not_what_they_say(bob: Any, login: Login, deployment: Deployment) -> None:
    _keep(deployment)
    client = login(bob)

    page = client.get(reverse("serving:deployment", args=["acme", deployment.pk])).content.decode()
    assert "1 kept now" in page and "parcel" not in page
    assert client.get(f"/api/v1/teams/acme/deployments/{deployment.pk}/completions").status_code == 403


@pytest.mark.django_db(transaction=True)
def test_v1_answers_are_kept_streamed_or_whole_as_the_client_received_them(
    studio_server: str, owner: TeamAccess, starter_model: BaseModel, lora_adapters: list[Path]
) -> None:
    version = adapter_model_version(owner.team, owner.user, starter_model, lora_adapters[0], name="support")
    deployment = deployments.create_deployment(access=owner, name="support-bot", version=version)
    completions.set_storage(access=owner, deployment=deployment, store=True, retention_days=7)
    _, key = account_services.create_team_api_key(access=owner, name="widget", deployments=[deployment])
    api = OpenAI(base_url=f"{studio_server}/v1", api_key=key, max_retries=0, timeout=120)

    whole = api.chat.completions.create(model="support-bot", messages=CUSTOMER, max_tokens=8, temperature=0)
    stream = api.chat.completions.create(
        model="support-bot", messages=CUSTOMER[1:], max_tokens=8, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    first, second = completions.stored(deployment).order_by("pk")
    assert first.answer == whole.choices[0].message.content and second.answer == streamed
    assert first.messages[0] == CUSTOMER[0] and "[EMAIL]" in second.messages[0]["content"]
    assert first.model_version == version and first.finish_reason in ("stop", "length")
