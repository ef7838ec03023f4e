"""Which models a person may chat with, and how the inference server knows them.

A *model key* names a model across the playground and the arena: ``base:<pk>`` (a base model the team
can use), ``version:<pk>`` (a model version of the team that the person may ``use``: restricted
versions need a guardian share) or, in the playground, ``deployment:<pk>`` (a deployment of such a version,
tried as clients get it: with the studio tools granted to it). Every handler resolves the keys it is given
through ``resolve_model`` on every request, so a share revoked a second ago is already refused.

The inference server serves names from a registry file (``serving_app.engine.registry``). The studio
writes one entry per model it has asked for (``base-<pk>``, ``version-<pk>``), atomically and under a
file lock, so several web processes can add entries side by side.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404

from accounts.permissions import TeamAccess
from accounts.roles import Perm
from serving_app.models import Deployment
from training_app.models import BaseModel, ModelVersion
from training_app.services import usable_base_models, visible_versions


@dataclass(frozen=True)
class Servable:
    """One model as the inference server serves it: folders, served name and the label people see."""

    key: str
    label: str
    served_name: str
    base_path: str
    adapter_path: str | None
    context_length: int = 0
    # A deployment's pk: the playground runs its column through the studio tools granted to it.
    deployment_id: int | None = None

    def registry_entry(self) -> dict[str, str | None]:
        return {"base": self.base_path, "adapter": self.adapter_path}


def servable_base(model: BaseModel) -> Servable:
    return Servable(
        key=f"base:{model.pk}",
        label=f"{model.name} (base)",
        served_name=f"base-{model.pk}",
        base_path=model.path,
        adapter_path=None,
        context_length=model.context_length,
    )


def servable_version(version: ModelVersion) -> Servable:
    """A model version: an adapter is served on top of its base model's folder, a full model alone."""
    context = 0
    if version.kind == ModelVersion.Kind.FULL:
        base_path, adapter = version.path, None
    else:
        base = version.base_model
        base_path = base.path if base is not None else str(version.lineage.get("base_model", {}).get("path", ""))
        adapter = version.path
        context = base.context_length if base is not None else 0
    return Servable(
        key=f"version:{version.pk}",
        label=str(version),
        served_name=f"version-{version.pk}",
        base_path=base_path,
        adapter_path=adapter,
        context_length=context,
    )


def servable_deployment(deployment: Deployment) -> Servable:
    """A deployment: its model version as the inference server serves it, under the deployment's name."""
    version = servable_version(deployment.model_version)
    label = f"{deployment.name} (deployment of {version.label})"
    return replace(version, key=f"deployment:{deployment.pk}", label=label, deployment_id=deployment.pk)


def _usable_deployments(access: TeamAccess) -> QuerySet[Deployment]:
    """The team's deployments of model versions ``access`` may use (a deployment opens no restricted version)."""
    return (
        Deployment.objects.for_team(access.team)
        .filter(model_version__in=visible_versions(access, "use"))
        .select_related("model_version", "model_version__base_model")
    )


def usable_models(access: TeamAccess, *, deployments: bool = False) -> list[Servable]:
    """Every model ``access`` may chat with: the team's ready base models, then its usable model versions, then
    (with ``deployments``, the playground) the deployments of those versions.

    Empty for a role without ``playground.use`` (viewers).
    """
    if not access.can(Perm.USE_PLAYGROUND):
        return []
    bases = [servable_base(model) for model in usable_base_models(access).order_by("name")]
    versions = [
        servable_version(version)
        for version in visible_versions(access, "use").select_related("base_model").order_by("name", "-number")
    ]
    if not deployments:
        return bases + versions
    return bases + versions + [servable_deployment(item) for item in _usable_deployments(access).order_by("name")]


def resolve_model(access: TeamAccess, key: str) -> Servable:
    """The model behind ``key`` if ``access`` may use it; 403 for the role, 404 for anything not theirs."""
    access.require(Perm.USE_PLAYGROUND)
    kind, _, raw_pk = key.partition(":")
    if not raw_pk.isdigit():
        raise Http404("No such model.")
    if kind == "base":
        model = usable_base_models(access).filter(pk=int(raw_pk)).first()
        if model is None:
            raise Http404("No such model.")
        return servable_base(model)
    if kind == "version":
        version = visible_versions(access, "use").select_related("base_model").filter(pk=int(raw_pk)).first()
        if version is None:
            raise Http404("No such model.")
        return servable_version(version)
    if kind == "deployment":
        deployment = _usable_deployments(access).filter(pk=int(raw_pk)).first()
        if deployment is None:
            raise Http404("No such model.")
        return servable_deployment(deployment)
    raise Http404("No such model.")


def resolve_models(access: TeamAccess, keys: Iterable[str]) -> list[Servable]:
    """``resolve_model`` for each key, in order; raises on the first one ``access`` may not use."""
    return [resolve_model(access, key) for key in keys]


def refusal_message(error: Exception) -> str:
    """What to tell a person whose model was refused (the same words whatever the reason)."""
    if isinstance(error, PermissionDenied):
        return str(error) or "Your role does not allow using models."
    return "That model does not exist or you may not use it."


# --- the inference server's registry file ---------------------------------------------------------


# Per registry file, as this process last read or wrote it: its (mtime, size), and its entries. Every /v1 request
# publishes its model; while the file is unchanged and already holds the entries, nothing is locked or read.
_checked: dict[Path, tuple[tuple[int, int], frozenset[tuple[str, str]]]] = {}


def publish(servables: Iterable[Servable], registry_path: Path | None = None) -> None:
    """Make sure the inference server's registry has an entry for each of ``servables``.

    Entries whose base folder no longer exists are dropped whenever the file is read here (a deleted model
    version); a file this process has checked and found unchanged, holding the entries already, is not read
    again. The file is only rewritten when something changed, so the server re-reads it rarely.
    """
    path = Path(registry_path or settings.INFERENCE_REGISTRY)
    wanted = {servable.served_name: servable.registry_entry() for servable in servables}
    checked = _checked.get(path)
    if checked is not None and checked[0] == _signature(path) and _items(wanted) <= checked[1]:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = _read_registry(path)
        merged = {
            name: entry
            for name, entry in current.items()
            if Path(str(entry.get("base", ""))).is_dir()
            and (entry.get("adapter") is None or Path(str(entry["adapter"])).is_dir())
        }
        merged.update(wanted)
        if merged != current:
            with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
                json.dump(merged, handle, indent=1, sort_keys=True)
            os.replace(handle.name, path)
        _checked[path] = (_signature(path), _items(merged))


def _items(entries: dict[str, dict[str, str | None]]) -> frozenset[tuple[str, str]]:
    return frozenset((name, json.dumps(entry, sort_keys=True)) for name, entry in entries.items())


def _signature(path: Path) -> tuple[int, int]:
    """When the file last changed, and its size ((0, -1) if it is missing)."""
    try:
        status = path.stat()
    except OSError:
        return (0, -1)
    return (status.st_mtime_ns, status.st_size)


def _read_registry(path: Path) -> dict[str, dict[str, str | None]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
