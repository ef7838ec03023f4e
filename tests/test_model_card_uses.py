"""Model cards' "Intended use", "Out of scope" and "Known limitations": edited on the version page and in the API,
shown on the card, and required before a version is published on a deployment (created, promoted or canaried,
from the pages and the API)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from accounts.models import Team, TeamAPIKey
from accounts.permissions import TeamAccess
from serving_app import deployments, releases
from serving_app.models import Deployment
from tests.factories import CARD_USES, finished_job, sample_version
from training_app.models import BaseModel, ModelVersion

Login = Callable[[Any], Client]

pytestmark = pytest.mark.django_db

INCOMPLETE = "Model card incomplete: fill in Intended use, Out of scope and Known limitations on"


@pytest.fixture
def blank(acme: Team, alice: Any, base_model_row: BaseModel) -> ModelVersion:
    """A version "drafty" whose card has none of its three prompts written."""
    _, version = finished_job(acme, alice, base_model_row, sample_version(acme, alice, "chat"), name="drafty")
    ModelVersion.objects.for_team(acme).filter(pk=version.pk).update(intended_use="", out_of_scope="", limitations="")
    version.refresh_from_db()
    return version


@pytest.fixture
def deployment(owner: TeamAccess, model_version: ModelVersion, key: TeamAPIKey) -> Deployment:
    return deployments.create_deployment(access=owner, name="support-bot", version=model_version, api_keys=[key])


def version_url(version: ModelVersion) -> str:
    return reverse("training:version", kwargs={"team_slug": "acme", "version_id": version.pk})


def page_url(name: str, *args: int) -> str:
    return reverse(name, args=["acme", *args])


def post_json(client: Client, path: str, body: dict[str, Any]) -> Any:
    return client.post(f"/api/v1/teams/acme/{path}", json.dumps(body), content_type="application/json")


# --- editing and showing ------------------------------------------------------------------------


def test_version_page_saves_all_three_fields(alice: Any, login: Login, blank: ModelVersion) -> None:
    url = reverse("training:version_card", kwargs={"team_slug": "acme", "version_id": blank.pk})
    response = login(alice).post(url, CARD_USES)
    assert response.status_code == 302
    blank.refresh_from_db()
    assert (blank.intended_use, blank.out_of_scope, blank.limitations) == tuple(CARD_USES.values())


def test_api_patch_sets_out_of_scope_and_keeps_the_others(alice: Any, bearer: Any, model_version: Any) -> None:
    response = bearer(alice).patch(
        f"/api/v1/teams/acme/model-versions/{model_version.pk}",
        json.dumps({"out_of_scope": "Legal advice."}),
        content_type="application/json",
    )
    assert response.status_code == 200
    assert response.json()["out_of_scope"] == "Legal advice."
    assert response.json()["intended_use"] == CARD_USES["intended_use"]


def test_viewer_sees_the_fields_but_no_form(user_in_role: Any, login: Login, model_version: ModelVersion) -> None:
    page = login(user_in_role("viewer")).get(version_url(model_version)).content.decode()
    assert "<h3>Out of scope</h3><p>Anything outside the test suite.</p>" in page
    assert 'name="out_of_scope"' not in page


def test_card_markdown_has_the_three_sections(alice: Any, bearer: Any, model_version: ModelVersion) -> None:
    card = bearer(alice).get(f"/api/v1/teams/acme/model-versions/{model_version.pk}/card").content.decode()
    for heading, field in (("Intended use", "intended_use"), ("Out of scope", "out_of_scope")):
        assert f"## {heading}\n\n{CARD_USES[field]}" in card
    assert f"## Known limitations\n\n{CARD_USES['limitations']}" in card


def test_version_page_says_publishing_waits_for_the_card(alice: Any, login: Login, blank: ModelVersion) -> None:
    page = login(alice).get(version_url(blank)).content.decode()
    assert "A deployment publishes this version only once all three are written" in page


# --- creating a deployment ----------------------------------------------------------------------


def test_service_refuses_to_deploy_an_incomplete_card(owner: TeamAccess, blank: ModelVersion) -> None:
    with pytest.raises(ValidationError) as error:
        deployments.create_deployment(access=owner, name="drafty-bot", version=blank)
    assert error.value.message_dict["model_version"][0].startswith(INCOMPLETE)
    assert not Deployment.objects.for_team(blank.team).exists()


def test_refusal_names_only_the_fields_still_missing(owner: TeamAccess, blank: ModelVersion) -> None:
    ModelVersion.objects.for_team(blank.team).filter(pk=blank.pk).update(intended_use="Support.")
    blank.refresh_from_db()
    with pytest.raises(ValidationError) as error:
        deployments.create_deployment(access=owner, name="drafty-bot", version=blank)
    message = error.value.message_dict["model_version"][0]
    assert message.startswith("Model card incomplete: fill in Out of scope and Known limitations on ")
    assert version_url(blank) in message


def test_deployments_page_refuses_an_incomplete_card_with_a_link(alice: Any, login: Login, blank: ModelVersion) -> None:
    response = login(alice).post(page_url("serving:deployments"), {"name": "drafty-bot", "model_version": blank.pk})
    assert response.status_code == 400
    assert INCOMPLETE in response.content.decode()
    assert version_url(blank) in response.content.decode()
    assert not Deployment.objects.for_team(blank.team).exists()


def test_api_refuses_to_deploy_an_incomplete_card(alice: Any, bearer: Any, blank: ModelVersion) -> None:
    response = post_json(bearer(alice), "deployments", {"name": "drafty-bot", "model_version": blank.pk})
    assert response.status_code == 400
    assert response.json()["errors"]["model_version"][0].startswith(INCOMPLETE)
    assert not Deployment.objects.for_team(blank.team).exists()


def test_deployments_page_deploys_a_complete_card(alice: Any, login: Login, model_version: ModelVersion) -> None:
    response = login(alice).post(
        page_url("serving:deployments"), {"name": "support-bot", "model_version": model_version.pk}
    )
    assert response.status_code == 302
    assert Deployment.objects.for_team(model_version.team).filter(name="support-bot").exists()


def test_deploy_form_marks_versions_with_an_incomplete_card(alice: Any, login: Login, blank: ModelVersion) -> None:
    page = login(alice).get(page_url("serving:deployments")).content.decode()
    assert "drafty v1 (LoRA adapter of" in page and "— model card incomplete" in page


# --- promoting onto a deployment ----------------------------------------------------------------


def test_service_refuses_to_promote_an_incomplete_card(
    owner: TeamAccess, deployment: Deployment, blank: ModelVersion, model_version: ModelVersion
) -> None:
    with pytest.raises(ValidationError) as error:
        releases.promote(access=owner, deployment=deployment, version=blank)
    assert error.value.message_dict["model_version"][0].startswith(INCOMPLETE)
    deployment.refresh_from_db()
    assert deployment.model_version == model_version


def test_service_refuses_a_canary_with_an_incomplete_card(
    owner: TeamAccess, deployment: Deployment, blank: ModelVersion
) -> None:
    with pytest.raises(ValidationError):
        releases.promote(access=owner, deployment=deployment, version=blank, canary_share=10)
    deployment.refresh_from_db()
    assert deployment.canary_version is None


def test_promote_page_refuses_an_incomplete_card(
    alice: Any, login: Login, deployment: Deployment, blank: ModelVersion, model_version: ModelVersion
) -> None:
    response = login(alice).post(
        page_url("serving:deployment_promote", deployment.pk), {"model_version": blank.pk, "canary_share": 0}
    )
    assert response.status_code == 400
    assert INCOMPLETE in response.content.decode()
    deployment.refresh_from_db()
    assert deployment.model_version == model_version


def test_promote_api_refuses_an_incomplete_card(
    alice: Any, bearer: Any, deployment: Deployment, blank: ModelVersion, model_version: ModelVersion
) -> None:
    response = post_json(bearer(alice), f"deployments/{deployment.pk}/promote", {"model_version": blank.pk})
    assert response.status_code == 400
    assert response.json()["errors"]["model_version"][0].startswith(INCOMPLETE)
    deployment.refresh_from_db()
    assert deployment.model_version == model_version


def test_promote_api_publishes_once_the_card_is_complete(
    alice: Any, bearer: Any, deployment: Deployment, blank: ModelVersion
) -> None:
    client = bearer(alice)
    client.patch(f"/api/v1/teams/acme/model-versions/{blank.pk}", json.dumps(CARD_USES), "application/json")
    response = post_json(client, f"deployments/{deployment.pk}/promote", {"model_version": blank.pk})
    assert response.status_code == 200
    deployment.refresh_from_db()
    assert deployment.model_version == blank


def test_gate_check_on_the_page_warns_of_an_incomplete_card(
    alice: Any, login: Login, deployment: Deployment, blank: ModelVersion
) -> None:
    url = page_url("serving:deployment", deployment.pk) + f"?candidate={blank.pk}"
    page = login(alice).get(url).content.decode()
    assert 'id="candidate-card"' in page and "Model card incomplete" in page


def test_rollback_to_a_version_whose_card_was_emptied_still_works(
    owner: TeamAccess, deployment: Deployment, model_version: ModelVersion, acme: Team, alice: Any, base_model_row: Any
) -> None:
    _, newer = finished_job(acme, alice, base_model_row, sample_version(acme, alice, "chat"), name="support-next")
    releases.promote(access=owner, deployment=deployment, version=newer)
    ModelVersion.objects.for_team(acme).filter(pk=model_version.pk).update(out_of_scope="")
    releases.rollback(access=owner, deployment=deployment)
    deployment.refresh_from_db()
    assert deployment.model_version == model_version


def test_a_retrained_version_starts_with_the_card_of_the_version_it_replaces(
    owner: TeamAccess, model_version: ModelVersion
) -> None:
    from training_app import registry
    from training_app.models import TrainingJob

    source = model_version.job
    assert source is not None
    retrained = TrainingJob.objects.create(
        team=owner.team, name="support (retrained)", base_model=source.base_model, pool="cpu", config=source.config,
        dataset_version=source.dataset_version, cloned_from=source, created_by=owner.user,
    )  # fmt: skip
    version = registry.register_from_job(retrained, {"artifacts": {"adapter": "/nonexistent/adapter"}})
    assert (version.intended_use, version.out_of_scope, version.limitations) == (
        model_version.intended_use, model_version.out_of_scope, model_version.limitations,
    )  # fmt: skip
    assert not version.missing_card_fields
