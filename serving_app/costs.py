"""What serving a deployment costs: the GPU memory it needs, the GPUs that hold it, its price, and what it spent.

Before publishing (the deployment page, ``GET …/deployments/<id>/cost``): the memory to serve the deployment's model
version at its serving plan — the weights at ``serving_precision``, a LoRA adapter's files, and the key/value cache
for ``expected_concurrency`` requests of ``serving_context_length`` tokens (``training_app.services.serving_memory``,
formula in ``training_app.estimator.serving_memory``) — placed on each GPU kind of ``settings.SERVING_GPUS`` (the
fewest GPUs of that kind, 1, 2, 4 or 8 split tensor-parallel, each within 90 % of its memory), priced per hour and
per month (730 hours) at the team's GPU-hour price for the kind needing the fewest GPUs. Beside it, the same for a
smaller candidate: the largest of the team's model versions or base models with fewer parameters (a distilled
student is one), at the same plan.

Actual cost (``record_serving_spend``, hourly from beat): a published deployment reserves those GPUs for as long as
it exists, whether or not requests come; each hour, the spend ledger's row for the deployment's day is rewritten
(hours it existed that day × its GPUs, and the tokens it served that day from ``UsageRecord``), so a missed hour is
caught up by the next and nothing counts twice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from accounts import audit, costs
from accounts.permissions import TeamAccess
from accounts.roles import Perm
from serving_app.models import Deployment, UsageRecord
from training_app import services as training_services
from training_app.models import BaseModel, ModelVersion

GIB = 1024**3
HOURS_PER_MONTH = 730  # 365 days of 24 hours, over 12 months
MAX_CONCURRENCY = 1024
# A context length when the base model does not say its own.
DEFAULT_CONTEXT_LENGTH = 2048


@dataclass(frozen=True)
class GpuKind:
    """A kind of GPU a deployment can be served on (``settings.SERVING_GPUS``)."""

    name: str
    memory_bytes: int

    @property
    def memory_gib(self) -> float:
        return round(self.memory_bytes / GIB, 1)


def gpu_kinds() -> list[GpuKind]:
    """The GPU kinds of ``settings.SERVING_GPUS``, smallest memory first."""
    kinds = [
        GpuKind(name=str(spec.get("name") or f"{spec.get('memory_gib')} GB GPU"),
                memory_bytes=int(float(spec.get("memory_gib", 0)) * GIB))
        for spec in settings.SERVING_GPUS
    ]  # fmt: skip
    return sorted((kind for kind in kinds if kind.memory_bytes > 0), key=lambda kind: kind.memory_bytes)


@dataclass(frozen=True)
class Placement:
    """How many GPUs of one kind serve the model (None: eight are not enough)."""

    kind: GpuKind
    gpus: int | None


@dataclass(frozen=True)
class ServingCost:
    """The serving estimate of one model at one plan: memory, the GPUs that hold it, and its price."""

    label: str
    parameters: int
    precision: str
    context_length: int
    concurrency: int
    weights_bytes: int
    adapter_bytes: int
    kv_cache_bytes: int
    runtime_bytes: int
    kv_bytes_per_token: int
    placements: list[Placement]
    price_per_gpu_hour: Decimal | None
    currency: str

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.adapter_bytes + self.kv_cache_bytes + self.runtime_bytes

    @property
    def best(self) -> Placement | None:
        """The placement needing the fewest GPUs (the smaller kind on a tie); None when no kind holds it."""
        fitting = [placement for placement in self.placements if placement.gpus is not None]
        return min(fitting, key=lambda placement: placement.gpus or 0) if fitting else None

    @property
    def gpus(self) -> int:
        best = self.best
        return (best.gpus or 0) if best is not None else 0

    @property
    def hour_cost(self) -> Decimal | None:
        if self.price_per_gpu_hour is None or self.best is None:
            return None
        return (self.price_per_gpu_hour * self.gpus).quantize(costs.CENTS)

    @property
    def month_cost(self) -> Decimal | None:
        hour = self.hour_cost
        return None if hour is None else (hour * HOURS_PER_MONTH).quantize(costs.CENTS)


def estimate(
    model: ModelVersion | BaseModel,
    *,
    team: Any,
    precision: str,
    context_length: int | None,
    concurrency: int,
    also_adapters: tuple[str, ...] = (),
) -> ServingCost | None:
    """The serving estimate of a model version (its base + its adapter) or a base model; None when the version's
    base model is gone. ``context_length`` None (or longer than the model's) is the model's own.
    ``also_adapters``: folders of more adapters of the same base resident beside it (a canary)."""
    if isinstance(model, ModelVersion):
        base = model.base_model
        if base is None:
            return None
        adapters = (model.path,) if model.kind == ModelVersion.Kind.ADAPTER else ()
        label = f"{model} ({model.get_kind_display()} of {base.name})"
    else:
        base, adapters, label = model, (), f"{model.name} (base model)"
    own = base.context_length or DEFAULT_CONTEXT_LENGTH
    length = min(context_length, own) if context_length else own
    memory = training_services.serving_memory(
        base_model=base,
        adapter_paths=adapters + also_adapters,
        precision=precision,
        context_length=length,
        concurrency=concurrency,
    )
    return ServingCost(
        label=label, parameters=base.parameter_count, precision=precision, context_length=length,
        concurrency=concurrency, weights_bytes=memory.weights, adapter_bytes=memory.adapter,
        kv_cache_bytes=memory.kv_cache, runtime_bytes=memory.runtime, kv_bytes_per_token=memory.kv_bytes_per_token,
        placements=[Placement(kind, memory.gpus_needed(kind.memory_bytes)) for kind in gpu_kinds()],
        price_per_gpu_hour=costs.device_hour_price(team, "cuda"), currency=team.currency,
    )  # fmt: skip


def deployment_cost(
    deployment: Deployment, version: ModelVersion | None = None, *, also_adapters: tuple[str, ...] = ()
) -> ServingCost | None:
    """The serving estimate of ``deployment`` at its serving plan, for the version it serves (or ``version``)."""
    return estimate(
        version or deployment.model_version, team=deployment.team, precision=deployment.serving_precision,
        context_length=deployment.serving_context_length, concurrency=deployment.expected_concurrency,
        also_adapters=also_adapters,
    )  # fmt: skip


def serving_costs(deployment: Deployment) -> tuple[ServingCost | None, ServingCost | None]:
    """(what serves ``deployment`` now, its canary when that is served as a model of its own, else None).

    A canary that is an adapter of the base an adapter deployment serves rides on the same vLLM server and
    GPUs: its adapter's memory joins the first estimate, whose label names it. Any other canary (another
    base, a full fine-tune, or beside a full fine-tune) needs a server of its own: the second estimate, with
    GPUs of its own, counted in the deployment's spend while the canary runs.
    """
    current = deployment_cost(deployment)
    canary, served = deployment.canary_version, deployment.model_version
    if current is None or canary is None or canary.pk == served.pk:
        return current, None
    share = f"{deployment.canary_share} % of requests"
    adapters = ModelVersion.Kind.ADAPTER
    if served.kind == adapters and canary.kind == adapters and canary.base_model_id == served.base_model_id:
        both = deployment_cost(deployment, also_adapters=(canary.path,))
        return (replace(both, label=f"{both.label} + canary {canary} ({share})") if both else current), None
    own = deployment_cost(deployment, canary)
    return current, (replace(own, label=f"{own.label}, canary ({share})") if own else None)


def smaller_candidate(access: TeamAccess, deployment: Deployment) -> ModelVersion | BaseModel | None:
    """The largest model ``access`` may use that is smaller (fewer parameters) than what ``deployment`` serves:
    a model version (a distilled student, a tune of a smaller base) or a base model. None when there is none."""
    current = deployment.model_version.base_model
    if current is None or not current.parameter_count:
        return None
    versions = (
        training_services.visible_versions(access, "use")
        .filter(base_model__parameter_count__lt=current.parameter_count, base_model__parameter_count__gt=0)
        .select_related("base_model")
        .order_by("-base_model__parameter_count", "-created_at")
    )
    bases = (
        training_services.usable_base_models(access)
        .filter(parameter_count__lt=current.parameter_count, parameter_count__gt=0)
        .order_by("-parameter_count", "name")
    )
    version, base = versions.first(), bases.first()
    if version is not None and version.base_model is not None:
        return version if base is None or version.base_model.parameter_count >= base.parameter_count else base
    return base


def candidate_cost(access: TeamAccess, deployment: Deployment) -> ServingCost | None:
    """The serving estimate of ``smaller_candidate`` at the deployment's plan."""
    candidate = smaller_candidate(access, deployment)
    if candidate is None:
        return None
    return estimate(
        candidate, team=deployment.team, precision=deployment.serving_precision,
        context_length=deployment.serving_context_length, concurrency=deployment.expected_concurrency,
    )  # fmt: skip


def set_serving_plan(
    *,
    access: TeamAccess,
    deployment: Deployment,
    precision: str,
    context_length: int | None,
    concurrency: int,
    ip: str | None = None,
) -> Deployment:
    """Set what the deployment's serving cost is estimated for (``deployments.manage``); audited when it changed.

    Bad values raise ``ValidationError`` keyed ``precision``, ``context_length`` or ``concurrency``.
    """
    access.require(Perm.MANAGE_DEPLOYMENTS)
    if deployment.team_id != access.team.pk:
        raise ValidationError({"deployment": "That deployment does not belong to this team."})
    errors: dict[str, str] = {}
    precisions = training_services.serving_precisions()
    if precision not in precisions:
        errors["precision"] = f"Choose one of {', '.join(precisions)}."
    base = deployment.model_version.base_model
    longest = base.context_length if base is not None and base.context_length else None
    if context_length is not None and not 1 <= context_length <= (longest or 10**7):
        errors["context_length"] = (
            f"Give 1 to {longest} tokens ({base.name}'s context length), or leave it empty for all of it."
            if longest and base is not None
            else "Give a number of tokens of 1 or more, or leave it empty."
        )
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        errors["concurrency"] = f"Give 1 to {MAX_CONCURRENCY} requests answered at once."
    if errors:
        raise ValidationError(errors)
    new = {"serving_precision": precision, "serving_context_length": context_length,
           "expected_concurrency": concurrency}  # fmt: skip
    with transaction.atomic():
        locked = Deployment.objects.for_team(access.team).select_for_update().get(pk=deployment.pk)
        old = {name: getattr(locked, name) for name in new}
        if old == new:
            return locked
        Deployment.objects.for_team(access.team).filter(pk=locked.pk).update(**new)
        audit.record("deployment.serving_plan_changed", access=access, target=locked, ip=ip, old=old, new=new)
    deployment.refresh_from_db()
    return deployment


# ---- actual cost ------------------------------------------------------------------------------------


def record_serving_spend(now: datetime | None = None) -> int:
    """Rewrite each deployment's spend for yesterday and today (hours it existed × the GPUs its estimate
    reserves, tokens served); returns the rows written. Beat runs it hourly (``serving_app.tasks``)."""
    now = now or timezone.now()
    today = timezone.make_aware(datetime.combine(timezone.localtime(now).date(), datetime.min.time()))
    written = 0
    deployments = Deployment.objects.unscoped().select_related("team", "model_version__base_model")
    for deployment in deployments.order_by("pk"):
        try:
            cost, canary = serving_costs(deployment)
        except ValueError:  # a precision this studio no longer offers: reserve nothing rather than fail the task
            cost, canary = None, None
        gpus = (cost.gpus if cost is not None else 0) + (canary.gpus if canary is not None else 0)
        for day_start in (today - timedelta(days=1), today):
            start = max(day_start, deployment.created_at)
            end = min(now, day_start + timedelta(days=1))
            if end <= start:
                continue
            costs.record_spend(
                team=deployment.team, kind="serving", source_id=deployment.pk, label=deployment.name,
                period_start=start, period_end=end, accelerator="cuda", devices=gpus,
                tokens=_tokens_served(deployment, start, end),
            )  # fmt: skip
            written += 1
    return written


def _tokens_served(deployment: Deployment, start: datetime, end: datetime) -> int:
    served = (
        UsageRecord.objects.for_team(deployment.team)
        .filter(deployment=deployment, created_at__gte=start, created_at__lt=end, status=UsageRecord.Status.OK)
        .aggregate(tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
    )
    return int(served["tokens"] or 0)
