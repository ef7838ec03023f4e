"""Exports of model versions (merged safetensors, GGUF, Ollama, a documents bundle) and the team's Hub token."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.tenancy import TeamOwnedModel


class ModelExport(TeamOwnedModel):
    """One export of a model version: what was asked for, the job's progress, and the file it made.

    The Celery job claims the row with a conditional UPDATE (queued → running), so a second delivery does nothing.
    ``hub_repo`` set means the files are pushed to that Hugging Face Hub repository once made.
    """

    class Format(models.TextChoices):
        SAFETENSORS = "safetensors", "Merged safetensors (.zip)"
        GGUF = "gguf", "GGUF for llama.cpp (.gguf)"
        OLLAMA = "ollama", "Ollama: GGUF + Modelfile (.zip)"
        BUNDLE = "bundle", "Documents: card, eval report, guard policy, license (.zip)"

    class Quantization(models.TextChoices):
        NONE = "", "—"
        F16 = "f16", "F16"
        BF16 = "bf16", "BF16"
        Q8_0 = "q8_0", "Q8_0"

    class Status(models.TextChoices):
        AWAITING_APPROVAL = "awaiting_approval", "Waiting for approval"
        REJECTED = "rejected", "Rejected"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Ready"
        FAILED = "failed", "Failed"

    model_version = models.ForeignKey("training_app.ModelVersion", on_delete=models.CASCADE, related_name="exports")
    format = models.CharField(max_length=12, choices=Format.choices)
    quantization = models.CharField(max_length=8, choices=Quantization.choices, blank=True, default="")
    hub_repo = models.CharField(max_length=200, blank=True, help_text="owner/name on the Hub, to push the files to.")
    hub_private = models.BooleanField(default=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    # When the team's settings ask for approval: who decided (never the one who asked), when, and why.
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.CharField(max_length=500, blank=True)
    phase = models.CharField(max_length=40, blank=True)
    progress = models.FloatField(default=0.0)
    file_path = models.CharField(max_length=500, blank=True)
    filename = models.CharField(max_length=200, blank=True)
    size_bytes = models.BigIntegerField(null=True, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    hub_url = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["-created_at", "-pk"]

    def __str__(self) -> str:
        suffix = f" {self.get_quantization_display()}" if self.quantization else ""
        return f"{self.get_format_display().split(' (')[0]}{suffix} export #{self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def is_awaiting_approval(self) -> bool:
        return self.status == self.Status.AWAITING_APPROVAL

    def folder(self) -> Path:
        """Where the job writes this export's files."""
        return Path(settings.MEDIA_ROOT) / "teams" / str(self.team_id) / "exports" / str(self.pk)


class ExportSettings(TeamOwnedModel):
    """A team's export settings: its Hugging Face Hub token, encrypted at rest (``tools_app.secrets``)."""

    hub_token = models.BinaryField(null=True, blank=True, editable=False)
    # Every export waits until a second person with ``exports.approve`` approves it (the Privileges issue's rule:
    # weights leaving the studio are a privileged action).
    require_approval = models.BooleanField(default=False)
    hub_token_set_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints: ClassVar = [models.UniqueConstraint(fields=["team"], name="one_export_settings_per_team")]

    def __str__(self) -> str:
        return f"export settings of team {self.team_id}"
