"""Base models from the Hugging Face Hub: a download task with progress, safetensors only, never remote code.

``request_download`` (web/API) records a team base model in state *downloading* and enqueues
``download`` on queue ``default``. The task asks the Hub what the repository holds before fetching
anything, and refuses, with a message that says what to do:

- a repository that is missing, private or gated (accept its license on the Hub and give the workers a
  token, ``HF_TOKEN``), or a revision that does not exist;
- weights only as pickles (``.bin``/``.pt``: loading them can run code) — safetensors only;
- a model that ships Python code or an ``auto_map`` (``trust_remote_code`` is never turned on);
- no network (the studio works offline: download the folder elsewhere and have an operator register it
  as a server path).

Files go to a staging folder next to the target and are renamed into place when complete, then
inspected by ``training_app.engine.inspection`` like any other folder. ``HF_ENDPOINT`` points at a mirror.

A failed download can be retried (``retry_download``) or the model deleted with its partial files
(``delete_model``), by those who may add models; deletion is refused while jobs or model versions made
from it exist.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from accounts import audit
from accounts.permissions import TeamAccess
from accounts.roles import Perm
from training_app import services
from training_app.models import BaseModel

log = logging.getLogger(__name__)

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
# What a model folder needs; nothing executable, no pickles.
ALLOWED_FILES = ["*.safetensors", "*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "LICENSE*", "README*"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class HubRefusal(Exception):
    """The repository cannot be used; the message says why and what to do."""


def request_download(*, access: TeamAccess, repo_id: str, revision: str = "", ip: str | None = None) -> BaseModel:
    """Register ``repo_id`` as the team's base model and start downloading it."""
    access.require(Perm.LAUNCH_TRAINING)
    repo_id, revision = repo_id.strip(), revision.strip()
    if not REPO_ID.match(repo_id):
        raise ValidationError({"repo_id": "use the Hub's owner/name form, e.g. meta-llama/Llama-3.2-1B"})
    if len(revision) > 100:
        raise ValidationError({"revision": "use a branch, tag or commit of at most 100 characters"})
    if BaseModel.objects.filter(team=access.team, name=repo_id).exists():
        raise ValidationError({"repo_id": f"{repo_id} is already one of this team's base models"})
    target = services.models_dir() / "teams" / str(access.team.pk) / repo_id.replace("/", "--")
    with transaction.atomic():
        model = BaseModel.objects.create(
            team=access.team,
            name=repo_id,
            source=BaseModel.Source.HUB,
            path=str(target),
            repo_id=repo_id,
            revision=revision,
            status=BaseModel.Status.DOWNLOADING,
            progress=0.0,
        )
        audit.record("model.download_requested", access=access, target=model, ip=ip, repo_id=repo_id,
                     revision=revision or "main")  # fmt: skip
        transaction.on_commit(lambda: _enqueue(model.pk))
    return model


def retry_download(*, access: TeamAccess, model: BaseModel, ip: str | None = None) -> BaseModel:
    """Start a failed download of one of the team's Hub models again, from the first file."""
    access.require(Perm.LAUNCH_TRAINING)
    _require_team_hub_model(access, model)
    with transaction.atomic():
        restarted = BaseModel.objects.filter(pk=model.pk, team=access.team, status=BaseModel.Status.FAILED).update(
            status=BaseModel.Status.DOWNLOADING, progress=0.0, error=""
        )
        if not restarted:
            raise ValidationError({"status": f"{model.name} is {model.get_status_display().lower()}: only a failed "
                                   "download can be retried"})  # fmt: skip
        model.refresh_from_db()
        audit.record("model.download_retried", access=access, target=model, ip=ip, repo_id=model.repo_id,
                     revision=model.revision or "main")  # fmt: skip
        transaction.on_commit(lambda: _enqueue(model.pk))
    return model


def dependents(model: BaseModel) -> tuple[int, int]:
    """How many of its team's training jobs and model versions were made from ``model``."""
    from training_app.models import ModelVersion, TrainingJob

    if model.team is None:
        return 0, 0
    jobs = TrainingJob.objects.for_team(model.team).filter(base_model=model).count()
    versions = ModelVersion.objects.for_team(model.team).filter(base_model=model).count()
    return jobs, versions


def delete_model(*, access: TeamAccess, model: BaseModel, ip: str | None = None) -> None:
    """Remove one of the team's Hub models and its files (complete or partial).

    Refused (``ValidationError``) while it downloads, and while jobs or model versions made from it
    exist: an adapter is useless without its base model, and a job would lose what it trained.
    """
    access.require(Perm.LAUNCH_TRAINING)
    _require_team_hub_model(access, model)
    with transaction.atomic():
        locked = BaseModel.objects.select_for_update().filter(pk=model.pk, team=access.team).first()
        if locked is None:
            return
        if locked.status == BaseModel.Status.DOWNLOADING:
            raise ValidationError({"status": f"{locked.name} is still downloading: wait until it is ready or "
                                   "has failed, then delete it"})  # fmt: skip
        jobs, versions = dependents(locked)
        if jobs or versions:
            made = " and ".join(
                f"{count} {noun}{'s' if count != 1 else ''}"
                for count, noun in ((jobs, "training job"), (versions, "model version"))
                if count
            )
            raise ValidationError(
                {"base_model": f"{made} of this team {'were' if jobs + versions > 1 else 'was'} made from "
                 f"{locked.name}: delete {'them' if jobs + versions > 1 else 'it'} first, then the base model"}
            )  # fmt: skip
        folders = _model_folders(access, locked)
        audit.record("model.deleted", access=access, target=locked, ip=ip, name=locked.name,
                     repo_id=locked.repo_id, status=locked.status)  # fmt: skip
        locked.delete()
        transaction.on_commit(lambda: _remove(folders))


def _require_team_hub_model(access: TeamAccess, model: BaseModel) -> None:
    if model.team_id != access.team.pk:
        raise PermissionDenied("This base model is provided to every team by the studio's operators; ask them.")
    if model.source != BaseModel.Source.HUB:
        raise PermissionDenied("An operator registered this model folder; ask them to remove it (admin).")


def _remove(folders: list[Path]) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def _model_folders(access: TeamAccess, model: BaseModel) -> list[Path]:
    """The model's folder and its download's staging folder, when they are where the studio puts them."""
    teams_dir = (services.models_dir() / "teams" / str(access.team.pk)).resolve()
    target = Path(model.path).resolve()
    if not target.is_relative_to(teams_dir) or target == teams_dir:
        return []
    return [target, target.with_name(f".{target.name}.partial")]


def _enqueue(model_id: int) -> None:
    from training_app.tasks import download_base_model

    download_base_model.delay(model_id)


def download(model_id: int) -> None:
    """The task body: check the repository, fetch its safe files with progress, register the folder."""
    model = BaseModel.objects.filter(pk=model_id, status=BaseModel.Status.DOWNLOADING).first()
    if model is None:
        return
    target = Path(model.path)
    staging = target.with_name(f".{target.name}.partial")
    try:
        files = _check_repository(model.repo_id, model.revision or None)
        shutil.rmtree(staging, ignore_errors=True)
        _fetch(model, files, staging)  # checks config.json for auto_map before any weights arrive
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        services.register_model_folder(path=target, name=model.name, source=BaseModel.Source.HUB, team=model.team)
    except (HubRefusal, ValidationError) as refusal:
        message = " ".join(refusal.messages) if isinstance(refusal, ValidationError) else str(refusal)
        _fail(model, message)
    except Exception as error:  # anything else: say so plainly, keep the detail in the log
        log.exception("downloading %s failed", model.repo_id)
        _fail(model, f"The download stopped: {type(error).__name__}: {str(error)[:300]}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fail(model: BaseModel, message: str) -> None:
    BaseModel.objects.filter(pk=model.pk).update(status=BaseModel.Status.FAILED, error=message)
    audit.record("model.download_failed", team=model.team, target=model, repo_id=model.repo_id, reason=message)


def _api() -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=settings.HF_ENDPOINT or None, token=settings.HF_TOKEN or None)


def _check_repository(repo_id: str, revision: str | None) -> dict[str, int]:
    """The files to fetch (name → size); raises ``HubRefusal`` with a plain reason."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = _api().model_info(repo_id, revision=revision, files_metadata=True)
    except GatedRepoError as error:
        raise HubRefusal(
            f"{repo_id} is gated: accept its license on the Hub with your account, then give the workers a "
            "token that may read it (HF_TOKEN)."
        ) from error
    except RevisionNotFoundError as error:
        raise HubRefusal(f"{repo_id} has no revision {revision!r}; use a branch, tag or commit it has.") from error
    except RepositoryNotFoundError as error:
        raise HubRefusal(
            f"{repo_id} does not exist on the Hub, or it is private (then set HF_TOKEN for the workers)."
        ) from error
    except HfHubHTTPError as error:
        raise HubRefusal(f"The Hub refused the request for {repo_id}: {str(error)[:200]}") from error
    except Exception as error:
        if not _is_network_error(error):
            raise
        raise HubRefusal(
            f"The studio could not reach the Hub ({settings.HF_ENDPOINT or 'huggingface.co'}). Without internet, "
            "download the model folder on a connected machine and ask an operator to register it as a server path."
        ) from error
    files = {sibling.rfilename: int(sibling.size or 0) for sibling in info.siblings or []}
    code = sorted(name for name in files if name.endswith(".py"))
    if code:
        raise HubRefusal(
            f"{repo_id} ships its own Python code ({', '.join(code[:3])}); Atelier never runs a model's own code "
            "(trust_remote_code), so it cannot be used. Pick a model that transformers supports natively."
        )
    if not any(name.endswith(".safetensors") for name in files):
        pickles = [name for name in files if name.endswith(PICKLE_SUFFIXES)]
        found = f" (it has {', '.join(pickles[:3])})" if pickles else ""
        raise HubRefusal(
            f"{repo_id} has no safetensors weights{found}. Pickled weights can run code when loaded, so Atelier "
            "loads safetensors only: pick a revision or a copy of the model converted to safetensors."
        )
    if "config.json" not in files:
        raise HubRefusal(f"{repo_id} has no config.json: it is not a transformers model folder.")
    from fnmatch import fnmatch

    return {name: size for name, size in files.items() if any(fnmatch(name, p) for p in ALLOWED_FILES)}


def _is_network_error(error: BaseException) -> bool:
    """Connection refused, DNS, timeouts: OSErrors, or the HTTP client's transport errors (httpx's, which
    huggingface_hub may vendor under another module name, hence the check by class name)."""
    return isinstance(error, OSError) or any(cls.__name__ == "TransportError" for cls in type(error).__mro__)


def _fetch(model: BaseModel, files: dict[str, int], staging: Path) -> None:
    """Download ``files`` into ``staging``, recording the share of bytes done on the model row."""
    from huggingface_hub import hf_hub_download

    total = max(sum(files.values()), 1)
    done = 0
    last_report = 0.0
    staging.mkdir(parents=True, exist_ok=True)
    # Small files first: a refusal found in config.json costs no weight download.
    for name in sorted(files, key=lambda n: (files[n], n)):
        hf_hub_download(
            model.repo_id,
            name,
            revision=model.revision or None,
            local_dir=staging,
            endpoint=settings.HF_ENDPOINT or None,
            token=settings.HF_TOKEN or None,
        )
        if name == "config.json":
            _check_config(staging)
        done += files[name]
        if time.monotonic() - last_report > 1 or done == total:
            last_report = time.monotonic()
            BaseModel.objects.filter(pk=model.pk).update(progress=min(done / total, 0.999))
    shutil.rmtree(staging / ".cache", ignore_errors=True)


def _check_config(folder: Path) -> None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise HubRefusal("the model's config.json cannot be read") from error
    if "auto_map" in config:
        raise HubRefusal(
            "this model's config asks for its own Python code (auto_map); Atelier never runs a model's own code "
            "(trust_remote_code). Pick a model that transformers supports natively."
        )
