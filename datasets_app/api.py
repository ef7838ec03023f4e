"""REST endpoints for datasets, versions and rows under /api/v1/teams/<slug>/datasets/.

No ``from __future__ import annotations`` here: django-ninja reads the annotations at runtime.
"""

from datetime import datetime
from typing import Any, Literal

from django.core.exceptions import ValidationError
from django.db.models import Prefetch
from django.http import HttpRequest, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from ninja import Field, File, Form, Query, Router, Schema, Status
from ninja.files import UploadedFile

from accounts.api import Error, ObjectId, RequestBody, team_access
from accounts.http import client_ip
from accounts.permissions import TeamAccess, require_object_action
from datasets_app import services
from datasets_app.models import Dataset, DatasetVersion

router = Router(tags=["datasets"])


class VersionOut(Schema):
    id: int = Field(description="What ``dataset_version`` of ``POST training/estimate`` and ``POST jobs`` takes.")
    number: int
    status: str
    kind: str
    row_count: int | None
    content_hash: str
    parent: int | None = Field(None, description="Number of the version this one was made from.")
    recipe: dict[str, Any]
    source_name: str
    source_size: int
    progress: float
    created_at: datetime
    created_by: str | None


class VersionDetail(VersionOut):
    report: dict[str, Any]
    stats: dict[str, Any]


class DatasetOut(Schema):
    id: int
    name: str
    description: str
    restricted: bool
    created_at: datetime
    created_by: str | None
    latest: VersionOut | None


class DatasetDetail(DatasetOut):
    versions: list[VersionOut]


class UploadFields(Schema):
    name: str = Field("", max_length=120, description="Defaults to the file's name.")
    description: str = Field("", max_length=2000)
    restricted: bool = False
    text_split: Literal["paragraphs", "lines"] = Field(
        "paragraphs", description="How a plain text file (.txt, .md) is cut into rows."
    )


class VersionFields(Schema):
    text_split: Literal["paragraphs", "lines"] = Field(
        "paragraphs", description="How a plain text file (.txt, .md) is cut into rows."
    )


class DatasetPatch(RequestBody):
    name: str | None = Field(None, max_length=120)
    description: str | None = Field(None, max_length=2000)
    restricted: bool | None = Field(None, description="Only owners and admins can change it.")


class RowsQuery(Schema):
    offset: int = Field(0, ge=0)
    limit: int = Field(20, ge=1, le=200)
    q: str = Field("", max_length=200, description="Only rows containing this text.")


class RowsOut(Schema):
    rows: list[dict[str, Any]]
    has_more: bool


class CurateIn(RequestBody):
    step: Literal["dedupe", "redact_pii", "filter_length", "split"]
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="dedupe: mode (exact|near), threshold; filter_length: min_tokens, max_tokens; "
        "split: validation_fraction, seed; redact_pii: none.",
    )


class SampleIn(RequestBody):
    sample: Literal["chat", "instruction", "preference", "feedback", "tools", "text", "support", "support-eval"]


class MixSource(Schema):
    dataset_id: ObjectId
    version: ObjectId | None = Field(None, description="Defaults to the dataset's latest ready version.")
    weight: float = Field(gt=0, description="Proportion of the mix, e.g. 0.25.")


class MixIn(RequestBody):
    name: str = Field("", max_length=120)
    sources: list[MixSource] = Field(min_length=2, max_length=8)
    seed: int = 42
    total: int | None = Field(None, ge=1, description="Rows in the mix; defaults to the most without repeats.")


class MappingIn(RequestBody):
    kind: Literal["chat", "instruction", "preference", "feedback", "text"]
    mapping: dict[str, str] = Field(description="Normalized field → column of the file, e.g. {'prompt': 'question'}.")


def _version_out(version: DatasetVersion) -> dict[str, Any]:
    return {
        "id": version.pk,
        "number": version.number,
        "status": version.status,
        "kind": version.kind,
        "row_count": version.row_count,
        "content_hash": version.content_hash,
        "parent": version.parent.number if version.parent_id and version.parent else None,
        "recipe": version.recipe,
        "source_name": version.source_name,
        "source_size": version.source_size,
        "progress": version.progress,
        "created_at": version.created_at,
        "created_by": version.created_by.get_username() if version.created_by else None,
    }


def _dataset_out(dataset: Dataset, versions: list[DatasetVersion]) -> dict[str, Any]:
    return {
        "id": dataset.pk,
        "name": dataset.name,
        "description": dataset.description,
        "restricted": dataset.restricted,
        "created_at": dataset.created_at,
        "created_by": dataset.created_by.get_username() if dataset.created_by else None,
        "latest": _version_out(versions[0]) if versions else None,
        "versions": [_version_out(v) for v in versions],
    }


def _required(file: UploadedFile | None) -> UploadedFile:
    """The uploaded file; checked after authorization, so outsiders learn nothing from a missing one."""
    if file is None:
        raise ValidationError({"file": "Attach the file as the multipart field “file”."})
    return file


def _dataset(access: TeamAccess, dataset_id: int, action: str = "view") -> Dataset:
    dataset = get_object_or_404(Dataset.objects.for_team(access.team).select_related("created_by"), pk=dataset_id)
    require_object_action(access, dataset, action)
    return dataset


def _versions(access: TeamAccess, dataset: Dataset) -> list[DatasetVersion]:
    return list(
        DatasetVersion.objects.for_team(access.team).filter(dataset=dataset).select_related("parent", "created_by")
    )


def _version(access: TeamAccess, dataset_id: int, number: int, action: str = "view") -> DatasetVersion:
    dataset = _dataset(access, dataset_id, action)
    return get_object_or_404(
        DatasetVersion.objects.for_team(access.team).select_related("dataset", "parent", "created_by"),
        dataset=dataset,
        number=number,
    )


@router.get("teams/{slug}/datasets/", response={200: list[DatasetOut], 404: Error})
def list_datasets(request: HttpRequest, slug: str) -> list[dict[str, Any]]:
    access = team_access(request, slug)
    scoped = DatasetVersion.objects.for_team(access.team).select_related("parent", "created_by")
    datasets = (
        services.visible_datasets(access)
        .select_related("created_by")
        .prefetch_related(Prefetch("versions", queryset=scoped, to_attr="version_list"))
    )
    return [_dataset_out(d, d.version_list) for d in datasets]


@router.post("teams/{slug}/datasets/", response={201: DatasetDetail, 400: Error, 403: Error, 404: Error})
def upload_dataset(
    request: HttpRequest, slug: str, fields: Form[UploadFields], file: UploadedFile | None = File(None)
) -> Status:
    """Upload a file (multipart) as a new dataset; validation runs in the background (poll the version)."""
    access = team_access(request, slug)
    version = services.upload_dataset(access=access, upload=_required(file), ip=client_ip(request), **fields.dict())
    return Status(201, _dataset_out(version.dataset, [version]))


# Fixed paths first: Django tries URL patterns in order, and {dataset_id} would match “samples”.
@router.post("teams/{slug}/datasets/samples", response={201: DatasetDetail, 400: Error, 403: Error, 404: Error})
def add_sample(request: HttpRequest, slug: str, body: SampleIn) -> Status:
    """Add one of the studio's bundled sample datasets (validated like any upload)."""
    version = services.add_sample(access=team_access(request, slug), sample=body.sample, ip=client_ip(request))
    return Status(201, _dataset_out(version.dataset, [version]))


@router.post("teams/{slug}/datasets/mix", response={201: DatasetDetail, 400: Error, 403: Error, 404: Error})
def mix(request: HttpRequest, slug: str, body: MixIn) -> Status:
    """A new dataset mixing several ready versions with weights; made in the background."""
    access = team_access(request, slug)
    sources = []
    for source in body.sources:
        dataset = _dataset(access, source.dataset_id, "use")
        versions = services.versions_of(dataset)
        version = (
            versions.filter(number=source.version).first()
            if source.version is not None
            else versions.filter(status="ready").first()
        )
        if version is None:
            raise ValidationError({"sources": f"“{dataset.name}” has no such ready version."})
        sources.append((version, source.weight))
    child = services.mix_datasets(
        access=access, name=body.name, sources=sources, seed=body.seed, total=body.total, ip=client_ip(request)
    )
    return Status(201, _dataset_out(child.dataset, [child]))


@router.get("teams/{slug}/datasets/{dataset_id}", response={200: DatasetDetail, 404: Error})
def dataset_detail(request: HttpRequest, slug: str, dataset_id: ObjectId) -> dict[str, Any]:
    access = team_access(request, slug)
    dataset = _dataset(access, dataset_id)
    return _dataset_out(dataset, _versions(access, dataset))


@router.patch("teams/{slug}/datasets/{dataset_id}", response={200: DatasetDetail, 400: Error, 403: Error, 404: Error})
def update_dataset(request: HttpRequest, slug: str, dataset_id: ObjectId, body: DatasetPatch) -> dict[str, Any]:
    """Rename, describe, or restrict a dataset to named members."""
    access = team_access(request, slug)
    dataset = services.update_dataset(
        access=access, dataset=_dataset(access, dataset_id, "change"), ip=client_ip(request), **body.dict()
    )
    return _dataset_out(dataset, _versions(access, dataset))


@router.delete("teams/{slug}/datasets/{dataset_id}", response={204: None, 403: Error, 404: Error})
def delete_dataset(request: HttpRequest, slug: str, dataset_id: ObjectId) -> Status:
    """Delete the dataset with every version and file (an audit tombstone remains)."""
    access = team_access(request, slug)
    services.delete_dataset(access=access, dataset=_dataset(access, dataset_id, "delete"), ip=client_ip(request))
    return Status(204, None)


@router.post(
    "teams/{slug}/datasets/{dataset_id}/versions/", response={201: VersionOut, 400: Error, 403: Error, 404: Error}
)
def upload_version(
    request: HttpRequest,
    slug: str,
    dataset_id: ObjectId,
    fields: Form[VersionFields],
    file: UploadedFile | None = File(None),
) -> Status:
    """Upload a corrected file as the dataset's next version."""
    access = team_access(request, slug)
    dataset = _dataset(access, dataset_id, "change")
    version = services.upload_new_version(
        access=access, dataset=dataset, upload=_required(file), ip=client_ip(request), **fields.dict()
    )
    return Status(201, _version_out(version))


@router.get("teams/{slug}/datasets/{dataset_id}/versions/{number}", response={200: VersionDetail, 404: Error})
def version_detail(request: HttpRequest, slug: str, dataset_id: ObjectId, number: ObjectId) -> dict[str, Any]:
    """A version with its validation report and statistics."""
    version = _version(team_access(request, slug), dataset_id, number)
    return {**_version_out(version), "report": version.report, "stats": version.stats}


@router.get("teams/{slug}/datasets/{dataset_id}/versions/{number}/rows", response={200: RowsOut, 404: Error})
def version_rows(
    request: HttpRequest, slug: str, dataset_id: ObjectId, number: ObjectId, query: Query[RowsQuery]
) -> dict[str, Any]:
    """Normalized rows, paginated, optionally filtered by a search text; ``_n`` is the row number."""
    version = _version(team_access(request, slug), dataset_id, number)
    rows, has_more = services.read_rows(version, offset=query.offset, limit=query.limit, search=query.q)
    return {"rows": [{**row, "_n": number} for number, row in rows], "has_more": has_more}


@router.post(
    "teams/{slug}/datasets/{dataset_id}/versions/{number}/mapping",
    response={200: VersionOut, 400: Error, 403: Error, 404: Error},
)
def set_mapping(
    request: HttpRequest, slug: str, dataset_id: ObjectId, number: ObjectId, body: MappingIn
) -> dict[str, Any]:
    """Say which columns hold what: in place for a file whose layout was ambiguous (validation runs again), or,
    for a validated upload, as a new version that reads the same file this way (the one returned)."""
    access = team_access(request, slug)
    version = _version(access, dataset_id, number, "change")
    version = services.apply_mapping(
        access=access, version=version, kind=body.kind, mapping=body.mapping, ip=client_ip(request)
    )
    return _version_out(version)


@router.post(
    "teams/{slug}/datasets/{dataset_id}/versions/{number}/keep-valid",
    response={201: VersionOut, 400: Error, 403: Error, 404: Error},
)
def keep_valid(request: HttpRequest, slug: str, dataset_id: ObjectId, number: ObjectId) -> Status:
    """A new version with only the rows that passed validation."""
    access = team_access(request, slug)
    version = _version(access, dataset_id, number, "change")
    return Status(201, _version_out(services.keep_valid_rows(access=access, version=version, ip=client_ip(request))))


@router.get(
    "teams/{slug}/datasets/{dataset_id}/versions/{number}/download",
    response={200: None, 400: Error, 403: Error, 404: Error},
)
def download(
    request: HttpRequest,
    slug: str,
    dataset_id: ObjectId,
    number: ObjectId,
    format: Literal["jsonl", "csv"] = "jsonl",
) -> StreamingHttpResponse:
    """The version's rows as JSON Lines or CSV (spreadsheet formulas neutralised)."""
    access = team_access(request, slug)
    version = _version(access, dataset_id, number)
    chunks = services.export_version(access=access, version=version, fmt=format, ip=client_ip(request))
    response = StreamingHttpResponse(chunks, content_type="application/jsonl" if format == "jsonl" else "text/csv")
    response["Content-Disposition"] = f'attachment; filename="dataset-{dataset_id}-v{number}.{format}"'
    return response


@router.post(
    "teams/{slug}/datasets/{dataset_id}/versions/{number}/curate",
    response={201: VersionOut, 400: Error, 403: Error, 404: Error},
)
def curate(request: HttpRequest, slug: str, dataset_id: ObjectId, number: ObjectId, body: CurateIn) -> Status:
    """Start a curation step; the new version is made in the background (poll it until ``ready``)."""
    access = team_access(request, slug)
    version = _version(access, dataset_id, number, "change")
    child = services.curate(access=access, version=version, step=body.step, params=body.params, ip=client_ip(request))
    return Status(201, _version_out(child))
