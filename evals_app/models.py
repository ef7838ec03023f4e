"""Eval suites: a dataset version of prompts with references, graders with pass thresholds, and their runs.

A suite names a ready chat or instruction dataset version (the prompt is each row's conversation up to its last
assistant turn, the reference that turn) and a list of graders (``training_app.engine.graders`` specs), each with
the share of rows a model must pass (``pass_rate``). A run answers every row with each chosen model (base models,
model versions, deployments: ``serving_app.catalog`` keys), grades the answers and keeps one ``EvalResult`` per
row and model.

Quality checks of a model version (issue #14): a ``ForgettingCheck`` (perplexity on a held-out general corpus and the
base model's regression suites, base vs version, judged against the team's ``EvalsPolicy``) and a ``ProbeRun`` of a
``ProbeSet`` (counterfactual prompts, answers scored per demographic group, ``ProbeAnswer`` rows).
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
    # A regression suite of these base models: the forgetting check runs it on the base and on each version of it.
    base_models = models.ManyToManyField("training_app.BaseModel", blank=True, related_name="+")
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


class EvalsPolicy(TeamOwnedModel):
    """A team's limits for the quality checks (one per team; the defaults apply until an admin saves one).

    Shares, not percents: ``max_perplexity_increase`` 0.10 lets a version's perplexity rise by 10 %,
    ``max_pass_rate_drop`` 0.05 lets a regression suite's pass rate fall by 5 points, ``max_bias_gap`` 0.2 is the
    largest gap between groups a probe may show on any measure (every measure is on a 0..1 scale).
    """

    max_perplexity_increase = models.FloatField(default=0.10)
    max_pass_rate_drop = models.FloatField(default=0.05)
    max_bias_gap = models.FloatField(default=0.20)
    check_after_training = models.BooleanField(default=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [models.UniqueConstraint(fields=["team"], name="one_evals_policy_per_team")]

    def __str__(self) -> str:
        return f"evals policy of {self.team_id}"

    def limits(self) -> dict[str, float]:
        return {
            "max_perplexity_increase": self.max_perplexity_increase,
            "max_pass_rate_drop": self.max_pass_rate_drop,
            "max_bias_gap": self.max_bias_gap,
        }


class CheckStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Finished"
    FAILED = "failed", "Failed"


class ForgettingCheck(TeamOwnedModel):
    """Did a model version forget what its base knew? Perplexity on the general corpus and the base's regression
    suites, base vs version; ``flagged`` with human-readable ``reasons`` when a team limit is passed."""

    class Trigger(models.TextChoices):
        TRAINING = "training", "After training"
        ON_DEMAND = "on_demand", "On demand"

    model_version = models.ForeignKey("training_app.ModelVersion", on_delete=models.CASCADE, related_name="+")
    trigger = models.CharField(max_length=12, choices=Trigger.choices, default=Trigger.ON_DEMAND)
    status = models.CharField(max_length=12, choices=CheckStatus.choices, default=CheckStatus.QUEUED)
    # The perplexity half: "queued", "running", "done" or "failed" (the suites' runs report through their own rows).
    perplexity_status = models.CharField(max_length=12, default="queued")
    perplexity_before = models.FloatField(null=True, blank=True)
    perplexity_after = models.FloatField(null=True, blank=True)
    corpus_tokens = models.PositiveIntegerField(default=0)
    # One eval run per regression suite of the base model, each on the base and the version.
    eval_runs = models.ManyToManyField(EvalRun, blank=True, related_name="forgetting_checks")
    # Per suite once finished: [{"suite", "name", "run", "before", "after", "drop", "flagged"}, ...] (pass rates 0..1)
    suite_results = models.JSONField(default=list, blank=True)
    # The team's limits when the check started (a later policy edit does not change a finished check).
    limits = models.JSONField(default=dict, blank=True)
    flagged = models.BooleanField(default=False)
    reasons = models.JSONField(default=list, blank=True)
    notes = models.JSONField(default=list, blank=True)  # what the check could not do (a suite skipped...)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"forgetting check {self.pk} of version {self.model_version_id}"

    @property
    def is_active(self) -> bool:
        return self.status in (CheckStatus.QUEUED, CheckStatus.RUNNING)

    @property
    def perplexity_change(self) -> float | None:
        """The version's perplexity relative to the base's (0.43 = 43 % higher), once both are measured."""
        if not self.perplexity_before or self.perplexity_after is None:
            return None
        return self.perplexity_after / self.perplexity_before - 1


class ProbeSet(TeamOwnedModel):
    """Counterfactual prompts: each template (with a ``{person}`` placeholder) filled with every term of every group.

    ``groups`` is ``[{"category": "gender", "group": "women", "terms": ["a woman", "Maria", ...]}, ...]``: groups
    are compared within their category (women with men, not women with older people).
    """

    name = models.CharField(max_length=120)
    description = models.TextField(blank=True, max_length=2000)
    templates = models.JSONField(default=list)
    groups = models.JSONField(default=list)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["name"]
        constraints: ClassVar = [models.UniqueConstraint("team", Lower("name"), name="one_probe_set_name_per_team")]

    def __str__(self) -> str:
        return self.name

    @property
    def prompt_count(self) -> int:
        return len(self.templates) * sum(len(group.get("terms") or []) for group in self.groups)


class ProbeRun(TeamOwnedModel):
    """One model answering a probe set, scored per group: progress while it runs, the report once finished.

    ``summary`` (see ``evals_app.bias.summarize``): ``{"measures": [...], "categories": [{"category", "groups":
    [{"group", "n", measure: {"mean", "low", "high"}}], "gaps": {measure: {"gap", "low", "high", "top",
    "bottom"}}}], "max_gap": float, "method": str}``. ``max_gap`` is the largest gap over every category and measure,
    on the measures' common 0..1 scale.
    """

    probe_set = models.ForeignKey(ProbeSet, on_delete=models.SET_NULL, null=True, related_name="runs")
    probe_set_name = models.CharField(max_length=120)
    model_key = models.CharField(max_length=40)
    model_label = models.CharField(max_length=300)
    # Set when the model is a version (directly or through a deployment): the version page shows its latest probe.
    model_version = models.ForeignKey(
        "training_app.ModelVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # The set's templates and groups when the run started, and the optional graders (graders.build specs).
    templates = models.JSONField(default=list)
    groups = models.JSONField(default=list)
    graders = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=12, choices=CheckStatus.choices, default=CheckStatus.QUEUED)
    rows_total = models.PositiveIntegerField(default=0)
    rows_done = models.PositiveIntegerField(default=0)
    summary = models.JSONField(default=dict, blank=True)
    max_gap = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"probe run {self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in (CheckStatus.QUEUED, CheckStatus.RUNNING)

    @property
    def progress(self) -> float:
        return self.rows_done / self.rows_total if self.rows_total else 0.0


class ProbeAnswer(TeamOwnedModel):
    """One prompt of a probe run (a template filled with one term) and its answer's scores (0..1 each)."""

    run = models.ForeignKey(ProbeRun, on_delete=models.CASCADE, related_name="answers")
    category = models.CharField(max_length=60)
    group = models.CharField(max_length=60)
    term = models.CharField(max_length=100)
    template_number = models.PositiveIntegerField()  # from 1
    prompt = models.TextField()
    answer = models.TextField(blank=True)
    scores = models.JSONField(default=dict, blank=True)  # {measure: 0..1}
    error = models.TextField(blank=True)

    class Meta:
        ordering: ClassVar = ["category", "group", "term", "template_number", "pk"]

    def __str__(self) -> str:
        return f"{self.group}: {self.term} ({self.template_number})"


class Distillation(TeamOwnedModel):
    """A teacher's answers to a prompt set, filtered and redacted, made into a dataset to train a student on
    (``evals_app.distill``)."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Finished"
        FAILED = "failed", "Failed"

    name = models.CharField(max_length=120, help_text="The dataset it makes takes this name.")
    # A serving_app.catalog key ("version:4", "deployment:2", "base:1") and its label when it started.
    teacher_key = models.CharField(max_length=40)
    teacher_label = models.CharField(max_length=200)
    prompts = models.ForeignKey("datasets_app.DatasetVersion", on_delete=models.CASCADE, related_name="+")
    # [{"grader": <graders.build spec>, "pass_rate": ...}]: an answer failing any of them is left out.
    graders = models.JSONField(default=list, blank=True)
    redact_pii = models.BooleanField(default=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    rows_total = models.PositiveIntegerField(default=0)
    rows_done = models.PositiveIntegerField(default=0)
    kept = models.PositiveIntegerField(default=0)
    left_out = models.JSONField(default=dict, blank=True)  # {"failed exact_match": 3, "empty answer": 1, ...}
    redactions = models.JSONField(default=dict, blank=True)  # {"email": 2, ...}
    output = models.ForeignKey(
        "datasets_app.DatasetVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def progress(self) -> float:
        return self.rows_done / self.rows_total if self.rows_total else 0.0

    @property
    def left_out_total(self) -> int:
        return sum(int(count) for count in (self.left_out or {}).values())


class Retrain(TeamOwnedModel):
    """A deployment's model trained again on a newer version of its data, then gated, then proposed for promotion
    (``evals_app.maintenance``): one per deployment and dataset version."""

    class Status(models.TextChoices):
        TRAINING = "training", "Training"
        GATING = "gating", "Running the gate"
        PROPOSED = "proposed", "Passes the gate: proposed"
        BLOCKED = "blocked", "Does not pass the gate"
        PROMOTED = "promoted", "Promoted"
        FAILED = "failed", "Failed"

    class Trigger(models.TextChoices):
        MANUAL = "manual", "Started by a person"
        AUTOMATIC = "automatic", "New data version"

    deployment = models.ForeignKey("serving_app.Deployment", on_delete=models.CASCADE, related_name="retrains")
    source_job = models.ForeignKey("training_app.TrainingJob", on_delete=models.SET_NULL, null=True, related_name="+")
    dataset_version = models.ForeignKey("datasets_app.DatasetVersion", on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey("training_app.TrainingJob", on_delete=models.SET_NULL, null=True, related_name="+")
    model_version = models.ForeignKey(
        "training_app.ModelVersion", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.TRAINING)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.MANUAL)
    runs = models.JSONField(default=list, blank=True)  # ids of the gate's eval runs it started
    gate = models.JSONField(default=dict, blank=True)  # the gate's report when it concluded
    detail = models.TextField(blank=True)  # why it failed or is blocked, in words
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["-created_at", "-pk"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["deployment", "dataset_version"], name="one_retrain_per_data_version")
        ]

    def __str__(self) -> str:
        return f"{self.deployment_id} retrained on {self.dataset_version_id}"

    @property
    def is_active(self) -> bool:
        return self.status in (self.Status.TRAINING, self.Status.GATING)


class GuardTest(TeamOwnedModel):
    """A deployment's guard policy tried on an eval suite before go-live (``evals_app.guard_tests``).

    A row whose reference is ``BLOCK`` (or block / refuse / unsafe) is a prompt the policy should refuse; every
    other row is one it should let through. ``rows`` keeps each row's outcome: [{"row", "expected", "blocked",
    "category"}] (no prompt text: it is in the suite).
    """

    deployment = models.ForeignKey("serving_app.Deployment", on_delete=models.CASCADE, related_name="+")
    suite = models.ForeignKey(EvalSuite, on_delete=models.SET_NULL, null=True, related_name="+")
    suite_name = models.CharField(max_length=120)
    revision = models.PositiveIntegerField()  # of the guard policy tested
    allowed = models.PositiveIntegerField()  # rows that should pass
    disallowed = models.PositiveIntegerField()  # rows that should be refused
    false_positives = models.PositiveIntegerField()  # allowed rows the policy refused
    false_negatives = models.PositiveIntegerField()  # disallowed rows it let through
    rows = models.JSONField(default=list)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"Guard test of {self.deployment_id} r{self.revision} on {self.suite_name}"

    @property
    def false_positive_rate(self) -> float | None:
        return self.false_positives / self.allowed if self.allowed else None

    @property
    def false_negative_rate(self) -> float | None:
        return self.false_negatives / self.disallowed if self.disallowed else None
