"""Accounts: teams (the tenant), memberships with roles, invitations, tokens and the audit trail."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any, ClassVar

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone
from guardian.models import UserObjectPermissionBase

from accounts.roles import ROLE_PERMISSIONS, Perm, Role
from accounts.tenancy import TeamOwnedModel

SLUG_VALIDATOR = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$",
    "Use 1–40 lowercase letters, digits or hyphens, starting and ending with a letter or digit.",
)
# Slugs that would shadow the site's own pages under /t/.
RESERVED_SLUGS = frozenset({"new", "admin", "api", "static", "play", "v1"})


class Team(models.Model):
    """The tenant: everything a team uploads, trains and serves belongs to exactly one team."""

    name = models.CharField(max_length=80)
    slug = models.SlugField(max_length=40, unique=True, validators=[SLUG_VALIDATOR])
    created_at = models.DateTimeField(default=timezone.now)
    storage_quota_bytes = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Storage for datasets; empty means the studio's default (TEAM_STORAGE_QUOTA_GB).",
    )
    gpu_hour_price = models.DecimalField(
        max_digits=8,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="What one GPU-hour costs the team (in its currency), for the cost estimate before a launch.",
    )
    currency = models.CharField(max_length=3, default="USD", help_text="ISO code shown next to prices, e.g. EUR.")
    prompt_retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text=(
            "Keep playground prompts and answers, and what tool calls returned, this many days; empty means they "
            "are never stored."
        ),
    )
    # The acceptable-use policy (Markdown) whoever creates an API key accepts; its revision goes up by one
    # each time the text changes, and every key records the revision it accepted.
    acceptable_use_policy = models.TextField(
        blank=True,
        max_length=20000,
        help_text="Markdown. Whoever creates an API key must accept it; empty means no policy to accept.",
    )
    acceptable_use_revision = models.PositiveIntegerField(default=0)
    acceptable_use_updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def has_acceptable_use_policy(self) -> bool:
        return bool(self.acceptable_use_policy.strip())

    @property
    def acceptable_use_sha256(self) -> str:
        """SHA-256 of the current policy text: what a key's acceptance is recorded against, with the revision."""
        return hashlib.sha256(self.acceptable_use_policy.encode()).hexdigest()

    @property
    def storage_quota(self) -> int:
        return self.storage_quota_bytes or settings.TEAM_STORAGE_QUOTA_BYTES


class Membership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [models.UniqueConstraint(fields=["team", "user"], name="one_membership_per_team")]
        ordering: ClassVar = ["created_at"]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} as {self.role}"

    def has_perm(self, perm: Perm) -> bool:
        return perm in ROLE_PERMISSIONS[Role(self.role)]


def hash_secret(secret: str) -> str:
    """SHA-256 of a high-entropy secret (tokens, keys, invitation links): enough, since none is guessable."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


class Invitation(TeamOwnedModel):
    """A single-use, expiring link that makes whoever accepts it a member with ``role``."""

    email = models.EmailField(blank=True, help_text="Optional: who the link is meant for (shown to the inviter).")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["-created_at"]

    def __str__(self) -> str:
        addressee = f" for {self.email}" if self.email else ""
        return f"{self.get_role_display()} invitation{addressee}"

    @staticmethod
    def generate_token() -> str:
        """The secret part of an invitation link; only its hash is stored."""
        return secrets.token_urlsafe(32)

    @property
    def status(self) -> str:
        if self.accepted_at:
            return "accepted"
        if self.revoked_at:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "pending"


class TokenBase(models.Model):
    """A bearer secret shown once: ``<kind>_<prefix>_<secret>``, stored as prefix + SHA-256 of the whole."""

    KIND: ClassVar[str] = ""

    name = models.CharField(max_length=80)
    prefix = models.CharField(max_length=12, unique=True)
    secret_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering: ClassVar = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix})"

    @property
    def display_prefix(self) -> str:
        return f"{self.KIND}_{self.prefix}…"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None

    @classmethod
    def generate(cls) -> tuple[str, str, str]:
        """A new (plaintext token, prefix, hash); the plaintext is shown once and never stored."""
        prefix = secrets.token_hex(6)
        token = f"{cls.KIND}_{prefix}_{secrets.token_urlsafe(32)}"
        return token, prefix, hash_secret(token)

    @classmethod
    def split(cls, token: str) -> str | None:
        """The prefix of a well-formed token of this kind, or None for anything else."""
        kind, _, rest = token.partition("_")
        prefix, _, secret = rest.partition("_")
        if kind != cls.KIND or len(prefix) != 12 or len(secret) < 32 or len(token) > 100:
            return None
        return prefix


class PersonalAccessToken(TokenBase):
    """A user's own API token: acts as that user, in every team they belong to."""

    KIND = "atl"
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")


class TeamAPIKey(TokenBase, TeamOwnedModel):
    """A team's service key (for CI and scripts): acts in one team with a role no higher than member.

    Owners and admins manage every key; a member sees or manages a key only when it is shared with
    them through django-guardian object permissions (``view_teamapikey`` / ``change_teamapikey``).
    """

    KIND = "atk"
    role = models.CharField(
        max_length=10,
        choices=[(Role.MEMBER, "Member"), (Role.VIEWER, "Viewer")],
        default=Role.VIEWER,
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    # Limits on the OpenAI-compatible API (/v1); the deployments a key may call are on ``Deployment``.
    requests_per_minute = models.PositiveIntegerField(
        default=60, help_text="Requests this key may make to /v1 per minute (more get 429)."
    )
    max_tokens = models.PositiveIntegerField(
        default=1024, help_text="The most new tokens one /v1 request may ask for (more get 400)."
    )
    # Who accepted the team's acceptable-use policy for this key, which text (revision and SHA-256) and when;
    # empty when the team had no policy at creation.
    acceptable_use_revision = models.PositiveIntegerField(null=True, blank=True)
    acceptable_use_sha256 = models.CharField(max_length=64, blank=True)
    acceptable_use_accepted_at = models.DateTimeField(null=True, blank=True)
    acceptable_use_accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta(TokenBase.Meta):
        pass

    @property
    def accepted_current_acceptable_use(self) -> bool:
        """True when the key accepted the team's policy as it reads now (or the team has none)."""
        if not self.team.has_acceptable_use_policy:
            return True
        return self.acceptable_use_revision == self.team.acceptable_use_revision


class TeamAPIKeyUserObjectPermission(UserObjectPermissionBase):
    """guardian's direct foreign-key permission table for team API keys (fast, joinable, cascades)."""

    content_object = models.ForeignKey(TeamAPIKey, on_delete=models.CASCADE)


class AuditEventQuerySet(models.QuerySet):
    """Append-only: rows can be read and created, never changed or removed through the ORM."""

    def for_team(self, team: Team) -> AuditEventQuerySet:
        return self.filter(team=team)

    def update(self, **kwargs: Any) -> int:
        raise PermissionError("Audit events are append-only.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise PermissionError("Audit events are append-only.")


class AuditEvent(models.Model):
    """Who did what, to what, when and from where. Written by services; never edited or deleted."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # PROTECT: a team with history cannot silently take its history with it.
    team = models.ForeignKey(Team, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Kept as text too, so the trail still answers "who" after an account is deleted.
    actor_label = models.CharField(max_length=200)
    action = models.CharField(max_length=60, db_index=True)
    target_type = models.CharField(max_length=60, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=200, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering: ClassVar = ["-created_at", "-id"]
        indexes: ClassVar = [models.Index(fields=["team", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_label} {self.action} {self.target_label}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise PermissionError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise PermissionError("Audit events are append-only.")


class SpendKind(models.TextChoices):
    TRAINING = "training", "Training"
    SERVING = "serving", "Serving"


class SpendRecord(TeamOwnedModel):
    """What one training job or one day of a deployment cost the team: the spend ledger (``accounts.costs``).

    Written by the apps that spend (training when a job ends, serving hourly for each deployment's day), read by
    the Costs page and the budget check, which therefore need nothing of the apps above accounts. ``source_id``
    is the job's or the deployment's id and ``label`` its name at the time, so the ledger still reads after either
    is deleted. One row per source and period (``period_start``): recording again updates it.
    """

    kind = models.CharField(max_length=10, choices=SpendKind.choices)
    source_id = models.PositiveBigIntegerField()
    label = models.CharField(max_length=200)
    # A job trained on a restricted dataset: its name is shown only to owners and admins.
    restricted = models.BooleanField(default=False)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField(db_index=True, help_text="The month a row counts towards is its end's.")
    accelerator = models.CharField(max_length=4, default="cuda", help_text="cuda (GPUs) or cpu (processes).")
    devices = models.PositiveIntegerField(default=0, help_text="GPUs (or CPU processes) held over the period.")
    device_hours = models.DecimalField(max_digits=14, decimal_places=4, default=0)
    gpu_hours = models.DecimalField(max_digits=14, decimal_places=4, default=0)
    tokens = models.PositiveBigIntegerField(default=0, help_text="Tokens served over the period (deployments).")
    amount = models.DecimalField(
        max_digits=14, decimal_places=2, null=True, blank=True, help_text="Empty: no price was set for the device."
    )
    currency = models.CharField(max_length=3, default="USD")
    recorded_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering: ClassVar = ["-period_end", "-pk"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["team", "kind", "source_id", "period_start"], name="one_spend_per_period")
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.label} {self.period_start:%Y-%m-%d %H:%M}: {self.amount}"


class Budget(TeamOwnedModel):
    """A team's monthly budget and its price per CPU-hour (one row per team; owners change it, audited).

    ``soft_limit`` warns (a banner on the Costs page and the launch form) once the month's spend reaches it;
    ``hard_limit`` refuses new launches (training jobs, new deployments) until the next month or a higher limit.
    ``cpu_hour_price`` prices the device-hours of CPU pools; empty prices them like GPU-hours.
    """

    soft_limit = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    hard_limit = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    cpu_hour_price = models.DecimalField(max_digits=8, decimal_places=2, null=True, blank=True)
    updated_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [models.UniqueConstraint(fields=["team"], name="one_budget_per_team")]

    def __str__(self) -> str:
        return f"Budget of team {self.team_id}: soft {self.soft_limit}, hard {self.hard_limit}"
