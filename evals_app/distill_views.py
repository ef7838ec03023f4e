"""Distillation pages under /t/<team>/evals/distill/: start one, watch it, train and compare students.

Every member reads distillations; ``evals.run`` with ``datasets.upload`` starts one (it makes a dataset). The work is
done by ``evals_app.distill``.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.http import add_service_errors, client_ip
from accounts.permissions import TeamAccess, TeamRequest, require_perm
from accounts.roles import Perm
from datasets_app.models import DatasetVersion
from evals_app import distill, services
from evals_app.forms import VersionChoiceField, graders_json
from evals_app.models import Distillation, EvalRun, EvalSuite
from serving_app.catalog import Servable

GRADERS_HELP = (
    'Optional, a JSON list: an answer failing any of them is left out, e.g. [{"type": "json_schema", "schema": '
    '{"type": "object"}}]. Graders compare against the row\'s reference when it has one.'
)


class DistillForm(forms.Form):
    name = forms.CharField(max_length=120, help_text="The dataset of the teacher's answers takes this name.")
    teacher = forms.ChoiceField(help_text="A larger or better model: a deployment, a fine-tuned version or a base.")
    prompts = VersionChoiceField(
        queryset=DatasetVersion.objects.none(), empty_label=None, label="Prompts",
        help_text="A ready chat or instruction version: each row's conversation (up to its last assistant turn) is "
        "a prompt.",
    )  # fmt: skip
    graders = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 3, "class": "mono", "spellcheck": "false"}),
        help_text=GRADERS_HELP,
    )  # fmt: skip
    redact_pii = forms.BooleanField(
        required=False, initial=True, label="Redact personal data and secrets",
        help_text="Emails, phone numbers, cards, IBANs, IP addresses and keys become placeholders such as [EMAIL].",
    )  # fmt: skip

    def __init__(self, *args: Any, teachers: list[Servable], versions: QuerySet[DatasetVersion], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        teacher = self.fields["teacher"]
        assert isinstance(teacher, forms.ChoiceField)
        teacher.choices = [(servable.key, servable.label) for servable in teachers]
        prompts = self.fields["prompts"]
        assert isinstance(prompts, forms.ModelChoiceField)
        prompts.queryset = versions

    def clean_graders(self) -> list[Any]:
        text = self.cleaned_data["graders"].strip()
        return graders_json(text) if text else []


class CompareForm(forms.Form):
    suite = forms.ModelChoiceField(queryset=EvalSuite.objects.none(), empty_label=None, label="Eval suite")


def _distillation(access: TeamAccess, distillation_id: int) -> Distillation:
    return get_object_or_404(distill.visible_distillations(access), pk=distillation_id)


@require_perm(Perm.VIEW_TEAM)
def distill_list(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The team's distillations; members start one here (POST)."""
    access = request.access
    can_start = access.can(Perm.RUN_EVALS) and access.can(Perm.UPLOAD_DATASETS)
    if request.method == "POST" and not can_start:
        access.require(Perm.UPLOAD_DATASETS)
        access.require(Perm.RUN_EVALS)
    form = None
    if can_start:
        # ``?teacher=<model key>``: a deployment's or version's "Distill" link chooses the teacher.
        form = DistillForm(
            request.POST or None, teachers=services.runnable_models(access),
            versions=services.eval_dataset_versions(access), initial={"teacher": request.GET.get("teacher", "")[:40]},
        )  # fmt: skip
    if form is not None and form.is_bound and form.is_valid():
        data = form.cleaned_data
        try:
            distillation = distill.start(
                access=access, name=data["name"], teacher=data["teacher"], prompts=data["prompts"],
                graders=data["graders"], redact_pii=data["redact_pii"], ip=client_ip(request),
            )  # fmt: skip
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            return redirect("evals:distillation", team_slug, distillation.pk)
    context = {"distillations": distill.visible_distillations(access)[:50], "form": form}
    return render(request, "evals/distillations.html", context, status=400 if form is not None and form.errors else 200)


@require_perm(Perm.VIEW_TEAM)
def distill_detail(request: TeamRequest, team_slug: str, distillation_id: int) -> HttpResponse:
    """A distillation: its progress, what was kept and left out, the dataset, its students and the comparison."""
    access = request.access
    distillation = _distillation(access, distillation_id)
    if request.GET.get("part") == "live":
        response = render(request, "evals/_distillation_live.html", {"distillation": distillation})
        if not distillation.is_active and request.headers.get("HX-Request"):
            response["HX-Refresh"] = "true"  # ended: reload once for the dataset and the student sections
        return response
    run = _comparison_run(access, distillation, request.GET.get("run", ""))
    compare_form = None
    if access.can(Perm.RUN_EVALS):
        compare_form = CompareForm(initial={"suite": run.suite_id if run else None})
        suites = compare_form.fields["suite"]
        assert isinstance(suites, forms.ModelChoiceField)
        suites.queryset = services.visible_suites(access)
    context = {
        "distillation": distillation,
        "students": distill.students(distillation),
        "comparison": distill.comparison(distillation, run),
        "run": run,
        "compare_form": compare_form,
        "can_train": access.can(Perm.LAUNCH_TRAINING),
    }
    return render(request, "evals/distillation.html", context)


def _comparison_run(access: TeamAccess, distillation: Distillation, chosen: str) -> EvalRun | None:
    """The run to compare by: ``?run=<id>`` when it included the teacher, else the latest such run."""
    runs = services.visible_runs(access).filter(created_at__gte=distillation.created_at).select_related("suite")
    if chosen.isdigit() and len(chosen) < 19:
        runs = runs.filter(pk=int(chosen))
    return next((run for run in runs.order_by("-created_at")[:50] if distillation.teacher_key in run.model_keys), None)


@require_POST
@require_perm(Perm.RUN_EVALS)
def distill_compare(request: TeamRequest, team_slug: str, distillation_id: int) -> HttpResponse:
    """Run a suite on the teacher and every student at once."""
    access = request.access
    distillation = _distillation(access, distillation_id)
    form = CompareForm(request.POST)
    suites = form.fields["suite"]
    assert isinstance(suites, forms.ModelChoiceField)
    suites.queryset = services.visible_suites(access)
    back = reverse("evals:distillation", args=[team_slug, distillation.pk])
    if not form.is_valid():
        messages.error(request, "Choose one of the team's eval suites.")
        return redirect(back)
    try:
        run = distill.compare(
            access=access, distillation=distillation, suite=form.cleaned_data["suite"], ip=client_ip(request)
        )
    except ValidationError as error:
        messages.error(request, " ".join(error.messages))
        return redirect(back)
    messages.success(request, f"Started “{run.suite.name}” on the teacher and {len(run.model_keys) - 1} student(s).")
    return redirect(f"{back}?run={run.pk}#comparison")
