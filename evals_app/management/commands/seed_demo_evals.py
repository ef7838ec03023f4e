"""``manage.py seed_demo_evals``: the demo task's datasets and eval suite in the demo team, for ``make run``.

Runs after ``seed_demo`` (which makes the team and its owner); idempotent, like it.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.http import Http404

from accounts.management.commands.seed_demo import DEMO_TEAM_SLUG, DEMO_USERNAME
from accounts.permissions import resolve_access
from evals_app import demo


class Command(BaseCommand):
    help = "Add the demo task (Kestrel Coffee support: training data, eval questions, eval suite) to the demo team."

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=DEMO_USERNAME).first()
        try:
            access = resolve_access(user, DEMO_TEAM_SLUG)
        except Http404:
            raise CommandError(
                f"No demo team /t/{DEMO_TEAM_SLUG}/ with “{DEMO_USERNAME}” in it: run seed_demo first."
            ) from None
        seeded = demo.seed_demo(access)
        if seeded.suite is None:
            raise CommandError(
                f"The demo eval questions did not validate ({seeded.eval_version.get_status_display()}): "
                f"the dataset “{seeded.eval_version.dataset.name}” of /t/{DEMO_TEAM_SLUG}/ says why."
            )
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo task ready: dataset “{seeded.train_version.dataset.name}” and eval suite “{seeded.suite.name}”."
            )
        )
