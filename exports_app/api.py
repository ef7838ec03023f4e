r"""REST endpoints for exports: ``POST teams/<slug>/model-versions/{id}/exports`` queues one (``models.export``),
``GET …/exports`` lists a version's, ``GET teams/<slug>/exports/{id}`` follows one (status, progress, size, SHA-256,
Hub URL, error) and ``GET …/exports/{id}/download`` fetches the file. Where the team's exports need approval, a new
export waits (``awaiting_approval``) until an owner or admin other than its requester ``POST``\ s ``…/approve`` (or
``…/reject``).

No ``from __future__ import annotations`` here: django-ninja reads the annotations at runtime.
"""

from datetime import datetime
from typing import Literal

from django.db.models import QuerySet
from django.http import FileResponse, HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status
from ninja.pagination import paginate

from accounts.api import Error, ObjectId, Pagination, RequestBody, team_access
from accounts.http import client_ip
from accounts.roles import Perm
from exports_app import services
from exports_app.models import ModelExport
from training_app import services as training

router = Router(tags=["exports"])


class ExportIn(RequestBody):
    format: str = Field(max_length=20, description="safetensors, gguf, ollama or bundle.")
    quantization: str = Field("", max_length=10, description="gguf and ollama: f16, bf16 or q8_0; else empty.")
    hub_repo: str = Field("", max_length=200, description="Optional owner/name: push the files there (team token).")
    hub_private: bool = Field(True, strict=True, description="Create the Hub repository as private.")


class ExportOut(Schema):
    id: int
    model_version_id: int
    format: str
    quantization: str
    status: Literal["awaiting_approval", "rejected", "queued", "running", "succeeded", "failed"]
    phase: str
    progress: float = Field(description="Share done (0-1).")
    size_bytes: int | None
    sha256: str
    filename: str
    hub_repo: str
    hub_url: str
    error: str = Field(description="Why it failed, and what to do.")
    decision_reason: str = Field(description="Why it was approved or rejected, when the team's exports need approval.")
    created_at: datetime
    finished_at: datetime | None


@router.get(
    "teams/{slug}/model-versions/{version_id}/exports",
    response={200: list[ExportOut], 404: Error},
    summary="List a model version's exports",
)
@paginate(Pagination)
def list_exports(request: HttpRequest, slug: str, version_id: ObjectId) -> QuerySet[ModelExport]:
    """The version's exports, newest first."""
    access = team_access(request, slug)
    version = get_object_or_404(training.visible_versions(access), pk=version_id)
    return services.exports_of(access, version)


@router.post(
    "teams/{slug}/model-versions/{version_id}/exports",
    response={202: ExportOut, 400: Error, 403: Error, 404: Error},
    summary="Export a model version",
)
def create_export(request: HttpRequest, slug: str, version_id: ObjectId, body: ExportIn) -> Status:
    """Queue an export (merged safetensors, GGUF, Ollama or the documents bundle); poll ``GET exports/{id}``."""
    access = team_access(request, slug)
    access.require(Perm.EXPORT_MODELS)
    version = get_object_or_404(training.visible_versions(access), pk=version_id)
    export = services.start_export(
        access=access,
        version=version,
        format=body.format,
        quantization=body.quantization,
        hub_repo=body.hub_repo,
        hub_private=body.hub_private,
        ip=client_ip(request),
    )
    return Status(202, export)


@router.get("teams/{slug}/exports/{export_id}", response={200: ExportOut, 404: Error}, summary="Get an export")
def get_export(request: HttpRequest, slug: str, export_id: ObjectId) -> ModelExport:
    """An export's status, progress, size, SHA-256, Hub URL and error."""
    return get_object_or_404(services.visible_exports(team_access(request, slug)), pk=export_id)


@router.get(
    "teams/{slug}/exports/{export_id}/download",
    response={200: None, 400: Error, 403: Error, 404: Error},
    summary="Download an export",
    openapi_extra={
        "responses": {
            200: {"description": "The .gguf file or a .zip archive", "content": {"application/octet-stream": {}}}
        }
    },
)
def download_export(request: HttpRequest, slug: str, export_id: ObjectId) -> FileResponse:
    """The finished export's file (400 while it is not ready)."""
    access = team_access(request, slug)
    access.require(Perm.EXPORT_MODELS)
    export = get_object_or_404(services.visible_exports(access), pk=export_id)
    handle, filename = services.open_download(access=access, export=export, ip=client_ip(request))
    return FileResponse(handle, as_attachment=True, filename=filename)


class DecisionIn(RequestBody):
    reason: str = Field("", max_length=500)


@router.post("teams/{slug}/exports/{export_id}/approve", response={200: ExportOut, 400: Error, 403: Error, 404: Error},
             summary="Approve an export that waits")  # fmt: skip
def approve_export(request: HttpRequest, slug: str, export_id: ObjectId, body: DecisionIn) -> ModelExport:
    """Queue an export that waits for approval (owners and admins, never the person who asked for it)."""
    return _decide(request, slug, export_id, body, approve=True)


@router.post("teams/{slug}/exports/{export_id}/reject", response={200: ExportOut, 400: Error, 403: Error, 404: Error},
             summary="Reject an export that waits")  # fmt: skip
def reject_export(request: HttpRequest, slug: str, export_id: ObjectId, body: DecisionIn) -> ModelExport:
    """Reject an export that waits for approval: it never runs."""
    return _decide(request, slug, export_id, body, approve=False)


def _decide(request: HttpRequest, slug: str, export_id: int, body: DecisionIn, *, approve: bool) -> ModelExport:
    access = team_access(request, slug)
    access.require(Perm.APPROVE_EXPORTS)
    export = get_object_or_404(services.visible_exports(access), pk=export_id)
    return services.decide(access=access, export=export, approve=approve, reason=body.reason, ip=client_ip(request))
