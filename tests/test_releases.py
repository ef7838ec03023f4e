"""Deployment releases: promotion through a gate, overrides, rollback, canaries, and their pages and API.

The gate reads finished eval runs (``evals_app.gates``); the runs here are stored rows with the summary a real run
writes (``evals_app.services.summarize``): running suites through the inference server is tested in
tests/test_evals.py. Routing /v1 requests by a canary's share is tested on ``releases.route`` with a seeded draw.
"""

from __future__ import annotations

import html
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client
from django.urls import reverse

from accounts import services as account_services
from accounts.models import AuditEvent, Team, TeamAPIKey
from accounts.permissions import TeamAccess, resolve_access
from accounts.roles import Role
from evals_app import gates
from evals_app.models import EvalRun, EvalSuite
from serving_app import deployments, releases
from serving_app.models import Deployment, Release, UsageRecord
from tests.factories import finished_job, member, sample_version
from training_app.models import BaseModel, ModelVersion

Login = Callable[[Any], Client]

pytestmark = pytest.mark.django_db


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def deployment(owner: TeamAccess, model_version: ModelVersion, key: TeamAPIKey) -> Deployment:
    return deployments.create_deployment(access=owner, name="support-bot", version=model_version, api_keys=[key])


@pytest.fixture
def candidate(acme: Team, alice: Any, base_model_row: BaseModel) -> ModelVersion:
    """A second version to publish: "support-next"."""
    _, version = finished_job(acme, alice, base_model_row, sample_version(acme, alice, "chat"), name="support-next")
    return version


@pytest.fixture
def suite(acme: Team, alice: Any) -> EvalSuite:
    return EvalSuite.objects.create(
        team=acme, name="faq answers", dataset_version=sample_version(acme, alice, "chat"),
        graders=[{"grader": {"type": "contains", "substring": "refund"}, "pass_rate": 0.8}], created_by=alice,
    )  # fmt: skip


@pytest.fixture
def admin(acme: Team) -> TeamAccess:
    """An admin (not an owner): manages deployments, may not override a gate."""
    return resolve_access(member(acme, Role.ADMIN, "adele"), acme.slug)


@pytest.fixture
def gated(owner: TeamAccess, deployment: Deployment, suite: EvalSuite) -> Deployment:
    """``deployment`` requiring 80 % of the suite's rows to pass."""
    gates.set_gate(access=owner, deployment=deployment, suites=[(suite.pk, 0.8)])
    return deployment


def finished_run(suite: EvalSuite, version: ModelVersion, pass_rate: float) -> EvalRun:
    """A finished run of ``suite`` on ``version`` whose summary says ``pass_rate`` of rows passed every grader."""
    key = f"version:{version.pk}"
    summary = {
        key: {
            "label": str(version), "rows": 10, "errors": 0, "passed_all": round(pass_rate * 10), "pass_rate": pass_rate,
            "passed": pass_rate >= 0.8,
            "graders": [{"type": "contains", "pass_rate": pass_rate, "required": 0.8, "ok": pass_rate >= 0.8}],
        }
    }  # fmt: skip
    return EvalRun.objects.create(
        team=suite.team, suite=suite, model_keys=[key], model_labels={key: str(version)}, graders=suite.graders,
        status=EvalRun.Status.SUCCEEDED, rows_total=10, rows_done=10, summary=summary,
    )  # fmt: skip


def _audit(team: Team, action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.for_team(team).filter(action=action).order_by("pk"))


def _url(name: str, *args: Any) -> str:
    return reverse(name, args=["acme", *args])


# --- gates --------------------------------------------------------------------------------------


def test_a_version_that_fails_the_gate_is_not_published_and_the_message_names_the_suite(
    owner: TeamAccess, gated: Deployment, suite: EvalSuite, candidate: ModelVersion, model_version: ModelVersion
) -> None:
    finished_run(suite, candidate, 0.5)

    with pytest.raises(ValidationError) as error:
        releases.promote(access=owner, deployment=gated, version=candidate)

    assert "faq answers" in error.value.message_dict["model_version"][0]
    assert "50%" in error.value.message_dict["model_version"][0]
    gated.refresh_from_db()
    assert gated.model_version == model_version


def test_a_version_never_run_through_the_suite_is_not_published(
    owner: TeamAccess, gated: Deployment, candidate: ModelVersion
) -> None:
    report = releases.check_gate(gated, candidate)
    assert report.pending and not report.passed

    with pytest.raises(ValidationError) as error:
        releases.promote(access=owner, deployment=gated, version=candidate)
    assert "not measured yet" in error.value.message_dict["model_version"][0]


def test_a_version_that_passes_is_promoted_with_its_report_in_the_history_and_the_audit_trail(
    owner: TeamAccess, gated: Deployment, suite: EvalSuite, candidate: ModelVersion, model_version: ModelVersion
) -> None:
    finished_run(suite, candidate, 0.9)

    release = releases.promote(access=owner, deployment=gated, version=candidate)

    gated.refresh_from_db()
    assert gated.model_version == candidate
    assert release.action == Release.Action.PROMOTED and release.previous_version == model_version
    assert release.gate["passed"] and release.gate["checks"][0]["name"] == "Suite “faq answers” ≥ 80%"
    (event,) = _audit(gated.team, "deployment.promoted")
    assert event.details["model_version_id"] == candidate.pk and event.details["previous"] == str(model_version)


def test_the_latest_finished_run_decides(
    owner: TeamAccess, gated: Deployment, suite: EvalSuite, candidate: ModelVersion
) -> None:
    finished_run(suite, candidate, 0.9)
    finished_run(suite, candidate, 0.6)  # a later run of the same version failed

    assert not releases.check_gate(gated, candidate).passed


def test_an_admin_cannot_override_the_gate(admin: TeamAccess, gated: Deployment, candidate: ModelVersion) -> None:
    with pytest.raises(PermissionDenied) as error:
        releases.promote(access=admin, deployment=gated, version=candidate, override_reason="urgent fix")

    assert "deployments.override" in str(error.value) and "Suite “faq answers”" in str(error.value)
    assert not _audit(gated.team, "deployment.gate_overridden")


def test_an_owners_override_publishes_the_failing_version_and_is_audited_with_the_reason(
    owner: TeamAccess, gated: Deployment, suite: EvalSuite, candidate: ModelVersion
) -> None:
    finished_run(suite, candidate, 0.5)

    release = releases.promote(
        access=owner, deployment=gated, version=candidate, override_reason="hotfix for the outage; suite re-run after"
    )

    gated.refresh_from_db()
    assert gated.model_version == candidate
    assert release.overridden and release.reason == "hotfix for the outage; suite re-run after"
    assert not release.gate["passed"]
    (event,) = _audit(gated.team, "deployment.gate_overridden")
    assert event.actor_label == "alice" and event.details["reason"] == release.reason
    assert event.details["failed"] == ["Suite “faq answers” ≥ 80%"]


def test_without_a_threshold_the_suites_own_pass_rates_decide(
    owner: TeamAccess, deployment: Deployment, suite: EvalSuite, candidate: ModelVersion
) -> None:
    gates.set_gate(access=owner, deployment=deployment, suites=[(suite.pk, None)])
    finished_run(suite, candidate, 0.7)  # the suite's grader wants 0.8

    (check,) = releases.check_gate(deployment, candidate).checks
    assert check.passed is False and "below the suite's pass rate: contains" in check.detail


def test_a_deleted_required_suite_fails_the_gate_until_it_is_edited(
    owner: TeamAccess, gated: Deployment, suite: EvalSuite, candidate: ModelVersion
) -> None:
    suite.delete()

    (check,) = releases.check_gate(gated, candidate).checks
    assert check.passed is False and check.name == "Suite “faq answers”" and "deleted" in check.detail


def test_setting_a_gate_refuses_another_teams_suite_and_bad_rates_naming_the_entry(
    owner: TeamAccess, deployment: Deployment, suite: EvalSuite, globex: Team, charlie: Any
) -> None:
    rival = EvalSuite.objects.create(team=globex, name="rival", dataset_version=sample_version(globex, charlie))

    with pytest.raises(ValidationError) as error:
        gates.set_gate(access=owner, deployment=deployment, suites=[(suite.pk, 0.8), (rival.pk, 0.5)])
    assert error.value.message_dict["suites"] == [f"Suite 2: no eval suite {rival.pk} in this team (GET eval-suites/)."]

    with pytest.raises(ValidationError) as error:
        gates.set_gate(access=owner, deployment=deployment, suites=[(suite.pk, 80)])
    assert "Suite 1 (faq answers): the pass rate is a share from 0 to 1" in error.value.message_dict["suites"][0]
    deployment.refresh_from_db()
    assert deployment.gate == {}


def test_changing_the_gate_is_audited_with_before_and_after(
    owner: TeamAccess, gated: Deployment, suite: EvalSuite
) -> None:
    gates.set_gate(access=owner, deployment=gated, suites=[], forgetting=True)

    before, after = (event.details for event in _audit(gated.team, "deployment.gate_changed"))
    assert before["after"]["suites"][0]["suite"] == suite.pk
    assert after["before"] == before["after"] and after["after"] == {"forgetting": True}


def test_missing_suites_are_started_on_the_version_beside_the_current_one(
    owner: TeamAccess, gated: Deployment, suite: EvalSuite, candidate: ModelVersion, model_version: ModelVersion
) -> None:
    (run,) = gates.run_missing(access=owner, deployment=gated, version=candidate)

    assert run.suite == suite and run.model_keys == [f"version:{candidate.pk}", f"version:{model_version.pk}"]
    (check,) = releases.check_gate(gated, candidate).checks
    assert check.passed is None and check.detail.startswith("running now")
    assert gates.run_missing(access=owner, deployment=gated, version=candidate) == []  # not started twice


# --- rollback -----------------------------------------------------------------------------------


def test_rollback_restores_the_previous_version_in_one_step(
    owner: TeamAccess, deployment: Deployment, candidate: ModelVersion, model_version: ModelVersion
) -> None:
    releases.promote(access=owner, deployment=deployment, version=candidate)

    release = releases.rollback(access=owner, deployment=deployment)

    deployment.refresh_from_db()
    assert deployment.model_version == model_version
    assert release.action == Release.Action.ROLLED_BACK and release.previous_version == candidate
    (event,) = _audit(deployment.team, "deployment.rolled_back")
    assert event.details["model_version_id"] == model_version.pk
    actions = [r.action for r in releases.history(deployment)]
    assert actions == [Release.Action.ROLLED_BACK, Release.Action.PROMOTED, Release.Action.CREATED]


def test_rollback_needs_no_gate_but_only_goes_to_a_version_the_deployment_served(
    owner: TeamAccess,
    deployment: Deployment,
    suite: EvalSuite,
    candidate: ModelVersion,
    model_version: ModelVersion,
    acme: Team,
    alice: Any,
    base_model_row: BaseModel,
) -> None:
    releases.promote(access=owner, deployment=deployment, version=candidate)
    gates.set_gate(access=owner, deployment=deployment, suites=[(suite.pk, 0.8)])  # the old version never ran it
    _, stranger = finished_job(acme, alice, base_model_row, sample_version(acme, alice, "chat"), name="other")

    with pytest.raises(ValidationError) as error:
        releases.rollback(access=owner, deployment=deployment, version=stranger)
    assert "never served “support-bot”" in error.value.message_dict["model_version"][0]

    releases.rollback(access=owner, deployment=deployment, version=model_version)
    deployment.refresh_from_db()
    assert deployment.model_version == model_version


def test_a_new_deployment_has_nothing_to_roll_back_to(owner: TeamAccess, deployment: Deployment) -> None:
    with pytest.raises(ValidationError) as error:
        releases.rollback(access=owner, deployment=deployment)
    assert error.value.message_dict["model_version"] == ["“support-bot” has served no other version that still exists."]


# --- canaries -----------------------------------------------------------------------------------


def test_a_canary_takes_its_share_of_requests(
    owner: TeamAccess, deployment: Deployment, candidate: ModelVersion, model_version: ModelVersion
) -> None:
    releases.promote(access=owner, deployment=deployment, version=candidate, canary_share=20)
    deployment.refresh_from_db()
    draw = random.Random(7).random

    routed = [releases.route(deployment, draw) for _ in range(10_000)]

    canary = sum(1 for version in routed if version == candidate)
    assert 1_850 <= canary <= 2_150  # 20 % ± 1.5 points: about 4 standard deviations at n = 10,000
    assert set(routed) == {candidate, model_version}


def test_a_keys_deployment_comes_with_its_canary_ready_to_route(
    owner: TeamAccess,
    deployment: Deployment,
    candidate: ModelVersion,
    model_version: ModelVersion,
    django_assert_num_queries: Any,
) -> None:
    # /v1 reads the canary only for a deployment that has one; routing and serving it then read nothing more.
    releases.promote(access=owner, deployment=deployment, version=candidate, canary_share=50)
    key, _ = account_services.create_team_api_key(access=owner, name="widget", deployments=[deployment])

    found = deployments.find_deployment_for_key(key, "support-bot")

    assert found is not None
    with django_assert_num_queries(0):
        routed = {
            (version.pk, version.base_model.name)
            for version in (found.model_version, found.canary_version)
            if version is not None
        }
        team = found.team.slug
    assert routed == {(model_version.pk, model_version.base_model.name), (candidate.pk, candidate.base_model.name)}
    assert team == "acme"


def test_without_a_canary_every_request_goes_to_the_current_version(
    deployment: Deployment, model_version: ModelVersion
) -> None:
    draw = random.Random(7).random
    assert {releases.route(deployment, draw) for _ in range(1_000)} == {model_version}


def test_promoting_the_canary_sends_it_all_traffic_and_stopping_one_returns_to_the_current_version(
    owner: TeamAccess, deployment: Deployment, candidate: ModelVersion, model_version: ModelVersion
) -> None:
    started = releases.promote(access=owner, deployment=deployment, version=candidate, canary_share=10)
    assert started.action == Release.Action.CANARY_STARTED
    releases.stop_canary(access=owner, deployment=deployment)
    assert (deployment.model_version, deployment.canary_version, deployment.canary_share) == (model_version, None, 0)

    releases.promote(access=owner, deployment=deployment, version=candidate, canary_share=10)
    releases.promote(access=owner, deployment=deployment, version=candidate)

    assert (deployment.model_version, deployment.canary_version, deployment.canary_share) == (candidate, None, 0)
    assert [event.action for event in AuditEvent.objects.for_team(deployment.team).order_by("pk")][-4:] == [
        "deployment.canary_started", "deployment.canary_stopped", "deployment.canary_started", "deployment.promoted",
    ]  # fmt: skip


def test_the_canarys_requests_are_counted_apart(
    owner: TeamAccess, deployment: Deployment, candidate: ModelVersion, model_version: ModelVersion, key: TeamAPIKey
) -> None:
    releases.promote(access=owner, deployment=deployment, version=candidate, canary_share=30)
    for version, ok in ((model_version, True), (model_version, True), (candidate, False)):
        request = deployments.start_api_request(key=key, deployment=deployment, version=version)
        deployments.finish_api_request(request.record, ok=ok, prompt_tokens=5, completion_tokens=7)

    current, canary = releases.canary_traffic(deployment)

    assert (current.role, current.requests, current.failed, current.completion_tokens) == ("current", 2, 0, 14)
    assert (canary.role, canary.requests, canary.failed, canary.failure_rate) == ("canary", 1, 1, 1.0)
    assert UsageRecord.objects.for_team(deployment.team).filter(model_version=candidate).count() == 1


def test_a_canary_share_out_of_range_is_refused(
    owner: TeamAccess, deployment: Deployment, candidate: ModelVersion
) -> None:
    with pytest.raises(ValidationError) as error:
        releases.promote(access=owner, deployment=deployment, version=candidate, canary_share=100)
    assert error.value.message_dict["canary_share"] == ["Use 0 (all traffic) to 99 % for a canary; this is 100."]


def test_a_member_cannot_promote(acme: Team, bob: Any, deployment: Deployment, candidate: ModelVersion) -> None:
    with pytest.raises(PermissionDenied):
        releases.promote(access=resolve_access(bob, acme.slug), deployment=deployment, version=candidate)


# --- pages --------------------------------------------------------------------------------------


def test_the_deployment_page_checks_a_candidate_against_the_gate_and_lists_the_history(
    alice: Any, login: Login, gated: Deployment, suite: EvalSuite, candidate: ModelVersion
) -> None:
    finished_run(suite, candidate, 0.5)

    page = login(alice).get(_url("serving:deployment", gated.pk), {"candidate": candidate.pk}).content.decode()

    assert "fails the gate" in page and "Suite “faq answers” ≥ 80%" in page and "50% of rows pass" in page
    assert 'id="release-history"' in page and "Deployed" in page


def test_promoting_a_failing_version_from_the_page_shows_why_and_keeps_the_current_one(
    alice: Any, login: Login, gated: Deployment, suite: EvalSuite, candidate: ModelVersion, model_version: ModelVersion
) -> None:
    finished_run(suite, candidate, 0.5)

    response = login(alice).post(
        _url("serving:deployment_promote", gated.pk), {"model_version": candidate.pk, "canary_share": 0}
    )

    assert response.status_code == 400
    assert "does not pass “support-bot”'s gate" in html.unescape(response.content.decode())
    gated.refresh_from_db()
    assert gated.model_version == model_version


def test_the_page_promotes_a_canary_and_rolls_back(
    alice: Any, login: Login, deployment: Deployment, candidate: ModelVersion, model_version: ModelVersion
) -> None:
    client = login(alice)
    response = client.post(
        _url("serving:deployment_promote", deployment.pk), {"model_version": candidate.pk, "canary_share": 25}
    )
    assert response.status_code == 302
    page = client.get(_url("serving:deployment", deployment.pk)).content.decode()
    assert "takes <b>25 %</b>" in page and 'id="canary-traffic"' in page

    client.post(_url("serving:deployment_promote", deployment.pk), {"model_version": candidate.pk, "canary_share": 0})
    client.post(_url("serving:deployment_rollback", deployment.pk))

    deployment.refresh_from_db()
    assert deployment.model_version == model_version and deployment.canary_version is None


def test_the_gate_page_saves_suites_with_their_rates(
    alice: Any, login: Login, deployment: Deployment, suite: EvalSuite
) -> None:
    response = login(alice).post(
        _url("evals:gate", deployment.pk), {f"suite_{suite.pk}": "on", f"rate_{suite.pk}": "75", "forgetting": "on"}
    )

    assert response.status_code == 302
    deployment.refresh_from_db()
    assert deployment.gate == {
        "suites": [{"suite": suite.pk, "name": "faq answers", "min_pass_rate": 0.75}],
        "forgetting": True,
    }


def test_a_member_reads_the_gate_but_gets_no_promote_form(bob: Any, login: Login, gated: Deployment) -> None:
    client = login(bob)
    page = client.get(_url("serving:deployment", gated.pk)).content.decode()

    assert "faq answers" in page and 'id="promote"' not in page
    assert client.get(_url("evals:gate", gated.pk)).status_code == 403


# --- API ----------------------------------------------------------------------------------------


def _api(client: Client, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    payload = {"data": json.dumps(body), "content_type": "application/json"} if body is not None else {}
    return getattr(client, method)(f"/api/v1/teams/acme/{path}", **payload)


def test_the_api_sets_a_gate_checks_promotes_and_lists_the_releases(
    alice: Any, login: Login, deployment: Deployment, suite: EvalSuite, candidate: ModelVersion
) -> None:
    client = login(alice)
    gate = _api(
        client, "put", f"deployments/{deployment.pk}/gate", {"suites": [{"suite": suite.pk, "min_pass_rate": 0.8}]}
    )
    assert gate.status_code == 200 and gate.json()["suites"][0]["name"] == "faq answers"

    refused = _api(client, "post", f"deployments/{deployment.pk}/promote", {"model_version": candidate.pk})
    assert refused.status_code == 400 and "not measured yet" in json.dumps(refused.json())

    finished_run(suite, candidate, 1.0)
    check = _api(client, "get", f"deployments/{deployment.pk}/gate-check/{candidate.pk}")
    assert [entry["passed"] for entry in check.json()] == [True]
    promoted = _api(
        client, "post", f"deployments/{deployment.pk}/promote", {"model_version": candidate.pk, "canary_share": 5}
    )
    assert promoted.status_code == 200 and promoted.json()["canary"]["share"] == 5

    history = _api(client, "get", f"deployments/{deployment.pk}/releases").json()
    assert [entry["action"] for entry in history] == ["canary_started", "created"]
    assert history[0]["gate"]["passed"] is True


def test_a_version_running_as_a_canary_cannot_be_deleted(
    owner: TeamAccess, deployment: Deployment, candidate: ModelVersion
) -> None:
    from training_app import registry

    releases.promote(access=owner, deployment=deployment, version=candidate, canary_share=10)

    with pytest.raises(ValidationError) as error:
        registry.delete_version(access=owner, version=candidate)
    assert "is published as support-bot" in error.value.messages[0]
    assert ModelVersion.objects.for_team(deployment.team).filter(pk=candidate.pk).exists()
