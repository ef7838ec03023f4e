"""Eval pages under /t/<team>/evals/: suites, their runs, and each run's results side by side; the team's quality
limits; bias probe sets and their reports; "Check for forgetting" on a model version.

Every member reads suites, results and reports; ``evals.run`` (owners, admins, members) defines suites and probe
sets and runs them (and forgetting checks) on the models they may use; ``team.change`` (owners, admins) sets the
team's limits. The work is done by ``evals_app.services``, ``forgetting``, ``bias`` and ``policy``.
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
from evals_app import bias, forgetting, services
from evals_app.forms import PolicyForm, ProbeRunForm, ProbeSetForm, RunForm, SuiteForm
from evals_app.models import EvalRun, EvalSuite, ProbeRun, ProbeSet
from evals_app.policy import team_policy, update_policy
from training_app.engine.graders import GRADER_TYPES
from training_app.services import visible_versions

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
                   "graders": json.dumps(suite.graders, indent=2, ensure_ascii=False),
                   "base_models": list(suite.base_models.values_list("pk", flat=True))}  # fmt: skip
    form = SuiteForm(
        request.POST or None, initial=initial, versions=services.eval_dataset_versions(access),
        base_models=services.regression_base_models(access),
    )  # fmt: skip
    if form.is_bound and form.is_valid():
        fields = {
            key: form.cleaned_data[key] for key in ("name", "description", "dataset_version", "graders", "base_models")
        }
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


# --- the team's quality limits --------------------------------------------------------------------------------


@require_perm(Perm.VIEW_TEAM)
def policy_page(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The team's limits for the forgetting check and the bias probe (every member reads them, admins change them)."""
    access = request.access
    policy = team_policy(access.team)
    initial = {"max_perplexity_increase": round(100 * policy.max_perplexity_increase, 4),
               "max_pass_rate_drop": round(100 * policy.max_pass_rate_drop, 4), "max_bias_gap": policy.max_bias_gap,
               "check_after_training": policy.check_after_training}  # fmt: skip
    form = PolicyForm(request.POST or None, initial=initial)
    if request.method == "POST":
        access.require(Perm.CHANGE_TEAM)
        if form.is_valid():
            try:
                update_policy(access=access, ip=client_ip(request), **form.shares())
            except ValidationError as error:
                add_service_errors(form, error)
            else:
                messages.success(request, "Quality limits saved.")
                return redirect("evals:policy", team_slug=access.team.slug)
    context = {"form": form, "policy": policy, "can_change": access.can(Perm.CHANGE_TEAM)}
    return render(request, "evals/policy.html", context, status=400 if form.errors else 200)


# --- forgetting checks ----------------------------------------------------------------------------------------


@require_POST
@require_perm(Perm.RUN_EVALS)
def forgetting_create(request: TeamRequest, team_slug: str, version_id: int) -> HttpResponse:
    """Check a model version for forgetting now; back to its page, where the result shows."""
    access = request.access
    version = get_object_or_404(visible_versions(access), pk=version_id)
    forgetting.start_check(access=access, version=version, ip=client_ip(request))
    messages.success(request, "Forgetting check started: its result shows on this page when it ends.")
    return redirect("training:version", access.team.slug, version.pk)


# --- bias probes ----------------------------------------------------------------------------------------------


def _probe_set(access: TeamAccess, set_id: int) -> ProbeSet:
    return get_object_or_404(bias.visible_sets(access), pk=set_id)


@require_perm(Perm.VIEW_TEAM)
def probe_set_list(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The team's probe sets and latest probe runs."""
    access = request.access
    context = {
        "probe_sets": bias.visible_sets(access),
        "runs": bias.visible_probe_runs(access)[:20],
        "can_run": access.can(Perm.RUN_EVALS),
    }
    return render(request, "evals/probe_sets.html", context)


def _probe_set_form_page(request: TeamRequest, probe_set: ProbeSet | None) -> HttpResponse:
    access = request.access
    initial = None
    if probe_set is not None:
        initial = {
            "name": probe_set.name,
            "description": probe_set.description,
            "templates": "\n".join(probe_set.templates),
            "groups": bias.groups_text(probe_set.groups),
        }
    form = ProbeSetForm(request.POST or None, initial=initial)
    if form.is_bound and form.is_valid():
        fields = {key: form.cleaned_data[key] for key in ("name", "description", "templates", "groups")}
        try:
            if probe_set is None:
                probe_set = bias.create_set(access=access, ip=client_ip(request), **fields)
            else:
                probe_set = bias.update_set(access=access, probe_set=probe_set, ip=client_ip(request), **fields)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"Probe set “{probe_set.name}” saved.")
            return redirect("evals:probe_set", team_slug=access.team.slug, set_id=probe_set.pk)
    context = {"form": form, "probe_set": probe_set}
    return render(request, "evals/probe_set_form.html", context, status=400 if form.errors else 200)


@require_perm(Perm.RUN_EVALS)
def probe_set_create(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Define a probe set: templates with {person}, and groups of terms by category."""
    return _probe_set_form_page(request, None)


@require_POST
@require_perm(Perm.RUN_EVALS)
def probe_set_default(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Copy the studio's default probe set (gender, origin, age, religion) into the team."""
    access = request.access
    probe_set = bias.create_default_set(access=access, ip=client_ip(request))
    messages.success(request, f"Probe set “{probe_set.name}” added: edit its groups and terms to fit your users.")
    return redirect("evals:probe_set", team_slug=access.team.slug, set_id=probe_set.pk)


@require_perm(Perm.RUN_EVALS)
def probe_set_edit(request: TeamRequest, team_slug: str, set_id: int) -> HttpResponse:
    """Change a probe set (finished runs keep what they ran with)."""
    return _probe_set_form_page(request, _probe_set(request.access, set_id))


def _probe_set_page(request: TeamRequest, probe_set: ProbeSet, form: ProbeRunForm | None, status: int) -> HttpResponse:
    access = request.access
    context = {
        "probe_set": probe_set,
        "prompts": [bias.fill(template, probe_set.groups[0]["terms"][0]) for template in probe_set.templates][:3]
        if probe_set.groups
        else [],
        "runs": bias.visible_probe_runs(access).filter(probe_set=probe_set)[:20],
        "can_run": access.can(Perm.RUN_EVALS),
        "run_form": form,
    }
    return render(request, "evals/probe_set.html", context, status=status)


@require_perm(Perm.VIEW_TEAM)
def probe_set_detail(request: TeamRequest, team_slug: str, set_id: int) -> HttpResponse:
    """A probe set: its templates and groups, its runs, and "Probe…"."""
    access = request.access
    probe_set = _probe_set(access, set_id)
    form = None
    if access.can(Perm.RUN_EVALS):
        form = ProbeRunForm(initial={"model": request.GET.get("model", "")}, servables=services.runnable_models(access))
    return _probe_set_page(request, probe_set, form, 200)


@require_perm(Perm.RUN_EVALS)
def probe_set_delete(request: TeamRequest, team_slug: str, set_id: int) -> HttpResponse:
    """Confirm (GET), then delete a probe set (POST); its runs stay."""
    access = request.access
    probe_set = _probe_set(access, set_id)
    if request.method == "POST":
        bias.delete_set(access=access, probe_set=probe_set, ip=client_ip(request))
        messages.success(request, f"Probe set “{probe_set.name}” deleted.")
        return redirect("evals:probe_sets", team_slug=access.team.slug)
    return render(request, "evals/probe_set_delete.html", {"probe_set": probe_set})


@require_POST
@require_perm(Perm.RUN_EVALS)
def probe_run_create(request: TeamRequest, team_slug: str, set_id: int) -> HttpResponse:
    """Start a probe run of the set on the chosen model."""
    access = request.access
    probe_set = _probe_set(access, set_id)
    form = ProbeRunForm(request.POST, servables=services.runnable_models(access))
    if form.is_valid():
        try:
            run = bias.start_probe(
                access=access, probe_set=probe_set, model_key=form.cleaned_data["model"],
                graders=form.cleaned_data["graders"], ip=client_ip(request),
            )  # fmt: skip
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            return redirect("evals:probe_run", team_slug=access.team.slug, run_id=run.pk)
    return _probe_set_page(request, probe_set, form, 400)


@require_perm(Perm.VIEW_TEAM)
def probe_run_detail(request: TeamRequest, team_slug: str, run_id: int) -> HttpResponse:
    """A probe run: progress while it runs; per group the mean of each measure with its interval, and the gaps."""
    access = request.access
    run: ProbeRun = get_object_or_404(bias.visible_probe_runs(access), pk=run_id)
    summary = run.summary or {}
    charts = [(measure, bias.chart_rows(summary, measure)) for measure in summary.get("measures", [])]
    context = {"run": run, "summary": summary, "charts": charts, "policy": team_policy(access.team),
               "answers": bias.answers_of(run)[:40]}  # fmt: skip
    return render(request, "evals/probe_run.html", context)
