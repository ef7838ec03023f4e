"""Serving: deployments behind /v1, saved comparisons, prompt presets, arena battles, playground votes, usage and
prompt logs.

Models are referred to by a *model key* across the playground and the arena: ``base:<pk>`` for a base
model, ``version:<pk>`` for a model version (``serving_app.catalog`` resolves a key for one person,
checking that they may use it). Labels are stored next to keys so history still reads after a model
is deleted.
"""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone
from guardian.models import UserObjectPermissionBase

from accounts.models import TeamAPIKey
from accounts.tenancy import TeamOwnedModel
from training_app.models import ModelVersion

DEPLOYMENT_NAME_VALIDATOR = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9._-]{0,58}[a-z0-9])?$",
    "Use 1–60 lowercase letters, digits, dots, hyphens or underscores, starting and ending with a letter or digit.",
)


class Deployment(TeamOwnedModel):
    """A model version published under a name: what ``model`` means in a /v1 request with a team key."""

    name = models.CharField(
        max_length=60,
        validators=[DEPLOYMENT_NAME_VALIDATOR],
        help_text="The model name clients send (e.g. support-bot); unique in the team.",
    )
    model_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="deployments")
    description = models.TextField(blank=True, max_length=2000)
    # The team API keys that may call this deployment (a key reaches only the deployments listed here).
    api_keys = models.ManyToManyField(TeamAPIKey, related_name="deployments", blank=True)
    # A second version answering ``canary_share`` % of /v1 requests while it proves itself (none: empty).
    canary_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="canary_deployments"
    )
    canary_share = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(99)])
    # What a version must pass before it is published here, as ``evals_app.gates`` writes and reads it:
    # {"suites": [{"suite": <EvalSuite pk>, "name": ..., "min_pass_rate": 0..1}], "forgetting": bool,
    #  "max_bias_gap": float | None}. Empty: no gate.
    gate = models.JSONField(default=dict, blank=True)
    # Opt-in: keep each /v1 exchange (``StoredCompletion``) for ``completion_retention_days``, to feed
    # distillation and fine-tuning; personal data and secrets are redacted before anything is kept.
    store_completions = models.BooleanField(default=False)
    completion_retention_days = models.PositiveSmallIntegerField(
        default=30, validators=[MinValueValidator(1), MaxValueValidator(365)]
    )
    # Maintenance (``evals_app.maintenance``): when the dataset the current version was trained on gets a new
    # ready version, retrain on it with the same settings, run the gate and propose the promotion.
    retrain_on_new_data = models.BooleanField(default=False)
    # The serving plan its cost is estimated from (``serving_app.costs``): the weights' precision, the longest
    # request in tokens (empty: the base model's context length) and the requests answered at once.
    serving_precision = models.CharField(max_length=4, default="bf16")
    serving_context_length = models.PositiveIntegerField(null=True, blank=True)
    expected_concurrency = models.PositiveSmallIntegerField(
        default=4, validators=[MinValueValidator(1), MaxValueValidator(1024)]
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["name"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["team", "name"], name="one_deployment_name_per_team"),
            models.CheckConstraint(
                condition=models.Q(canary_version__isnull=True, canary_share=0)
                | models.Q(canary_version__isnull=False, canary_share__gte=1, canary_share__lte=99),
                name="canary_has_a_version_and_a_share",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Release(TeamOwnedModel):
    """One change of what a deployment serves: its promotion history, newest first.

    ``model_version`` is what the change put in place (the version all traffic goes to, or the canary), and
    ``previous_version`` what served before it. The gate's report at the time is kept as it was, with the
    override and its reason when someone published a version that failed it. Versions are kept by label too:
    a deleted version leaves its history readable (and no longer a rollback target).
    """

    class Action(models.TextChoices):
        CREATED = "created", "Deployed"
        PROMOTED = "promoted", "Promoted"
        ROLLED_BACK = "rolled_back", "Rolled back"
        CANARY_STARTED = "canary_started", "Canary started"
        CANARY_STOPPED = "canary_stopped", "Canary stopped"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="releases")
    action = models.CharField(max_length=16, choices=Action.choices)
    model_version = models.ForeignKey(ModelVersion, on_delete=models.SET_NULL, null=True, related_name="+")
    version_label = models.CharField(max_length=200)
    previous_version = models.ForeignKey(
        ModelVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    previous_label = models.CharField(max_length=200, blank=True)
    canary_share = models.PositiveSmallIntegerField(default=0)
    # {"passed": bool, "checks": [{"name", "passed", "detail"}]} when a gate was checked; {} otherwise.
    gate = models.JSONField(default=dict, blank=True)
    overridden = models.BooleanField(default=False)
    reason = models.TextField(blank=True, max_length=1000)
    # The deployment's guard policy revision in force when the change was made (None: no policy).
    guard_revision = models.PositiveIntegerField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"{self.get_action_display()} {self.version_label} on {self.deployment_id}"


class StoredCompletion(TeamOwnedModel):
    """One /v1 exchange of a deployment that stores completions: what the client sent and what it got back.

    Text is kept redacted (``datasets_app.engine.pii``: emails, phones, cards, IBANs, IP addresses, secrets become
    typed placeholders); ``redactions`` counts what was replaced, per kind. Deleted once older than the
    deployment's ``completion_retention_days`` (hourly, by beat), and with the deployment.
    """

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="stored_completions")
    model_version = models.ForeignKey(ModelVersion, on_delete=models.SET_NULL, null=True, related_name="+")
    version_label = models.CharField(max_length=200)
    api_key = models.ForeignKey(TeamAPIKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    # The conversation sent: [{"role", "content"}, ...] (a text completion's prompt as one user message).
    messages = models.JSONField(default=list)
    answer = models.TextField(blank=True)
    tool_calls = models.JSONField(default=list, blank=True)
    finish_reason = models.CharField(max_length=20, blank=True)
    redactions = models.JSONField(default=dict, blank=True)
    exported_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["-created_at", "-pk"]
        indexes: ClassVar = [models.Index(fields=["team", "deployment", "created_at"])]

    def __str__(self) -> str:
        return f"{self.deployment_id} completion {self.created_at:%Y-%m-%d %H:%M}"


class PromptPreset(TeamOwnedModel):
    """A saved system prompt with sampling settings: customizing a model's behaviour without training."""

    name = models.CharField(max_length=80)
    system_prompt = models.TextField(blank=True, max_length=8000)
    temperature = models.FloatField(default=0.7)
    top_p = models.FloatField(default=1.0)
    max_tokens = models.PositiveIntegerField(default=256)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["name"]
        constraints: ClassVar = [models.UniqueConstraint(fields=["team", "name"], name="one_preset_name_per_team")]

    def __str__(self) -> str:
        return self.name


class Comparison(TeamOwnedModel):
    """A saved side-by-side session: the models, their settings and every turn of the conversation.

    Private to its author (and the team's admins) until shared with named members through guardian,
    or opened to the whole team (``restricted=False``).
    """

    title = models.CharField(max_length=120)
    # [{"key": "version:7", "label": "support-bot v3", "settings": {"system_prompt": ..., "temperature": ...}}]
    columns = models.JSONField(default=list)
    # [{"prompt": "...", "answers": [{"text": ..., "ttft_s": ..., "tokens_per_second": ..., "tokens": ...}]}]
    turns = models.JSONField(default=list)
    restricted = models.BooleanField(
        default=True, help_text="Only you, the team's admins and the members you share it with can open it."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["-updated_at"]

    def __str__(self) -> str:
        return self.title


class ComparisonUserObjectPermission(UserObjectPermissionBase):
    """guardian's direct foreign-key permission table for saved comparisons."""

    content_object = models.ForeignKey(Comparison, on_delete=models.CASCADE)


class ArenaBattle(TeamOwnedModel):
    """One blind round: two models drawn from a chosen set answer the same conversation; one vote.

    Position is random (``model_a`` is whichever was drawn first); the names are shown only once
    ``vote`` is set, and a vote is recorded only while ``vote`` is empty (one vote per battle).
    """

    class Vote(models.TextChoices):
        A = "a", "A is better"
        B = "b", "B is better"
        TIE = "tie", "Tie"
        BOTH_BAD = "both_bad", "Both are bad"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    candidates = models.JSONField(default=list, help_text="The model keys the pair was drawn from.")
    model_a = models.CharField(max_length=40)
    model_a_label = models.CharField(max_length=200)
    model_b = models.CharField(max_length=40)
    model_b_label = models.CharField(max_length=200)
    # Each side's whole conversation: [{"role": "system"|"user"|"assistant", "content": "..."}].
    conversation_a = models.JSONField(default=list)
    conversation_b = models.JSONField(default=list)
    vote = models.CharField(max_length=10, choices=Vote.choices, blank=True)
    voted_at = models.DateTimeField(null=True, blank=True)
    exported_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["-created_at"]
        indexes: ClassVar = [models.Index(fields=["team", "voted_at"])]

    def __str__(self) -> str:
        return f"Battle {self.pk}: {self.model_a_label} vs {self.model_b_label}"


class PlaygroundVote(TeamOwnedModel):
    """A thumbs up or down on one playground answer: what the model was sent, what it answered, the verdict.

    One vote per person per answer: ``fingerprint`` hashes the model key, the conversation and the answer,
    so voting again on the same answer changes the label (until the vote is exported as feedback data).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    model = models.CharField(max_length=40, help_text="The key of the model that answered (version:<id>, base:<id>).")
    model_label = models.CharField(max_length=200)
    # The conversation up to the answer, as the model was sent it: [{"role": "system"|"user"|"assistant", ...}].
    prompt = models.JSONField(default=list)
    answer = models.TextField()
    label = models.BooleanField(help_text="True: thumbs up (a good answer); False: thumbs down (one to avoid).")
    fingerprint = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    exported_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["-created_at"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["team", "user", "fingerprint"], name="one_vote_per_answer_per_person")
        ]
        indexes: ClassVar = [models.Index(fields=["team", "exported_at"])]

    def __str__(self) -> str:
        return f"{'Thumbs up' if self.label else 'Thumbs down'} on {self.model_label}"


class UsageRecord(TeamOwnedModel):
    """One generation request, metered: by the /v1 API (per key and deployment), the playground or the arena.

    Rows of rejected /v1 requests (rate limit) are kept too: they are how the per-key limit is counted.
    """

    class Source(models.TextChoices):
        API = "api", "API"
        PLAYGROUND = "playground", "Playground"
        ARENA = "arena", "Arena"

    class Status(models.TextChoices):
        STARTED = "started", "Started"
        OK = "ok", "Completed"
        REJECTED = "rejected", "Rate limited"
        FAILED = "failed", "Failed"

    created_at = models.DateTimeField(default=timezone.now)
    source = models.CharField(max_length=12, choices=Source.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.STARTED)
    deployment = models.ForeignKey(Deployment, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # The version that answered a /v1 request (a deployment with a canary routes to one of two).
    model_version = models.ForeignKey(ModelVersion, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    api_key = models.ForeignKey(TeamAPIKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    model_label = models.CharField(max_length=200)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)

    class Meta:
        ordering: ClassVar = ["-created_at"]
        indexes: ClassVar = [
            models.Index(fields=["team", "created_at"]),
            models.Index(fields=["api_key", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.source} {self.model_label} {self.prompt_tokens}+{self.completion_tokens}"


class PromptLog(TeamOwnedModel):
    """A playground or arena exchange kept for the team's retention period (only when the team enables it)."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    source = models.CharField(max_length=12, choices=UsageRecord.Source.choices)
    model_label = models.CharField(max_length=200)
    messages = models.JSONField(default=list)
    answer = models.TextField()

    class Meta:
        ordering: ClassVar = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.source} {self.model_label} {self.created_at:%Y-%m-%d %H:%M}"


DEFAULT_GUARD_PROMPT = """You are a safety classifier. Decide whether the text below falls into one of these unsafe \
categories:
S1: violence or weapons
S2: illegal activity
S3: self-harm
S4: hate or harassment

Text:
{content}

Answer "safe", or "unsafe" and the category on the next line."""


class GuardPolicy(TeamOwnedModel):
    """A deployment's guardrails (``serving_app.guard_filter`` applies them to every /v1 request and playground
    column on it): personal data redacted, blocked topics and the guard model's "unsafe" refused, answers capped.

    Each change raises ``revision`` and keeps the policy as it was in a ``GuardPolicyRevision``; releases record
    the revision in force, so a deployment's history says which policy served each version.
    """

    class Checks(models.TextChoices):
        INPUT = "input", "Prompts"
        OUTPUT = "output", "Answers"
        BOTH = "both", "Prompts and answers"

    deployment = models.OneToOneField(Deployment, on_delete=models.CASCADE, related_name="guard_policy")
    enabled = models.BooleanField(default=True)
    redact_input_pii = models.BooleanField(
        default=True, help_text="Replace e-mails, phone numbers, cards, IBANs, IPs and secrets in prompts by [EMAIL]…"
    )
    redact_output_pii = models.BooleanField(default=True, help_text="The same in answers, before they reach anyone.")
    # [{"name": "weapons", "terms": ["rifle", …], "patterns": ["how to (make|build) a bomb", …]}]
    blocked_topics = models.JSONField(default=list, blank=True)
    # A team model used as a classifier (a serving_app.catalog model key: ``base:<pk>`` or ``version:<pk>``).
    guard_model_key = models.CharField(max_length=40, blank=True)
    guard_model_label = models.CharField(max_length=200, blank=True)
    guard_prompt = models.TextField(default=DEFAULT_GUARD_PROMPT, max_length=8000)
    guard_checks = models.CharField(max_length=6, choices=Checks.choices, default=Checks.BOTH)
    max_answer_chars = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(200_000)]
    )
    refusal_message = models.CharField(max_length=1000, default="I can't help with that request.")
    fail_closed = models.BooleanField(
        default=True, help_text="Refuse when a check cannot run (the guard model is down, a pattern runs too long)."
    )
    revision = models.PositiveIntegerField(default=1)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    updated_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"Guard policy r{self.revision} of {self.deployment}"


class GuardPolicyRevision(TeamOwnedModel):
    """A guard policy as it was at one revision (``GuardPolicy.document()``), kept when it changes."""

    policy = models.ForeignKey(GuardPolicy, on_delete=models.CASCADE, related_name="revisions")
    revision = models.PositiveIntegerField()
    document = models.JSONField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["-revision"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["policy", "revision"], name="one_guard_policy_revision_per_number")
        ]

    def __str__(self) -> str:
        return f"r{self.revision} of {self.policy_id}"
