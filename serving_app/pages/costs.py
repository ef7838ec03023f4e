"""The serving plan of a deployment (``deployments/<id>/serving-plan/``): what its serving cost on the deployment
page is estimated for. Owners and admins (``deployments.manage``) change it; the work is ``serving_app.costs``.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import URLPattern, path, reverse
from django.views.decorators.http import require_POST

from accounts.http import client_ip
from accounts.permissions import TeamRequest, require_perm
from accounts.roles import Perm
from serving_app import costs, deployments
from training_app import services as training_services


class ServingPlanForm(forms.Form):
    precision = forms.ChoiceField(choices=(), help_text="The weights' precision (fp8 halves bf16's memory).")
    context_length = forms.IntegerField(
        required=False, min_value=1, label="Context length (tokens)",
        help_text="The longest request, prompt and answer; empty: the base model's context length.",
    )  # fmt: skip
    concurrency = forms.IntegerField(
        min_value=1, max_value=costs.MAX_CONCURRENCY, label="Requests at once",
        help_text="Each holds a key/value cache of the full context length.",
    )  # fmt: skip

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choice = self.fields["precision"]
        assert isinstance(choice, forms.ChoiceField)
        choice.choices = [(name, name) for name in training_services.serving_precisions()]


@require_POST
@require_perm(Perm.MANAGE_DEPLOYMENTS)
def serving_plan(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    """Save the precision, context length and concurrency the deployment's serving cost is estimated for."""
    access = request.access
    deployment = get_object_or_404(deployments.visible_deployments(access), pk=deployment_id)
    form = ServingPlanForm(request.POST)
    if not form.is_valid():
        problems = [
            f"{form.fields[name].label or name}: {' '.join(map(str, errors))}" for name, errors in form.errors.items()
        ]
        messages.error(request, " ".join(problems))
    else:
        try:
            costs.set_serving_plan(access=access, deployment=deployment, ip=client_ip(request), **form.cleaned_data)
        except ValidationError as error:
            messages.error(request, " ".join(error.messages))
        else:
            messages.success(request, f"Saved: “{deployment.name}”'s serving cost is estimated for this plan.")
    return redirect(reverse("serving:deployment", args=[team_slug, deployment.pk]) + "#serving-cost")


urlpatterns: list[URLPattern] = [
    path("deployments/<int:deployment_id>/serving-plan/", serving_plan, name="deployment_serving_plan"),
]
