"""Deployment and usage pages under /t/<team>/: publish a model version for /v1, choose its keys, read usage.

Every member reads deployments and usage; owners and admins (``deployments.manage``) create and delete
deployments and choose which team API keys may call each one. The forms live here because only these
pages use them; the work is done by ``serving_app.deployments``.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from accounts.http import add_service_errors, client_ip
from accounts.models import TeamAPIKey
from accounts.permissions import TeamAccess, TeamRequest, require_perm
from accounts.roles import Perm
from serving_app import completions, deployments, guardrails, releases
from serving_app.deployments import UsageSummary
from serving_app.models import Deployment, UsageRecord
from training_app.models import ModelVersion

# The daily usage chart: one color per source (API, playground, arena).
SOURCE_COLORS = {
    UsageRecord.Source.API: "#4f46e5",
    UsageRecord.Source.PLAYGROUND: "#e8590c",
    UsageRecord.Source.ARENA: "#0f7a4a",
}


# --- forms --------------------------------------------------------------------------------------


class VersionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        base = obj.base_model.name if obj.base_model else obj.lineage.get("base_model", {}).get("name", "")
        incomplete = " — model card incomplete" if obj.missing_card_fields else ""
        return f"{obj} ({obj.get_kind_display()}{f' of {base}' if base else ''}){incomplete}"


class KeyChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.name} ({obj.display_prefix}, {obj.requests_per_minute}/min, ≤ {obj.max_tokens} tokens)"


class DeploymentForm(forms.Form):
    name = forms.CharField(
        max_length=60,
        help_text="What clients send as <code>model</code>: lowercase letters, digits, dots, hyphens or "
        "underscores, e.g. <code>support-bot</code>.",
    )
    model_version = VersionChoiceField(queryset=ModelVersion.objects.none(), label="Model version", empty_label=None)
    description = forms.CharField(
        required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 2}), help_text="Optional: what it is for."
    )
    api_keys = KeyChoiceField(
        queryset=TeamAPIKey.objects.none(),
        required=False,
        label="API keys that may call it",
        widget=forms.CheckboxSelectMultiple,
        help_text="You can change this later on the deployment's page.",
    )

    def __init__(self, *args: Any, access: TeamAccess, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _set_queryset(self, "model_version", deployments.deployable_versions(access).select_related("base_model"))
        _set_queryset(self, "api_keys", deployments.scopable_keys(access))


class DeploymentKeysForm(forms.Form):
    api_keys = KeyChoiceField(
        queryset=TeamAPIKey.objects.none(),
        required=False,
        label="API keys that may call this deployment",
        widget=forms.CheckboxSelectMultiple,
    )

    def __init__(self, *args: Any, access: TeamAccess, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _set_queryset(self, "api_keys", deployments.scopable_keys(access))


class PromoteForm(forms.Form):
    """Publish another version to a deployment: to all traffic, or as a canary taking a share of it."""

    model_version = VersionChoiceField(queryset=ModelVersion.objects.none(), label="Version", empty_label=None)
    canary_share = forms.IntegerField(
        min_value=0,
        max_value=releases.MAX_CANARY_SHARE,
        initial=0,
        label="Canary share (%)",
        help_text="0 sends all traffic to the version. 1–99 starts a canary: that share of /v1 requests goes to it "
        "while the current version answers the rest, and the page compares the two.",
    )
    override_reason = forms.CharField(
        required=False,
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2}),
        label="Override the gate: why",
        help_text="Only for a version that fails the gate, and only owners (deployments.override): the reason is "
        "kept in the release history and the audit trail.",
    )

    def __init__(self, *args: Any, access: TeamAccess, deployment: Deployment, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        versions = deployments.deployable_versions(access).exclude(pk=deployment.model_version_id)
        _set_queryset(self, "model_version", versions.select_related("base_model"))
        if not access.can(Perm.OVERRIDE_GATES):
            del self.fields["override_reason"]


class CompletionStorageForm(forms.Form):
    store = forms.BooleanField(
        required=False, label="Store completions",
        help_text="Keep each /v1 exchange (the conversation sent and the answer), with personal data and secrets "
        "redacted, to export as a dataset for distillation or fine-tuning.",
    )  # fmt: skip
    retention_days = forms.IntegerField(
        min_value=1, max_value=completions.MAX_RETENTION_DAYS, label="Keep them for (days)",
        help_text="Older ones are deleted every hour.",
    )  # fmt: skip


class DeploymentNameChoiceField(forms.ModelMultipleChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        return f"{obj.name} ({obj.model_version})"


class KeyDeploymentsForm(forms.Form):
    """The deployments one team API key may call (its page, ``serving/_key_deployments_form.html``)."""

    deployments = DeploymentNameChoiceField(
        queryset=Deployment.objects.none(),
        required=False,
        label="Deployments this key may call",
        widget=forms.CheckboxSelectMultiple,
    )

    def __init__(self, *args: Any, access: TeamAccess, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _set_queryset(self, "deployments", deployments.visible_deployments(access))


def _set_queryset(form: forms.Form, name: str, queryset: Any) -> None:
    choice_field = form.fields[name]
    assert isinstance(choice_field, forms.ModelChoiceField)
    choice_field.queryset = queryset


# --- views --------------------------------------------------------------------------------------


def _deployment(access: TeamAccess, deployment_id: int) -> Deployment:
    return get_object_or_404(deployments.visible_deployments(access), pk=deployment_id)


@require_perm(Perm.VIEW_TEAM)
def deployment_list(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The team's deployments; owners and admins publish a model version here (POST)."""
    access = request.access
    if request.method == "POST":
        access.require(Perm.MANAGE_DEPLOYMENTS)
    can_manage = access.can(Perm.MANAGE_DEPLOYMENTS)
    # ``?version=<id>``: a model version's "Deploy" button chooses it in the form (only one this person may deploy).
    chosen = request.GET.get("version", "")
    initial = {"model_version": int(chosen)} if chosen.isdigit() and len(chosen) < 19 else {}
    form = DeploymentForm(request.POST or None, access=access, initial=initial) if can_manage else None
    if form is not None and form.is_bound and form.is_valid():
        try:
            deployment = deployments.create_deployment(
                access=access,
                name=form.cleaned_data["name"],
                version=form.cleaned_data["model_version"],
                api_keys=form.cleaned_data["api_keys"],
                description=form.cleaned_data["description"],
                ip=client_ip(request),
            )
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            if form.cleaned_data["api_keys"]:
                messages.success(request, f"“{deployment.name}” is deployed: the keys you chose can call it at /v1.")
            else:
                messages.warning(
                    request,
                    f"“{deployment.name}” is deployed, but no API key can call it yet: choose keys below, "
                    "or open it to a key on that key's page (Team API keys).",
                )
            return redirect("serving:deployment", team_slug, deployment.pk)
    context = {
        "deployments": deployments.visible_deployments(access),
        "form": form,
        "can_manage": can_manage,
        "has_versions": form is not None and deployments.deployable_versions(access).exists(),
    }
    return render(request, "serving/deployments.html", context, status=400 if form is not None and form.errors else 200)


@require_perm(Perm.VIEW_TEAM)
def deployment_detail(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    """A deployment: its model version (and canary), the keys that may call it, how to call it, its release
    history, and recent usage. ``?candidate=<version id>`` shows what the gate says of that version."""
    access = request.access
    deployment = _deployment(access, deployment_id)
    form = None
    if access.can(Perm.MANAGE_DEPLOYMENTS):
        candidate = request.GET.get("candidate", "")
        initial = {"model_version": int(candidate)} if candidate.isdigit() and len(candidate) < 19 else {}
        form = PromoteForm(access=access, deployment=deployment, initial=initial)
    return _render_detail(request, deployment, promote_form=form)


def _render_detail(
    request: TeamRequest, deployment: Deployment, *, promote_form: PromoteForm | None, status: int = 200
) -> HttpResponse:
    access = request.access
    keys = list(deployments.keys_of(deployment))
    shown = deployments.visible_key_ids(access)
    can_manage = access.can(Perm.MANAGE_DEPLOYMENTS)
    candidate = _candidate(promote_form)
    context = {
        "promote_form": promote_form,
        "candidate": candidate,
        "gate_report": releases.check_gate(deployment, candidate) if candidate is not None else None,
        "can_override": access.can(Perm.OVERRIDE_GATES),
        "history": releases.history(deployment),
        "rollback_to": releases.default_rollback(deployment),
        "rollback_targets": {version.pk for version in releases.rollback_targets(deployment)},
        "traffic": releases.canary_traffic(deployment),
        "stored": completions.summary(deployment) if can_manage else None,
        "stored_count": completions.stored(deployment).count(),
        "storage_form": CompletionStorageForm(
            initial={"store": deployment.store_completions, "retention_days": deployment.completion_retention_days}
        )
        if can_manage
        else None,
        "can_export": can_manage and access.can(Perm.UPLOAD_DATASETS),
        "deployment": deployment,
        "guard_policy": guardrails.policy_of(deployment),
        "keys": [key for key in keys if shown is None or key.pk in shown],
        "hidden_keys": sum(1 for key in keys if shown is not None and key.pk not in shown),
        "keys_form": DeploymentKeysForm(access=access, initial={"api_keys": [k.pk for k in keys if k.is_active]})
        if can_manage
        else None,
        "can_manage": can_manage,
        "can_play": access.can(Perm.USE_PLAYGROUND),
        "base_url": request.build_absolute_uri("/v1"),
        "usage": deployments.deployment_usage(deployment, visible_keys=shown),
    }
    return render(request, "serving/deployment.html", context, status=status)


def _candidate(form: PromoteForm | None) -> ModelVersion | None:
    """The version the promote form is about (posted, or chosen with ``?candidate=``), if it is one it offers."""
    if form is None:
        return None
    if form.is_bound:
        return form.cleaned_data.get("model_version") if hasattr(form, "cleaned_data") else None
    chosen = form.initial.get("model_version")
    choice_field = form.fields["model_version"]
    assert isinstance(choice_field, forms.ModelChoiceField) and choice_field.queryset is not None
    return choice_field.queryset.filter(pk=chosen).first() if chosen else None


@require_POST
@require_perm(Perm.MANAGE_DEPLOYMENTS)
def deployment_promote(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    """Publish a version to all traffic or as a canary, through the deployment's gate."""
    access = request.access
    deployment = _deployment(access, deployment_id)
    form = PromoteForm(request.POST, access=access, deployment=deployment)
    if form.is_valid():
        version = form.cleaned_data["model_version"]
        share = form.cleaned_data["canary_share"]
        try:
            release = releases.promote(
                access=access, deployment=deployment, version=version, canary_share=share,
                override_reason=form.cleaned_data.get("override_reason", ""), ip=client_ip(request),
            )  # fmt: skip
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            done = (
                f"{version} now takes {share} % of “{deployment.name}”'s traffic as a canary"
                if share
                else (f"{version} now answers all of “{deployment.name}”'s traffic")
            )
            messages.success(request, f"{done}{' (gate overridden)' if release.overridden else ''}.")
            return redirect("serving:deployment", team_slug, deployment.pk)
    return _render_detail(request, deployment, promote_form=form, status=400)


@require_POST
@require_perm(Perm.MANAGE_DEPLOYMENTS)
def deployment_rollback(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    """Send all traffic back to a version the deployment served before (``version``; default the previous one)."""
    access = request.access
    deployment = _deployment(access, deployment_id)
    chosen = request.POST.get("version", "")
    version = None
    if chosen:
        version = deployments.deployable_versions(access).filter(pk=int(chosen) if chosen.isdigit() else 0).first()
        if version is None:
            messages.error(request, "That version does not exist any more or you may not use it.")
            return redirect("serving:deployment", team_slug, deployment.pk)
    try:
        release = releases.rollback(access=access, deployment=deployment, version=version, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"Rolled back: {release.version_label} answers all of “{deployment.name}”'s traffic.")
    return redirect("serving:deployment", team_slug, deployment.pk)


@require_POST
@require_perm(Perm.MANAGE_DEPLOYMENTS)
def deployment_completions(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    """Turn storing the deployment's completions on or off, and set how long they are kept."""
    access = request.access
    deployment = _deployment(access, deployment_id)
    form = CompletionStorageForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(str(error) for errors in form.errors.values() for error in errors))
    else:
        store, days = form.cleaned_data["store"], form.cleaned_data["retention_days"]
        completions.set_storage(
            access=access, deployment=deployment, store=store, retention_days=days, ip=client_ip(request)
        )
        messages.success(
            request, f"“{deployment.name}” stores its completions for {days} days." if store
            else f"“{deployment.name}” no longer stores completions; those kept expire after {days} days.",
        )  # fmt: skip
    return redirect(reverse("serving:deployment", args=[team_slug, deployment.pk]) + "#completions")


@require_POST
@require_perm(Perm.MANAGE_DEPLOYMENTS)
def deployment_completions_export(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    """The stored completions not exported yet, as a new chat dataset version (for distillation)."""
    access = request.access
    access.require(Perm.UPLOAD_DATASETS)
    deployment = _deployment(access, deployment_id)
    try:
        export = completions.export_completions(access=access, deployment=deployment, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect(reverse("serving:deployment", args=[team_slug, deployment.pk]) + "#completions")
    left = f"; {export.left_out} ending in tool calls or empty were left out" if export.left_out else ""
    messages.success(request, f"Exported {export.exported} completions as version {export.version.number}{left}.")
    return redirect("datasets:detail", team_slug, export.version.dataset_id)


@require_POST
@require_perm(Perm.MANAGE_DEPLOYMENTS)
def deployment_stop_canary(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    """End the canary: the current version answers all traffic again."""
    access = request.access
    deployment = _deployment(access, deployment_id)
    try:
        release = releases.stop_canary(access=access, deployment=deployment, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(request, f"The canary {release.version_label} was stopped; {deployment.model_version} "
                         "answers all traffic.")  # fmt: skip
    return redirect("serving:deployment", team_slug, deployment.pk)


@require_POST
@require_perm(Perm.MANAGE_DEPLOYMENTS)
def deployment_keys(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    """Save which team API keys may call the deployment (the checked ones, exactly)."""
    access = request.access
    deployment = _deployment(access, deployment_id)
    form = DeploymentKeysForm(request.POST, access=access)
    if not form.is_valid():
        messages.error(request, "Choose active API keys of this team (reload the page if a key was just revoked).")
    else:
        deployments.set_deployment_keys(
            access=access, deployment=deployment, api_keys=form.cleaned_data["api_keys"], ip=client_ip(request)
        )
        count = len(form.cleaned_data["api_keys"])
        messages.success(request, f"Saved: {count} key{'s' if count != 1 else ''} may call “{deployment.name}”.")
    return redirect("serving:deployment", team_slug, deployment.pk)


@require_POST
@require_perm(Perm.MANAGE_DEPLOYMENTS)
def key_deployments(request: TeamRequest, team_slug: str, key_id: int) -> HttpResponse:
    """Save which deployments a team API key may call (the checked ones, exactly), from the key's page."""
    access = request.access
    key = get_object_or_404(TeamAPIKey.objects.for_team(access.team), pk=key_id)
    form = KeyDeploymentsForm(request.POST, access=access)
    if not form.is_valid():
        messages.error(request, "Choose deployments of this team (reload the page if one was just deleted).")
        return redirect("accounts:api_key_detail", team_slug, key.pk)
    chosen = form.cleaned_data["deployments"]
    try:
        deployments.set_key_deployments(access=access, key=key, deployments=chosen, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        count = len(chosen)
        messages.success(request, f"Saved: “{key.name}” may call {count} deployment{'s' if count != 1 else ''}.")
    return redirect("accounts:api_key_detail", team_slug, key.pk)


@require_perm(Perm.MANAGE_DEPLOYMENTS)
def deployment_delete(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    """Ask, then remove the deployment (its name stops answering at /v1; the model version stays)."""
    access = request.access
    deployment = _deployment(access, deployment_id)
    if request.method == "POST":
        deployments.delete_deployment(access=access, deployment=deployment, ip=client_ip(request))
        messages.success(request, f"“{deployment.name}” was removed; clients calling it now get 404.")
        return redirect("serving:deployments", team_slug)
    return render(request, "serving/deployment_confirm_delete.html", {"deployment": deployment})


@require_perm(Perm.VIEW_TEAM)
def usage(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Tokens per day over 30 days by source, and /v1 requests and tokens per deployment and per key."""
    access = request.access
    summary = deployments.usage_summary(access.team, days=30, visible_keys=deployments.visible_key_ids(access))
    return render(request, "serving/usage.html", {"summary": summary, "chart": daily_chart(summary)})


def daily_chart(summary: UsageSummary) -> dict[str, Any]:
    """Tokens per day as the stacked bar chart draws them: the days, and one series of counts per source."""
    labels = dict(UsageRecord.Source.choices)
    return {
        "days": [f"{day.day:%b %d}" for day in summary.days],
        "series": [
            (labels[source], color, [day.tokens.get(source, 0) for day in summary.days])
            for source, color in SOURCE_COLORS.items()
        ],
    }


urlpatterns: list[URLPattern] = [
    path("deployments/", deployment_list, name="deployments"),
    path("deployments/<int:deployment_id>/", deployment_detail, name="deployment"),
    path("deployments/<int:deployment_id>/keys", deployment_keys, name="deployment_keys"),
    path("deployments/<int:deployment_id>/promote", deployment_promote, name="deployment_promote"),
    path("deployments/<int:deployment_id>/rollback", deployment_rollback, name="deployment_rollback"),
    path("deployments/<int:deployment_id>/canary/stop", deployment_stop_canary, name="deployment_stop_canary"),
    path("deployments/<int:deployment_id>/completions", deployment_completions, name="deployment_completions"),
    path(
        "deployments/<int:deployment_id>/completions/export",
        deployment_completions_export,
        name="deployment_completions_export",
    ),
    path("deployments/<int:deployment_id>/delete", deployment_delete, name="deployment_delete"),
    path("keys/<int:key_id>/deployments/", key_deployments, name="key_deployments"),
    path("usage/", usage, name="usage"),
]
