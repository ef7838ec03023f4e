"""Votes become dataset versions: what the arena's preference export and the playground's feedback export share.

Both write their rows as a JSON Lines file through the datasets app's upload (``upload_rows``), so the new
version is stored, validated in the background and shown like any upload; both leave out votes on a
restricted model version (``restricted_model_keys``), whose answers may carry what it learned from
restricted data.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.models import Team
from accounts.permissions import TeamAccess, object_actions
from datasets_app import services as dataset_services
from datasets_app.models import DatasetVersion
from training_app.models import ModelVersion


@dataclass(frozen=True)
class ExportResult:
    """What an export made: the new dataset version and how many votes became rows or were left out."""

    version: DatasetVersion
    exported: int
    left_out: int
    restricted: int


def restricted_model_keys(team: Team, keys: Iterable[str]) -> set[str]:
    """The keys among ``keys`` that name a restricted model version of ``team``."""
    pks = {pk for pk in map(version_pk, keys) if pk is not None}
    if not pks:
        return set()
    restricted = ModelVersion.objects.for_team(team).filter(pk__in=pks, restricted=True).values_list("pk", flat=True)
    return {f"version:{pk}" for pk in restricted}


def version_pk(key: str) -> int | None:
    """The model version id in a model key (``version:<pk>``), or None for a base model's key."""
    kind, _, pk = key.partition(":")
    return int(pk) if kind == "version" and pk.isdigit() else None


def upload_rows(
    access: TeamAccess,
    rows: Sequence[Mapping[str, Any]],
    *,
    name: str,
    filename: str,
    description: str,
    ip: str | None,
) -> DatasetVersion:
    """Upload ``rows`` as a new version of the dataset ``name`` the person may change, or as a new dataset.

    Among the team's datasets of that name the newest one this person may change takes the version; when
    there is none (or only restricted ones not shared with them), a new dataset is made with ``description``.
    """
    body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    upload = SimpleUploadedFile(filename, body, content_type="application/jsonl")
    existing = dataset_services.visible_datasets(access).filter(name=name).order_by("-created_at")
    dataset = next((d for d in existing if "change" in object_actions(access, d)), None)
    if dataset is not None:
        return dataset_services.upload_new_version(access=access, dataset=dataset, upload=upload, ip=ip)
    return dataset_services.upload_dataset(access=access, name=name, upload=upload, description=description, ip=ip)
