"""Eval pages under /t/<team>/evals/: suites, their runs, and each run's results side by side.

Every member reads suites and results; ``evals.run`` (owners, admins, members) defines suites and runs them on the
models they may use. The work is done by ``evals_app.services``.
"""

from __future__ import annotations

import json

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.http import add_service_errors, client_ip
from accounts.permissions import TeamAccess, TeamRequest, require_perm
from accounts.roles import Perm
from evals_app import services
from evals_app.forms import RunForm, SuiteForm
from evals_app.models import EvalRun, EvalSuite
from training_app.engine.graders import GRADER_TYPES

ROWS_PER_PAGE = 20


def _suite(access: TeamAccess, suite_id: int) -> EvalSuite:
    return get_object_or_404(services.visible_suites(access), pk=suite_id)


def _run(access: TeamAccess, run_id: int) -> EvalRun:
    return get_object_or_404(services.visible_runs(access).select_related("suite__dataset_version"), pk=run_id)


@require_perm(Perm.VIEW_TEAM)
def suite_list(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The team's eval suites and its latest runs."""
    access = request.access
    context = {
        "suites": services.visible_suites(access),
        "runs": services.visible_runs(access)[:10],
        "can_run": access.can(Perm.RUN_EVALS),
    }
    return render(request, "evals/list.html", context)


def _suite_form_page(request: TeamRequest, suite: EvalSuite | None) -> HttpResponse:
    access = request.access
    initial = None
    if suite is not None:
        initial = {"name": suite.name, "description": suite.description, "dataset_version": suite.dataset_version_id,
                   "graders": json.dumps(suite.graders, indent=2, ensure_ascii=False)}  # fmt: skip
    form = SuiteForm(request.POST or None, initial=initial, versions=services.eval_dataset_versions(access))
    if form.is_bound and form.is_valid():
        fields = {key: form.cleaned_data[key] for key in ("name", "description", "dataset_version", "graders")}
        try:
            if suite is None:
                suite = services.create_suite(access=access, ip=client_ip(request), **fields)
            else:
                suite = services.update_suite(access=access, suite=suite, ip=client_ip(request), **fields)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"Suite “{suite.name}” saved.")
            return redirect("evals:suite", team_slug=access.team.slug, suite_id=suite.pk)
    context = {"form": form, "suite": suite, "grader_types": GRADER_TYPES.values()}
    return render(request, "evals/form.html", context, status=400 if form.errors else 200)


@require_perm(Perm.RUN_EVALS)
def suite_create(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Define a suite: a dataset version of prompts with references, and its graders."""
    return _suite_form_page(request, None)


@require_perm(Perm.RUN_EVALS)
def suite_edit(request: TeamRequest, team_slug: str, suite_id: int) -> HttpResponse:
    """Change a suite (its finished runs keep the graders they ran with)."""
    return _suite_form_page(request, _suite(request.access, suite_id))


@require_perm(Perm.VIEW_TEAM)
def suite_detail(request: TeamRequest, team_slug: str, suite_id: int) -> HttpResponse:
    """A suite: its graders, its runs, how its models did over time, and "Run on…"."""
    access = request.access
    suite = _suite(access, suite_id)
    can_run = access.can(Perm.RUN_EVALS)
    context = {
        "suite": suite,
        "runs": services.runs_of(access, suite),
        "history": services.history(access, suite),
        "can_run": can_run,
        "run_form": RunForm(servables=services.runnable_models(access)) if can_run else None,
        "graders_json": json.dumps(suite.graders, indent=2, ensure_ascii=False),
    }
    return render(request, "evals/suite.html", context)


@require_perm(Perm.RUN_EVALS)
def suite_delete(request: TeamRequest, team_slug: str, suite_id: int) -> HttpResponse:
    """Confirm (GET), then delete a suite and its runs (POST)."""
    access = request.access
    suite = _suite(access, suite_id)
    if request.method == "POST":
        services.delete_suite(access=access, suite=suite, ip=client_ip(request))
        messages.success(request, f"Suite “{suite.name}” deleted.")
        return redirect("evals:list", team_slug=access.team.slug)
    return render(request, "evals/confirm_delete.html", {"suite": suite})


@require_POST
@require_perm(Perm.RUN_EVALS)
def run_create(request: TeamRequest, team_slug: str, suite_id: int) -> HttpResponse:
    """Start a run of the suite on the chosen models."""
    access = request.access
    suite = _suite(access, suite_id)
    form = RunForm(request.POST, servables=services.runnable_models(access))
    if form.is_valid():
        try:
            run = services.start_run(
                access=access, suite=suite, model_keys=form.cleaned_data["models"], ip=client_ip(request)
            )
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            return redirect("evals:run", team_slug=access.team.slug, run_id=run.pk)
    context = {"suite": suite, "runs": services.runs_of(access, suite), "history": services.history(access, suite),
               "can_run": True, "run_form": form,
               "graders_json": json.dumps(suite.graders, indent=2, ensure_ascii=False)}  # fmt: skip
    return render(request, "evals/suite.html", context, status=400)


@require_perm(Perm.VIEW_TEAM)
def run_detail(request: TeamRequest, team_slug: str, run_id: int) -> HttpResponse:
    """A run: progress while it runs, a table per model, a chart, and the rows side by side."""
    access = request.access
    run = _run(access, run_id)
    summary = services.current_summary(run)
    chart = {figures["label"]: round(100 * figures["pass_rate"], 1) for figures in summary.values()}
    context = {"run": run, "summary": summary, "chart": chart}
    if request.GET.get("part") == "live":
        response = render(request, "evals/_run_live.html", context)
        if not run.is_active and request.headers.get("HX-Request"):
            # The run just ended under a page that polled it: reload once, so the rows show their answers too.
            response["HX-Refresh"] = "true"
        return response
    try:
        page = max(1, int(request.GET.get("page", "1")))
    except ValueError:
        page = 1
    page = min(page, 100_000)
    rows, more = services.side_by_side(run, offset=(page - 1) * ROWS_PER_PAGE, limit=ROWS_PER_PAGE)
    context.update(rows=rows, page=page, more=more, columns=[run.label_of(key) for key in run.model_keys])
    return render(request, "evals/run.html", context)
