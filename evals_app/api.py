"""REST endpoints for eval suites and runs under /api/v1/teams/<slug>/.

``GET eval-suites/`` lists the team's suites and ``POST eval-suites/`` creates one (``evals.run``): a dataset version
and graders, each ``{"grader": <spec>, "pass_rate": 0.8}``; a bad spec gets 400 naming the grader and its field.
``POST eval-suites/{id}/runs`` starts a run on model keys (``base:<id>``, ``version:<id>``, ``deployment:<id>``);
``GET eval-runs/{id}`` gives its progress and summary per model, ``GET eval-runs/{id}/results`` its answers with
each grader's verdict, page by page.

No ``from __future__ import annotations`` here: django-ninja reads the annotations at runtime.
"""

from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status
from ninja.pagination import paginate

from accounts.api import Error, ObjectId, Pagination, RequestBody, team_access
from accounts.http import client_ip
from accounts.roles import Perm
from evals_app import services
from evals_app.models import EvalResult, EvalRun, EvalSuite

router = Router(tags=["evals"])


class SuiteOut(Schema):
    id: int
    name: str
    description: str
    dataset_version_id: int
    graders: list[dict[str, Any]] = Field(description='Each {"grader": <spec>, "pass_rate": share of rows}.')
    created_by: str | None
    created_at: datetime

    @staticmethod
    def resolve_created_by(suite: EvalSuite) -> str | None:
        return suite.created_by.get_username() if suite.created_by else None


class SuiteIn(RequestBody):
    name: str = Field(max_length=120)
    description: str = Field("", max_length=2000)
    dataset_version: ObjectId = Field(description="A ready chat or instruction dataset version's id.")
    graders: list[Any] = Field(
        description='Graders: {"grader": {"type": "exact_match"}, "pass_rate": 0.8} or a bare spec.', max_length=10
    )


class RunIn(RequestBody):
    models: list[str] = Field(
        description="Model keys: base:<id>, version:<id>, deployment:<id>.", min_length=1, max_length=8
    )


class RunOut(Schema):
    id: int
    suite_id: int
    models: list[str]
    model_labels: dict[str, str]
    status: str
    rows_done: int
    rows_total: int
    error: str
    summary: dict[str, Any] = Field(description="Per model key: rows, errors, pass_rate, passed, and per grader.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_models(run: EvalRun) -> list[str]:
        return list(run.model_keys)

    @staticmethod
    def resolve_summary(run: EvalRun) -> dict[str, Any]:
        return services.current_summary(run)


class ResultOut(Schema):
    model: str
    row: int
    answer: str
    tool_calls: list[Any]
    verdicts: list[dict[str, Any]] = Field(description="Per grader: type, score, passed, reason, details.")
    passed: bool
    error: str
    latency_s: float | None

    @staticmethod
    def resolve_model(result: EvalResult) -> str:
        return result.model_key

    @staticmethod
    def resolve_row(result: EvalResult) -> int:
        return result.row_number


@router.get("teams/{slug}/eval-suites/", response={200: list[SuiteOut], 404: Error}, summary="List eval suites")
@paginate(Pagination)
def list_suites(request: HttpRequest, slug: str) -> QuerySet[EvalSuite]:
    """The team's eval suites, by name."""
    return services.visible_suites(team_access(request, slug))


@router.post(
    "teams/{slug}/eval-suites/",
    response={201: SuiteOut, 400: Error, 403: Error, 404: Error},
    summary="Create an eval suite",
)
def create_suite(request: HttpRequest, slug: str, body: SuiteIn) -> Status:
    """A suite on a dataset version with graders (owners, admins and members)."""
    access = team_access(request, slug)
    access.require(Perm.RUN_EVALS)
    version = services.eval_dataset_versions(access).filter(pk=body.dataset_version).first()
    if version is None:
        raise ValidationError({"dataset_version": "Choose a ready chat or instruction dataset version you may use."})
    suite = services.create_suite(
        access=access, name=body.name, description=body.description, dataset_version=version, graders=body.graders,
        ip=client_ip(request),
    )  # fmt: skip
    return Status(201, suite)


@router.post(
    "teams/{slug}/eval-suites/{suite_id}/runs",
    response={201: RunOut, 400: Error, 403: Error, 404: Error},
    summary="Run an eval suite",
)
def start_run(request: HttpRequest, slug: str, suite_id: ObjectId, body: RunIn) -> Status:
    """Run the suite on the given models (owners, admins and members; each model one they may use)."""
    access = team_access(request, slug)
    suite = get_object_or_404(services.visible_suites(access), pk=suite_id)
    run = services.start_run(access=access, suite=suite, model_keys=body.models, ip=client_ip(request))
    return Status(201, run)


@router.get("teams/{slug}/eval-runs/{run_id}", response={200: RunOut, 404: Error}, summary="Get an eval run")
def get_run(request: HttpRequest, slug: str, run_id: ObjectId) -> EvalRun:
    """A run's status, progress and summary per model."""
    return get_object_or_404(services.visible_runs(team_access(request, slug)), pk=run_id)


@router.get(
    "teams/{slug}/eval-runs/{run_id}/results", response={200: list[ResultOut], 404: Error}, summary="List results"
)
@paginate(Pagination)
def list_results(request: HttpRequest, slug: str, run_id: ObjectId) -> QuerySet[EvalResult]:
    """A run's answers with each grader's verdict, by row then model."""
    run = get_object_or_404(services.visible_runs(team_access(request, slug)), pk=run_id)
    return services.results_of(run)
