"""The REST API keeps its contract: schemathesis over /api/v1/openapi.json with a valid token.

Every operation is called in-process (WSGI, from the engine's threads, so the seeded rows are committed)
with examples, boundary values and fuzzed data, valid and invalid: no answer may be a server error, a status
or content type the schema does not document, a body that does not match its schema, or a success for data
the schema forbids.
The team is seeded with one object of each kind, and id parameters draw from their ids half of the time, so
the routes that take an id run past their 404.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import DEFAULT_DB_ALIAS, close_old_connections, connections
from schemathesis.engine import Status, events

from accounts import services as account_services
from accounts.models import Invitation, Team
from accounts.permissions import resolve_access
from serving_app import deployments
from tests.factories import finished_job, sample_version
from training_app.models import BaseModel, ModelVersion

# --- what schemathesis found, one test each ---------------------------------------------------------


def test_unknown_api_route_gets_a_json_404(alice: Any, bearer: Any) -> None:
    response = bearer(alice).get("/api/v1/no-such-route/")
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found."}


@pytest.mark.parametrize("route", ["jobs", "model-versions", "audit-events/"])
@pytest.mark.parametrize("field, value", [("offset", "99999999999999999999"), ("limit", str(2**63))])
def test_overflowing_page_parameter_gets_422_naming_it(
    alice: Any, bearer: Any, route: str, field: str, value: str
) -> None:
    response = bearer(alice).get(f"/api/v1/teams/acme/{route}", {field: value})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", field]


def test_key_naming_an_overflowing_deployment_id_gets_422(alice: Any, bearer: Any) -> None:
    response = bearer(alice).post(
        "/api/v1/teams/acme/keys/",
        data=json.dumps({"name": "ci", "deployments": [2**63]}),
        content_type="application/json",
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "body", "deployments", 0]


def test_body_over_the_upload_limit_gets_413_saying_so(alice: Any, bearer: Any, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    response = bearer(alice).post(
        "/api/v1/teams/acme/keys/", data=json.dumps({"name": "x" * 2048}), content_type="application/json"
    )
    assert response.status_code == 413
    assert response.json() == {"detail": "The request body is too large."}


@pytest.mark.parametrize("junk", ["0{}", "%09{}", "+{}", "{}%20"])
def test_path_id_that_is_not_plain_digits_is_refused(
    alice: Any, acme: Team, bearer: Any, base_model_row: BaseModel, junk: str
) -> None:
    _, version = finished_job(acme, alice, base_model_row, sample_version(acme, alice, "chat"))
    response = bearer(alice).delete(f"/api/v1/teams/acme/model-versions/{junk.format(version.pk)}")
    assert response.status_code == 422
    assert ModelVersion.objects.for_team(acme).filter(pk=version.pk).exists()


def test_json_string_as_invitation_body_is_refused(alice: Any, acme: Team, bearer: Any) -> None:
    response = bearer(alice).post("/api/v1/teams/acme/invitations/", data='"member"', content_type="application/json")
    assert response.status_code == 422
    assert not Invitation.objects.for_team(acme).exists()


def test_bare_number_as_dataset_patch_body_is_refused(alice: Any, acme: Team, bearer: Any) -> None:
    dataset_id = sample_version(acme, alice, "chat").dataset_id
    response = bearer(alice).patch(
        f"/api/v1/teams/acme/datasets/{dataset_id}", data="5", content_type="application/json"
    )
    assert response.status_code == 422


def test_nul_character_in_a_query_parameter_gets_422_not_500(alice: Any, bearer: Any) -> None:
    response = bearer(alice).get("/api/v1/teams/acme/audit-events/", {"action": "key\x00"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "action"]


def test_every_operation_documents_the_errors_it_can_answer(alice: Any, bearer: Any) -> None:
    document = bearer(alice).get("/api/v1/openapi.json").json()
    missing = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            expected = {"422"} if operation.get("parameters") or operation.get("requestBody") else set()
            expected |= {"401", "403"} if operation.get("security") else set()
            expected |= {"404"} if "{" in path else set()
            missing += [f"{method.upper()} {path}: {status}" for status in expected - set(operation["responses"])]
    assert missing == []


# --- the whole API ----------------------------------------------------------------------------------

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
]


@pytest.fixture
def seeded_ids(acme: Team, alice: Any, bob: Any, base_model_row: BaseModel) -> dict[str, list[int | str]]:
    """One team with a few objects of each kind; the values each path parameter may take from them."""
    owner = resolve_access(alice, acme.slug)
    chat = sample_version(acme, alice, "chat")
    text = sample_version(acme, alice, "preference")
    job, model_version = finished_job(acme, alice, base_model_row, chat)
    key, _ = account_services.create_team_api_key(access=owner, name="ci")
    deployment = deployments.create_deployment(access=owner, name="support-bot", version=model_version, api_keys=[key])
    invitation, _ = account_services.create_invitation(access=owner, role="member")
    return {
        "slug": [acme.slug],
        "username": [bob.username],
        "dataset_id": [chat.dataset_id, text.dataset_id],
        "number": [1],
        "job_id": [job.pk],
        "version_id": [model_version.pk],
        "model_id": [base_model_row.pk],
        "key_id": [key.pk],
        "deployment_id": [deployment.pk],
        "invitation_id": [invitation.pk],
    }


def contract_config(token: str, seeded_ids: dict[str, list[int | str]]) -> schemathesis.Config:
    """Few examples per operation, a fixed seed, the five contract checks; id parameters from the seeded rows."""
    return schemathesis.Config.from_dict(
        {
            "seed": 2026,
            "headers": {"Authorization": f"Bearer {token}"},
            "generation": {"mode": "all", "max-examples": 5, "deterministic": True},
            "phases": {
                "coverage": {"unexpected-methods": [], "generate-duplicate-query-parameters": False},
                # Ninja names a body field ``["body", "body", "field"]`` in its 422s; learning from that, the
                # fuzzer nests bodies under "body" and then takes its own valid request for an invalid one.
                "fuzzing": {"error-feedback": {"enabled": False}},
                "stateful": {"enabled": False},
            },
            "checks": {"enabled": False, **{name: {"enabled": True} for name in CHECKS}},
            "dictionaries": {name: {"values": values} for name, values in seeded_ids.items()},
            "parameters": {
                f"path.{name}": {"dictionary": name, "probability": 1.0 if name == "slug" else 0.5}
                for name in seeded_ids
            },
        }
    )


def contract_failures(schema: Any) -> list[str]:
    """Run schemathesis' engine over ``schema``; one line per failed check (operation, check, what happened)."""
    failures = []
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure, sample = check.failure_info.failure, check.failure_info.code_sample
                        failures.append(
                            f"{event.recorder.label}: {check.name}: {failure.title}: {failure.message}\n{sample}"
                        )
        elif isinstance(event, events.NonFatalError | events.FatalError):
            failures.append(f"engine error: {event}")
    return failures


@contextlib.contextmanager
def connections_kept_across_requests() -> Iterator[None]:
    """What Django's test client does for its requests: a connection kept from one request to the next. Django
    closes it at the end of each (``CONN_MAX_AGE`` 0), and a new PostgreSQL connection costs a server process,
    5 ms here, on every request. The engine's threads open their own, closed at the end."""
    opened: set[Any] = set()

    def remember(**kwargs: Any) -> None:
        opened.add(connections[DEFAULT_DB_ALIAS])  # the requesting thread's own

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    request_started.connect(remember)
    try:
        yield
    finally:
        request_started.disconnect(remember)
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
        for wrapper in opened:
            if wrapper is not connections[DEFAULT_DB_ALIAS]:
                wrapper.inc_thread_sharing()  # closing another thread's connection, now that it is done
                wrapper.close()


@pytest.mark.slow  # schemathesis: over a minute of generated requests
@pytest.mark.django_db(transaction=True)  # the engine calls the app from its own threads
def test_api_conforms_to_its_schema(alice: Any, seeded_ids: dict[str, list[int | str]]) -> None:
    _, token = account_services.create_personal_token(user=alice, name="schemathesis")
    schema = schemathesis.openapi.from_wsgi(
        "/api/v1/openapi.json", WSGIHandler(), config=contract_config(token, seeded_ids)
    )
    # Revoking tokens or leaving the team would end the test's own access.
    schema = schema.exclude(method="DELETE", path_regex=r"/tokens/|/members/")
    with connections_kept_across_requests():
        failures = sorted(set(contract_failures(schema)))
    assert not failures, "\n".join(failures)
