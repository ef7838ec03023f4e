"""REST endpoints for distillation under /api/v1/teams/<slug>/distillations.

``POST distillations`` has a teacher (a model key) answer a dataset version of prompts, keeping the answers that
pass the graders, redacted, as a new chat dataset version (``evals.run`` and ``datasets.upload``); ``GET
distillations/{id}`` gives its progress, what was kept and left out, the dataset version made and the students
trained on it; ``POST distillations/{id}/compare`` runs a suite on the teacher and the students.

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
from evals_app import distill, services
from evals_app.models import Distillation

router = Router(tags=["evals"])


class DistillationIn(RequestBody):
    name: str = Field(max_length=120, description="The dataset of the teacher's answers takes this name.")
    teacher: str = Field(max_length=40, description="A model key: version:<id>, deployment:<id> or base:<id>.")
    prompts: ObjectId = Field(description="A ready chat or instruction dataset version's id.")
    graders: list[Any] = Field(default_factory=list, max_length=10, description="Answers failing one are left out.")
    redact_pii: bool = Field(True, strict=True, description="Redact personal data and secrets in the rows.")


class DistillationOut(Schema):
    id: int
    name: str
    teacher: str
    teacher_label: str
    prompts_version_id: int
    graders: list[dict[str, Any]]
    redact_pii: bool
    status: str
    rows_done: int
    rows_total: int
    kept: int
    left_out: dict[str, int] = Field(description="Answers left out, by reason.")
    redactions: dict[str, int]
    output_version_id: int | None = Field(description="The dataset version made (train a student on it).")
    students: list[int] = Field(description="Ids of the model versions trained on that dataset version.")
    error: str
    created_at: datetime
    finished_at: datetime | None

    @staticmethod
    def resolve_teacher(distillation: Distillation) -> str:
        return distillation.teacher_key

    @staticmethod
    def resolve_prompts_version_id(distillation: Distillation) -> int:
        return distillation.prompts_id

    @staticmethod
    def resolve_output_version_id(distillation: Distillation) -> int | None:
        return distillation.output_id

    @staticmethod
    def resolve_students(distillation: Distillation) -> list[int]:
        return [version.pk for version in distill.students(distillation)]


class CompareIn(RequestBody):
    suite: ObjectId = Field(description="The eval suite to run on the teacher and the students.")


class ComparisonRunOut(Schema):
    id: int
    suite_id: int
    models: list[str]


@router.get(
    "teams/{slug}/distillations", response={200: list[DistillationOut], 404: Error}, summary="List distillations"
)
@paginate(Pagination)
def list_distillations(request: HttpRequest, slug: str) -> QuerySet[Distillation]:
    """The team's distillations, newest first."""
    return distill.visible_distillations(team_access(request, slug))


@router.post(
    "teams/{slug}/distillations",
    response={201: DistillationOut, 400: Error, 403: Error, 404: Error},
    summary="Distill a teacher",
)
def start_distillation(request: HttpRequest, slug: str, body: DistillationIn) -> Status:
    """Queue a distillation: the teacher answers every prompt; the kept answers become a chat dataset version."""
    access = team_access(request, slug)
    access.require(Perm.RUN_EVALS)
    access.require(Perm.UPLOAD_DATASETS)
    prompts = services.eval_dataset_versions(access).filter(pk=body.prompts).first()
    if prompts is None:
        raise ValidationError({"prompts": ["Choose a ready chat or instruction dataset version you may use."]})
    distillation = distill.start(
        access=access, name=body.name, teacher=body.teacher, prompts=prompts, graders=body.graders,
        redact_pii=body.redact_pii, ip=client_ip(request),
    )  # fmt: skip
    return Status(201, distillation)


@router.get(
    "teams/{slug}/distillations/{distillation_id}", response={200: DistillationOut, 404: Error}, summary="Get one"
)
def get_distillation(request: HttpRequest, slug: str, distillation_id: ObjectId) -> Distillation:
    """A distillation's progress, counts, dataset version and students."""
    return get_object_or_404(distill.visible_distillations(team_access(request, slug)), pk=distillation_id)


@router.post(
    "teams/{slug}/distillations/{distillation_id}/compare",
    response={201: ComparisonRunOut, 400: Error, 403: Error, 404: Error},
    summary="Compare teacher and students",
)
def compare(request: HttpRequest, slug: str, distillation_id: ObjectId, body: CompareIn) -> Status:
    """Run a suite on the teacher and every student at once (an eval run: GET eval-runs/{id})."""
    access = team_access(request, slug)
    access.require(Perm.RUN_EVALS)
    distillation = get_object_or_404(distill.visible_distillations(access), pk=distillation_id)
    suite = get_object_or_404(services.visible_suites(access), pk=body.suite)
    run = distill.compare(access=access, distillation=distillation, suite=suite, ip=client_ip(request))
    return Status(201, {"id": run.pk, "suite_id": run.suite_id, "models": run.model_keys})
