"""The team's model registry: model versions made by finished jobs, their cards, downloads and deletion.

A model version learned from a restricted dataset is restricted too (who may see the data may see what
was learned from it), and the person who launched the job gets a ``use`` share on it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, Q, QuerySet
from django.template.loader import render_to_string
from guardian.shortcuts import assign_perm

from accounts import audit
from accounts.models import Team
from accounts.permissions import TeamAccess, require_object_action, visible_objects
from accounts.roles import Perm
from training_app.engine import rewards
from training_app.models import ModelVersion, TrainingJob

# Result fields copied onto the model version (the card and the registry list show them).
METRIC_FIELDS = (
    "steps",
    "epochs",
    "train_loss_first",
    "train_loss_last",
    "eval_loss_before",
    "eval_loss_after",
    "perplexity_before",
    "perplexity_after",
    "reward_first",
    "reward_last",
    "trainable_parameters",
    "total_parameters",
    "tokens_seen",
    "tokens_per_second",
    "train_runtime_seconds",
    "duration_seconds",
    "peak_memory_bytes",
    "memory_kind",
)


def _carried_card(job: TrainingJob) -> dict[str, str]:
    """A clone's or retrain's card starts from the card of the version its source job made (same use, same
    limits: the data is newer, the purpose is not), so a retrained version can be proposed for promotion."""
    if job.cloned_from_id is None:
        return {}
    source = ModelVersion.objects.for_team(job.team).filter(job_id=job.cloned_from_id).order_by("-number").first()
    if source is None:
        return {}
    return {"intended_use": source.intended_use, "out_of_scope": source.out_of_scope, "limitations": source.limitations}


def register_from_job(job: TrainingJob, result: dict[str, Any]) -> ModelVersion:
    """Register the artifact of a succeeded job (call inside the job's completion transaction)."""
    artifacts = result.get("artifacts") or {}
    kind = ModelVersion.Kind.ADAPTER if "adapter" in artifacts else ModelVersion.Kind.FULL
    path = artifacts.get("adapter") or artifacts.get("model") or ""
    dataset = job.dataset_version.dataset if job.dataset_version else None
    restricted = bool(dataset and dataset.restricted)
    # Two jobs of the same name finishing at once on two workers must not both take number N + 1.
    Team.objects.select_for_update().filter(pk=job.team_id).first()
    number = (
        ModelVersion.objects.for_team(job.team).filter(name=job.name).aggregate(top=Max("number"))["top"] or 0
    ) + 1
    version = ModelVersion.objects.create(
        team=job.team,
        name=job.name,
        number=number,
        job=job,
        base_model=job.base_model,
        kind=kind,
        path=path,
        merged_path=artifacts.get("merged", ""),
        restricted=restricted,
        metrics={key: result.get(key) for key in METRIC_FIELDS} | {"generations": result.get("generations") or []},
        lineage={
            **job.lineage,
            "job": {"id": job.pk, "name": job.name, "pool": job.pool, "attempts": job.attempts},
            "config": job.config,
            "config_version": job.config_version,
            "hardware": result.get("hardware") or {},
            "versions": result.get("versions") or {},
            "resumed_from": result.get("resumed_from"),
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        },
        created_by=job.created_by,
        **_carried_card(job),
    )
    if restricted and job.created_by is not None:
        for action in ("view", "use"):
            assign_perm(f"{action}_modelversion", job.created_by, version)
    audit.record("model_version.registered", actor=job.created_by, team=job.team, target=version, job=job.pk,
                 restricted=restricted)  # fmt: skip
    return version


def visible_versions(access: TeamAccess, action: str = "view") -> QuerySet[ModelVersion]:
    """Model versions this person may see (or use): restricted ones need a share."""
    queryset = ModelVersion.objects.for_team(access.team).select_related("base_model", "job", "created_by")
    return visible_objects(access, queryset, action)


def update_card(
    *,
    access: TeamAccess,
    version: ModelVersion,
    intended_use: str,
    out_of_scope: str,
    limitations: str,
    ip: str | None = None,
) -> ModelVersion:
    """Edit the card's free-text prompts: intended use, out of scope, known limitations.

    A deployment publishes the version only when all three are written (``ModelVersion.missing_card_fields``).
    """
    require_object_action(access, version, "change")
    values = {"intended_use": intended_use, "out_of_scope": out_of_scope, "limitations": limitations}
    for field, value in values.items():
        if len(value) > 4000:
            raise ValidationError({field: f"use at most 4000 characters (this is {len(value)})"})
    with transaction.atomic():
        for field, value in values.items():
            setattr(version, field, value.strip())
        version.save(update_fields=list(values))
        audit.record(
            "model_version.card_edited", access=access, target=version, ip=ip, complete=not version.missing_card_fields
        )
    return version


def model_card(version: ModelVersion) -> str:
    """The model card as Markdown text: README.md in the download, text/markdown in the API, and on the page.

    Its template renders with autoescape off, so names and card fields read as typed, and
    ``render_to_string`` would mark that text safe for HTML, which it is not: it is handed back as a
    plain ``str``, and a page that shows it escapes it like any other member-written text. The team's
    acceptable-use policy is quoted in it as written (Markdown), under "Acceptable use".
    """
    config = version.lineage.get("config") or {}
    team = version.team
    context = {
        "version": version,
        "team": team,
        # Quoted, so the policy's own headings stay inside its section of the card.
        "acceptable_use": "\n".join(f"> {line}".rstrip() for line in team.acceptable_use_policy.splitlines()),
        "lineage": version.lineage,
        "rewards": rewards.describe(config.get("rewards")) if config.get("stage") == "grpo" else [],
    }
    rendered = render_to_string("training/model_card.md", context)
    return str.__str__(rendered)  # a plain str copy, without SafeString's "already escaped" mark


def artifact_files(version: ModelVersion, *, merged: bool = False) -> list[tuple[Path, str]]:
    """(file on disk, name in the archive) for the adapter/model folder, or the merged model."""
    folder = Path(version.merged_path if merged else version.path)
    if not folder.is_dir():
        raise ValidationError({"files": "the model's files are gone from the server (deleted or moved)"})
    return [(path, str(path.relative_to(folder))) for path in sorted(folder.rglob("*")) if path.is_file()]


def download(
    *, access: TeamAccess, version: ModelVersion, merged: bool = False, ip: str | None = None
) -> tuple[IO[bytes], str]:
    """A zip of the safetensors files, tokenizer and model card; returns (open file, download name)."""
    access.require(Perm.EXPORT_MODELS)
    require_object_action(access, version, "use")
    if merged and not version.merged_path:
        raise ValidationError({"merged": "this version has no merged model; launch with 'Also save a merged model'"})
    files = artifact_files(version, merged=merged)
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - returned open; the response closes it
    # Safetensors do not compress: store them, so the archive is written at disk speed.
    with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path, name in files:
            archive.write(path, name)
        archive.writestr("README.md", model_card(version))
    spool.seek(0)
    suffix = "merged" if merged else version.kind
    filename = f"{_slug(version.name)}-v{version.number}-{suffix}.zip"
    audit.record("model_version.downloaded", access=access, target=version, ip=ip, merged=merged,
                 size=spool.seek(0, os.SEEK_END))  # fmt: skip
    spool.seek(0)
    return spool, filename


def delete_version(*, access: TeamAccess, version: ModelVersion, ip: str | None = None) -> None:
    """Delete a model version and its files (owners and admins).

    Refused (``ValidationError``) while the version is published as a deployment: clients calling it
    would start failing, so the deployments go first, deliberately.
    """
    require_object_action(access, version, "delete")
    published = deployment_names(version)
    if published:
        raise ValidationError(
            f"“{version}” is published as {', '.join(published)}: delete the deployment first "
            "(Deployments), then the model version."
        )
    folders = [Path(p) for p in (version.path, version.merged_path) if p]
    with transaction.atomic():
        audit.record("model_version.deleted", access=access, target=version, ip=ip, name=str(version))
        version.delete()
        transaction.on_commit(lambda: _remove(folders))


def deployment_names(version: ModelVersion) -> list[str]:
    """The names of the deployments that serve ``version``, as their version or as their canary (the serving app's
    reverse relations)."""
    serving = set(version.deployments.for_team(version.team).values_list("name", flat=True))
    serving |= set(version.canary_deployments.for_team(version.team).values_list("name", flat=True))
    return sorted(serving)


def _remove(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def versions_trained_on(access: TeamAccess, dataset: Any) -> QuerySet[ModelVersion]:
    """Model versions whose job trained on a version of ``dataset`` (for its page and delete confirmation)."""
    # The lineage keeps the dataset's id even when the job row is gone.
    return visible_versions(access).filter(
        Q(job__dataset_version__dataset=dataset) | Q(lineage__dataset_versions__0__dataset_id=dataset.pk)
    )


def iter_file(handle: IO[bytes], chunk: int = 1 << 20) -> Iterator[bytes]:
    with handle:
        while block := handle.read(chunk):
            yield block


def _slug(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in name.lower()).strip("-")
    return cleaned or "model"
