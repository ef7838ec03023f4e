"""What training made from a dataset, for the datasets app's pages.

The datasets app sits under the training app and imports nothing of it: its templates load these tags,
so a dataset's page can list the jobs and models trained on it without a dependency in the code.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.db.models import QuerySet

from accounts.permissions import TeamAccess
from training_app import services
from training_app.models import ACTIVE_STATUSES, ModelVersion, TrainingJob

register = template.Library()


@register.simple_tag
def jobs_trained_on_version(access: TeamAccess, version: Any) -> QuerySet[TrainingJob]:
    """The jobs this person may see that trained on one dataset version, newest first."""
    return services.visible_jobs(access).filter(dataset_version=version).select_related("created_by")


@register.simple_tag
def active_jobs_on_dataset(access: TeamAccess, dataset: Any) -> QuerySet[TrainingJob]:
    """Jobs still training on any version of ``dataset`` (deleting it makes them fail)."""
    return services.visible_jobs(access).filter(dataset_version__dataset=dataset, status__in=ACTIVE_STATUSES)


@register.simple_tag
def versions_trained_on_dataset(access: TeamAccess, dataset: Any) -> QuerySet[ModelVersion]:
    """Model versions trained on a version of ``dataset``; they stay when it is deleted."""
    return services.versions_trained_on(access, dataset)
