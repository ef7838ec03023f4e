"""Guard tests under /t/<team>/evals/guard/<deployment>/: try a deployment's guard policy on an eval suite, read
its false-positive and false-negative rates, and make a passing test part of the deployment's gate
(``evals_app.guard_tests``). Every member reads; ``evals.run`` runs a test; ``deployments.manage`` sets the gate.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.views.decorators.http import require_POST

from accounts.http import client_ip
from accounts.permissions import TeamAccess, TeamRequest, require_perm
from accounts.roles import Perm
from evals_app import guard_tests, services
from evals_app.models import EvalSuite
from serving_app import deployments, guardrails
from serving_app.models import Deployment


class GuardTestForm(forms.Form):
    suite: forms.ModelChoiceField[EvalSuite] = forms.ModelChoiceField(
        queryset=EvalSuite.objects.none(), empty_label=None,
        help_text="Rows whose reference is BLOCK should be refused; every other row should pass.",
    )  # fmt: skip

    def __init__(self, *args: Any, access: TeamAccess, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["suite"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = services.visible_suites(access)


class GuardGateForm(GuardTestForm):
    require = forms.BooleanField(required=False, label="Require a passing guard test before publishing")
    max_false_positive_rate = forms.FloatField(min_value=0, max_value=100, initial=10, label="Most false positives (%)")
    max_false_negative_rate = forms.FloatField(min_value=0, max_value=100, initial=10, label="Most false negatives (%)")


def _deployment(access: TeamAccess, deployment_id: int) -> Deployment:
    return get_object_or_404(deployments.visible_deployments(access), pk=deployment_id)


@require_perm(Perm.VIEW_TEAM)
def guard_tests_page(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    access = request.access
    deployment = _deployment(access, deployment_id)
    spec = (deployment.gate or {}).get("guard") or {}
    gate_initial = {
        "require": bool(spec), "suite": spec.get("suite"),
        "max_false_positive_rate": round(100 * spec.get("max_false_positive_rate", 0.1), 2),
        "max_false_negative_rate": round(100 * spec.get("max_false_negative_rate", 0.1), 2),
    }  # fmt: skip
    context = {
        "deployment": deployment,
        "policy": guardrails.policy_of(deployment),
        "tests": guard_tests.tests_of(deployment),
        "form": GuardTestForm(access=access) if access.can(Perm.RUN_EVALS) else None,
        "gate_form": GuardGateForm(access=access, initial=gate_initial)
        if access.can(Perm.MANAGE_DEPLOYMENTS)
        else None,
        "check": guard_tests.guard_check(deployment),
    }
    return render(request, "evals/guard_tests.html", context)


@require_POST
@require_perm(Perm.RUN_EVALS)
def guard_test_run(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    access = request.access
    deployment = _deployment(access, deployment_id)
    form = GuardTestForm(request.POST, access=access)
    if not form.is_valid():
        messages.error(request, "Choose one of the team's eval suites.")
    else:
        try:
            test = guard_tests.run_test(
                access=access, deployment=deployment, suite=form.cleaned_data["suite"], ip=client_ip(request)
            )
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            messages.success(
                request, f"Tested revision {test.revision}: {test.false_positives} of {test.allowed} allowed prompts "
                f"refused, {test.false_negatives} of {test.disallowed} disallowed prompts let through.",
            )  # fmt: skip
    return redirect("evals:guard_tests", team_slug, deployment.pk)


@require_POST
@require_perm(Perm.MANAGE_DEPLOYMENTS)
def guard_gate(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    access = request.access
    deployment = _deployment(access, deployment_id)
    form = GuardGateForm(request.POST, access=access)
    if not form.is_valid():
        messages.error(request, " ".join(str(e) for errors in form.errors.values() for e in errors))
        return redirect("evals:guard_tests", team_slug, deployment.pk)
    data = form.cleaned_data
    guard_tests.set_guard_gate(
        access=access, deployment=deployment, suite=data["suite"] if data["require"] else None,
        max_false_positive_rate=data["max_false_positive_rate"] / 100,
        max_false_negative_rate=data["max_false_negative_rate"] / 100, ip=client_ip(request),
    )  # fmt: skip
    messages.success(
        request, "Publishing now needs a passing guard test." if data["require"] else "The gate no longer asks for a "
        "guard test.",
    )  # fmt: skip
    return redirect("evals:guard_tests", team_slug, deployment.pk)


urlpatterns = [
    path("guard/<int:deployment_id>/", guard_tests_page, name="guard_tests"),
    path("guard/<int:deployment_id>/run", guard_test_run, name="guard_test_run"),
    path("guard/<int:deployment_id>/gate", guard_gate, name="guard_gate"),
]
