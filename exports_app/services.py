"""Exports of model versions: what the team may export, starting an export, and the Celery job that makes it.

An export is a privileged action (``models.export`` and the ``use`` action on the version), audited when asked for
and when done. The job (``exports_app.tasks.export_task``, on the version's training queue, where models are
loaded) runs the engine (``python -m exports_app.engine``) as a subprocess (the worker never imports torch), copies
its progress onto the row, packages the files with the card and the documents, hashes the result and, when asked,
pushes the files to a Hugging Face Hub repository with the team's token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts import audit
from accounts.models import Team
from accounts.permissions import TeamAccess, object_actions, require_object_action
from accounts.roles import Perm
from exports_app import documents, hub
from exports_app.models import ExportSettings, ModelExport
from training_app import services as training
from training_app.models import ModelVersion

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
GGUF_FORMATS = (ModelExport.Format.GGUF, ModelExport.Format.OLLAMA)
ENGINE_TIMEOUT_S = 6 * 3600
# Variables the engine subprocess has no use for: it reads model folders and writes files, nothing else.
HIDDEN_ENVIRONMENT = ("DATABASE_URL", "DJANGO_SECRET_KEY", "ATELIER_SECRETS_KEY", "HF_TOKEN", "CELERY_BROKER_URL")


# --- reading ----------------------------------------------------------------------------------------------------


def visible_exports(access: TeamAccess) -> QuerySet[ModelExport]:
    """Exports of the model versions this person may see, newest first."""
    return (
        ModelExport.objects.for_team(access.team)
        .filter(model_version__in=training.visible_versions(access))
        .select_related("model_version", "created_by")
    )


def exports_of(access: TeamAccess, version: ModelVersion) -> QuerySet[ModelExport]:
    return visible_exports(access).filter(model_version=version)


def can_export(access: TeamAccess, version: ModelVersion) -> bool:
    """Whether this person may export ``version`` (and download its exports)."""
    return access.can(Perm.EXPORT_MODELS) and "use" in object_actions(access, version)


# --- starting ---------------------------------------------------------------------------------------------------


def start_export(
    *,
    access: TeamAccess,
    version: ModelVersion,
    format: str,
    quantization: str = "",
    hub_repo: str = "",
    hub_private: bool = True,
    ip: str | None = None,
) -> ModelExport:
    """Queue an export of ``version`` (``models.export`` and ``use`` on it); audited.

    Raises ``ValidationError`` keyed by ``format``, ``quantization``, ``hub_repo`` or ``model_version`` naming the
    fix, ``PermissionDenied`` without the permission.
    """
    access.require(Perm.EXPORT_MODELS)
    require_object_action(access, version, "use")
    quantization = (quantization or "").strip().lower()
    hub_repo = (hub_repo or "").strip()
    _check_request(access, version, format, quantization, hub_repo)
    waits = approval_required(access.team)
    with transaction.atomic():
        export = ModelExport.objects.create(
            team=access.team, model_version=version, format=format, quantization=quantization, hub_repo=hub_repo,
            hub_private=hub_private, created_by=access.user,
            status=ModelExport.Status.AWAITING_APPROVAL if waits else ModelExport.Status.QUEUED,
        )  # fmt: skip
        audit.record(
            "model_version.export_requested", access=access, target=version, ip=ip, export=export.pk, format=format,
            quantization=quantization, hub_repo=hub_repo, awaiting_approval=waits,
        )  # fmt: skip
        if not waits:
            queue = _queue(version)
            transaction.on_commit(lambda: _enqueue(export.pk, queue))
    return export


# --- approval ---------------------------------------------------------------------------------------------------


def approval_required(team: Team) -> bool:
    """Whether the team's exports wait for a second person's approval."""
    return bool(ExportSettings.objects.for_team(team).filter(require_approval=True).exists())


def set_approval_required(*, access: TeamAccess, required: bool, ip: str | None = None) -> None:
    """Make every new export wait for approval, or not (owners and admins: ``exports.approve``); audited."""
    access.require(Perm.APPROVE_EXPORTS)
    with transaction.atomic():
        row, _ = ExportSettings.objects.for_team(access.team).get_or_create(team=access.team)
        ExportSettings.objects.for_team(access.team).filter(pk=row.pk).update(require_approval=required)
        audit.record("exports.approval_setting_changed", access=access, ip=ip, require_approval=required)


def decide(
    *, access: TeamAccess, export: ModelExport, approve: bool, reason: str = "", ip: str | None = None
) -> ModelExport:
    """Approve (the export is queued) or reject an export that waits (``exports.approve``, never one's own).

    A refused attempt is audited too. Raises ``PermissionDenied`` for a person who may not decide it and
    ``ValidationError`` for an export that no longer waits.
    """
    if export.team_id != access.team.pk:
        raise ValidationError({"export": "That export does not belong to this team."})
    refused = None
    if not access.can(Perm.APPROVE_EXPORTS):
        refused = "only owners and admins approve exports"
    elif access.user is None or access.user.pk == export.created_by_id:
        refused = "an export is approved by someone other than the person who asked for it"
    if refused is not None:
        audit.record("model_version.export_approval_refused", access=access, target=export.model_version, ip=ip,
                     export=export.pk, reason=refused)  # fmt: skip
        raise PermissionDenied(f"You cannot decide this export: {refused}.")
    status = ModelExport.Status.QUEUED if approve else ModelExport.Status.REJECTED
    with transaction.atomic():
        taken = (
            ModelExport.objects.for_team(access.team)
            .filter(pk=export.pk, status=ModelExport.Status.AWAITING_APPROVAL)
            .update(status=status, decided_by=access.user, decided_at=timezone.now(), decision_reason=reason[:500])
        )
        if not taken:
            now = ModelExport.objects.for_team(access.team).get(pk=export.pk).get_status_display().lower()
            raise ValidationError({"export": f"{export} is not waiting for approval (it is {now})."})
        audit.record(
            "model_version.export_approved" if approve else "model_version.export_rejected", access=access,
            target=export.model_version, ip=ip, export=export.pk, reason=reason[:500],
        )  # fmt: skip
        if approve:
            queue = _queue(export.model_version)
            transaction.on_commit(lambda: _enqueue(export.pk, queue))
    export.refresh_from_db()
    return export


def _check_request(access: TeamAccess, version: ModelVersion, format: str, quantization: str, hub_repo: str) -> None:
    formats = ", ".join(ModelExport.Format.values)
    if format not in ModelExport.Format.values:
        raise ValidationError({"format": f"“{str(format)[:40]}” is not an export format: choose one of {formats}."})
    if format in GGUF_FORMATS and quantization not in ("f16", "bf16", "q8_0"):
        raise ValidationError(
            {"quantization": "Choose the GGUF quantization: f16, bf16 or q8_0 (smallest, ~8.5 bits)."}
        )
    if format not in GGUF_FORMATS and quantization:
        raise ValidationError({"quantization": f"A {format} export is not quantized: leave quantization empty."})
    if hub_repo:
        if not hub.REPO_ID.fullmatch(hub_repo):
            raise ValidationError({"hub_repo": "Name the Hub repository as owner/name (letters, digits, - _ .)."})
        if not hub.has_token(access.team):
            raise ValidationError({"hub_repo": "The team has no Hugging Face token yet: an owner or admin sets it "
                                   "in the export settings first."})  # fmt: skip
    if format != ModelExport.Format.BUNDLE and version.kind == ModelVersion.Kind.ADAPTER and not _base_path(version):
        raise ValidationError({"model_version": "The version's base model is no longer registered: its adapter cannot "
                               "be merged. Register the base model again, or export the bundle."})  # fmt: skip


def _queue(version: ModelVersion) -> str:
    """The queue of the pool that trained the version (its workers load models), else the first pool's."""
    pool = str((version.lineage.get("job") or {}).get("pool") or "")
    pools = settings.TRAINING_POOLS
    chosen = pools.get(pool) or next(iter(pools.values()), {})
    return str(chosen.get("queue", "gpu"))


def _enqueue(export_id: int, queue: str) -> None:
    from exports_app.tasks import export_task

    try:
        export_task.apply_async(args=[export_id], queue=queue)
    except Exception as error:  # a broker down must not break the request that asked for the export
        log.exception("could not enqueue export %s", export_id)
        _update(export_id, status=ModelExport.Status.FAILED, finished_at=timezone.now(),
                error=f"The export could not be queued ({error.__class__.__name__}): try again.")  # fmt: skip


def open_download(*, access: TeamAccess, export: ModelExport, ip: str | None = None) -> tuple[Any, str]:
    """The finished export's file, open, and its name; audited. ``ValidationError`` when it is not ready or gone."""
    access.require(Perm.EXPORT_MODELS)
    require_object_action(access, export.model_version, "use")
    if export.status != ModelExport.Status.SUCCEEDED:
        raise ValidationError({"export": f"This export is {export.get_status_display().lower()}: nothing to download."})
    path = Path(export.file_path)
    if not path.is_file():
        raise ValidationError({"export": "The export's file is gone from the server: export again."})
    handle = path.open("rb")
    audit.record("model_version.export_downloaded", access=access, target=export.model_version, ip=ip,
                 export=export.pk, size=export.size_bytes)  # fmt: skip
    return handle, export.filename


# --- running ----------------------------------------------------------------------------------------------------


def claim(export_id: int) -> ModelExport | None:
    """Take a queued export (a conditional UPDATE: a second delivery of its task does nothing)."""
    taken = (
        ModelExport.objects.unscoped()
        .filter(pk=export_id, status=ModelExport.Status.QUEUED)
        .update(status=ModelExport.Status.RUNNING, started_at=timezone.now(), phase="starting", progress=0.01)
    )
    if not taken:
        return None
    return (
        ModelExport.objects.unscoped()
        .select_related("team", "created_by", "model_version__base_model", "model_version__team")
        .get(pk=export_id)
    )


def run(export_id: int) -> None:
    """Make one queued export (the Celery task's body; idempotent, see ``claim``)."""
    export = claim(export_id)
    if export is None:
        return
    try:
        _run(export)
    except ExportFailed as error:
        _fail(export, str(error))
    except Exception as error:  # a bug or a lost database must not leave it "running" forever
        log.exception("export %s failed", export_id)
        _fail(export, f"The export stopped unexpectedly ({error.__class__.__name__}). Try again; if it fails again, "
                      "report it to the studio's operator.")  # fmt: skip


class ExportFailed(RuntimeError):
    """The export failed for a reason the message gives, in words a person can act on."""


def _update(export_id: int, **fields: Any) -> None:
    ModelExport.objects.unscoped().filter(pk=export_id).update(**fields)


def _fail(export: ModelExport, message: str) -> None:
    _update(export.pk, status=ModelExport.Status.FAILED, error=message, finished_at=timezone.now())
    shutil.rmtree(export.folder() / "work", ignore_errors=True)
    audit.record("model_version.export_failed", actor=export.created_by, team=export.team,
                 target=export.model_version, export=export.pk, error=message[:300])  # fmt: skip


def _run(export: ModelExport) -> None:
    version = export.model_version
    folder = export.folder()
    work = folder / "work"
    shutil.rmtree(folder, ignore_errors=True)
    work.mkdir(parents=True)
    made: dict[str, Any] = {}
    if export.format != ModelExport.Format.BUNDLE:
        made = _run_engine(export, version, work)
    _update(export.pk, phase="packaging", progress=0.97)
    files = _files(export, version, made, work)
    artifact = _package(export, version, files, folder)
    digest, size = _sha256(artifact), artifact.stat().st_size
    hub_url = ""
    if export.hub_repo:
        _update(export.pk, phase="pushing", progress=0.98)
        try:
            hub_url = hub.push(team=export.team, repo_id=export.hub_repo, private=export.hub_private, files=files,
                               message=f"{version} exported from Atelier ({export})")  # fmt: skip
        except hub.PushError as error:
            raise ExportFailed(f"The files were made but not pushed: {error}") from None
    shutil.rmtree(work, ignore_errors=True)
    with transaction.atomic():
        _update(
            export.pk, status=ModelExport.Status.SUCCEEDED, phase="", progress=1.0, file_path=str(artifact),
            filename=artifact.name, size_bytes=size, sha256=digest, hub_url=hub_url, finished_at=timezone.now(),
        )  # fmt: skip
        audit.record("model_version.exported", actor=export.created_by, team=export.team, target=version,
                     export=export.pk, format=export.format, quantization=export.quantization, size=size,
                     sha256=digest, hub_repo=export.hub_repo)  # fmt: skip


def engine_plan(export: ModelExport, version: ModelVersion, work: Path) -> dict[str, Any]:
    """What the engine makes for ``export``: the model's folders, the GGUF quantization, the Modelfile."""
    plan: dict[str, Any] = {"work_dir": str(work), "name": str(version), "gguf": None, "modelfile": False}
    if export.format in GGUF_FORMATS:
        plan["gguf"] = export.quantization
        plan["modelfile"] = export.format == ModelExport.Format.OLLAMA
    if version.merged_path and Path(version.merged_path).is_dir():
        plan["model_path"] = version.merged_path  # merged at training time already
    elif version.kind == ModelVersion.Kind.FULL:
        plan["model_path"] = version.path
    else:
        plan.update(base_path=_base_path(version), adapter_path=version.path)
    return plan


def _base_path(version: ModelVersion) -> str:
    base = version.base_model
    return base.path if base is not None else str((version.lineage.get("base_model") or {}).get("path") or "")


def _run_engine(export: ModelExport, version: ModelVersion, work: Path) -> dict[str, Any]:
    plan_path = work / "plan.json"
    plan_path.write_text(json.dumps(engine_plan(export, version, work)), encoding="utf-8")
    env = {name: value for name, value in os.environ.items() if name not in HIDDEN_ENVIRONMENT}
    command = [sys.executable, "-m", "exports_app.engine", str(plan_path)]
    result: dict[str, Any] | None = None
    error = ""
    log_path = work / "engine.log"  # a file, not a pipe: a chatty library cannot block the engine
    with (
        log_path.open("w") as engine_log,
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=engine_log, text=True) as process,
    ):
        assert process.stdout is not None
        for line in process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "progress" in message:
                _update(export.pk, progress=float(message["progress"]), phase=str(message.get("phase", ""))[:40])
            result = message.get("result", result)
            error = message.get("error", error)
        process.wait(timeout=ENGINE_TIMEOUT_S)
    stderr = log_path.read_text(errors="replace")
    if error:
        raise ExportFailed(error)
    if process.returncode != 0 or result is None:
        last = (stderr.strip().splitlines() or ["no message"])[-1][:300]
        log.error("export engine failed for export %s: %s", export.pk, stderr[-3000:])
        raise ExportFailed(f"The export engine stopped ({last}). Try again; if it fails again, report it.")
    return result


def _files(
    export: ModelExport, version: ModelVersion, made: dict[str, Any], work: Path
) -> list[tuple[Path | bytes, str]]:
    """(file or contents, name) of what the export holds, in the zip and on the Hub alike."""
    card = documents.model_card(version).encode()
    license_text = documents.license_text(version).encode()
    if export.format == ModelExport.Format.BUNDLE:
        return [
            (card, "README.md"),
            (_json(documents.eval_report(version)), "eval-report.json"),
            (_json(documents.guard_policy(version)), "guard-policy.json"),
            (license_text, "LICENSE.txt"),
        ]
    if export.format == ModelExport.Format.SAFETENSORS:
        merged = Path(made["merged"])
        weights = [
            (path, path.name) for path in sorted(merged.iterdir()) if path.is_file() and path.name != "README.md"
        ]
        return [*weights, (card, "README.md"), (license_text, "LICENSE.txt")]
    gguf = Path(made["gguf"])
    files: list[tuple[Path | bytes, str]] = [(gguf, gguf.name), (card, "README.md"), (license_text, "LICENSE.txt")]
    if export.format == ModelExport.Format.OLLAMA:
        files.insert(1, (Path(made["modelfile"]), "Modelfile"))
    return files


def _package(export: ModelExport, version: ModelVersion, files: list[tuple[Path | bytes, str]], folder: Path) -> Path:
    """The downloadable file: the GGUF file itself, else a zip of ``files`` (stored: weights do not compress)."""
    stem = f"{_slug(version.name)}-v{version.number}"
    if export.format == ModelExport.Format.GGUF:
        gguf = files[0][0]
        assert isinstance(gguf, Path)
        target = folder / f"{stem}-{export.quantization}.gguf"
        os.replace(gguf, target)
        files[0] = (target, target.name)
        return target
    suffix = {"safetensors": "merged-safetensors", "ollama": f"ollama-{export.quantization}", "bundle": "bundle"}
    target = folder / f"{stem}-{suffix[export.format]}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for source, name in files:
            if isinstance(source, Path):
                archive.write(source, name)
            else:
                archive.writestr(name, source)
    return target


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True, default=str).encode()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _slug(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in name.lower()).strip("-")
    return cleaned or "model"


# --- the team's Hub token ---------------------------------------------------------------------------------------


def set_hub_token(*, access: TeamAccess, token: str | None, ip: str | None = None) -> None:
    """Save (encrypted) or remove (None) the team's Hugging Face token (owners and admins); audited, never the
    token itself."""
    access.require(Perm.CHANGE_TEAM)
    if token is not None and not (0 < len(token) <= 400 and token.isprintable() and " " not in token):
        raise ValidationError({"token": "Paste the token as the Hub shows it (one word, no spaces)."})
    with transaction.atomic():
        hub.set_token(access.team, token)
        audit.record("exports.hub_token_set" if token else "exports.hub_token_removed", access=access, ip=ip)
