"""Member-written text reaches pages escaped: the model version page (card, job and dataset names) and form help."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils.safestring import SafeData

from tests.factories import finished_job, ready_version, starter_like_base_model
from training_app import registry
from training_app.models import ModelVersion

PAYLOAD = "<img src=x onerror=alert(document.domain)>"
RAW = "<img src=x onerror"
ESCAPED = "&lt;img src=x onerror=alert(document.domain)&gt;"

Login = Callable[[Any], Client]


@pytest.fixture
def hostile_version(acme: Any, alice: Any) -> ModelVersion:
    """A model version whose job (hence the version) and dataset carry a script payload in their names."""
    dataset_version = ready_version(acme, alice, [{"text": "hello"}], name=f"data {PAYLOAD}")
    _, version = finished_job(acme, alice, starter_like_base_model(), dataset_version, name=f"job {PAYLOAD}")
    return version


def version_page(client: Client, version: ModelVersion) -> str:
    return client.get(reverse("training:version", args=["acme", version.pk])).content.decode()


def test_card_field_patched_by_a_member_is_escaped_on_the_version_page(
    alice: Any, bob: Any, login: Login, bearer: Callable[[Any], Client], hostile_version: ModelVersion
) -> None:
    response = bearer(bob).patch(
        f"/api/v1/teams/acme/model-versions/{hostile_version.pk}",
        data=json.dumps({"intended_use": f"use {PAYLOAD}"}),
        content_type="application/json",
    )
    assert response.status_code == 200
    html = version_page(login(alice), hostile_version)
    assert RAW not in html
    assert f"use {ESCAPED}" in html


def test_job_name_is_escaped_on_the_version_page(alice: Any, login: Login, hostile_version: ModelVersion) -> None:
    html = version_page(login(alice), hostile_version)
    assert RAW not in html
    assert f"# job {ESCAPED} v1" in html  # the card's title is the job's name


def test_dataset_name_is_escaped_on_the_version_page(alice: Any, login: Login, hostile_version: ModelVersion) -> None:
    html = version_page(login(alice), hostile_version)
    assert RAW not in html
    assert f"- data {ESCAPED} v1" in html  # the card's training data


def test_model_card_is_plain_text_not_html_marked_safe(hostile_version: ModelVersion) -> None:
    card = registry.model_card(hostile_version)
    assert not isinstance(card, SafeData)
    assert f"# job {PAYLOAD} v1" in card  # the Markdown file (README.md, the API's text/markdown) reads as typed


def test_form_help_text_is_escaped(alice: Any, login: Login) -> None:
    html = login(alice).get(reverse("accounts:team_create")).content.decode()
    assert "/t/&lt;address&gt;/" in html
    assert "<address>" not in html
