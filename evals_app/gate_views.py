"""Deployment gate and maintenance actions under /t/<team>/evals/gates/: edit what a deployment requires, run what
is missing, retrain on newer data.

The gate and the retrains are shown on the deployment's page (``serving_app``, through ``evals_app.templatetags``);
their actions live here because they are evaluation. ``deployments.manage`` edits a gate and the retraining
schedule; ``evals.run`` starts the suites a candidate version was never run through; retraining also needs
``training.launch``.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.http import add_service_errors, client_ip
from accounts.permissions import TeamAccess, TeamRequest, require_perm
from accounts.roles import Perm
from evals_app import gates, maintenance, services
from evals_app.models import EvalSuite
from serving_app import deployments
from serving_app.models import Deployment


class GateForm(forms.Form):
    """One checkbox and one optional pass rate per suite of the team, then the other requirements."""

    forgetting = forms.BooleanField(
        required=False, label="Require the forgetting check", help_text="The version must not regress on the general "
        "corpus or the base model's suites beyond the team's limits."
    )  # fmt: skip
    max_bias_gap = forms.FloatField(
        required=False, min_value=0, max_value=1, label="Largest bias-probe gap",
        help_text="From 0 to 1 (0.2 = 20 points between the best- and worst-treated group); empty: no limit.",
    )  # fmt: skip

    def __init__(self, *args: Any, suites: list[EvalSuite], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.suites = suites
        for suite in suites:
            self.fields[f"suite_{suite.pk}"] = forms.BooleanField(required=False, label=suite.name)
            self.fields[f"rate_{suite.pk}"] = forms.FloatField(
                required=False, min_value=0, max_value=100, label=f"{suite.name}: at least this % of rows",
                help_text="Empty: each grader's own pass rate in the suite.",
            )  # fmt: skip

    def suite_rows(self) -> list[tuple[EvalSuite, Any, Any]]:
        return [(suite, self[f"suite_{suite.pk}"], self[f"rate_{suite.pk}"]) for suite in self.suites]

    def chosen(self) -> list[tuple[int, float | None]]:
        data = self.cleaned_data
        return [
            (suite.pk, None if data[f"rate_{suite.pk}"] is None else data[f"rate_{suite.pk}"] / 100)
            for suite in self.suites
            if data[f"suite_{suite.pk}"]
        ]


def _deployment(access: TeamAccess, deployment_id: int) -> Deployment:
    return get_object_or_404(deployments.visible_deployments(access), pk=deployment_id)


@require_perm(Perm.MANAGE_DEPLOYMENTS)
def gate_edit(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    """Choose the suites (with pass rates), the forgetting check and the bias limit a deployment requires."""
    access = request.access
    deployment = _deployment(access, deployment_id)
    gate = gates.gate_of(deployment)
    initial: dict[str, Any] = {"forgetting": gate.forgetting, "max_bias_gap": gate.max_bias_gap}
    for requirement in gate.suites:
        initial[f"suite_{requirement.suite.pk}"] = True
        rate = requirement.min_pass_rate
        initial[f"rate_{requirement.suite.pk}"] = None if rate is None else round(rate * 100, 2)
    form = GateForm(request.POST or None, initial=initial, suites=list(services.visible_suites(access)))
    if form.is_bound and form.is_valid():
        try:
            gates.set_gate(
                access=access, deployment=deployment, suites=form.chosen(), forgetting=form.cleaned_data["forgetting"],
                max_bias_gap=form.cleaned_data["max_bias_gap"], ip=client_ip(request),
            )  # fmt: skip
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"Saved “{deployment.name}”'s gate.")
            return redirect(reverse("serving:deployment", args=[team_slug, deployment.pk]) + "#releases")
    context = {"deployment": deployment, "form": form, "gate": gate}
    return render(request, "evals/gate_form.html", context, status=400 if form.errors else 200)


@require_POST
@require_perm(Perm.RUN_EVALS)
def gate_run(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    """Start the gate's suites that ``version`` was never run through (beside the deployment's current version)."""
    access = request.access
    deployment = _deployment(access, deployment_id)
    chosen = request.POST.get("version", "")
    version = deployments.deployable_versions(access).filter(pk=int(chosen) if chosen.isdigit() else 0).first()
    back = reverse("serving:deployment", args=[team_slug, deployment.pk])
    if version is None:
        messages.error(request, "That version does not exist or you may not use it.")
        return redirect(back)
    try:
        runs = gates.run_missing(access=access, deployment=deployment, version=version, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        if runs:
            names = ", ".join(f"“{run.suite.name}”" for run in runs)
            messages.success(request, f"Started {names} on {version}; check the gate again when they finish.")
        else:
            messages.info(request, f"Every suite of the gate has run (or is running) on {version}.")
    return redirect(f"{back}?candidate={version.pk}#releases")


@require_POST
@require_perm(Perm.LAUNCH_TRAINING)
def retrain_start(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    """Train the deployment's model again on a newer version of its data, then gate and propose it."""
    access = request.access
    deployment = _deployment(access, deployment_id)
    chosen = request.POST.get("dataset_version", "")
    version = maintenance.newer_versions(deployment).filter(pk=int(chosen) if chosen.isdigit() else 0).first()
    try:
        attempt = maintenance.retrain(
            access=access, deployment=deployment, dataset_version=version, ip=client_ip(request)
        )
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(
            request, f"Retraining on v{attempt.dataset_version.number}: the gate runs when the job's model is ready, "
            "and the new version is proposed here if it passes.",
        )  # fmt: skip
    return redirect(reverse("serving:deployment", args=[team_slug, deployment.pk]) + "#maintenance")


@require_POST
@require_perm(Perm.MANAGE_DEPLOYMENTS)
def retrain_schedule(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    """Turn retraining on each new version of the deployment's data on or off."""
    access = request.access
    deployment = _deployment(access, deployment_id)
    enabled = request.POST.get("enabled") == "on"
    try:
        maintenance.set_automatic(access=access, deployment=deployment, enabled=enabled, ip=client_ip(request))
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
    else:
        messages.success(
            request, f"“{deployment.name}” retrains on each new version of its data." if enabled
            else f"“{deployment.name}” no longer retrains by itself.",
        )  # fmt: skip
    return redirect(reverse("serving:deployment", args=[team_slug, deployment.pk]) + "#maintenance")
