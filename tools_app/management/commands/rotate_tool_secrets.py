"""``manage.py rotate_tool_secrets``: re-encrypt every tool secret with the first key of ATELIER_SECRETS_KEY.

Rotation: put the new key first in ATELIER_SECRETS_KEY and keep the old one after it (comma-separated), restart the
studio and the workers, run this, then drop the old key.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from tools_app import services


class Command(BaseCommand):
    help = "Re-encrypt every tool secret with the current (first) key of ATELIER_SECRETS_KEY."

    def handle(self, *args: Any, **options: Any) -> None:
        rotated, unreadable = services.reencrypt_secrets()
        self.stdout.write(f"Re-encrypted {rotated} tool secret{'s' if rotated != 1 else ''} with the current key.")
        if unreadable:
            raise CommandError(
                "No configured key opens the secret of: " + ", ".join(unreadable) + ". Add the key they were "
                "encrypted with to ATELIER_SECRETS_KEY (after the new one), or enter their secrets again."
            )
