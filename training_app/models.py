"""Base models, training jobs (with their metrics) and the trained model versions of the team registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from guardian.models import UserObjectPermissionBase

from accounts.models import Team
from accounts.tenancy import TeamOwnedModel


class BaseModelQuerySet(models.QuerySet["BaseModel"]):
    def available_to(self, team: Team) -> BaseModelQuerySet:
        """The team's own base models plus the ones an operator made available to every team."""
        return self.filter(Q(team=team) | Q(team__isnull=True))

    def ready(self) -> BaseModelQuerySet:
        """Models whose files are all there (not downloading, not failed)."""
        return self.filter(status=BaseModel.Status.READY)


class BaseModel(models.Model):
    """A model to fine-tune from: the studio's starter model, an operator's server path, or a team's own.

    ``team`` is empty for models an operator provides to every team (the starter model included);
    those are read-only for teams. Weights are always safetensors in a local folder (``path``).
    """

    class Source(models.TextChoices):
        STARTER = "starter", "Created by the studio"
        SERVER_PATH = "server_path", "Server path (registered by an operator)"
        HUB = "hub", "Hugging Face Hub"

    class Status(models.TextChoices):
        READY = "ready", "Ready"
        DOWNLOADING = "downloading", "Downloading"
        FAILED = "failed", "Failed"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    name = models.CharField(max_length=120)
    source = models.CharField(max_length=16, choices=Source.choices)
    path = models.CharField(max_length=500, help_text="Local folder with config.json, tokenizer and safetensors.")
    architecture = models.CharField(max_length=80, blank=True)
    parameter_count = models.BigIntegerField(default=0)
    context_length = models.PositiveIntegerField(default=0)
    vocab_size = models.PositiveIntegerField(default=0)
    chat_template = models.TextField(blank=True)
    license = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    details = models.JSONField(default=dict, blank=True)
    repo_id = models.CharField(max_length=200, blank=True, help_text="Hub repository, for downloaded models.")
    revision = models.CharField(max_length=100, blank=True, help_text="Hub branch, tag or commit.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.READY)
    progress = models.FloatField(default=1.0, help_text="Share of the download done (0–1).")
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = BaseModelQuerySet.as_manager()

    class Meta:
        ordering: ClassVar = ["name"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["team", "name"], name="one_base_model_name_per_team"),
            models.UniqueConstraint(fields=["name"], condition=Q(team__isnull=True), name="one_global_base_model_name"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_global(self) -> bool:
        return self.team_id is None

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "architecture": self.architecture, "parameters": self.parameter_count}


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    CANCELLING = "cancelling", "Cancelling"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.STARTING, JobStatus.RUNNING, JobStatus.CANCELLING)
FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class TrainingJob(TeamOwnedModel):
    """One fine-tune: an immutable run config, what it trains on, and where it stands.

    ``config`` is what the person chose (the run settings, ``config_version``-stamped) and never
    changes after creation; the worker derives the trainer's ``run.json`` from it, the base model's
    folder and the dataset version's rows. The base model and dataset version are remembered by name and
    hash as well (``lineage``), so a job still tells what it trained on after they are deleted.

    Who runs it: a worker claims the row by setting ``lease_owner``/``lease_expires_at`` in one
    conditional UPDATE (a second delivery of the same task finds the lease taken and does nothing), and
    renews the lease every heartbeat. ``dispatched_at`` empty means the task is still to be sent (an
    outbox: the beat reaper sends it if the web process died between commit and enqueue).
    """

    name = models.CharField(max_length=120)
    base_model = models.ForeignKey(BaseModel, on_delete=models.SET_NULL, null=True, related_name="+")
    dataset_version = models.ForeignKey(
        "datasets_app.DatasetVersion", on_delete=models.SET_NULL, null=True, related_name="training_jobs"
    )
    pool = models.CharField(max_length=40)
    config = models.JSONField(help_text="The run settings as chosen (immutable).")
    config_version = models.PositiveIntegerField(default=1)
    lineage = models.JSONField(default=dict, help_text="Base model and dataset version facts at launch.")
    estimate = models.JSONField(default=dict, blank=True)
    cloned_from = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    restricted = models.BooleanField(
        default=False,
        help_text="Trained on a restricted dataset: only admins, its launcher and those who may see the data see it.",
    )

    status = models.CharField(max_length=12, choices=JobStatus.choices, default=JobStatus.QUEUED)
    phase = models.CharField(max_length=20, blank=True, help_text="The trainer's own phase (loading, training…).")
    message = models.CharField(max_length=500, blank=True)
    step = models.PositiveIntegerField(default=0)
    max_steps = models.PositiveIntegerField(default=0)
    eta_seconds = models.FloatField(null=True, blank=True)
    failure = models.JSONField(default=dict, blank=True)
    result = models.JSONField(default=dict, blank=True)
    log_tail = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    dispatched_at = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=200, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_by_key = models.ForeignKey(
        "accounts.TeamAPIKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+",
        help_text="The team API key that launched the job, when it was launched with one.",
    )  # fmt: skip
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["-created_at"]
        indexes: ClassVar = [models.Index(fields=["status", "lease_expires_at"], name="job_lease_idx")]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def progress(self) -> float:
        """Share of the optimizer steps done (0–1)."""
        if self.status == JobStatus.SUCCEEDED:
            return 1.0
        return min(1.0, self.step / self.max_steps) if self.max_steps else 0.0

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return ((self.finished_at or timezone.now()) - self.started_at).total_seconds()

    def folder(self) -> Path:
        """Where the worker keeps this job's data, run reports, checkpoints and artifacts."""
        return Path(settings.MEDIA_ROOT) / "teams" / str(self.team_id) / "jobs" / str(self.pk)


class JobMetric(models.Model):
    """One logging step of a job (a line of the trainer's metrics.jsonl), for the live charts.

    Reached only through its job (``job.metrics``), which is team-scoped.
    """

    job = models.ForeignKey(TrainingJob, on_delete=models.CASCADE, related_name="metrics")
    seq = models.PositiveIntegerField(help_text="Line number in metrics.jsonl: ingestion is idempotent.")
    step = models.PositiveIntegerField()
    values = models.JSONField()

    class Meta:
        ordering: ClassVar = ["seq"]
        constraints: ClassVar = [models.UniqueConstraint(fields=["job", "seq"], name="one_metric_per_line")]

    def __str__(self) -> str:
        return f"{self.job_id}@{self.step}"


class ModelVersion(TeamOwnedModel):
    """A trained model in the team's registry: the artifact files, its card, and its full lineage.

    ``lineage`` records the base model (name, path, parameter count), the dataset version(s) with their
    content hashes, the run settings, hardware and library versions, so the question "what exactly is
    this model" has an answer after the job, the dataset or the base model is gone.
    """

    class Kind(models.TextChoices):
        ADAPTER = "adapter", "LoRA adapter"
        FULL = "full", "Full model"

    name = models.CharField(max_length=120)
    number = models.PositiveIntegerField()
    job = models.OneToOneField(TrainingJob, on_delete=models.SET_NULL, null=True, related_name="model_version")
    base_model = models.ForeignKey(BaseModel, on_delete=models.SET_NULL, null=True, related_name="+")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    path = models.CharField(max_length=500, help_text="Folder with the adapter or model safetensors and tokenizer.")
    merged_path = models.CharField(max_length=500, blank=True)
    restricted = models.BooleanField(
        default=False, help_text="Only owners, admins and the members it is shared with can see it."
    )
    metrics = models.JSONField(default=dict, blank=True)
    lineage = models.JSONField(default=dict)
    # The card's three prompts; a deployment refuses to publish the version until all three are written.
    intended_use = models.TextField(
        blank=True, max_length=4000, help_text="What the model is for and who should use it."
    )
    out_of_scope = models.TextField(
        blank=True, max_length=4000, help_text="Uses the model is not meant for, even if it seems to handle them."
    )
    limitations = models.TextField(
        blank=True, max_length=4000, help_text="Known limitations: where the model should not be trusted."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["-created_at"]
        permissions: ClassVar = [("use_modelversion", "Can use the model version")]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["team", "name", "number"], name="one_number_per_model_name")
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.number}"

    CARD_USE_FIELDS: ClassVar[tuple[tuple[str, str], ...]] = (
        ("intended_use", "Intended use"),
        ("out_of_scope", "Out of scope"),
        ("limitations", "Known limitations"),
    )

    @property
    def missing_card_fields(self) -> list[str]:
        """Labels of the card prompts still empty; publishing on a deployment needs none missing."""
        return [label for field, label in self.CARD_USE_FIELDS if not getattr(self, field).strip()]


class ModelVersionUserObjectPermission(UserObjectPermissionBase):
    """guardian's direct foreign-key permission table for model versions."""

    content_object = models.ForeignKey(ModelVersion, on_delete=models.CASCADE)
