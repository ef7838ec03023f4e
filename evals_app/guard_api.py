"""REST endpoints for guard tests: ``POST``/``GET deployments/{id}/guard-tests`` (``evals_app.guard_tests``).

No ``from __future__ import annotations`` here: django-ninja reads the annotations at runtime.
"""

from datetime import datetime
from typing import Any

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Schema, Status

from accounts.api import Error, ObjectId, RequestBody, team_access
from accounts.http import client_ip
from evals_app import guard_tests, services
from evals_app.models import GuardTest
from serving_app import deployments

router = Router(tags=["guardrails"])


class GuardTestIn(RequestBody):
    suite: ObjectId


class GuardTestOut(Schema):
    id: int
    suite: str
    revision: int
    allowed: int
    disallowed: int
    false_positives: int
    false_negatives: int
    false_positive_rate: float | None
    false_negative_rate: float | None
    rows: list[dict[str, Any]]
    created_at: datetime


def _out(test: GuardTest) -> dict[str, Any]:
    return {
        "id": test.pk, "suite": test.suite_name, "revision": test.revision, "allowed": test.allowed,
        "disallowed": test.disallowed, "false_positives": test.false_positives,
        "false_negatives": test.false_negatives, "false_positive_rate": test.false_positive_rate,
        "false_negative_rate": test.false_negative_rate, "rows": test.rows, "created_at": test.created_at,
    }  # fmt: skip


@router.post("teams/{slug}/deployments/{deployment_id}/guard-tests",
             response={201: GuardTestOut, 400: Error, 403: Error, 404: Error},
             summary="Test a deployment's guard policy on an eval suite")  # fmt: skip
def run_guard_test(request: HttpRequest, slug: str, deployment_id: ObjectId, body: GuardTestIn) -> Status:
    """Rows whose reference is BLOCK should be refused, the others let through; the rates are kept."""
    access = team_access(request, slug)
    deployment = get_object_or_404(deployments.visible_deployments(access), pk=deployment_id)
    suite = get_object_or_404(services.visible_suites(access), pk=body.suite)
    test = guard_tests.run_test(access=access, deployment=deployment, suite=suite, ip=client_ip(request))
    return Status(201, _out(test))


@router.get("teams/{slug}/deployments/{deployment_id}/guard-tests",
            response={200: list[GuardTestOut], 403: Error, 404: Error}, summary="A guard policy's tests")  # fmt: skip
def list_guard_tests(request: HttpRequest, slug: str, deployment_id: ObjectId) -> list[dict[str, Any]]:
    access = team_access(request, slug)
    deployment = get_object_or_404(deployments.visible_deployments(access), pk=deployment_id)
    return [_out(test) for test in guard_tests.tests_of(deployment)]
