"""REST endpoints for the team's costs under /api/v1/teams/<slug>/costs/.

``GET costs/?month=YYYY-MM`` is the month's spend by training job and by deployment (every member); ``GET
costs/budget`` where this month stands against the budget; ``PUT costs/budget`` sets it (owners:
``costs.budgets``; audited). The work is ``accounts.costs``.

No ``from __future__ import annotations`` here: django-ninja reads the annotations at runtime.
"""

from datetime import date
from decimal import Decimal
from typing import Annotated, Any

from django.http import HttpRequest
from ninja import Field, Query, Router, Schema
from pydantic import BeforeValidator

from accounts import costs
from accounts.api import Error, RequestBody, team_access
from accounts.http import client_ip

router = Router(tags=["costs"])


def _month(value: Any) -> Any:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or costs.parse_month(value) is None:
        raise ValueError("Write the month as YYYY-MM, e.g. 2026-12.")
    return value


class CostFilters(Schema):
    month: Annotated[str | None, BeforeValidator(_month)] = Field(
        None, description="The month as YYYY-MM (default: this month)."
    )


class SpendLineOut(Schema):
    source_id: int | None = Field(description="The training job's or deployment's id (null: folded restricted jobs).")
    label: str
    device_hours: float = Field(description="Hours × devices held (GPUs, or processes on a CPU pool).")
    gpu_hours: float
    tokens: int = Field(description="Tokens served (deployments).")
    amount: float = Field(description="In the team's currency; 0 where no price was set.")
    priced: bool


class BudgetOut(Schema):
    spent: float = Field(description="This month's spend so far.")
    currency: str
    soft_limit: float | None
    hard_limit: float | None
    cpu_hour_price: float | None = Field(description="Empty: CPU pools are priced like GPUs.")
    state: str = Field(description="ok, warning (soft limit reached) or exceeded (new launches are refused).")
    message: str


class CostReportOut(Schema):
    month: date
    currency: str
    total: float
    training_total: float
    serving_total: float
    gpu_hours: float
    device_hours: float
    training: list[SpendLineOut]
    serving: list[SpendLineOut]
    daily: dict[str, list[float]] = Field(description="Spend per day of the month, by kind (training, serving).")
    budget: BudgetOut


Amount = Annotated[Decimal | None, Field(None, ge=0, lt=10**10, decimal_places=2)]


class BudgetIn(RequestBody):
    soft_limit: Amount = Field(None, description="Warn from this spend per month; null: no soft limit.")
    hard_limit: Amount = Field(None, description="Refuse new launches from this spend per month; null: none.")
    cpu_hour_price: Amount = Field(None, description="Price of one process-hour of a CPU pool; null: the GPU price.")


def _line(line: costs.SpendLine) -> dict[str, Any]:
    return {"source_id": line.source_id, "label": line.label, "device_hours": float(line.device_hours),
            "gpu_hours": float(line.gpu_hours), "tokens": line.tokens, "amount": float(line.amount),
            "priced": line.priced}  # fmt: skip


def _budget(team: Any) -> dict[str, Any]:
    status, budget = costs.budget_status(team), costs.budget_of(team)
    price = budget.cpu_hour_price if budget is not None else None
    return {
        "spent": float(status.spent), "currency": status.currency, "state": status.state, "message": status.message,
        "soft_limit": _float(status.soft_limit), "hard_limit": _float(status.hard_limit),
        "cpu_hour_price": _float(price),
    }  # fmt: skip


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


@router.get("teams/{slug}/costs/", response={200: CostReportOut, 404: Error}, summary="The month's costs")
def cost_report(request: HttpRequest, slug: str, filters: Query[CostFilters]) -> dict[str, Any]:
    """Spend by training job and by deployment in a month, per day, with totals and the budget. Jobs on restricted
    data are one line (``source_id`` null) for members and viewers."""
    access = team_access(request, slug)
    report = costs.cost_report(access, costs.parse_month(filters.month))
    return {
        "month": report.month, "currency": report.currency, "total": float(report.total),
        "training_total": float(report.training_total), "serving_total": float(report.serving_total),
        "gpu_hours": float(report.gpu_hours), "device_hours": float(report.device_hours),
        "training": [_line(line) for line in report.training], "serving": [_line(line) for line in report.serving],
        "daily": report.daily, "budget": _budget(access.team),
    }  # fmt: skip


@router.get("teams/{slug}/costs/budget", response={200: BudgetOut, 404: Error}, summary="The budget")
def get_budget(request: HttpRequest, slug: str) -> dict[str, Any]:
    """The team's monthly limits and where this month's spend stands against them."""
    return _budget(team_access(request, slug).team)


@router.put(
    "teams/{slug}/costs/budget", response={200: BudgetOut, 400: Error, 403: Error, 404: Error}, summary="Set the budget"
)
def set_budget(request: HttpRequest, slug: str, body: BudgetIn) -> dict[str, Any]:
    """Set the monthly soft and hard limits and the CPU-hour price (owners only; audited). The soft limit may not
    be above the hard one."""
    access = team_access(request, slug)
    costs.set_budget(
        access=access, soft_limit=body.soft_limit, hard_limit=body.hard_limit, cpu_hour_price=body.cpu_hour_price,
        ip=client_ip(request),
    )  # fmt: skip
    return _budget(access.team)
