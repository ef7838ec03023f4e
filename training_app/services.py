"""What the training app can do, for the rest of the studio: the front door other apps and pages call.

Base models (registered folders, what a team may fine-tune), training jobs (``visible_jobs``) and the
model versions they produce (``visible_versions``). The work itself lives in ``jobs`` (launching,
cancelling, reaping), ``runner`` (the Celery side of a run) and ``registry`` (model versions and cards);
other apps import it from here.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet

from accounts import audit
from accounts.models import Team
from accounts.permissions import TeamAccess
from datasets_app.models import DatasetVersion
from training_app import estimator
from training_app.engine.inspection import UnsafeModel, inspect_model
from training_app.jobs import usable_base_models, visible_jobs
from training_app.models import BaseModel, TrainingJob
from training_app.registry import model_card, versions_trained_on, visible_versions

__all__ = [
    "STARTER_MODEL_NAME",
    "available_models",
    "model_card",
    "model_shape",
    "models_dir",
    "register_model_folder",
    "retrain",
    "serving_memory",
    "serving_precisions",
    "usable_base_models",
    "versions_trained_on",
    "visible_jobs",
    "visible_versions",
]

STARTER_MODEL_NAME = "atelier-starter"


def models_dir() -> Path:
    """Where the studio keeps model folders it creates or downloads."""
    return Path(settings.MODELS_DIR)


def register_model_folder(
    *, path: Path, name: str, source: str, team: Team | None = None, actor: Any = None
) -> BaseModel:
    """Register (or refresh) a safetensors model folder as a base model; refuses pickles and custom code."""
    try:
        facts = inspect_model(path)
    except UnsafeModel as error:
        raise ValidationError({"path": str(error)}) from error
    except (OSError, ValueError) as error:
        raise ValidationError({"path": f"{path} could not be read as a model folder: {error}"}) from error
    fields = {
        "source": source,
        "path": str(path),
        "architecture": facts.architecture,
        "parameter_count": facts.parameter_count,
        "context_length": facts.context_length,
        "vocab_size": facts.vocab_size,
        "chat_template": facts.chat_template,
        "license": facts.license,
        "description": facts.description,
        "details": facts.details,
        "status": BaseModel.Status.READY,
        "progress": 1.0,
        "error": "",
    }
    with transaction.atomic():
        model, created = BaseModel.objects.update_or_create(team=team, name=name, defaults=fields)
        audit.record(
            "model.registered" if created else "model.refreshed", actor=actor, team=team, target=model, path=str(path)
        )
    return model


def available_models(access: TeamAccess) -> QuerySet[BaseModel]:
    """Base models the team can fine-tune: its own and the operator's (starter model included)."""
    return BaseModel.objects.available_to(access.team)


def retrain(
    *, access: TeamAccess, job: TrainingJob, dataset_version: DatasetVersion, ip: str | None = None
) -> TrainingJob:
    """Run a finished ``job``'s settings again on ``dataset_version`` (a newer version of its data): what
    "Retrain on the new version" starts. The new job is an ordinary one, cloned from ``job`` (its lineage says so),
    validated and estimated like any launch. Raises ``ValidationError`` naming the field to fix."""
    from training_app.jobs import clone_values, create_job

    if job.team_id != access.team.pk:
        raise ValidationError({"job": "That job does not belong to this team."})
    name = f"{job.name[:100]} (retrained on v{dataset_version.number})"
    return create_job(
        access=access, name=name, base_model=job.base_model, dataset_version=dataset_version, pool=job.pool,
        values=clone_values(job), cloned_from=job, ip=ip,
    )  # fmt: skip


def model_shape(base_model: BaseModel) -> estimator.ModelShape:
    """The decoder shape of ``base_model`` (an ``estimator.ModelShape``): read from its folder's config.json (layers,
    key/value heads, head dim) when the folder is there, else from the facts recorded when it was registered."""
    config_path = Path(base_model.path) / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict):
        shape = estimator.ModelShape.from_config(config)
        return shape if not base_model.parameter_count else replace(shape, parameter_count=base_model.parameter_count)
    return estimator.ModelShape.from_details(
        base_model.parameter_count, base_model.details, base_model.context_length, base_model.vocab_size
    )


def serving_memory(
    *, base_model: BaseModel, adapter_paths: tuple[str, ...] = (), precision: str, context_length: int, concurrency: int
) -> estimator.ServingMemory:
    """GPU memory to serve ``base_model`` (plus the LoRA adapters in ``adapter_paths``, resident together in one
    engine and counted by their safetensors files) at ``precision`` to ``concurrency`` requests of
    ``context_length`` tokens: an ``estimator.ServingMemory`` (formula: ``estimator.serving_memory``). Raises
    ``ValueError`` for an unknown precision."""
    files = [path for folder in adapter_paths if folder for path in Path(folder).glob("*.safetensors")]
    adapter_bytes = sum(path.stat().st_size for path in files)
    return estimator.serving_memory(
        model_shape(base_model), precision=precision, context_length=context_length, concurrency=concurrency,
        adapter_bytes=adapter_bytes,
    )  # fmt: skip


def serving_precisions() -> tuple[str, ...]:
    """The precisions a model can be served at (bytes per weight: ``estimator.SERVING_PRECISIONS``)."""
    return tuple(estimator.SERVING_PRECISIONS)
