"""What the training app can do, for the rest of the studio: the front door other apps and pages call.

Base models (registered folders, what a team may fine-tune), training jobs (``visible_jobs``) and the
model versions they produce (``visible_versions``). The work itself lives in ``jobs`` (launching,
cancelling, reaping), ``runner`` (the Celery side of a run) and ``registry`` (model versions and cards);
other apps import it from here.
"""

from __future__ import annotations

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
from training_app.engine.inspection import UnsafeModel, inspect_model
from training_app.jobs import usable_base_models, visible_jobs
from training_app.models import BaseModel, TrainingJob
from training_app.registry import versions_trained_on, visible_versions

__all__ = [
    "STARTER_MODEL_NAME",
    "available_models",
    "models_dir",
    "register_model_folder",
    "retrain",
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
