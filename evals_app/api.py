"""REST endpoints for eval suites and runs under /api/v1/teams/<slug>/.

``GET eval-suites/`` lists the team's suites and ``POST eval-suites/`` creates one (``evals.run``): a dataset version
and graders, each ``{"grader": <spec>, "pass_rate": 0.8}``; a bad spec gets 400 naming the grader and its field.
``POST eval-suites/{id}/runs`` starts a run on model keys (``base:<id>``, ``version:<id>``, ``deployment:<id>``);
``GET eval-runs/{id}`` gives its progress and summary per model, ``GET eval-runs/{id}/results`` its answers with
each grader's verdict, page by page. A suite's ``base_models`` makes it a regression suite of those base models.

Quality checks: ``GET``/``PUT evals-policy`` (the team's limits; changing them takes ``team.change``);
``POST model-versions/{id}/forgetting-checks`` checks a version now, ``GET`` lists its checks; ``probe-sets/``
(list, create, ``POST probe-sets/default`` for the studio's set, get, ``PUT``, ``DELETE``), ``POST
probe-sets/{id}/runs`` probes one model, ``GET probe-runs/{id}`` gives its report.

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
from evals_app import bias, forgetting, services
from evals_app.models import EvalResult, EvalRun, EvalsPolicy, EvalSuite, ForgettingCheck, ProbeRun, ProbeSet
from evals_app.policy import team_policy, update_policy
from training_app.services import visible_versions

router = Router(tags=["evals"])


class SuiteOut(Schema):
    id: int
    name: str
    description: str
    dataset_version_id: int
    graders: list[dict[str, Any]] = Field(description='Each {"grader": <spec>, "pass_rate": share of rows}.')
    base_models: list[int] = Field(description="Ids of the base models it is a regression suite of.")
    created_by: str | None
    created_at: datetime

    @staticmethod
    def resolve_created_by(suite: EvalSuite) -> str | None:
        return suite.created_by.get_username() if suite.created_by else None

    @staticmethod
    def resolve_base_models(suite: EvalSuite) -> list[int]:
        return sorted(model.pk for model in suite.base_models.all())


class SuiteIn(RequestBody):
    name: str = Field(max_length=120)
    description: str = Field("", max_length=2000)
    dataset_version: ObjectId = Field(description="A ready chat or instruction dataset version's id.")
    graders: list[Any] = Field(
        description='Graders: {"grader": {"type": "exact_match"}, "pass_rate": 0.8} or a bare spec.', max_length=10
    )
    base_models: list[ObjectId] = Field(
        default_factory=list, max_length=50,
        description="Base models this suite guards: their versions' forgetting checks run it.",
    )  # fmt: skip


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
        base_models=_base_models(access, body.base_models), ip=client_ip(request),
    )  # fmt: skip
    return Status(201, suite)


def _base_models(access: Any, ids: list[int]) -> list[Any]:
    found = {model.pk: model for model in services.regression_base_models(access).filter(pk__in=ids)}
    missing = [pk for pk in ids if pk not in found]
    if missing:
        raise ValidationError({"base_models": f"Base model {missing[0]}: not a ready base model the team may use."})
    return [found[pk] for pk in dict.fromkeys(ids)]


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


# --- quality limits -------------------------------------------------------------------------------------------


class PolicyOut(Schema):
    max_perplexity_increase: float = Field(description="Share the version's perplexity may rise by (0.10 = 10 %).")
    max_pass_rate_drop: float = Field(description="Share a regression suite's pass rate may drop by (0.05 = 5 points).")
    max_bias_gap: float = Field(description="Largest gap between groups a bias probe may show, on a 0..1 scale.")
    check_after_training: bool


class PolicyIn(RequestBody):
    # Strict: a JSON true is not a limit of 1, nor 0 a "no".
    max_perplexity_increase: float = Field(ge=0, le=10, strict=True)
    max_pass_rate_drop: float = Field(ge=0, le=1, strict=True)
    max_bias_gap: float = Field(ge=0, le=1, strict=True)
    check_after_training: bool = Field(True, strict=True)


@router.get("teams/{slug}/evals-policy", response={200: PolicyOut, 404: Error}, summary="Get the quality limits")
def get_policy(request: HttpRequest, slug: str) -> EvalsPolicy:
    """The team's limits for the forgetting check and the bias probe (the defaults until an admin saves some)."""
    return team_policy(team_access(request, slug).team)


@router.put(
    "teams/{slug}/evals-policy", response={200: PolicyOut, 400: Error, 403: Error, 404: Error},
    summary="Set the quality limits",
)  # fmt: skip
def put_policy(request: HttpRequest, slug: str, body: PolicyIn) -> EvalsPolicy:
    """Save the team's limits (owners and admins)."""
    return update_policy(access=team_access(request, slug), ip=client_ip(request), **body.dict())


# --- forgetting checks ----------------------------------------------------------------------------------------


class CheckOut(Schema):
    id: int
    model_version_id: int
    trigger: str
    status: str
    flagged: bool
    reasons: list[str] = Field(description="One line per limit passed, e.g. 'Perplexity 41.2 → 58.9 (+43 %, …)'.")
    notes: list[str]
    perplexity_before: float | None
    perplexity_after: float | None
    corpus_tokens: int
    suite_results: list[dict[str, Any]] = Field(description="Per regression suite: before, after (pass rates), drop.")
    limits: dict[str, float]
    error: str
    created_at: datetime
    finished_at: datetime | None


def _version(request: HttpRequest, slug: str, version_id: int) -> tuple[Any, Any]:
    access = team_access(request, slug)
    return access, get_object_or_404(visible_versions(access), pk=version_id)


@router.get(
    "teams/{slug}/model-versions/{version_id}/forgetting-checks",
    response={200: list[CheckOut], 404: Error}, summary="List a version's forgetting checks",
)  # fmt: skip
def list_checks(request: HttpRequest, slug: str, version_id: ObjectId) -> list[ForgettingCheck]:
    """The version's forgetting checks, newest first."""
    access, version = _version(request, slug, version_id)
    return forgetting.checks_of(access, version)


@router.post(
    "teams/{slug}/model-versions/{version_id}/forgetting-checks",
    response={201: CheckOut, 403: Error, 404: Error}, summary="Check a version for forgetting",
)  # fmt: skip
def start_check(request: HttpRequest, slug: str, version_id: ObjectId) -> Status:
    """Start a forgetting check of the version now (owners, admins and members who may use it)."""
    access, version = _version(request, slug, version_id)
    return Status(201, forgetting.start_check(access=access, version=version, ip=client_ip(request)))


# --- bias probes ----------------------------------------------------------------------------------------------


class ProbeGroup(Schema):
    category: str = Field(max_length=60, description="Groups of one category are compared, e.g. gender.")
    group: str = Field(max_length=60)
    terms: list[str] = Field(max_length=12, description="What fills {person}, e.g. 'a woman', 'Maria'.")


class ProbeSetIn(RequestBody):
    name: str = Field(max_length=120)
    description: str = Field("", max_length=2000)
    templates: list[str] = Field(max_length=20, description="Requests with {person} where the person goes.")
    groups: list[ProbeGroup] = Field(max_length=30)


class ProbeSetOut(Schema):
    id: int
    name: str
    description: str
    templates: list[str]
    groups: list[dict[str, Any]]
    prompt_count: int
    created_at: datetime


class ProbeRunIn(RequestBody):
    model: str = Field(max_length=40, description="A model key: base:<id>, version:<id>, deployment:<id>.")
    graders: list[Any] = Field(default_factory=list, max_length=10, description="Optional grader specs.")


class ProbeRunOut(Schema):
    id: int
    probe_set_id: int | None
    model: str
    model_label: str
    model_version_id: int | None
    status: str
    rows_done: int
    rows_total: int
    max_gap: float | None = Field(description="Largest gap between groups over every measure (0..1 scale).")
    summary: dict[str, Any] = Field(description="Per category: each group's means with 95 % intervals, the gaps.")
    error: str
    created_at: datetime
    finished_at: datetime | None

    @staticmethod
    def resolve_model(run: ProbeRun) -> str:
        return run.model_key


def _probe_set(request: HttpRequest, slug: str, set_id: int) -> tuple[Any, ProbeSet]:
    access = team_access(request, slug)
    return access, get_object_or_404(bias.visible_sets(access), pk=set_id)


@router.get("teams/{slug}/probe-sets/", response={200: list[ProbeSetOut], 404: Error}, summary="List probe sets")
@paginate(Pagination)
def list_probe_sets(request: HttpRequest, slug: str) -> QuerySet[ProbeSet]:
    """The team's probe sets, by name."""
    return bias.visible_sets(team_access(request, slug))


@router.post(
    "teams/{slug}/probe-sets/", response={201: ProbeSetOut, 400: Error, 403: Error, 404: Error},
    summary="Create a probe set",
)  # fmt: skip
def create_probe_set(request: HttpRequest, slug: str, body: ProbeSetIn) -> Status:
    """A probe set (owners, admins and members); 400 names the template or group to fix."""
    probe_set = bias.create_set(
        access=team_access(request, slug), name=body.name, description=body.description, templates=body.templates,
        groups=[group.dict() for group in body.groups], ip=client_ip(request),
    )  # fmt: skip
    return Status(201, probe_set)


@router.post(
    "teams/{slug}/probe-sets/default", response={201: ProbeSetOut, 403: Error, 404: Error},
    summary="Add the default probe set",
)  # fmt: skip
def create_default_probe_set(request: HttpRequest, slug: str) -> Status:
    """Copy the studio's default probe set (gender, origin, age, religion) into the team."""
    return Status(201, bias.create_default_set(access=team_access(request, slug), ip=client_ip(request)))


@router.get("teams/{slug}/probe-sets/{set_id}", response={200: ProbeSetOut, 404: Error}, summary="Get a probe set")
def get_probe_set(request: HttpRequest, slug: str, set_id: ObjectId) -> ProbeSet:
    """A probe set's templates and groups."""
    return _probe_set(request, slug, set_id)[1]


@router.put(
    "teams/{slug}/probe-sets/{set_id}", response={200: ProbeSetOut, 400: Error, 403: Error, 404: Error},
    summary="Change a probe set",
)  # fmt: skip
def update_probe_set(request: HttpRequest, slug: str, set_id: ObjectId, body: ProbeSetIn) -> ProbeSet:
    """Replace a probe set's name, templates and groups (finished runs keep theirs)."""
    access, probe_set = _probe_set(request, slug, set_id)
    return bias.update_set(
        access=access, probe_set=probe_set, name=body.name, description=body.description, templates=body.templates,
        groups=[group.dict() for group in body.groups], ip=client_ip(request),
    )  # fmt: skip


@router.delete(
    "teams/{slug}/probe-sets/{set_id}", response={204: None, 403: Error, 404: Error}, summary="Delete a probe set"
)
def delete_probe_set(request: HttpRequest, slug: str, set_id: ObjectId) -> Status:
    """Delete a probe set; its runs stay."""
    access, probe_set = _probe_set(request, slug, set_id)
    bias.delete_set(access=access, probe_set=probe_set, ip=client_ip(request))
    return Status(204, None)


@router.post(
    "teams/{slug}/probe-sets/{set_id}/runs", response={201: ProbeRunOut, 400: Error, 403: Error, 404: Error},
    summary="Probe a model for bias",
)  # fmt: skip
def start_probe(request: HttpRequest, slug: str, set_id: ObjectId, body: ProbeRunIn) -> Status:
    """Run the probe set on one model the actor may use (owners, admins and members)."""
    access, probe_set = _probe_set(request, slug, set_id)
    run = bias.start_probe(
        access=access, probe_set=probe_set, model_key=body.model, graders=body.graders, ip=client_ip(request)
    )
    return Status(201, run)


@router.get("teams/{slug}/probe-runs/{run_id}", response={200: ProbeRunOut, 404: Error}, summary="Get a probe run")
def get_probe_run(request: HttpRequest, slug: str, run_id: ObjectId) -> ProbeRun:
    """A probe run's progress and, once finished, its report."""
    return get_object_or_404(bias.visible_probe_runs(team_access(request, slug)), pk=run_id)
