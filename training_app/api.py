"""REST endpoints for base models, training jobs and the model registry under /api/v1/teams/<slug>/.

An API user builds a run from ``GET training/settings`` (every setting with its default and help, the
presets and the worker pools), checks it with ``POST training/estimate`` and launches it with
``POST jobs``: the same validation as the job form (``training_app.jobs``), so a config the form refuses
is refused here, field by field (``{"detail", "errors": {"lora.rank": [...]}}``).

No ``from __future__ import annotations`` here: django-ninja reads the annotations at runtime.
"""

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal

import yaml
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404
from ninja import Field, Query, Router, Schema, Status
from ninja.pagination import paginate

from accounts import costs
from accounts.api import Error, ObjectId, Pagination, RequestBody, team_access
from accounts.http import client_ip
from accounts.permissions import TeamAccess
from datasets_app import services as datasets_services
from datasets_app.models import DatasetVersion
from training_app import hub, jobs, presets, registry, services
from training_app.engine import speed
from training_app.models import BaseModel, ModelVersion, TrainingJob

router = Router(tags=["training"])

StatusName = Literal["queued", "starting", "running", "cancelling", "succeeded", "failed", "cancelled"]


# --- schemas: base models -----------------------------------------------------------------------


class BaseModelOut(Schema):
    id: int
    name: str
    scope: Literal["global", "team"] = Field(description="global: provided by an operator to every team.")
    source: str
    architecture: str
    parameters: int = Field(description="Parameter count.")
    context_length: int = Field(description="Longest sequence the model reads, in tokens (0: unknown).")
    vocab_size: int
    license: str
    description: str
    has_chat_template: bool = Field(description="Needed to train on chat and preference data.")
    status: Literal["ready", "downloading", "failed"] = Field(description="downloading: a Hub download is running.")
    progress: float = Field(description="Share of a Hub download done (0-1).")
    error: str = Field(description="Why a Hub download was refused or failed, and what to do.")
    repo_id: str
    created_at: datetime

    @staticmethod
    def resolve_scope(model: BaseModel) -> str:
        return "global" if model.is_global else "team"

    @staticmethod
    def resolve_parameters(model: BaseModel) -> int:
        return model.parameter_count

    @staticmethod
    def resolve_has_chat_template(model: BaseModel) -> bool:
        return bool(model.chat_template)


class HubModelIn(RequestBody):
    repo_id: str = Field(description="The Hub repository, owner/name.", max_length=200)
    revision: str = Field("", description="Branch, tag or commit; empty: main.", max_length=100)


class BaseModelDetail(BaseModelOut):
    chat_template: str
    details: dict[str, Any] = Field(description="Shape facts read from config.json (layers, heads, …).")


# --- schemas: settings, presets, pools, estimate ----------------------------------------------------


class ChoiceOut(Schema):
    value: str
    label: str


class SettingOut(Schema):
    key: str = Field(description="Flat key to send in ``settings`` (dotted for LoRA's: ``lora.rank``).")
    kind: str = Field(
        description="int, float, bool, choice, text, json (an object), json_list (a list: GRPO's rewards), "
        "optional_int or optional_float (null allowed)."
    )
    default: Any
    label: str
    help: str
    choices: list[ChoiceOut]
    group: str


class PresetOut(Schema):
    slug: str
    name: str
    description: str
    values: dict[str, Any] = Field(description="The settings it changes from the defaults.")
    available: bool
    reason: str | None = Field(None, description="Why it cannot be used here, when it cannot.")


class PoolOut(Schema):
    name: str
    label: str
    accelerator: str = Field(description="cpu or cuda.")
    devices: int
    memory_gib: float = Field(description="Memory per device.")


class TrainingOptions(Schema):
    settings: list[SettingOut]
    presets: list[PresetOut]
    pools: list[PoolOut]
    default_pool: str


class EstimateIn(RequestBody):
    base_model: ObjectId = Field(description="Id of a base model (``GET base-models``).")
    dataset_version: ObjectId = Field(
        description="Id of a ready dataset version of the team (``id`` of a version in ``GET datasets``)."
    )
    pool: str | None = Field(None, description="Worker pool name; defaults to the first pool.")
    preset: str | None = Field(None, description="Preset slug: its values apply before ``settings``.")
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="Flat dotted keys (``{'lora.rank': 8, 'learning_rate': 1e-4}``); unset ones take "
        "their defaults. A nested ``lora`` object is accepted too.",
    )


class EstimateOut(Schema):
    total_parameters: int
    trainable_parameters: int
    memory_bytes: int = Field(description="Memory needed per device.")
    memory_breakdown: dict[str, int] = Field(description="weights, gradients, optimizer, activations, logits, …")
    device_memory_bytes: int = Field(description="Memory each device of the pool has.")
    fits: bool
    verdict: str = Field(description="Whether it fits, and what to change when it does not.")
    dataset_tokens: int
    optimizer_steps: int
    tokens_to_train: int
    seconds: float = Field(description="Estimated training time.")
    seconds_low: float = Field(description="Low end of the time range (see ``range_basis``).")
    seconds_high: float = Field(description="High end of the time range.")
    range_basis: str = Field(
        description="What the range rests on: the spread of the team's finished runs on this pool, or a factor "
        "around the pool's assumed efficiency when there are none."
    )
    throughput_source: str = Field(description="Where the speed assumption comes from.")
    gpu_hours: float
    cost: float | None = Field(description="In the team's currency; null when the team set no GPU-hour price.")
    cost_low: float | None = Field(description="Low end of the cost range; null without a GPU-hour price.")
    cost_high: float | None = Field(description="High end of the cost range; null without a GPU-hour price.")
    notes: list[str]


class JobIn(EstimateIn):
    name: str = Field("", description="Defaults to “<base model> on <dataset>”.")


class CloneIn(RequestBody):
    name: str = Field("", description="Defaults to the source job's name with “(clone)”.")
    settings: dict[str, Any] = Field(default_factory=dict, description="Settings to change (flat dotted keys).")


# --- schemas: jobs ------------------------------------------------------------------------------------


class ModelRef(Schema):
    id: int
    name: str


class DatasetVersionRef(Schema):
    id: int
    dataset_id: int
    dataset: str
    number: int

    @staticmethod
    def resolve_dataset(version: DatasetVersion) -> str:
        return version.dataset.name


class JobOut(Schema):
    id: int
    name: str
    status: str
    phase: str
    message: str
    step: int
    max_steps: int
    progress: float = Field(description="Share of the optimizer steps done (0–1).")
    eta_seconds: float | None
    pool: str
    base_model: ModelRef | None
    dataset_version: DatasetVersionRef | None
    cloned_from: int | None = Field(None, description="Id of the job this one was cloned from.")
    model_version: int | None = Field(None, description="Id of the model version it produced.")
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_cloned_from(job: TrainingJob) -> int | None:
        return job.cloned_from_id

    @staticmethod
    def resolve_model_version(job: TrainingJob) -> int | None:
        version = getattr(job, "model_version", None)  # reverse one-to-one: absent until it succeeds
        return version.pk if version is not None else None

    @staticmethod
    def resolve_created_by(job: TrainingJob) -> str | None:
        return job.created_by.get_username() if job.created_by else None


class JobDetail(JobOut):
    estimate: dict[str, Any] = Field(description="Memory, tokens, time and cost estimated at launch.")
    config: dict[str, Any] = Field(description="The run settings as chosen (nested ``lora``), immutable.")
    config_version: int
    lineage: dict[str, Any] = Field(description="Base model and dataset version facts at launch.")
    failure: dict[str, Any] = Field(description="code, message and suggestion when the job failed.")
    result: dict[str, Any] = Field(description="Losses, perplexity, tokens and timings of a finished run.")
    duration_seconds: float | None
    cancel_requested_at: datetime | None
    budget_warning: str | None = Field(
        description="Set while this month's spend is past the team's soft budget (jobs still launch): the message "
        "the pages show, naming the spend, the limits and the Costs page."
    )
    speed_settings: list[dict[str, str]] = Field(
        description="What each speed setting became on the worker (name, value, reason); empty until the trainer "
        "has loaded the model."
    )

    @staticmethod
    def resolve_budget_warning(job: TrainingJob) -> str | None:
        status = costs.budget_status(job.team)
        return status.message if status.state == "warning" else None

    @staticmethod
    def resolve_speed_settings(job: TrainingJob) -> list[dict[str, str]]:
        return [asdict(setting) for setting in speed.read(job.folder() / "run")]

    @staticmethod
    def resolve_result(job: TrainingJob) -> dict[str, Any]:
        result = job.result or {}
        return {key: result[key] for key in registry.METRIC_FIELDS if key in result}


class JobFilters(Schema):
    status: StatusName | None = None


# [step, value]: a list of two numbers (OpenAPI 3.1's ``prefixItems`` for a tuple is beyond many clients).
MetricPoint = Annotated[list[int | float], Field(min_length=2, max_length=2)]


class LogsOut(Schema):
    log_tail: str = Field(description="The last lines the trainer printed.")


# --- schemas: model versions ------------------------------------------------------------------------


class ModelVersionOut(Schema):
    id: int
    name: str
    number: int
    kind: str = Field(description="adapter (LoRA) or full.")
    restricted: bool
    base_model: ModelRef | None
    job: int | None = Field(None, description="Id of the job that trained it.")
    has_merged: bool = Field(description="Whether a merged model (base + adapter) can be downloaded.")
    metrics: dict[str, Any]
    created_by: str | None
    created_at: datetime

    @staticmethod
    def resolve_job(version: ModelVersion) -> int | None:
        return version.job_id

    @staticmethod
    def resolve_has_merged(version: ModelVersion) -> bool:
        return bool(version.merged_path)

    @staticmethod
    def resolve_created_by(version: ModelVersion) -> str | None:
        return version.created_by.get_username() if version.created_by else None


class FileOut(Schema):
    name: str
    size: int


class ModelVersionDetail(ModelVersionOut):
    intended_use: str
    out_of_scope: str
    limitations: str = Field(description="Known limitations.")
    lineage: dict[str, Any] = Field(description="Base model, data, settings, hardware and library versions.")
    files: list[FileOut] = Field(description="The adapter or model files (empty when they are gone).")

    @staticmethod
    def resolve_files(version: ModelVersion) -> list[dict[str, Any]]:
        try:
            files = registry.artifact_files(version)
        except ValidationError:  # the folder is gone: the card and lineage still answer
            return []
        return [{"name": name, "size": path.stat().st_size} for path, name in files]


class CardPatch(RequestBody):
    intended_use: str | None = Field(None, description="What the model is for; at most 4000 characters.")
    out_of_scope: str | None = Field(
        None, description="Uses it is not meant for, even if it seems to handle them; at most 4000 characters."
    )
    limitations: str | None = Field(
        None, description="Known limitations: where it should not be trusted; at most 4000 characters."
    )


# --- helpers ----------------------------------------------------------------------------------------


def _launch_inputs(access: TeamAccess, body: EstimateIn) -> tuple[BaseModel, DatasetVersion, str, dict[str, Any]]:
    """The base model, dataset version, pool and flat settings a request names; 400 for unknown ids."""
    errors: dict[str, list[str]] = {}
    base_model = services.available_models(access).filter(pk=body.base_model).first()
    if base_model is None:
        errors["base_model"] = [f"no base model {body.base_model} is available to this team (see GET base-models)"]
    dataset_version = (
        DatasetVersion.objects.for_team(access.team)
        .select_related("dataset")
        .filter(pk=body.dataset_version, dataset__in=datasets_services.visible_datasets(access))
        .first()
    )
    if dataset_version is None:
        errors["dataset_version"] = [f"no dataset version {body.dataset_version} in this team"]
    if body.preset is not None and body.preset not in presets.PRESETS_BY_SLUG:
        errors["preset"] = [f"choose one of {', '.join(presets.PRESETS_BY_SLUG)}"]
    if errors:
        raise ValidationError(errors)
    assert base_model is not None and dataset_version is not None  # checked above
    values = _flat(body.settings)
    if body.preset is not None:
        values = presets.apply_preset(body.preset, values)
    return base_model, dataset_version, body.pool or jobs.default_pool(), values


def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as flat dotted keys; a nested ``lora`` object is flattened (anything else is left to validation)."""
    return presets.flatten(settings) if isinstance(settings.get("lora"), dict) else dict(settings)


def _job(access: TeamAccess, job_id: int) -> TrainingJob:
    return get_object_or_404(jobs.visible_jobs(access).select_related("created_by", "model_version"), pk=job_id)


def _model_version(access: TeamAccess, version_id: int) -> ModelVersion:
    return get_object_or_404(registry.visible_versions(access), pk=version_id)


def _unavailable_reason(preset: presets.Preset, pools: list[PoolOut]) -> str | None:
    if preset.needs_cuda and not any(pool.accelerator == "cuda" for pool in pools):
        return "needs a CUDA GPU, and none of the studio's worker pools has one"
    return None


# --- base models ------------------------------------------------------------------------------------


@router.get("teams/{slug}/base-models", response={200: list[BaseModelOut], 404: Error}, summary="List base models")
def list_base_models(request: HttpRequest, slug: str) -> QuerySet[BaseModel]:
    """The models the team can fine-tune: its own and those an operator provides to every team."""
    return services.available_models(team_access(request, slug))


@router.post(
    "teams/{slug}/base-models",
    response={202: BaseModelOut, 400: Error, 403: Error, 404: Error},
    summary="Add a base model from the Hugging Face Hub",
)
def add_hub_model(request: HttpRequest, slug: str, body: HubModelIn) -> tuple[int, BaseModel]:
    """Start downloading a Hub repository as a team base model: poll ``GET base-models/{id}`` for
    ``status``/``progress``. Only safetensors weights are fetched; a repository with its own Python code
    (``trust_remote_code``), only pickled weights, or that is missing/gated ends ``failed`` with the reason."""
    access = team_access(request, slug)
    return 202, hub.request_download(access=access, repo_id=body.repo_id, revision=body.revision, ip=client_ip(request))


@router.get(
    "teams/{slug}/base-models/{model_id}", response={200: BaseModelDetail, 404: Error}, summary="Get a base model"
)
def base_model_detail(request: HttpRequest, slug: str, model_id: ObjectId) -> BaseModel:
    """Architecture, parameter count, context length, chat template and license of one base model."""
    return get_object_or_404(services.available_models(team_access(request, slug)), pk=model_id)


@router.post(
    "teams/{slug}/base-models/{model_id}/retry",
    response={202: BaseModelOut, 400: Error, 403: Error, 404: Error},
    summary="Retry a failed Hub download",
)
def retry_hub_model(request: HttpRequest, slug: str, model_id: ObjectId) -> Status:
    """Download a ``failed`` Hub model of the team again (poll ``GET base-models/{id}``); 400 unless it failed,
    403 for an operator's model or a role that may not add models."""
    access = team_access(request, slug)
    model = get_object_or_404(services.available_models(access), pk=model_id)
    return Status(202, hub.retry_download(access=access, model=model, ip=client_ip(request)))


@router.delete(
    "teams/{slug}/base-models/{model_id}",
    response={204: None, 400: Error, 403: Error, 404: Error},
    summary="Delete a team's Hub model",
)
def delete_hub_model(request: HttpRequest, slug: str, model_id: ObjectId) -> Status:
    """Remove one of the team's Hub models and its files (complete or partial). 400 while it downloads or
    while training jobs or model versions made from it exist (delete those first); 403 for an operator's
    model or a role that may not add models."""
    access = team_access(request, slug)
    model = get_object_or_404(services.available_models(access), pk=model_id)
    hub.delete_model(access=access, model=model, ip=client_ip(request))
    return Status(204, None)


# --- building a run ---------------------------------------------------------------------------------


@router.get("teams/{slug}/training/settings", response={200: TrainingOptions, 404: Error}, summary="Training settings")
def training_settings(request: HttpRequest, slug: str) -> dict[str, Any]:
    """Every run setting (key, kind, default, help, choices), the presets and the worker pools.

    Send the keys you want to change as ``settings`` to ``POST training/estimate`` and ``POST jobs``.
    """
    team_access(request, slug)
    pools = [
        PoolOut(
            name=name, label=pool.label, accelerator=pool.accelerator, devices=pool.devices, memory_gib=pool.memory_gib
        )
        for name, pool in jobs.pools().items()
    ]
    return {
        "settings": [
            {
                "key": setting.key,
                "kind": setting.kind,
                "default": setting.default,
                "label": setting.label,
                "help": setting.help,
                "choices": [{"value": value, "label": label} for value, label in setting.choices],
                "group": setting.group,
            }
            for setting in presets.SETTINGS
        ],
        "presets": [
            {
                "slug": preset.slug,
                "name": preset.name,
                "description": preset.description,
                "values": preset.values,
                "available": _unavailable_reason(preset, pools) is None,
                "reason": _unavailable_reason(preset, pools),
            }
            for preset in presets.PRESETS
        ],
        "pools": pools,
        "default_pool": jobs.default_pool(),
    }


@router.post(
    "teams/{slug}/training/estimate",
    response={200: EstimateOut, 400: Error, 404: Error},
    summary="Estimate a run",
)
def estimate(request: HttpRequest, slug: str, body: EstimateIn) -> dict[str, Any]:
    """Memory per device (and whether it fits), tokens, steps, time and cost of a run, before launching it.

    Invalid settings get 400 with one message per field, exactly as ``POST jobs`` would.
    """
    access = team_access(request, slug)
    base_model, dataset_version, pool, values = _launch_inputs(access, body)
    config, errors = jobs.check_settings(
        base_model=base_model, dataset_version=dataset_version, pool=pool, values=values
    )
    if errors:
        raise ValidationError({key: [message] for key, message in errors.items()})
    return jobs.estimate_job(
        team=access.team, base_model=base_model, dataset_version=dataset_version, pool=pool, config=config
    ).to_dict()


# --- jobs ---------------------------------------------------------------------------------------------


@router.get("teams/{slug}/jobs", response={200: list[JobOut], 404: Error}, summary="List training jobs")
@paginate(Pagination)
def list_jobs(request: HttpRequest, slug: str, filters: Query[JobFilters]) -> QuerySet[TrainingJob]:
    """The team's training jobs, newest first; ``?status=running`` keeps one status."""
    queryset = jobs.visible_jobs(team_access(request, slug)).select_related("created_by", "model_version")
    return queryset.filter(status=filters.status) if filters.status else queryset


@router.post("teams/{slug}/jobs", response={201: JobDetail, 400: Error, 403: Error, 404: Error}, summary="Launch a job")
def create_job(request: HttpRequest, slug: str, body: JobIn) -> Status:
    """Validate the settings, estimate, and queue a fine-tuning job (members, admins and owners).

    The preset's values apply first, then ``settings``; everything else keeps its default.
    """
    access = team_access(request, slug)
    base_model, dataset_version, pool, values = _launch_inputs(access, body)
    job = jobs.create_job(
        access=access, name=body.name, base_model=base_model, dataset_version=dataset_version, pool=pool,
        values=values, ip=client_ip(request),
    )  # fmt: skip
    return Status(201, _job(access, job.pk))


@router.get("teams/{slug}/jobs/{job_id}", response={200: JobDetail, 404: Error}, summary="Get a job")
def job_detail(request: HttpRequest, slug: str, job_id: ObjectId) -> TrainingJob:
    """Where a job stands (status, phase, step, ETA), what it was asked to do, and what it produced."""
    return _job(team_access(request, slug), job_id)


@router.post(
    "teams/{slug}/jobs/{job_id}/cancel",
    response={202: JobDetail, 400: Error, 403: Error, 404: Error},
    summary="Cancel a job",
)
def cancel_job(request: HttpRequest, slug: str, job_id: ObjectId) -> Status:
    """Stop a job: a queued one at once, a running one at its next step (poll until ``cancelled``).

    Whoever launched it, or an admin, may cancel it; a finished job gets 400.
    """
    access = team_access(request, slug)
    job = jobs.cancel_job(access=access, job=_job(access, job_id), ip=client_ip(request))
    return Status(202, _job(access, job.pk))


@router.delete(
    "teams/{slug}/jobs/{job_id}",
    response={204: None, 400: Error, 403: Error, 404: Error},
    summary="Delete a finished job",
)
def delete_job(request: HttpRequest, slug: str, job_id: ObjectId) -> Status:
    """Delete a succeeded, failed or cancelled job with its metrics, log and run files; the model version
    it produced stays (its ``job`` becomes null, its lineage is kept).

    Whoever launched it, or an admin, may delete it (else 403); an active job gets 400: cancel it first.
    """
    access = team_access(request, slug)
    jobs.delete_job(access=access, job=_job(access, job_id), ip=client_ip(request))
    return Status(204, None)


@router.post(
    "teams/{slug}/jobs/{job_id}/clone",
    response={201: JobDetail, 400: Error, 403: Error, 404: Error},
    summary="Clone a job",
)
def clone_job(request: HttpRequest, slug: str, job_id: ObjectId, body: CloneIn) -> Status:
    """Launch a new job with the same base model, dataset version, pool and settings, changing ``settings``."""
    access = team_access(request, slug)
    source = _job(access, job_id)
    values = {**jobs.clone_values(source), **_flat(body.settings)}
    job = jobs.create_job(
        access=access, name=body.name or f"{source.name} (clone)"[:120], base_model=source.base_model,
        dataset_version=source.dataset_version, pool=source.pool, values=values, cloned_from=source,
        ip=client_ip(request),
    )  # fmt: skip
    return Status(201, _job(access, job.pk))


@router.get(
    "teams/{slug}/jobs/{job_id}/metrics",
    response={200: dict[str, list[MetricPoint]], 404: Error},
    summary="Job metrics",
)
def job_metrics(request: HttpRequest, slug: str, job_id: ObjectId) -> dict[str, list[tuple[int, float]]]:
    """Each logged metric (loss, eval_loss, learning_rate, grad_norm, …) as ``[[step, value], …]``."""
    return jobs.metric_series(_job(team_access(request, slug), job_id))


@router.get("teams/{slug}/jobs/{job_id}/logs", response={200: LogsOut, 404: Error}, summary="Job log")
def job_logs(request: HttpRequest, slug: str, job_id: ObjectId) -> dict[str, str]:
    """The last lines of the trainer's output."""
    return {"log_tail": _job(team_access(request, slug), job_id).log_tail}


@router.get(
    "teams/{slug}/jobs/{job_id}/config.yaml",
    response={200: None, 404: Error},
    summary="Job settings as YAML",
    openapi_extra={"responses": {200: {"description": "The settings", "content": {"application/yaml": {}}}}},
)
def job_config_yaml(request: HttpRequest, slug: str, job_id: ObjectId) -> HttpResponse:
    """The job's settings as YAML (flat dotted keys, as ``settings`` of ``POST jobs`` takes them)."""
    job = _job(team_access(request, slug), job_id)
    text = yaml.safe_dump(jobs.clone_values(job), sort_keys=False, allow_unicode=True)
    return HttpResponse(text, content_type="application/yaml; charset=utf-8")


# --- model versions -----------------------------------------------------------------------------------


@router.get(
    "teams/{slug}/model-versions", response={200: list[ModelVersionOut], 404: Error}, summary="List model versions"
)
@paginate(Pagination)
def list_model_versions(request: HttpRequest, slug: str) -> QuerySet[ModelVersion]:
    """The team's trained models, newest first (restricted ones only when shared with you)."""
    return registry.visible_versions(team_access(request, slug))


@router.get(
    "teams/{slug}/model-versions/{version_id}",
    response={200: ModelVersionDetail, 404: Error},
    summary="Get a model version",
)
def model_version_detail(request: HttpRequest, slug: str, version_id: ObjectId) -> ModelVersion:
    """A model version's card fields, metrics, full lineage and files."""
    return _model_version(team_access(request, slug), version_id)


@router.patch(
    "teams/{slug}/model-versions/{version_id}",
    response={200: ModelVersionDetail, 400: Error, 403: Error, 404: Error},
    summary="Edit a model card",
)
def update_model_card(request: HttpRequest, slug: str, version_id: ObjectId, body: CardPatch) -> ModelVersion:
    """Change the card's intended use, out-of-scope uses and known limitations (fields left out keep their text).

    A deployment publishes the version only once all three are written."""
    access = team_access(request, slug)
    version = _model_version(access, version_id)
    return registry.update_card(
        access=access,
        version=version,
        intended_use=version.intended_use if body.intended_use is None else body.intended_use,
        out_of_scope=version.out_of_scope if body.out_of_scope is None else body.out_of_scope,
        limitations=version.limitations if body.limitations is None else body.limitations,
        ip=client_ip(request),
    )


@router.get(
    "teams/{slug}/model-versions/{version_id}/card",
    response={200: None, 404: Error},
    summary="Model card (Markdown)",
    openapi_extra={"responses": {200: {"description": "The card", "content": {"text/markdown": {}}}}},
)
def model_card(request: HttpRequest, slug: str, version_id: ObjectId) -> HttpResponse:
    """The model card as Markdown: intended use, out of scope, known limitations, the team's acceptable-use policy,
    training data, settings and evaluation."""
    version = _model_version(team_access(request, slug), version_id)
    return HttpResponse(registry.model_card(version), content_type="text/markdown; charset=utf-8")


@router.get(
    "teams/{slug}/model-versions/{version_id}/download",
    response={200: None, 400: Error, 403: Error, 404: Error},
    summary="Download a model version",
    openapi_extra={"responses": {200: {"description": "A zip archive", "content": {"application/zip": {}}}}},
)
def download_model_version(
    request: HttpRequest, slug: str, version_id: ObjectId, merged: bool = False
) -> StreamingHttpResponse:
    """A zip of the adapter (or model) files, tokenizer and model card; ``?merged=true`` for the merged model."""
    access = team_access(request, slug)
    version = _model_version(access, version_id)
    handle, filename = registry.download(access=access, version=version, merged=merged, ip=client_ip(request))
    response = StreamingHttpResponse(registry.iter_file(handle), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@router.delete(
    "teams/{slug}/model-versions/{version_id}",
    response={204: None, 400: Error, 403: Error, 404: Error},
    summary="Delete a model version",
)
def delete_model_version(request: HttpRequest, slug: str, version_id: ObjectId) -> Status:
    """Delete the model version and its files (owners and admins; an audit tombstone remains). 400 while a
    deployment serves it, as its version or its canary: remove it from the deployments first."""
    access = team_access(request, slug)
    registry.delete_version(access=access, version=_model_version(access, version_id), ip=client_ip(request))
    return Status(204, None)
