"""The team's home page: what to do next, the latest datasets, jobs and models, and this week's usage.

It is the one page that shows every app's work side by side, so it lives in the project package and asks
each app through its front door (``services``).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse

from accounts.permissions import TeamAccess, TeamRequest, require_perm
from accounts.roles import Perm
from datasets_app import services as datasets
from serving_app import services as serving
from training_app import services as training

RECENT = 5
USAGE_DAYS = 7


@dataclass(frozen=True)
class Step:
    """One step of the path from data to a served model, done or still to do."""

    title: str
    done: bool
    url: str
    action: str
    allowed: bool  # whether this person's role can take the step


def next_steps(access: TeamAccess, *, has_ready_data: bool, has_model: bool, has_tried: bool) -> list[Step]:
    """The four steps of a customization, each marked done from what the team already has."""
    slug = {"team_slug": access.team.slug}
    has_deployment = serving.visible_deployments(access).exists()
    return [
        Step(
            "Bring a dataset",
            has_ready_data,
            reverse("datasets:list", kwargs=slug),
            "Upload a file or try a sample",
            access.can(Perm.UPLOAD_DATASETS),
        ),
        Step(
            "Fine-tune a model on it",
            has_model,
            reverse("training:new", kwargs=slug),
            "Start a training job",
            access.can(Perm.LAUNCH_TRAINING),
        ),
        Step(
            "Compare it with its base model",
            has_tried,
            reverse("serving:playground", kwargs=slug),
            "Open the playground",
            access.can(Perm.USE_PLAYGROUND),
        ),
        Step(
            "Publish it behind the API",
            has_deployment,
            reverse("serving:deployments", kwargs=slug),
            "Create a deployment",
            access.can(Perm.MANAGE_DEPLOYMENTS),
        ),
    ]


@require_perm(Perm.VIEW_TEAM)
def team_dashboard(request: TeamRequest, team_slug: str) -> HttpResponse:
    """Where a member lands: the next step, recent work, and the team's usage over the last week."""
    access: TeamAccess = request.access
    recent_datasets = list(datasets.visible_datasets(access).order_by("-created_at")[:RECENT])
    recent_jobs = list(training.visible_jobs(access).order_by("-created_at")[:RECENT])
    recent_versions = list(training.visible_versions(access).order_by("-created_at")[:RECENT])
    usage = serving.usage_summary(access.team, USAGE_DAYS, visible_keys=serving.visible_key_ids(access))
    steps = next_steps(
        access,
        has_ready_data=datasets.visible_datasets(access).filter(versions__status="ready").exists(),
        has_model=bool(recent_versions),
        has_tried=usage.totals.get("playground", 0) > 0 or usage.totals.get("arena", 0) > 0,
    )
    context = {
        "steps": steps,
        "next_step": next((step for step in steps if not step.done), None),
        "datasets": recent_datasets,
        "jobs": recent_jobs,
        "versions": recent_versions,
        "usage": usage,
        "usage_days": USAGE_DAYS,
    }
    return render(request, "studio/dashboard.html", context)
