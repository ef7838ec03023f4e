"""Datasets and their immutable, content-hashed versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone
from guardian.models import UserObjectPermissionBase

from accounts.tenancy import TeamOwnedModel
from datasets_app.engine.rows import Kind


class Dataset(TeamOwnedModel):
    """A named collection of versions. Restricted datasets are visible only to admins and named members."""

    name = models.CharField(max_length=120)
    description = models.TextField(blank=True, max_length=2000)
    restricted = models.BooleanField(
        default=False, help_text="Only owners, admins and the members it is shared with can see it."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["-created_at"]
        permissions: ClassVar = [("use_dataset", "Can train models on the dataset")]

    def __str__(self) -> str:
        return self.name

    def storage_dir(self) -> Path:
        return Path(settings.MEDIA_ROOT) / "teams" / str(self.team_id) / "datasets" / str(self.pk)


class DatasetUserObjectPermission(UserObjectPermissionBase):
    """guardian's direct foreign-key permission table for datasets."""

    content_object = models.ForeignKey(Dataset, on_delete=models.CASCADE)


class VersionStatus(models.TextChoices):
    VALIDATING = "validating", "Validating"
    PROCESSING = "processing", "Curating"
    NEEDS_MAPPING = "needs_mapping", "Needs column mapping"
    READY = "ready", "Ready"
    INVALID = "invalid", "Has problems"
    FAILED = "failed", "Failed"


class DatasetVersion(TeamOwnedModel):
    """One immutable state of a dataset: its normalized rows, how they were made, and what is in them.

    A version is written once by the validation task (rows file, hash, report, statistics) and never
    changes afterwards; curation and "keep only valid rows" make a new version with this one as parent.
    """

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    parent = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="children")
    # How the version was made: {"step": "upload", "filename": …} or a curation step's recipe.
    recipe = models.JSONField(default=dict)
    status = models.CharField(max_length=16, choices=VersionStatus.choices, default=VersionStatus.VALIDATING)
    kind = models.CharField(max_length=12, choices=[(k.value, k.value.title()) for k in Kind], blank=True)
    mapping = models.JSONField(default=dict, blank=True)
    source_name = models.CharField(max_length=255, blank=True)
    source_size = models.BigIntegerField(default=0)
    row_count = models.PositiveIntegerField(null=True, blank=True)
    content_hash = models.CharField(max_length=64, blank=True)
    rows_size = models.BigIntegerField(default=0)
    report = models.JSONField(default=dict, blank=True)
    stats = models.JSONField(default=dict, blank=True)
    progress = models.FloatField(default=0.0)
    # Set by the task that took this version to validate or curate it (services.claim_version) and renewed as
    # it reports progress: a second delivery of the task finds it fresh and leaves the version (and its rows
    # file) alone.
    claimed_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["-number"]
        constraints: ClassVar = [models.UniqueConstraint(fields=["dataset", "number"], name="one_number_per_version")]

    def __str__(self) -> str:
        return f"{self.dataset.name} v{self.number}"

    def folder(self) -> Path:
        return self.dataset.storage_dir() / f"v{self.number}"

    @property
    def source_path(self) -> Path:
        return self.folder() / "source"

    @property
    def rows_path(self) -> Path:
        return self.folder() / "rows.jsonl"

    @property
    def validation_path(self) -> Path:
        """Held-out rows of a version made by a train/validation split (absent otherwise)."""
        return self.folder() / "validation.jsonl"

    @property
    def is_ready(self) -> bool:
        return self.status == VersionStatus.READY

    @property
    def short_hash(self) -> str:
        return self.content_hash[:12]

    def storage_bytes(self) -> int:
        return self.source_size + self.rows_size

    def summary(self) -> dict[str, Any]:
        return {"number": self.number, "status": self.status, "kind": self.kind, "rows": self.row_count}
