"""What the team spends: the spend ledger, the monthly report, and the budget that warns and refuses launches.

The ledger (``SpendRecord``) is written by the apps that spend, through ``record_spend``: training when a job ends
(wall-clock hours from its first start to its end × the devices its pool gives a job), serving every hour for each
deployment (the GPUs its serving estimate reserves, for the hours of the day it existed, and the tokens it
served). It lives in accounts, the lowest layer, so training's launch check (``check_budget``) and the Costs page
read serving's spend without importing anything above them.

Prices: a GPU-hour costs the team's ``gpu_hour_price``; a device-hour of a CPU pool costs the budget's
``cpu_hour_price``, or the GPU-hour price when that is empty (what the launch estimate has always assumed).
A row without a price has no amount and counts as zero. Months are calendar months in the studio's time zone;
a row counts towards the month its period ends in (a job the month it ended).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone

from accounts import audit
from accounts.models import Budget, SpendKind, SpendRecord, Team
from accounts.permissions import TeamAccess
from accounts.roles import Perm

HOURS = Decimal("0.0001")
CENTS = Decimal("0.01")
SECONDS_PER_HOUR = Decimal(3600)
# Rows of restricted jobs are folded into one line for those who may not see every job.
RESTRICTED_LABEL = "Jobs on restricted data"
MONTH = re.compile(r"(\d{4})-(\d{2})")


# ---- prices and the ledger --------------------------------------------------------------------------


def budget_of(team: Team) -> Budget | None:
    """The team's budget row, or None when nobody set one."""
    return Budget.objects.for_team(team).first()


def device_hour_price(team: Team, accelerator: str) -> Decimal | None:
    """What one device-hour costs ``team`` on an accelerator (``cuda`` or ``cpu``); None when no price is set."""
    if accelerator == "cpu":
        budget = budget_of(team)
        if budget is not None and budget.cpu_hour_price is not None:
            return budget.cpu_hour_price
    return team.gpu_hour_price


def record_spend(
    *,
    team: Team,
    kind: str,
    source_id: int,
    label: str,
    period_start: datetime,
    period_end: datetime,
    accelerator: str,
    devices: int,
    tokens: int = 0,
    restricted: bool = False,
) -> SpendRecord:
    """Write (or rewrite) what ``source_id`` of ``kind`` cost over ``period_start``–``period_end``.

    Device-hours are the period's hours × ``devices``; GPU-hours the same on ``cuda``, else 0. The amount is
    the device-hours at ``device_hour_price`` (None when no price is set). Idempotent: recording the same
    source and period again replaces the row, so a retried task or a growing day never counts twice.
    """
    seconds = max(Decimal((period_end - period_start).total_seconds()), Decimal(0))
    device_hours = (seconds / SECONDS_PER_HOUR * devices).quantize(HOURS, rounding=ROUND_HALF_UP)
    price = device_hour_price(team, accelerator)
    amount = (device_hours * price).quantize(CENTS, rounding=ROUND_HALF_UP) if price is not None else None
    record, _ = SpendRecord.objects.for_team(team).update_or_create(
        team=team, kind=kind, source_id=source_id, period_start=period_start,
        defaults={
            "label": label[:200], "restricted": restricted, "period_end": period_end, "accelerator": accelerator,
            "devices": devices, "device_hours": device_hours,
            "gpu_hours": device_hours if accelerator == "cuda" else Decimal(0), "tokens": tokens, "amount": amount,
            "currency": team.currency, "recorded_at": timezone.now(),
        },
    )  # fmt: skip
    return record


# ---- months -----------------------------------------------------------------------------------------


def parse_month(text: str | None) -> date | None:
    """``YYYY-MM`` as the first day of that month; None for anything else."""
    match = MONTH.fullmatch(text or "")
    if match is None or not 1 <= int(match[2]) <= 12 or not 2000 <= int(match[1]) <= 9999:
        return None
    return date(int(match[1]), int(match[2]), 1)


def month_of(moment: datetime | None = None) -> date:
    """The first day of the month ``moment`` (default now) falls in, in the studio's time zone."""
    local = timezone.localtime(moment or timezone.now())
    return local.date().replace(day=1)


def next_month(month: date) -> date:
    return (month.replace(day=28) + timedelta(days=4)).replace(day=1)


def month_bounds(month: date) -> tuple[datetime, datetime]:
    """The first instant of ``month`` and of the month after it (aware)."""
    start = timezone.make_aware(datetime.combine(month, datetime.min.time()))
    return start, timezone.make_aware(datetime.combine(next_month(month), datetime.min.time()))


def month_records(team: Team, month: date) -> Any:
    start, end = month_bounds(month)
    return SpendRecord.objects.for_team(team).filter(period_end__gte=start, period_end__lt=end)


def month_spend(team: Team, month: date | None = None) -> Decimal:
    """What the team spent in ``month`` (default this one), in its currency; unpriced rows count as zero."""
    total = month_records(team, month or month_of()).aggregate(total=Sum("amount"))["total"]
    return Decimal(total or 0).quantize(CENTS)


# ---- the budget -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetStatus:
    """This month's spend against the team's limits: ``state`` is ``ok``, ``warning`` (soft limit reached) or
    ``exceeded`` (hard limit reached: new launches are refused)."""

    spent: Decimal
    currency: str
    soft_limit: Decimal | None
    hard_limit: Decimal | None
    state: str
    message: str


def budget_status(team: Team) -> BudgetStatus:
    """Where this month's spend stands against the team's soft and hard limits."""
    budget = budget_of(team)
    soft = budget.soft_limit if budget else None
    hard = budget.hard_limit if budget else None
    spent = month_spend(team)
    state, message = "ok", ""
    where = reverse("accounts:costs", args=[team.slug])
    if hard is not None and spent >= hard:
        state = "exceeded"
        message = (
            f"This month's spend ({_money(spent, team.currency)}) has reached the team's hard budget of "
            f"{_money(hard, team.currency)}: new training jobs and deployments are refused until "
            f"{next_month(month_of()):%Y-%m-%d}. An owner can raise the hard limit on the Costs page ({where})."
        )
    elif soft is not None and spent >= soft:
        state = "warning"
        message = (
            f"This month's spend ({_money(spent, team.currency)}) has reached the team's soft budget of "
            f"{_money(soft, team.currency)}"
            + (f"; launches are refused from {_money(hard, team.currency)}" if hard is not None else "")
            + f". See the Costs page ({where})."
        )
    return BudgetStatus(spent=spent, currency=team.currency, soft_limit=soft, hard_limit=hard, state=state,
                        message=message)  # fmt: skip


def check_budget(*, team: Team) -> None:
    """Refuse a launch (``ValidationError`` keyed ``budget``, naming the limit and how to raise it) once this
    month's spend has reached the team's hard limit. Call it before creating what the launch would create."""
    status = budget_status(team)
    if status.state == "exceeded":
        raise ValidationError({"budget": status.message})


def set_budget(
    *,
    access: TeamAccess,
    soft_limit: Decimal | None,
    hard_limit: Decimal | None,
    cpu_hour_price: Decimal | None,
    ip: str | None = None,
) -> Budget:
    """Set the team's monthly limits and CPU-hour price (owners: ``costs.budgets``); audited with old and new
    values when something changed. Empty values mean no limit / the GPU-hour price."""
    access.require(Perm.CHANGE_BUDGETS)
    errors: dict[str, str] = {}
    for name, value in (("soft_limit", soft_limit), ("hard_limit", hard_limit), ("cpu_hour_price", cpu_hour_price)):
        if value is not None and (not value.is_finite() or value < 0 or value >= Decimal("1e10")):
            errors[name] = "Give an amount of 0 or more (below 10,000,000,000), or leave it empty."
    if not errors and soft_limit is not None and hard_limit is not None and soft_limit > hard_limit:
        errors["soft_limit"] = (
            f"The soft limit ({soft_limit}) must not be above the hard limit ({hard_limit}): it warns before "
            "launches are refused."
        )
    if errors:
        raise ValidationError(errors)
    values = {"soft_limit": soft_limit, "hard_limit": hard_limit, "cpu_hour_price": cpu_hour_price}
    new = {name: None if value is None else value.quantize(CENTS) for name, value in values.items()}
    with transaction.atomic():
        budget, _ = Budget.objects.for_team(access.team).select_for_update().get_or_create(team=access.team)
        old = {name: getattr(budget, name) for name in new}
        if old == new:
            return budget
        for name, value in new.items():
            setattr(budget, name, value)
        budget.updated_by, budget.updated_at = access.user, timezone.now()
        budget.save()
        audit.record(
            "costs.budget_changed", access=access, ip=ip, currency=access.team.currency,
            old={name: _text(value) for name, value in old.items()},
            new={name: _text(value) for name, value in new.items()},
        )  # fmt: skip
    return budget


# ---- the monthly report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SpendLine:
    """One training job or deployment over the month: hours, tokens and amount."""

    kind: str
    source_id: int | None
    label: str
    device_hours: Decimal
    gpu_hours: Decimal
    tokens: int
    amount: Decimal
    priced: bool


@dataclass(frozen=True)
class CostReport:
    """A team's month: spend per training job and per deployment, per day and kind, totals and the budget."""

    month: date
    currency: str
    training: list[SpendLine]
    serving: list[SpendLine]
    days: list[date]
    daily: dict[str, list[float]]
    budget: BudgetStatus
    unpriced: bool

    @property
    def training_total(self) -> Decimal:
        return sum((line.amount for line in self.training), Decimal(0))

    @property
    def serving_total(self) -> Decimal:
        return sum((line.amount for line in self.serving), Decimal(0))

    @property
    def total(self) -> Decimal:
        return self.training_total + self.serving_total

    @property
    def gpu_hours(self) -> Decimal:
        return sum((line.gpu_hours for line in self.training + self.serving), Decimal(0))

    @property
    def device_hours(self) -> Decimal:
        return sum((line.device_hours for line in self.training + self.serving), Decimal(0))


def cost_report(access: TeamAccess, month: date | None = None) -> CostReport:
    """The team's spend in ``month`` (default this one) as ``access`` may see it: jobs on restricted data are
    folded into one line unless ``access`` is an owner or admin."""
    month = month or month_of()
    records = list(month_records(access.team, month).order_by("period_end", "pk"))
    lines: dict[tuple[str, Any], dict[str, Any]] = {}
    first, _ = month_bounds(month)
    days = [(first + timedelta(days=offset)).date() for offset in range((next_month(month) - month).days)]
    daily = {kind: [0.0] * len(days) for kind in SpendKind.values}
    for record in records:
        hidden = record.restricted and not access.is_admin
        key = (record.kind, RESTRICTED_LABEL if hidden else record.source_id)
        line = lines.setdefault(
            key,
            {"label": RESTRICTED_LABEL if hidden else record.label, "device_hours": Decimal(0),
             "gpu_hours": Decimal(0), "tokens": 0, "amount": Decimal(0), "priced": True},
        )  # fmt: skip
        line["label"] = line["label"] if hidden else record.label  # the newest name
        line["device_hours"] += record.device_hours
        line["gpu_hours"] += record.gpu_hours
        line["tokens"] += record.tokens
        line["amount"] += record.amount or 0
        line["priced"] = line["priced"] and record.amount is not None
        day = timezone.localtime(record.period_end - timedelta(microseconds=1)).date()
        if record.amount and first.date() <= day < first.date() + timedelta(days=len(days)):
            daily[record.kind][(day - first.date()).days] += float(record.amount)
    by_kind: dict[str, list[SpendLine]] = defaultdict(list)
    for (kind, source), values in lines.items():
        source_id = source if isinstance(source, int) else None
        by_kind[kind].append(SpendLine(kind=kind, source_id=source_id, **values))
    for kind_lines in by_kind.values():
        kind_lines.sort(key=lambda line: (-line.amount, -line.device_hours, line.label))
    return CostReport(
        month=month, currency=access.team.currency, training=by_kind[SpendKind.TRAINING],
        serving=by_kind[SpendKind.SERVING], days=days, daily=daily, budget=budget_status(access.team),
        unpriced=any(record.amount is None and record.device_hours for record in records),
    )  # fmt: skip


def _money(value: Decimal, currency: str) -> str:
    return f"{value:,.2f} {currency}"


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)
