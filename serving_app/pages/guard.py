"""Guardrail pages under /t/<team>/: a deployment's guard policy (every member reads it, owners and admins change
it) and Guard activity (what the team's policies blocked, redacted and cut, per day). The work is done by
``serving_app.guardrails``.

Blocked topics are edited as text, one topic per line: ``name: term, term, /pattern/`` — an item between slashes
is a regular expression, the others are whole words or phrases (case does not matter).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path

from accounts.http import add_service_errors, client_ip
from accounts.permissions import TeamAccess, TeamRequest, require_perm
from accounts.roles import Perm
from serving_app import deployments, guardrails
from serving_app.catalog import usable_models
from serving_app.models import DEFAULT_GUARD_PROMPT, Deployment, GuardPolicy

ACTION_COLORS = {
    "guard.blocked": "#b42318",
    "guard.redacted": "#4f46e5",
    "guard.truncated": "#a16207",
    "guard.check_failed": "#6b7280",
}
ACTION_LABELS = {
    "guard.blocked": "Blocked",
    "guard.redacted": "Redacted",
    "guard.truncated": "Cut at length",
    "guard.check_failed": "Check failed",
}


def topics_as_text(topics: list[dict[str, Any]]) -> str:
    """Blocked topics as the form shows them: ``name: term, /pattern/`` per line."""
    lines = []
    for topic in topics:
        items = [*topic.get("terms", []), *(f"/{p}/" for p in topic.get("patterns", []))]
        lines.append(f"{topic['name']}: {', '.join(items)}")
    return "\n".join(lines)


def topics_from_text(text: str) -> list[dict[str, Any]]:
    """The form's text as topics; ``ValidationError`` naming the line that has no ``name:``."""
    topics = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        name, colon, rest = line.partition(":")
        if not colon or not name.strip():
            raise ValidationError(f"Line {number}: start with the topic's name and a colon, e.g. “weapons: rifle”.")
        items = [item.strip() for item in rest.split(", ") if item.strip()]
        patterns = [item[1:-1] for item in items if len(item) > 2 and item.startswith("/") and item.endswith("/")]
        terms = [item for item in items if not (len(item) > 2 and item.startswith("/") and item.endswith("/"))]
        topics.append({"name": name.strip(), "terms": terms, "patterns": patterns})
    return topics


class GuardPolicyForm(forms.Form):
    enabled = forms.BooleanField(required=False, help_text="Apply this policy to every request.")
    redact_input_pii = forms.BooleanField(
        required=False, label="Redact personal data in prompts",
        help_text="E-mails, phone numbers, card numbers, IBANs, IP addresses and secrets become [EMAIL], [PHONE]…",
    )  # fmt: skip
    redact_output_pii = forms.BooleanField(required=False, label="Redact personal data in answers")
    blocked_topics = forms.CharField(
        required=False, max_length=20000, widget=forms.Textarea(attrs={"rows": 5, "spellcheck": "false"}),
        help_text="One topic per line: <code>name: term, other term, /regular expression/</code>.",
    )  # fmt: skip
    guard_model_key = forms.ChoiceField(required=False, label="Guard model")
    guard_prompt = forms.CharField(
        required=False, max_length=8000, widget=forms.Textarea(attrs={"rows": 8}),
        help_text="What the guard model is asked; <code>{content}</code> is replaced by the text. It must answer "
        "“safe”, or “unsafe” and a category on the next line (the Llama Guard convention).",
    )  # fmt: skip
    guard_checks = forms.ChoiceField(choices=GuardPolicy.Checks.choices, label="Guard model checks")
    max_answer_chars = forms.IntegerField(
        required=False, min_value=1, max_value=200_000, label="Longest answer (characters)",
        help_text="Empty: no limit beyond the key's token limit.",
    )  # fmt: skip
    refusal_message = forms.CharField(max_length=1000, help_text="What the client gets instead of a blocked answer.")
    fail_closed = forms.BooleanField(
        required=False, help_text="Refuse when a check cannot run (the guard model is down, a pattern runs too long)."
    )

    def __init__(self, *args: Any, access: TeamAccess, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        choices = [("", "None")] + [(s.key, s.label) for s in usable_models(access)]
        field = self.fields["guard_model_key"]
        assert isinstance(field, forms.ChoiceField)
        field.choices = choices

    def clean_guard_prompt(self) -> str:
        return str(self.cleaned_data["guard_prompt"]).strip() or DEFAULT_GUARD_PROMPT

    def clean_blocked_topics(self) -> list[dict[str, Any]]:
        return topics_from_text(self.cleaned_data["blocked_topics"])


def _initial(policy: GuardPolicy | None) -> dict[str, Any]:
    if policy is None:
        return {"enabled": True, "redact_input_pii": True, "redact_output_pii": True, "fail_closed": True,
                "guard_prompt": DEFAULT_GUARD_PROMPT, "guard_checks": "both",
                "refusal_message": GuardPolicy._meta.get_field("refusal_message").get_default()}  # fmt: skip
    initial = guardrails.document(policy)
    initial["blocked_topics"] = topics_as_text(policy.blocked_topics)
    return initial


def _deployment(access: TeamAccess, deployment_id: int) -> Deployment:
    return get_object_or_404(deployments.visible_deployments(access), pk=deployment_id)


@require_perm(Perm.VIEW_TEAM)
def deployment_guard(request: TeamRequest, team_slug: str, deployment_id: int) -> HttpResponse:
    """A deployment's guard policy and its revisions; owners and admins change it (POST)."""
    access = request.access
    deployment = _deployment(access, deployment_id)
    if request.method == "POST":
        access.require(Perm.MANAGE_DEPLOYMENTS)
    policy = guardrails.policy_of(deployment)
    can_manage = access.can(Perm.MANAGE_DEPLOYMENTS)
    form = GuardPolicyForm(request.POST or None, access=access, initial=_initial(policy)) if can_manage else None
    if form is not None and form.is_bound and form.is_valid():
        try:
            policy = guardrails.save_policy(
                access=access, deployment=deployment, settings=form.cleaned_data, ip=client_ip(request)
            )
        except ValidationError as error:
            add_service_errors(form, error)
        else:
            messages.success(request, f"Guard policy revision {policy.revision} is in force on “{deployment.name}”.")
            return redirect("serving:deployment_guard", team_slug, deployment.pk)
    activity = guardrails.activity(access.team, days=30, deployment=deployment)
    context = {
        "deployment": deployment,
        "policy": policy,
        "form": form,
        "topics": policy.blocked_topics if policy else [],
        "revisions": guardrails.revisions(policy) if policy else [],
        "totals": [(label, activity.totals.get(action, 0)) for action, label in ACTION_LABELS.items()],
    }
    return render(request, "serving/guard_policy.html", context, status=400 if form and form.errors else 200)


@require_perm(Perm.VIEW_TEAM)
def guard_activity(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Blocks, redactions, cuts and failed checks of the team's policies per day over 30 days, by category, and the
    latest events (never the text that was checked)."""
    activity = guardrails.activity(request.access.team, days=30)
    chart = {
        "days": [f"{day:%b %d}" for day in activity.days],
        "series": [(ACTION_LABELS[a], ACTION_COLORS[a], activity.per_day[a]) for a in guardrails.GUARD_ACTIONS],
    }
    rows = [(ACTION_LABELS.get(a, a), stage, category, count) for a, stage, category, count in activity.categories]
    context = {"activity": activity, "chart": chart, "rows": rows, "labels": ACTION_LABELS}
    return render(request, "serving/guard_activity.html", context)


urlpatterns: list[URLPattern] = [
    path("deployments/<int:deployment_id>/guard", deployment_guard, name="deployment_guard"),
    path("guard/", guard_activity, name="guard_activity"),
]
