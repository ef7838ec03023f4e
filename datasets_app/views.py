"""Dataset pages under /t/<team>/datasets/. Each view: parse input, authorize, call one service, respond."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db.models import Prefetch
from django.forms import Form
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.http import add_service_errors, client_ip
from accounts.permissions import TeamAccess, TeamRequest, require_object_action, require_perm
from accounts.roles import Perm
from accounts.views import apply_share_form, sharing_panel
from datasets_app import services
from datasets_app.forms import DatasetEditForm, MappingForm, UploadForm, VersionUploadForm
from datasets_app.models import Dataset, DatasetVersion, VersionStatus

ROWS_PER_PAGE = 20


def _dataset(access: TeamAccess, dataset_id: int, action: str = "view") -> tuple[Dataset, set[str]]:
    dataset = get_object_or_404(Dataset.objects.for_team(access.team), pk=dataset_id)
    return dataset, require_object_action(access, dataset, action)


def _version(access: TeamAccess, dataset_id: int, number: int, action: str = "view") -> tuple[DatasetVersion, set[str]]:
    dataset, actions = _dataset(access, dataset_id, action)
    version = get_object_or_404(
        DatasetVersion.objects.for_team(access.team).select_related("dataset", "parent"), dataset=dataset, number=number
    )
    return version, actions


def _wants_json(request: HttpRequest) -> bool:
    return request.headers.get("X-Requested-With") == "XMLHttpRequest"


def _upload_too_large(request: HttpRequest) -> str | None:
    """Refuse an oversized upload from its Content-Length, before reading the body."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    limit = settings.DATASET_UPLOAD_MAX_BYTES
    if length > limit + 1024 * 1024:  # a little room for the multipart envelope
        return f"The file is {length / 1024 / 1024:,.1f} MB; uploads are limited to {limit / 1024 / 1024:,.0f} MB."
    return None


@require_perm(Perm.VIEW_TEAM)
def dataset_list(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The team's datasets, and the drag-and-drop upload."""
    access = request.access
    form = UploadForm()
    if request.method == "POST":
        access.require(Perm.UPLOAD_DATASETS)
        too_large = _upload_too_large(request)
        form = UploadForm(request.POST, request.FILES) if too_large is None else UploadForm()
        if too_large:
            form.add_error("file", too_large)
        elif form.is_valid():
            try:
                data = form.cleaned_data
                version = services.upload_dataset(
                    access=access,
                    upload=data["file"],
                    name=data["name"],
                    description=data["description"],
                    restricted=data["restricted"],
                    text_split=data["text_split"],
                    ip=client_ip(request),
                )
            except ValidationError as error:
                add_service_errors(form, error)
            else:
                url = reverse("datasets:version", args=[team_slug, version.dataset_id, version.number])
                return JsonResponse({"redirect": url}) if _wants_json(request) else redirect(url)
        if _wants_json(request):
            return JsonResponse({"errors": {f: [str(e) for e in errs] for f, errs in form.errors.items()}}, status=400)
    latest_first = DatasetVersion.objects.for_team(access.team)
    datasets = (
        services.visible_datasets(access)
        .select_related("created_by")
        .prefetch_related(Prefetch("versions", queryset=latest_first, to_attr="version_list"))
    )
    used, quota = services.storage_used(access.team), access.team.storage_quota
    context = {
        "form": form,
        "datasets": datasets,
        "can_upload": access.can(Perm.UPLOAD_DATASETS),
        "storage_used": used,
        "storage_quota": quota,
        "storage_percent": min(100, round(100 * used / quota, 1)) if quota else 0,
        "max_upload_bytes": settings.DATASET_UPLOAD_MAX_BYTES,
        "samples": [(key, label) for key, (label, _) in services.SAMPLES.items()],
    }
    return render(request, "datasets/list.html", context)


@require_perm(Perm.VIEW_TEAM)
def dataset_detail(request: TeamRequest, team_slug: str, dataset_id: int) -> HttpResponse:
    """A dataset's address opens its latest version."""
    dataset, _ = _dataset(request.access, dataset_id)
    latest = services.versions_of(dataset).first()
    if latest is None:
        return redirect("datasets:list", team_slug)
    return redirect("datasets:version", team_slug, dataset.pk, latest.number)


@require_perm(Perm.VIEW_TEAM)
def version_detail(request: TeamRequest, team_slug: str, dataset_id: int, number: int) -> HttpResponse:
    """One version: validation progress or report, preview of the rows, lineage, sharing."""
    access = request.access
    version, actions = _version(access, dataset_id, number)
    if request.htmx and request.GET.get("part") == "status":  # type: ignore[attr-defined]
        response = render(request, "datasets/_status.html", {"version": version})
        if version.status not in (VersionStatus.VALIDATING, VersionStatus.PROCESSING):
            response["HX-Refresh"] = "true"  # validation finished: show the whole page
        return response
    dataset = version.dataset
    can_change = "change" in actions and access.can(Perm.UPLOAD_DATASETS)
    context = {
        "dataset": dataset,
        "version": version,
        "versions": services.versions_of(dataset),
        "actions": actions,
        "can_change": can_change,
        "can_export": access.can(Perm.EXPORT_DATASETS),
        # An ambiguous upload shows its mapping form to everyone (viewers see why it waits); reading a validated
        # upload another way is offered to those who may change the dataset.
        "mapping_form": MappingForm(report=version.report)
        if services.can_map(version) or (can_change and services.can_remap(version))
        else None,
        "remap": not services.can_map(version),
        "upload_form": VersionUploadForm(),
        "edit_form": DatasetEditForm(
            initial={"name": dataset.name, "description": dataset.description, "restricted": dataset.restricted}
        ),
        "children": services.versions_of(dataset).filter(parent=version),
        **sharing_panel(access, dataset, reverse("datasets:share", args=[team_slug, dataset.pk])),
        "charts": _charts(version.stats),
        "can_launch": access.can(Perm.LAUNCH_TRAINING) and version.is_ready,
    }
    return render(request, "datasets/version.html", context)


def _charts(stats: dict[str, Any]) -> dict[str, Any]:
    """The statistics in the shapes the bar charts draw: ``[(label, count), ...]``."""
    if not stats:
        return {}

    def bins(distribution: dict[str, Any] | None) -> list[tuple[str, int]]:
        histogram = (distribution or {}).get("histogram") or []
        return [
            (str(b["start"]) if b["start"] == b["end"] else f"{b['start']}–{b['end']}", b["count"]) for b in histogram
        ]

    return {
        "tokens": bins(stats.get("tokens")),
        "turns": bins(stats.get("turns")),
        "roles": [(role, count) for role, count in (stats.get("roles") or {}).items() if count],
        "pii": sorted((kind, found) for kind, found in (stats.get("pii") or {}).items() if found["count"]),
        "labels": [("thumbs up", labels["good"]), ("thumbs down", labels["bad"])]
        if (labels := stats.get("labels"))
        else [],
        "tool_calls": list(((stats.get("tool_calls") or {}).get("calls") or {}).items()),
    }


@require_POST
@require_perm(Perm.UPLOAD_DATASETS)
def version_curate(request: TeamRequest, team_slug: str, dataset_id: int, number: int) -> HttpResponse:
    """Start a curation step (dedupe, redact PII, filter by length, split); the result is a new version."""
    access = request.access
    version, _ = _version(access, dataset_id, number, "change")
    params = {key: value for key, value in request.POST.items() if key not in ("csrfmiddlewaretoken", "step")}
    try:
        child = services.curate(
            access=access, version=version, step=request.POST.get("step", ""), params=params, ip=client_ip(request)
        )
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("datasets:version", team_slug, dataset_id, number)
    return redirect("datasets:version", team_slug, dataset_id, child.number)


@require_perm(Perm.VIEW_TEAM)
def version_rows(request: TeamRequest, team_slug: str, dataset_id: int, number: int) -> HttpResponse:
    """A page of rows rendered the way they will be trained (htmx fragment)."""
    access = request.access
    version, _ = _version(access, dataset_id, number)
    try:
        page = max(1, int(request.GET.get("page", "1")))
    except ValueError:
        page = 1
    search = request.GET.get("q", "")[:200]
    rows, has_more = services.read_rows(version, offset=(page - 1) * ROWS_PER_PAGE, limit=ROWS_PER_PAGE, search=search)
    context = {"version": version, "rows": rows, "page": page, "has_more": has_more, "q": search}
    return render(request, "datasets/_rows.html", context)


@require_perm(Perm.EXPORT_DATASETS)
def version_download(request: TeamRequest, team_slug: str, dataset_id: int, number: int, fmt: str) -> HttpResponseBase:
    access = request.access
    version, _ = _version(access, dataset_id, number)
    try:
        chunks = services.export_version(access=access, version=version, fmt=fmt, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("datasets:version", team_slug, dataset_id, number)
    filename = f"{version.dataset.name}-v{version.number}.{fmt}".replace('"', "")
    response = StreamingHttpResponse(chunks, content_type="application/jsonl" if fmt == "jsonl" else "text/csv")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@require_perm(Perm.EXPORT_DATASETS)
def version_source(request: TeamRequest, team_slug: str, dataset_id: int, number: int) -> HttpResponseBase:
    """The file exactly as it was uploaded (to fix it and upload again)."""
    access = request.access
    version, _ = _version(access, dataset_id, number)
    try:
        source = services.open_source(access=access, version=version, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("datasets:version", team_slug, dataset_id, number)
    return FileResponse(source, as_attachment=True, filename=version.source_name)


@require_POST
@require_perm(Perm.UPLOAD_DATASETS)
def version_upload(request: TeamRequest, team_slug: str, dataset_id: int) -> HttpResponse:
    """A corrected file becomes the dataset's next version."""
    access = request.access
    dataset, _ = _dataset(access, dataset_id, "change")
    too_large = _upload_too_large(request)
    form = VersionUploadForm(request.POST, request.FILES)
    if too_large:
        messages.error(request, too_large)
    elif form.is_valid():
        try:
            version = services.upload_new_version(
                access=access,
                dataset=dataset,
                upload=form.cleaned_data["file"],
                text_split=form.cleaned_data["text_split"],
                ip=client_ip(request),
            )
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            return redirect("datasets:version", team_slug, dataset.pk, version.number)
    else:
        messages.error(request, "Choose a file to upload.")
    latest = services.versions_of(dataset).first()
    return redirect("datasets:version", team_slug, dataset.pk, latest.number if latest else 1)


@require_POST
@require_perm(Perm.UPLOAD_DATASETS)
def version_mapping(request: TeamRequest, team_slug: str, dataset_id: int, number: int) -> HttpResponse:
    access = request.access
    version, _ = _version(access, dataset_id, number, "change")
    form = MappingForm(request.POST, report=version.report)
    if form.is_valid():
        try:
            mapped = services.apply_mapping(access=access, version=version, ip=client_ip(request), **form.mapping())
            return redirect("datasets:version", team_slug, dataset_id, mapped.number)
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
    else:
        messages.error(request, " ".join(_error_sentences(form)))
    return redirect("datasets:version", team_slug, dataset_id, number)


@require_POST
@require_perm(Perm.UPLOAD_DATASETS)
def version_mapping_preview(request: TeamRequest, team_slug: str, dataset_id: int, number: int) -> HttpResponse:
    """The first three rows as the mapping form's current choice would make them (htmx fragment)."""
    access = request.access
    version, _ = _version(access, dataset_id, number, "change")
    form = MappingForm(request.POST, report=version.report)
    context: dict[str, Any] = {
        "errors": [],
        "previews": [],
        "kind": request.POST.get("kind", ""),
        "unit": version.report.get("line_unit", "line"),
    }
    if not services.can_map(version) and not services.can_remap(version):
        context["errors"] = ["This version's columns are already understood."]
    elif form.is_valid():
        chosen = form.mapping()
        try:
            context["previews"] = services.preview_mapping(access=access, version=version, **chosen)
        except ValidationError as error:
            context["errors"] = error.messages
    else:
        context["errors"] = _error_sentences(form)
    return render(request, "datasets/_mapping_preview.html", context)


def _error_sentences(form: Form) -> list[str]:
    """A form's errors as sentences: a field's prefixed with its label, the form's own (``__all__``) bare."""
    return [
        str(error) if name == NON_FIELD_ERRORS else f"{form.fields[name].label}: {error}"
        for name, errors in form.errors.items()
        for error in errors
    ]


@require_POST
@require_perm(Perm.UPLOAD_DATASETS)
def version_keep_valid(request: TeamRequest, team_slug: str, dataset_id: int, number: int) -> HttpResponse:
    access = request.access
    version, _ = _version(access, dataset_id, number, "change")
    try:
        child = services.keep_valid_rows(access=access, version=version, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("datasets:version", team_slug, dataset_id, number)
    messages.success(request, f"Version {child.number} keeps the {child.row_count:,} valid rows.")
    return redirect("datasets:version", team_slug, dataset_id, child.number)


@require_perm(Perm.VIEW_TEAM)
def dataset_delete(request: TeamRequest, team_slug: str, dataset_id: int) -> HttpResponse:
    """Ask, then delete the dataset with every version and file."""
    access = request.access
    dataset, _ = _dataset(access, dataset_id, "delete")
    if request.method == "POST":
        services.delete_dataset(access=access, dataset=dataset, ip=client_ip(request))
        messages.success(request, f"Dataset “{dataset.name}” and all its versions were deleted.")
        return redirect("datasets:list", team_slug)
    context = {
        "dataset": dataset,
        "versions": services.versions_of(dataset),
    }
    return render(request, "datasets/confirm_delete.html", context)


@require_POST
@require_perm(Perm.SHARE_OBJECTS)
def dataset_share(request: TeamRequest, team_slug: str, dataset_id: int) -> HttpResponse:
    access = request.access
    dataset, _ = _dataset(access, dataset_id)
    apply_share_form(request, access, dataset)
    latest = services.versions_of(dataset).first()
    return redirect("datasets:version", team_slug, dataset.pk, latest.number if latest else 1)


@require_POST
@require_perm(Perm.UPLOAD_DATASETS)
def add_sample(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Try the studio with one of its bundled sample datasets."""
    try:
        version = services.add_sample(
            access=request.access, sample=request.POST.get("sample", ""), ip=client_ip(request)
        )
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect("datasets:list", team_slug)
    return redirect("datasets:version", team_slug, version.dataset_id, version.number)


@require_POST
@require_perm(Perm.UPLOAD_DATASETS)
def mix(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Mix the latest ready versions of several datasets with weights, into a new dataset."""
    access = request.access
    sources = []
    try:
        for key in request.POST:
            value = request.POST.get(key, "").strip()
            if key.startswith("weight_") and value and float(value) > 0:
                dataset, _ = _dataset(access, int(key.removeprefix("weight_")), "use")
                latest = services.versions_of(dataset).filter(status=VersionStatus.READY).first()
                if latest is None:
                    raise ValidationError({"sources": f"“{dataset.name}” has no ready version to mix."})
                sources.append((latest, float(value)))
        seed = int(request.POST.get("seed") or 42)
        version = services.mix_datasets(
            access=access, name=request.POST.get("name", ""), sources=sources, seed=seed, ip=client_ip(request)
        )
    except ValueError:
        messages.error(request, "Weights and the seed must be numbers, e.g. weight 0.25 and seed 42.")
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        return redirect("datasets:version", team_slug, version.dataset_id, version.number)
    return redirect("datasets:list", team_slug)


@require_POST
@require_perm(Perm.VIEW_TEAM)
def dataset_edit(request: TeamRequest, team_slug: str, dataset_id: int) -> HttpResponse:
    """Rename, describe or (owners and admins) restrict a dataset."""
    access = request.access
    dataset, _ = _dataset(access, dataset_id, "change")
    form = DatasetEditForm(request.POST)
    if form.is_valid():
        try:
            services.update_dataset(access=access, dataset=dataset, ip=client_ip(request), **form.cleaned_data)
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            messages.success(request, "Dataset updated.")
    else:
        messages.error(request, " ".join(_error_sentences(form)))
    return redirect("datasets:detail", team_slug, dataset.pk)
