"""Eval suites: a dataset version of prompts with references, graders with pass thresholds, and their runs.

A suite names a ready chat or instruction dataset version (the prompt is each row's conversation up to its last
assistant turn, the reference that turn) and a list of graders (``training_app.engine.graders`` specs), each with
the share of rows a model must pass (``pass_rate``). A run answers every row with each chosen model (base models,
model versions, deployments: ``serving_app.catalog`` keys), grades the answers and keeps one ``EvalResult`` per
row and model.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from accounts.tenancy import TeamOwnedModel


class EvalSuite(TeamOwnedModel):
    """A team's test: prompts with references (a dataset version) and how answers are judged."""

    name = models.CharField(max_length=120)
    description = models.TextField(blank=True, max_length=2000)
    # Deleting the dataset deletes the suites built on it (and their runs): nothing derived from it stays.
    dataset_version = models.ForeignKey("datasets_app.DatasetVersion", on_delete=models.CASCADE, related_name="+")
    # [{"grader": <graders.build spec>, "pass_rate": 0..1}, ...]
    graders = models.JSONField(default=list)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["name"]
        constraints: ClassVar = [models.UniqueConstraint("team", Lower("name"), name="one_eval_suite_name_per_team")]

    def __str__(self) -> str:
        return self.name


class EvalRun(TeamOwnedModel):
    """One run of a suite on a set of models: its progress while it runs, its summary once finished."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Finished"
        FAILED = "failed", "Failed"

    suite = models.ForeignKey(EvalSuite, on_delete=models.CASCADE, related_name="runs")
    # serving_app.catalog keys ("base:1", "version:4", "deployment:2"), in the order chosen; labels as resolved.
    model_keys = models.JSONField(default=list)
    model_labels = models.JSONField(default=dict)
    # The suite's graders when the run started (a later edit of the suite does not change a finished run).
    graders = models.JSONField(default=list)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    rows_total = models.PositiveIntegerField(default=0)  # rows times models
    rows_done = models.PositiveIntegerField(default=0)
    # {model_key: {"rows", "errors", "passed_all", "pass_rate", "passed", "graders": [{...}]}}, see services.summarize
    summary = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.suite.name} run {self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def progress(self) -> float:
        return self.rows_done / self.rows_total if self.rows_total else 0.0

    def label_of(self, key: str) -> str:
        return str(self.model_labels.get(key, key))


class EvalResult(TeamOwnedModel):
    """One model's answer to one row of a run, with each grader's verdict (or the error that stopped it)."""

    run = models.ForeignKey(EvalRun, on_delete=models.CASCADE, related_name="results")
    model_key = models.CharField(max_length=40)
    row_number = models.PositiveIntegerField()  # from 1, as the dataset pages number rows
    answer = models.TextField(blank=True)
    tool_calls = models.JSONField(default=list, blank=True)
    # [{"type", "score", "passed", "reason", "details"}, ...] in the order of the run's graders
    verdicts = models.JSONField(default=list, blank=True)
    passed = models.BooleanField(default=False)  # every grader passed
    error = models.TextField(blank=True)
    latency_s = models.FloatField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["row_number", "pk"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["run", "model_key", "row_number"], name="one_result_per_run_model_row")
        ]

    def __str__(self) -> str:
        return f"{self.model_key} row {self.row_number}"

    def verdict_list(self) -> list[dict[str, Any]]:
        return list(self.verdicts or [])
