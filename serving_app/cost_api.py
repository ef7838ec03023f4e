"""REST endpoints for a deployment's serving cost under /api/v1/teams/<slug>/deployments/{id}/.

``GET cost`` is the serving estimate (memory, the GPUs of each kind that hold it, price per hour and per month) of
the deployment — or, with ``?model_version=``, of a version before it is published there — beside a smaller
candidate's (every member). ``PUT serving-plan`` sets the precision, context length and concurrency the estimate is
for (``deployments.manage``; audited). The work is ``serving_app.costs``.

No ``from __future__ import annotations`` here: django-ninja reads the annotations at runtime.
"""

from typing import Any

from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Query, Router, Schema

from accounts.api import Error, ObjectId, RequestBody, team_access
from accounts.http import client_ip
from serving_app import costs, deployments
from serving_app.models import Deployment

router = Router(tags=["serving"])


class CostQuery(Schema):
    model_version: ObjectId | None = Field(None, description="Estimate this version instead of the one served.")


class PlacementOut(Schema):
    gpu: str
    memory_gib: float
    gpus: int | None = Field(description="GPUs of this kind that hold the model (tensor parallel); null: 8 do not.")


class ServingCostOut(Schema):
    model: str
    parameters: int
    precision: str
    context_length: int
    concurrency: int
    weights_bytes: int
    adapter_bytes: int
    kv_cache_bytes: int
    runtime_bytes: int
    total_bytes: int
    placements: list[PlacementOut]
    gpus: int = Field(description="GPUs of the kind needing the fewest (0: no kind holds it).")
    price_per_gpu_hour: float | None
    per_hour: float | None
    per_month: float | None = Field(description="Per hour × 730.")
    currency: str


class DeploymentCostOut(Schema):
    deployment: ServingCostOut | None = Field(
        description="Null when the version's base model is gone. With a canary that is an adapter of the same base, "
        "its adapter is counted here (the model label names it)."
    )
    canary: ServingCostOut | None = Field(
        None,
        description="A canary served as a model of its own (another base or a full fine-tune), on GPUs of its own.",
    )
    smaller: ServingCostOut | None = Field(description="The largest smaller model the caller may use, if any.")


class ServingPlanIn(RequestBody):
    precision: str = Field("bf16", max_length=8, description="bf16, fp16, fp32 or fp8.")
    context_length: int | None = Field(None, ge=1, le=10**7, description="Null: the base model's context length.")
    concurrency: int = Field(4, ge=1, le=costs.MAX_CONCURRENCY, description="Requests answered at once.")


def _cost(cost: costs.ServingCost | None) -> dict[str, Any] | None:
    if cost is None:
        return None
    money = {"price_per_gpu_hour": cost.price_per_gpu_hour, "per_hour": cost.hour_cost, "per_month": cost.month_cost}
    return {
        "model": cost.label, "parameters": cost.parameters, "precision": cost.precision,
        "context_length": cost.context_length, "concurrency": cost.concurrency, "weights_bytes": cost.weights_bytes,
        "adapter_bytes": cost.adapter_bytes, "kv_cache_bytes": cost.kv_cache_bytes, "runtime_bytes": cost.runtime_bytes,
        "total_bytes": cost.total_bytes, "gpus": cost.gpus, "currency": cost.currency,
        "placements": [{"gpu": p.kind.name, "memory_gib": p.kind.memory_gib, "gpus": p.gpus} for p in cost.placements],
        **{name: None if value is None else float(value) for name, value in money.items()},
    }  # fmt: skip


def _deployment(request: HttpRequest, slug: str, deployment_id: int) -> tuple[Any, Deployment]:
    access = team_access(request, slug)
    return access, get_object_or_404(deployments.visible_deployments(access), pk=deployment_id)


@router.get(
    "teams/{slug}/deployments/{deployment_id}/cost",
    response={200: DeploymentCostOut, 404: Error},
    summary="Serving cost of a deployment",
)
def deployment_cost(
    request: HttpRequest, slug: str, deployment_id: ObjectId, query: Query[CostQuery]
) -> dict[str, Any]:
    """GPU memory, the GPUs that hold it and the price per hour and month, at the deployment's serving plan, for
    the version it serves (or ``model_version``, one the caller may use), beside a smaller model's."""
    access, deployment = _deployment(request, slug, deployment_id)
    version = None
    if query.model_version is not None:
        version = deployments.deployable_versions(access).filter(pk=query.model_version).first()
        if version is None:
            raise Http404("No such model version.")
    current, canary = (
        costs.serving_costs(deployment) if version is None else (costs.deployment_cost(deployment, version), None)
    )
    return {
        "deployment": _cost(current),
        "canary": _cost(canary),
        "smaller": _cost(costs.candidate_cost(access, deployment)),
    }


@router.put(
    "teams/{slug}/deployments/{deployment_id}/serving-plan",
    response={200: DeploymentCostOut, 400: Error, 403: Error, 404: Error},
    summary="Set a deployment's serving plan",
)
def set_serving_plan(request: HttpRequest, slug: str, deployment_id: ObjectId, body: ServingPlanIn) -> dict[str, Any]:
    """The precision, context length and concurrency the deployment's serving cost (and its recorded GPU time) is
    counted for; owners and admins."""
    access, deployment = _deployment(request, slug, deployment_id)
    deployment = costs.set_serving_plan(
        access=access, deployment=deployment, precision=body.precision, context_length=body.context_length,
        concurrency=body.concurrency, ip=client_ip(request),
    )  # fmt: skip
    current, canary = costs.serving_costs(deployment)
    return {
        "deployment": _cost(current),
        "canary": _cost(canary),
        "smaller": _cost(costs.candidate_cost(access, deployment)),
    }
