"""Base models the studio can fine-tune."""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import Team


class BaseModelQuerySet(models.QuerySet["BaseModel"]):
    def available_to(self, team: Team) -> BaseModelQuerySet:
        """The team's own base models plus the ones an operator made available to every team."""
        return self.filter(Q(team=team) | Q(team__isnull=True))


class BaseModel(models.Model):
    """A model to fine-tune from: the studio's starter model, an operator's server path, or a team's own.

    ``team`` is empty for models an operator provides to every team (the starter model included);
    those are read-only for teams. Weights are always safetensors in a local folder (``path``).
    """

    class Source(models.TextChoices):
        STARTER = "starter", "Created by the studio"
        SERVER_PATH = "server_path", "Server path (registered by an operator)"

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
