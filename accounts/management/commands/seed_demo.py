"""``manage.py seed_demo``: an idempotent demo team and user, for ``make run`` and screenshots."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts import services
from accounts.models import Membership, Team
from accounts.roles import Role

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "atelier-demo-2026"  # noqa: S105 - printed on purpose: a local demo account
DEMO_TEAM_SLUG = "demo"


class Command(BaseCommand):
    help = "Create (or keep) the demo team and its owner account, and print the credentials."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--password", default=DEMO_PASSWORD, help="Password for a newly created demo user.")

    def handle(self, *args: Any, password: str, **options: Any) -> None:
        User = get_user_model()
        with transaction.atomic():
            user = User.objects.filter(username=DEMO_USERNAME).first()
            created = user is None
            if user is None:
                user = services.register_user(username=DEMO_USERNAME, email="demo@localhost", password=password)
            team = Team.objects.filter(slug=DEMO_TEAM_SLUG).first()
            if team is None:
                team = services.create_team(actor=user, name="Demo team", slug=DEMO_TEAM_SLUG)
            Membership.objects.get_or_create(team=team, user=user, defaults={"role": Role.OWNER})
        credentials = f"password “{password}”" if created or user.check_password(password) else "its existing password"
        self.stdout.write(
            self.style.SUCCESS(f"Demo ready: log in as “{DEMO_USERNAME}” with {credentials} (team /t/{team.slug}/).")
        )
