"""Tool activity, /t/<team>/tools/activity/: every tool call the team's deployments attempted, and what became of it.

Nothing new is stored: each step of a call is an audit event (``tools_app.runtime`` and ``tools_app.services`` write
them), and this page reads the team's events of those actions back, filtered by tool, deployment, API key, member,
outcome and date. Every member may read it (the arguments recorded are redacted by the runtime). The query is
``tool_activity``; the REST endpoint (``tools_app.api``) takes the same filters through the same form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import CharField, Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Cast, TruncDate
from django.http import HttpResponse
from django.shortcuts import render
from django.template.defaultfilters import filesizeformat
from django.utils import timezone

from accounts.models import AuditEvent, Membership, TeamAPIKey
from accounts.permissions import TeamAccess, TeamRequest, require_perm, visible_objects
from accounts.roles import Perm
from serving_app.services import visible_deployments
from tools_app import services
from tools_app.models import Tool, ToolApproval, ToolResult


@dataclass(frozen=True)
class Outcome:
    """What one audit action says became of a call: its filter value, its label, its badge and chart colour."""

    value: str
    label: str
    action: str
    pill: str  # a ``.pill`` class of the studio's stylesheet
    color: str


OUTCOMES = (
    Outcome("requested", "Requested", "tool.call_requested", "queued", "#868e96"),
    Outcome("denied", "Denied", "tool.call_denied", "invalid", "#b42318"),
    Outcome("awaiting_approval", "Awaiting approval", "tool.approval_requested", "pending", "#4f46e5"),
    Outcome("approved", "Approved", "tool.approved", "accepted", "#1c7ed6"),
    Outcome("rejected", "Rejected", "tool.rejected", "revoked", "#e8590c"),
    Outcome("approval_refused", "Approval refused", "tool.approval_refused", "validating", "#8a5a00"),
    Outcome("approval_used", "Approval used", "tool.approval_used", "active", "#5f3dc4"),
    Outcome("withdrawn", "Withdrawn", "tool.approval_withdrawn", "cancelled", "#495057"),
    Outcome("executed", "Executed", "tool.call_executed", "succeeded", "#0f7a4a"),
    Outcome("failed", "Failed", "tool.call_failed", "failed", "#c2255c"),
)
OUTCOME_BY_VALUE = {outcome.value: outcome for outcome in OUTCOMES}
OUTCOME_BY_ACTION = {outcome.action: outcome for outcome in OUTCOMES}
ACTIONS = tuple(OUTCOME_BY_ACTION)
PAGE_SIZE = 50
# The chart draws at most this many days (the last ones of the range): a bar stays wide enough to point at.
CHART_DAYS = 92
# Without a first day, the chart goes back at least this far (further when older events match).
CHART_MIN_DAYS = 30


@dataclass(frozen=True)
class ActivityFilters:
    """What to narrow the activity to; empty fields narrow nothing. Built by ``ActivityFilterForm.filters``."""

    tool: str = ""  # a tool's name (one the team has, or had: deleted tools stay in their events)
    deployment_id: int | None = None
    deployment_name: str = ""
    api_key_id: int | None = None
    user_id: int | None = None  # the member who acted (called, approved, rejected)
    outcome: str = ""
    since: date | None = None
    until: date | None = None


def tool_activity(access: TeamAccess, filters: ActivityFilters) -> QuerySet[AuditEvent]:
    """The team's tool-call events matching ``filters``, newest first (every member may read them).

    A tool matches by the name recorded with the event, by its id for the calls it was the target of (so a renamed
    tool keeps its history), and through the approval an approval event names; a deployment likewise by id, by
    recorded name for approval events, and through the approval. ``user_id`` is the member who acted, ``api_key_id``
    the team key that did. Another team's events never match: the query starts from ``access.team``'s.
    """
    team = access.team
    events = AuditEvent.objects.for_team(team).filter(action__in=ACTIONS)
    if filters.tool:
        by_tool = Q(details__tool=filters.tool) | _through_approvals(access, Q(tool__name=filters.tool))
        current = Tool.objects.for_team(team).filter(name=filters.tool).first()
        if current is not None:
            by_tool |= Q(target_type="tool", target_id=str(current.pk))
        events = events.filter(by_tool)
    if filters.deployment_id is not None:
        events = events.filter(
            Q(details__deployment_id=filters.deployment_id)
            | Q(details__deployment_id=str(filters.deployment_id))
            | Q(target_type="toolapproval", details__deployment=filters.deployment_name)
            | _through_approvals(access, Q(deployment_id=filters.deployment_id))
        )
    if filters.api_key_id is not None:
        events = events.filter(
            Q(details__api_key_id=filters.api_key_id) | Q(details__api_key_id=str(filters.api_key_id))
        )
    if filters.user_id is not None:
        events = events.filter(actor_id=filters.user_id)
    if filters.outcome:
        events = events.filter(action=OUTCOME_BY_VALUE[filters.outcome].action)
    if filters.since:
        events = events.filter(created_at__date__gte=filters.since)
    if filters.until:
        events = events.filter(created_at__date__lte=filters.until)
    return events.select_related("actor").order_by("-created_at", "-id")


def _through_approvals(access: TeamAccess, condition: Q) -> Q:
    """Events whose target is one of the team's approvals meeting ``condition`` (those name no tool id)."""
    approval_ids = (
        ToolApproval.objects.for_team(access.team).filter(condition).annotate(text_id=Cast("pk", CharField()))
    )
    return Q(target_type="toolapproval", target_id__in=approval_ids.values("text_id"))


def outcome_counts(events: QuerySet[AuditEvent]) -> list[tuple[Outcome, int]]:
    """How many of ``events`` each outcome has, in the order of ``OUTCOMES`` (zeros included)."""
    counts = dict(events.order_by().values_list("action").annotate(n=Count("id")).values_list("action", "n"))
    return [(outcome, counts.get(outcome.action, 0)) for outcome in OUTCOMES]


@dataclass(frozen=True)
class DailyChart:
    """Events per day and outcome, as ``{% stacked_bar_chart %}`` takes them."""

    days: list[str]
    series: list[tuple[str, str, list[int]]]
    first: date
    last: date
    cut: bool  # the range was longer than ``CHART_DAYS``: only its last days are drawn


def daily_chart(events: QuerySet[AuditEvent], filters: ActivityFilters) -> DailyChart:
    """``events`` per day (UTC) and outcome, over the filter's days: to its last day (else today), from its first
    (else ``CHART_MIN_DAYS`` back, or further to the first event), at most the last ``CHART_DAYS`` of that.
    Outcomes with no event in the range are left out."""
    last = filters.until or timezone.localdate()
    if filters.since:
        first = min(filters.since, last)
    else:
        earliest = _days_before(last, CHART_MIN_DAYS - 1)
        first = min(earliest, _first_day(events) or earliest)
    cut = (last - first).days >= CHART_DAYS
    if cut:
        first = _days_before(last, CHART_DAYS - 1)
    rows = (
        events.filter(created_at__date__gte=first, created_at__date__lte=last)
        .order_by()
        .annotate(day=TruncDate("created_at"))
        .values_list("day", "action")
        .annotate(n=Count("id"))
    )
    counts = {(day, action): n for day, action, n in rows}
    days = [first + timedelta(days=offset) for offset in range((last - first).days + 1)]
    series = [
        (outcome.label, outcome.color, [counts.get((day, outcome.action), 0) for day in days]) for outcome in OUTCOMES
    ]
    return DailyChart(
        days=[f"{day:%b %d}" for day in days], series=[s for s in series if any(s[2])], first=first, last=last,
        cut=cut,
    )  # fmt: skip


def _days_before(day: date, days: int) -> date:
    """``days`` before ``day``, stopping at the calendar's first day (a filter may name year 1)."""
    return day - timedelta(days=min(days, (day - date.min).days))


def _first_day(events: QuerySet[AuditEvent]) -> date | None:
    first = events.order_by("created_at").values_list("created_at", flat=True).first()
    return timezone.localdate(first) if first is not None else None


# --- what a row shows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivityRow:
    """One event as the page shows it: plain text only (the template escapes all of it)."""

    event: AuditEvent
    outcome: Outcome
    tool: str
    deployment: str
    who: str
    facts: list[str]  # the rule, error, HTTP status, latency, response size: what applies
    arguments: str  # indented JSON, or empty
    conversation: str
    via: str
    result: str | None  # what the call returned, where the team keeps it


def with_results(access: TeamAccess, events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
    """``events`` with ``kept_result``: what an executed or failed call returned, where the team's retention
    setting kept it (``tools_app.models.ToolResult``), else None."""
    kept = ToolResult.objects.for_team(access.team).filter(event=OuterRef("pk")).values("text")[:1]
    return events.annotate(kept_result=Subquery(kept))


def describe(access: TeamAccess, events: list[AuditEvent]) -> list[ActivityRow]:
    """``events`` (one page) as rows. Approval events name the approval; its tool, deployment and arguments fill
    what the event did not record (one query for the page)."""
    approval_ids = [int(e.target_id) for e in events if e.target_type == "toolapproval" and e.target_id.isdigit()]
    approvals = {
        approval.pk: approval
        for approval in ToolApproval.objects.for_team(access.team)
        .filter(pk__in=approval_ids)
        .select_related("tool", "deployment")
    }
    return [_row(event, approvals) for event in events]


def _row(event: AuditEvent, approvals: dict[int, ToolApproval]) -> ActivityRow:
    details = event.details if isinstance(event.details, dict) else {}
    approval = (
        approvals.get(int(event.target_id))
        if event.target_type == "toolapproval" and event.target_id.isdigit()
        else None
    )
    arguments = details.get("arguments", approval.arguments if approval is not None else None)
    return ActivityRow(
        event=event,
        outcome=OUTCOME_BY_ACTION[event.action],
        tool=str(details.get("tool") or (approval.tool.name if approval else "") or event.target_label or "—"),
        deployment=str(details.get("deployment") or (approval.deployment.name if approval else "") or "—"),
        who=event.actor_label,
        facts=_facts(details),
        arguments=json.dumps(arguments, indent=2, ensure_ascii=False, sort_keys=True) if arguments is not None else "",
        conversation=str(details.get("conversation") or (approval.conversation if approval else "")),
        via=str(details.get("via") or ""),
        result=getattr(event, "kept_result", None),
    )


def _facts(details: dict[str, Any]) -> list[str]:
    facts = []
    if details.get("rule"):
        facts.append(f"rule: {details['rule']}")
    if details.get("error"):
        facts.append(f"error: {details['error']}")
    if details.get("message"):
        facts.append(str(details["message"]))
    if details.get("reason"):
        facts.append(f"reason: {details['reason']}")
    if details.get("status") is not None:
        facts.append(f"HTTP {details['status']}")
    if isinstance(details.get("latency_ms"), int | float):
        facts.append(f"{details['latency_ms']:,.0f} ms")
    if isinstance(details.get("response_bytes"), int):
        facts.append(filesizeformat(details["response_bytes"]))
    return facts


# --- the filter form ----------------------------------------------------------------------------


class ActivityFilterForm(forms.Form):
    """The page's filters (GET), the API's too. Choices are the team's own: another team's id is just not one."""

    tool = forms.ChoiceField(required=False)
    deployment = forms.ChoiceField(required=False)
    key = forms.ChoiceField(required=False, label="API key")
    user = forms.ChoiceField(required=False, label="Member")
    outcome = forms.ChoiceField(required=False)
    since = forms.DateField(
        required=False,
        label="From",
        widget=forms.DateInput(format="%Y-%m-%d", attrs={"type": "date"}),
        error_messages={"invalid": "Enter the first day as YYYY-MM-DD, e.g. 2025-03-01."},
    )
    until = forms.DateField(
        required=False,
        label="To",
        widget=forms.DateInput(format="%Y-%m-%d", attrs={"type": "date"}),
        error_messages={"invalid": "Enter the last day as YYYY-MM-DD, e.g. 2025-03-31."},
    )

    def __init__(self, data: Any, *, access: TeamAccess) -> None:
        super().__init__(data)
        team = access.team
        recorded = (
            AuditEvent.objects.for_team(team)
            .filter(action__in=ACTIONS, details__tool__isnull=False)
            .order_by()
            .values_list("details__tool", flat=True)
            .distinct()
        )
        names = sorted(
            {str(name) for name in recorded if name}
            | set(services.visible_tools(access).values_list("name", flat=True)),
            key=str.lower,
        )
        self.deployments = {str(d.pk): d for d in visible_deployments(access)}
        keys = visible_objects(access, TeamAPIKey.objects.for_team(team), "view").order_by("name")
        self.keys = {str(k.pk): k for k in keys}
        members = Membership.objects.filter(team=team).select_related("user").order_by("user__username")
        self.users = {m.user.get_username(): m.user for m in members}
        self._choose("tool", "Any tool", [(name, name) for name in names], "is not a tool of this team")
        self._choose(
            "deployment", "Any deployment", [(pk, d.name) for pk, d in self.deployments.items()],
            "is not a deployment of this team",
        )  # fmt: skip
        self._choose(
            "key", "Any API key", [(pk, f"{k.name} ({k.display_prefix})") for pk, k in self.keys.items()],
            "is not an API key of this team you may see",
        )  # fmt: skip
        self._choose("user", "Anyone", [(name, name) for name in self.users], "is not a member of this team")
        self._choose("outcome", "Any outcome", [(o.value, o.label) for o in OUTCOMES], "is not an outcome")

    def _choose(self, name: str, blank: str, choices: list[tuple[str, str]], not_one: str) -> None:
        field = self.fields[name]
        assert isinstance(field, forms.ChoiceField)
        field.choices = [("", blank), *choices]
        field.error_messages["invalid_choice"] = f"“%(value)s” {not_one}: pick one from the list, or “{blank}”."

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise ValidationError({"until": "“To” is before “From”: swap the two days, or clear one."})
        return data

    def filters(self) -> ActivityFilters:
        """The valid filters (call after ``is_valid``)."""
        data = self.cleaned_data
        deployment = self.deployments.get(data["deployment"])
        key = self.keys.get(data["key"])
        user = self.users.get(data["user"])
        return ActivityFilters(
            tool=data["tool"], deployment_id=deployment.pk if deployment else None,
            deployment_name=deployment.name if deployment else "", api_key_id=key.pk if key else None,
            user_id=user.pk if user else None, outcome=data["outcome"], since=data["since"], until=data["until"],
        )  # fmt: skip


# --- the page -----------------------------------------------------------------------------------


@require_perm(Perm.VIEW_TEAM)
def activity(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Every tool call attempt, newest first, filtered; counts per outcome and calls per day for the filters (all
    outcomes), the table for the chosen one. A bad filter is named on the page (400), nothing listed."""
    access = request.access
    form = ActivityFilterForm(request.GET, access=access)
    if not form.is_valid():
        return render(request, "tools/activity.html", {"form": form}, status=400)
    filters = form.filters()
    every_outcome = tool_activity(access, replace(filters, outcome=""))
    events = every_outcome.filter(action=OUTCOME_BY_VALUE[filters.outcome].action) if filters.outcome else every_outcome
    page = Paginator(with_results(access, events), PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "form": form,
        "filters": filters,
        "page": page,
        "rows": describe(access, list(page)),
        "counts": outcome_counts(every_outcome),
        "chart": daily_chart(every_outcome, filters),
    }
    return render(request, "tools/activity.html", context)
