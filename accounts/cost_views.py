"""The team's Costs page (``/t/<team>/costs/``): the month's spend by training job and by deployment, drawn per day,
and the budget. Every member reads it; owners (``costs.budgets``) change the budget. The work is ``accounts.costs``.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts import costs
from accounts.http import add_service_errors, client_ip
from accounts.permissions import TeamRequest, require_perm
from accounts.roles import Perm

# The daily chart: one color per kind of spend.
KIND_COLORS = {"training": "#4f46e5", "serving": "#0f7a4a"}


def _amount(label: str, help_text: str) -> forms.DecimalField:
    return forms.DecimalField(
        label=label, required=False, min_value=0, max_digits=12, decimal_places=2, help_text=help_text
    )


class BudgetForm(forms.Form):
    soft_limit = _amount("Soft limit per month", "Reaching it shows a warning here and on the launch form.")
    hard_limit = _amount(
        "Hard limit per month",
        "Reaching it refuses new training jobs and new deployments until the next month (running ones go on).",
    )
    cpu_hour_price = _amount(
        "Price per CPU-hour",
        "What one process-hour of a CPU pool costs; empty prices CPU pools like GPUs (team settings).",
    )


def _previous(month: date) -> date:
    return (month - timedelta(days=1)).replace(day=1)


@require_perm(Perm.VIEW_TEAM)
def costs_page(request: TeamRequest, team_slug: str) -> HttpResponse:
    """The month's spend (``?month=YYYY-MM``, default this one) and the budget form for owners."""
    access = request.access
    report = costs.cost_report(access, costs.parse_month(request.GET.get("month")))
    budget = costs.budget_of(access.team)
    form = None
    if access.can(Perm.CHANGE_BUDGETS):
        initial = {name: getattr(budget, name) for name in BudgetForm.base_fields} if budget else {}
        form = BudgetForm(initial=initial)
    return render(request, "accounts/costs.html", _context(report, form))


def _context(report: costs.CostReport, form: BudgetForm | None) -> dict[str, Any]:
    labels = [f"{day:%d}" for day in report.days]
    series = [(kind.capitalize(), KIND_COLORS[kind], values) for kind, values in report.daily.items()]
    return {
        "report": report,
        "chart": {"days": labels, "series": series},
        "form": form,
        "previous": _previous(report.month),
        "following": costs.next_month(report.month) if report.month < costs.month_of() else None,
    }


@require_POST
@require_perm(Perm.CHANGE_BUDGETS)
def budget_change(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Save the budget (owners); a bad value re-renders the page with the field's message (400)."""
    access = request.access
    form = BudgetForm(request.POST)
    if form.is_valid():
        try:
            costs.set_budget(access=access, ip=client_ip(request), **form.cleaned_data)
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, "Budget saved.")
            return redirect("accounts:costs", team_slug)
    return render(request, "accounts/costs.html", _context(costs.cost_report(access), form), status=400)
