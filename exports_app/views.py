"""Export pages under /t/<team>/exports/: start an export from a model version's page, its live section, downloads,
and the team's Hub token (owners and admins)."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import FileResponse, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.http import client_ip
from accounts.permissions import TeamRequest, require_perm
from accounts.roles import Perm
from exports_app import hub, services
from exports_app.forms import ApprovalSettingForm, DecisionForm, ExportForm, HubTokenForm
from exports_app.templatetags.model_exports import section_context
from training_app import services as training


@require_POST
@require_perm(Perm.EXPORT_MODELS)
def export_create(request: TeamRequest, team_slug: str, version_id: int) -> HttpResponseBase:
    """Queue an export of the version; back to its page, where the export shows its progress."""
    access = request.access
    version = get_object_or_404(training.visible_versions(access), pk=version_id)
    form = ExportForm(request.POST)
    back = reverse("training:version", args=[team_slug, version.pk]) + "#exports"
    if not form.is_valid():
        messages.error(request, _first_error(form.errors.get_json_data()))
        return redirect(back)
    data = form.cleaned_data
    try:
        export = services.start_export(
            access=access, version=version, format=data["format"], quantization=data["quantization"],
            hub_repo=data["hub_repo"], hub_private=data["hub_private"], ip=client_ip(request),
        )  # fmt: skip
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect(back)
    messages.success(request, f"{export} queued: it shows its progress below.")
    return redirect(back)


@require_perm(Perm.VIEW_TEAM)
def export_section(request: TeamRequest, team_slug: str, version_id: int) -> HttpResponse:
    """The version's exports section (the page polls it with htmx while an export runs)."""
    version = get_object_or_404(training.visible_versions(request.access), pk=version_id)
    return render(request, "exports/_section.html", section_context(request.access, version))


@require_perm(Perm.EXPORT_MODELS)
def export_download(request: TeamRequest, team_slug: str, export_id: int) -> HttpResponseBase:
    """The finished export's file (a .gguf or a .zip)."""
    access = request.access
    export = get_object_or_404(services.visible_exports(access), pk=export_id)
    try:
        handle, filename = services.open_download(access=access, export=export, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect(reverse("training:version", args=[team_slug, export.model_version_id]) + "#exports")
    return FileResponse(handle, as_attachment=True, filename=filename)


@require_POST
@require_perm(Perm.APPROVE_EXPORTS)
def export_approve(request: TeamRequest, team_slug: str, export_id: int) -> HttpResponseBase:
    """Approve an export that waits (never one's own): it is queued."""
    return _decide(request, export_id, approve=True)


@require_POST
@require_perm(Perm.APPROVE_EXPORTS)
def export_reject(request: TeamRequest, team_slug: str, export_id: int) -> HttpResponseBase:
    """Reject an export that waits: it never runs."""
    return _decide(request, export_id, approve=False)


def _decide(request: TeamRequest, export_id: int, *, approve: bool) -> HttpResponseBase:
    access = request.access
    export = get_object_or_404(services.visible_exports(access), pk=export_id)
    form = DecisionForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    try:
        export = services.decide(access=access, export=export, approve=approve, reason=reason, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"{export} approved: it is queued." if approve else f"{export} rejected.")
    return redirect(reverse("training:version", args=[request.access.team.slug, export.model_version_id]) + "#exports")


@require_perm(Perm.CHANGE_TEAM)
def export_settings(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The team's Hugging Face token for pushing exports (owners and admins; never shown again), and whether exports
    need approval."""
    access = request.access
    if request.method == "POST" and "approval" in request.POST:
        approval = ApprovalSettingForm(request.POST)
        if approval.is_valid():
            required = approval.cleaned_data["require_approval"]
            services.set_approval_required(access=access, required=required, ip=client_ip(request))
            messages.success(request, "Exports now need approval." if required else "Exports no longer need approval.")
        return redirect("exports:settings", team_slug)
    form = HubTokenForm(request.POST or None)
    if form.is_bound and form.is_valid():
        token, remove = form.cleaned_data["token"], form.cleaned_data["remove"]
        if remove or token:
            services.set_hub_token(access=access, token=None if remove else token, ip=client_ip(request))
            messages.success(request, "Hub token removed." if remove else "Hub token saved (encrypted).")
        return redirect("exports:settings", team_slug)
    approval_form = ApprovalSettingForm(initial={"require_approval": services.approval_required(access.team)})
    context = {"form": form, "has_token": hub.has_token(access.team), "approval_form": approval_form}
    return render(request, "exports/settings.html", context)


def _first_error(errors: dict[str, list[dict[str, str]]]) -> str:
    field, problems = next(iter(errors.items()))
    return f"{field}: {problems[0]['message']}"
